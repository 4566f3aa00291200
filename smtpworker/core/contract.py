"""The contract between the halves: every name, value and shape that the web side
(``mailadmin``: Django, the API, the console, Celery) and the SMTP worker
(``smtpworker.inbound``) must spell alike, in one place.

The two halves share no process and no import of each other; they meet in Redis, in
Celery's broker and in the environment. What travels there is named here, once:

* Redis: the configuration channel and body key (written by
  ``mailadmin.services.config.versions``, followed by ``smtpworker.inbound.watcher``), and
  each node's report ``mailadmin:worker:<node>`` (written by the watcher, read by
  ``mailadmin.selectors.nodes``).
* Celery's control plane (kombu's pidbox): a node listens as ``smtp@<node>`` and answers
  the :class:`Command` names (``smtpworker.inbound.control``, sent by
  ``mailadmin.services.config.control``).
* The delivery hand-off: the task names and queue an accepted message is sent to
  (``smtpworker.core.handoff`` sends, ``mailadmin.tasks`` defines them).
* The environment: ``NAME`` or ``NAME_FILE`` (:func:`env`), the two keys and how the
  encryption key falls back to ``SECRET_KEY`` (:func:`encryption_key_setting`), and the
  public development key nothing may run with.
* The enumerations of the configuration both halves read (:class:`ServerState`,
  :class:`ListMode`, ...): the models' ``choices`` hold the same values in the same order
  (a test says so) and the snapshot carries them as these strings.
* The shapes of a node's report (:class:`WorkerReport` and what it holds), as JSON in Redis.

Everything on the wire is plain JSON and plain strings: the enumerations are
``StrEnum``s, equal to (and serialised as) their values, so a report or a body written by
an older or newer node reads the same. Renaming anything here breaks nodes of the other
version during a rolling upgrade: do it only with a plan for both.

Standard library only; imported by the web process, Celery and the SMTP daemon.
"""

# No ``from __future__ import annotations`` here: a TypedDict learns which keys are
# NotRequired when its class is created, and Python 3.11 cannot see that through a
# string annotation (every key would count as required).

import enum
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NotRequired, TypedDict

# --- Redis ------------------------------------------------------------------------------

# Published on after every committed configuration change (the message is the version);
# pub/sub loses messages while disconnected, so the worker also polls the body key.
CONFIG_CHANNEL = "mailadmin:config"
# The signed configuration body (``smtpworker.core.configmac`` over ``config.dump_site``).
CONFIG_BODY_KEY = "mailadmin:config:body"
# ``mailadmin:worker:<node>``: a node's JSON :class:`WorkerReport`, rewritten every few
# seconds with an expiry of WORKER_STATUS_TTL.
WORKER_KEY_PREFIX = "mailadmin:worker:"
WORKER_KEY_PATTERN = f"{WORKER_KEY_PREFIX}*"
WORKER_STATUS_TTL = 30


def worker_key(node: str) -> str:
    """The Redis key ``node`` writes its report to."""
    return f"{WORKER_KEY_PREFIX}{node}"


# --- Celery's control plane -------------------------------------------------------------

# Celery's default control exchange ("celery.pidbox"), the one ``app.control`` uses.
CONTROL_NAMESPACE = "celery"
CONTROL_HOST_PREFIX = "smtp@"
# A glob matching every SMTP node and no Celery worker (those are "celery@<host>").
CONTROL_HOST_PATTERN = f"{CONTROL_HOST_PREFIX}*"


def control_hostname(node: str) -> str:
    """The pidbox name ``node`` listens as (``smtp@<node>``)."""
    return f"{CONTROL_HOST_PREFIX}{node}"


class Command(enum.StrEnum):
    """The control commands an SMTP node answers."""

    RELOAD = "smtp_reload"  # {"version": int}: check for a new configuration now
    STATUS = "smtp_status"  # reply: the node's NodeReport
    TERMINATE = "smtp_terminate"  # {"session_id": str}: close one SMTP session
    PING = "smtp_ping"  # reply: "pong"


class ReloadReply(TypedDict):
    ok: bool
    requested: int | None


class TerminateReply(TypedDict):
    ok: bool  # False: the session was not (or no longer) on that node
    session_id: str


# --- The delivery hand-off --------------------------------------------------------------

# Sent by name: the worker does not import the Django project. Arguments, positional:
# relay_batch(server, [queue ids], node) and relay_message(server, queue id, node).
RELAY_TASK = "mailadmin.relay_message"
RELAY_BATCH_TASK = "mailadmin.relay_batch"
DEFAULT_QUEUE = "celery"


def delivery_queue(node: str) -> str:
    """The Celery queue that delivers what ``node`` spooled (the default one for no node):
    only Celery workers of the same node consume it, since the spool is on its disk."""
    return f"delivery.{node}" if node else DEFAULT_QUEUE


# --- The environment --------------------------------------------------------------------

SECRET_KEY_ENV = "SECRET_KEY"
# Seals secrets at rest and keys the configuration body's MAC; falls back to SECRET_KEY.
ENCRYPTION_KEY_ENV = "MAILADMIN_ENCRYPTION_KEY"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
# What SECRET_KEY and MAILADMIN_ENCRYPTION_KEY fell back to before keys had no default.
# It was in the repository, so it is public: nothing may run with it. It is kept only to
# recognise it (``secretbox.key_problem``) and to re-seal what an old install stored under
# it (``manage.py reseal_secrets --public-development-key``, which `make run` runs).
PUBLIC_DEVELOPMENT_KEY = "dev-insecure-mailadmin-secret-key-change-me"


class EnvFileError(ValueError):
    """``NAME_FILE`` names a file that cannot be read. Each side turns it into its own
    start-up failure (``ImproperlyConfigured``, ``SystemExit``) with this text."""


def env(name: str, default: str = "", environ: Mapping[str, str] | None = None) -> str:
    """``$name``, or the contents of the file named by ``$name_FILE`` (how container
    secrets are mounted; surrounding white space stripped), or ``default`` when neither
    is set. ``NAME_FILE`` wins over ``NAME``; an unreadable file raises EnvFileError."""
    environ = os.environ if environ is None else environ
    file_name = environ.get(f"{name}_FILE")
    if file_name:
        try:
            return Path(file_name).read_text().strip()
        except OSError as exc:
            raise EnvFileError(f"{name}_FILE={file_name!r} cannot be read: {exc}") from exc
    return environ.get(name, default)


def env_given(name: str, environ: Mapping[str, str] | None = None) -> bool:
    """Whether the environment gives ``name`` at all (as ``NAME`` or ``NAME_FILE``)."""
    environ = os.environ if environ is None else environ
    return bool(environ.get(name) or environ.get(f"{name}_FILE"))


def encryption_key_setting(read: Callable[[str], str] = env) -> tuple[str, str]:
    """The encryption key and the variable it came from: ``MAILADMIN_ENCRYPTION_KEY``, else
    ``SECRET_KEY`` (a single-machine install needs one secret). ``read(name)`` reads one
    variable (:func:`env` by default). Neither set: ``(ENCRYPTION_KEY_ENV, "")``."""
    key = read(ENCRYPTION_KEY_ENV)
    if key:
        return ENCRYPTION_KEY_ENV, key
    fallback = read(SECRET_KEY_ENV)
    return (SECRET_KEY_ENV, fallback) if fallback else (ENCRYPTION_KEY_ENV, "")


# --- Enumerations of the configuration ---------------------------------------------------
# Values and order equal the models' choices (mailadmin.models); labels live there.


class ServerState(enum.StrEnum):
    """What the administrator asked of a virtual server."""

    STARTED = "started"
    STOPPED = "stopped"
    PAUSED = "paused"


# A paused server keeps its listeners (and refuses new mail); a stopped one has none.
RUNNING_STATES = (ServerState.STARTED, ServerState.PAUSED)


class ListMode(enum.StrEnum):
    """Connection control and relay restrictions (IIS wording in the models' labels)."""

    ALL_EXCEPT_LIST = "all_except_list"
    ONLY_LIST = "only_list"


class OutboundAuth(enum.StrEnum):
    ANONYMOUS = "anonymous"
    BASIC = "basic"
    INTEGRATED = "integrated"


class OutboundTls(enum.StrEnum):
    """Postfix's smtp_tls_security_level may / encrypt / verify."""

    OPPORTUNISTIC = "opportunistic"
    REQUIRED = "required"
    VERIFIED = "verified"


class LogPeriod(enum.StrEnum):
    HOURLY = "hourly"
    DAILY = "daily"
    WEEKLY = "weekly"
    MONTHLY = "monthly"


class DomainKind(enum.StrEnum):
    LOCAL = "local"
    REMOTE = "remote"


# --- A node's report, as JSON in Redis ---------------------------------------------------


class SessionStatus(TypedDict):
    """One open SMTP connection (``smtpworker.inbound.sessions.SessionInfo.as_dict``)."""

    id: str  # unique on its node; the web side shows ``<node>:<id>``
    server: str
    client_ip: str
    client_port: int
    since: float  # Unix time the client connected
    helo: str
    user: str | None  # the authenticated user, if any
    tls: bool
    messages: int
    bytes: int


class ServerStatus(TypedDict):
    """One virtual server as a node runs it."""

    state: str  # a ServerState value: what the configuration asks
    listening: bool  # listeners open and no error
    bindings: list[str]  # the addresses it listens on, as ``grammar.Binding`` text
    error: str  # why it cannot run (a binding failed), or ""
    sessions: int  # open sessions
    # Cumulative since the process started: "connections", "accepted", "auth_failures",
    # "auth_braked", "auth_busy", "rejected_..." (``services.delivery.traffic.REASONS``).
    counters: dict[str, int]


class ProcessStatus(TypedDict):
    """Which process of a node run as several (``--processes``) reports."""

    node: str  # the node's name; the report's own ``node`` is ``<node>.<index>``
    index: int
    count: int
    parent_pid: int


class NodeStatus(TypedDict):
    """What :meth:`smtpworker.inbound.runtime.Node.status` returns."""

    node: str
    pid: int
    applied_version: int  # 0 before any configuration
    heartbeat: float  # Unix time of the report
    servers: dict[str, ServerStatus]  # by server name: the servers assigned to this node
    sessions: list[SessionStatus]
    process: NotRequired[ProcessStatus]  # only a process of a multi-process node


class NodeReport(NodeStatus):
    """A node's status and how its configuration stands
    (``smtpworker.inbound.watcher.Follower.status``; the ``smtp_status`` reply)."""

    config_error: str  # why the latest body was refused, or ""
    applied_site: str  # the site identity of the configuration it runs
    applied_digest: str  # and its runtime digest


class WorkerReport(NodeReport):
    """The body of ``mailadmin:worker:<node>``, as JSON."""

    stopped: bool  # the last report of a node that shut down


class WorkerStatus(WorkerReport):
    """A report as ``mailadmin.selectors.nodes.worker_statuses`` returns it."""

    stale: bool  # stopped, or no report for a while: what it says no longer holds
