"""``python -m smtpworker --node NAME``: run the SMTP virtual servers assigned to a node.

Configuration comes from Redis (``REDIS_URL``), falling back to the last good snapshot in
``$MAILADMIN_DATA_DIR/smtpworker-<node>.json``. Secrets are opened with
``MAILADMIN_ENCRYPTION_KEY`` (or ``SECRET_KEY``), the same value the web side uses.
SIGTERM or SIGINT: stop accepting, let open sessions finish (``--grace`` seconds), report
the node stopped, exit.

``--processes N`` (0: one per usable CPU) runs the node as N worker processes under a
supervising parent, to use every core. Each child runs the whole node loop on its own and opens its
listeners with SO_REUSEPORT, so all of them listen on the same ip:port and Linux spreads
new connections among them. What that means:

* Status: child ``i`` reports as node ``<node>.<i>`` (Redis key ``mailadmin:worker:<node>.<i>``,
  so ``GET /api/v1/workers/`` lists one entry per process, with its pid), with a
  ``process`` object naming the node, its index and the count. A server is in error when
  any process failed to bind it, and each process's error is listed.
* Control plane: child ``i`` joins Celery's pidbox as ``smtp@<node>.<i>``. Broadcasts
  (reload) reach every child; a session id from ``GET /api/v1/sessions/`` is
  ``<node>.<i>:<id>``, so terminate goes to the one child that holds the session.
* Servers assigned to ``<node>`` run in every child; ``--node`` stays the assignment name.
* The Pickup directory is scanned by child 0 only.
* Shared by the processes (through Redis): the AUTH brake's counts and blocks (each process
  brakes on its own while Redis is unreachable).
* Per process: the connection limits (a server limited to L connections, or L per client,
  may take up to N x L), the counters, the thread pools and the last good
  configuration file (``smtpworker-<node>.<i>.json``, seeded from ``smtpworker-<node>.json``).
* The W3C log file of a server is appended to by every child (O_APPEND, whole buffered
  lines); each child writes its own header block when it opens the file, as IIS did on
  every service start.
* The parent restarts a child that dies (after 1 s, backing off up to 30 s while a child
  keeps dying young), forwards SIGTERM/SIGINT to the children, and exits when they all
  have. A child gets SIGTERM if the parent dies. Connections waiting in a dead child's
  accept queue are reset by the kernel; the clients retry.
* With ``--processes 1`` (the default) nothing of this applies: one process, reporting and
  listening as ``<node>``, without SO_REUSEPORT (a second copy of the node started by the
  same user must fail to bind, not share the port). aiosmtpd's ``Controller`` start-up
  self-check, which can connect to a sibling process behind SO_REUSEPORT, is not involved:
  listeners are opened with ``loop.create_server`` (``smtpworker.inbound.runtime``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from smtpworker.core import contract, safefile
from smtpworker.core.config import ServerConfig, SiteConfig
from smtpworker.core.configmac import body_key
from smtpworker.core.handoff import Handoff
from smtpworker.core.jsonlog import FORMATS as LOG_FORMATS
from smtpworker.core.jsonlog import configure as configure_logging
from smtpworker.core.secretbox import SecretBox, key_problem
from smtpworker.inbound.auth import mock_key_for
from smtpworker.inbound.authbrake import AuthBrake
from smtpworker.inbound.authpool import VerifyPool
from smtpworker.inbound.control import ControlPlane
from smtpworker.inbound.dnscheck import ReverseResolver
from smtpworker.inbound.runtime import Node, NodeOptions
from smtpworker.inbound.watcher import Follower

log = logging.getLogger("smtpworker")

# Supervisor: a child that lived less than this is "dying young" and restarts back off.
YOUNG_SECONDS = 10.0
RESTART_DELAY = 1.0
# A last good configuration file larger than this is not copied to seed a child's own.
SEED_LIMIT = 256 << 20
RESTART_DELAY_MAX = 30.0
# A child that dies young this many times in a row is broken, not unlucky: stop the node
# and exit non-zero, so that what runs us (compose, systemd) sees the failure.
YOUNG_DEATHS_MAX = 5
# After forwarding SIGTERM, how long past --grace the parent waits before SIGKILL.
STOP_MARGIN = 15.0
PR_SET_PDEATHSIG = 1


def env(name: str, default: str = "") -> str:
    """``$name``, or the contents of the file named by ``$name_FILE`` (container secrets),
    as mailadmin.settings reads them (:func:`smtpworker.core.contract.env`); an unreadable
    file is a SystemExit saying so."""
    try:
        return contract.env(name, default)
    except contract.EnvFileError as exc:
        raise SystemExit(str(exc)) from exc


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    base = Path(__file__).resolve().parents[2]  # the checkout, as mailadmin.settings.BASE_DIR
    data_dir = Path(env("MAILADMIN_DATA_DIR") or base / "var")
    parser = argparse.ArgumentParser(
        prog="python -m smtpworker",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--node", default=env("MAILADMIN_NODE") or socket.gethostname().split(".")[0]
    )
    parser.add_argument("--redis", default=env("REDIS_URL", contract.DEFAULT_REDIS_URL))
    parser.add_argument("--broker", default=env("CELERY_BROKER_URL") or None)
    parser.add_argument(
        "--mailroot",
        type=Path,
        default=Path(env("MAILADMIN_MAILROOT") or data_dir / "mailroot"),
    )
    parser.add_argument("--data-dir", type=Path, default=data_dir)
    parser.add_argument("--hostname", default=socket.getfqdn(), help="FQDN for servers without one")
    parser.add_argument(
        "--grace", type=float, default=10.0, help="seconds open sessions get at shutdown"
    )
    parser.add_argument(
        "--poll", type=float, default=1.0, help="seconds between config version checks"
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="worker processes sharing the listeners (SO_REUSEPORT); 0: one per usable CPU",
    )
    parser.add_argument("--log-level", default=env("LOG_LEVEL", "INFO"))
    parser.add_argument(
        "--log-format",
        default=env("LOG_FORMAT", "plain").strip().lower() or "plain",
        help="plain (the default), or json: one JSON object per line",
    )
    args = parser.parse_args(argv)
    if args.log_format not in LOG_FORMATS:
        parser.error(f"--log-format (LOG_FORMAT) must be one of {', '.join(LOG_FORMATS)}")
    if args.processes < 0:
        parser.error("--processes must be 0 (one per usable CPU) or more")
    return args


def encryption_key() -> str:
    """The key that opens sealed secrets, as mailadmin.settings reads it
    (``MAILADMIN_ENCRYPTION_KEY``, else ``SECRET_KEY``, each also as ``*_FILE``).

    There is no default: without a key, or with the public development key, the worker
    exits with a message saying what to set (SystemExit), before it binds anything.
    """
    name, key = contract.encryption_key_setting(env)
    problem = key_problem(name, key)
    if problem:
        raise SystemExit(f"smtpworker: refusing to start: {problem}")
    return key


@dataclass(frozen=True, slots=True)
class Member:
    """Which process of a multi-process node this is."""

    node: str
    index: int
    count: int

    @property
    def name(self) -> str:
        return f"{self.node}.{self.index}"


class MemberNode(Node):
    """One process of a node run as several: serves the servers assigned to the node and
    reports (status key, pidbox name) as ``<node>.<index>``."""

    def __init__(self, options: NodeOptions, member: Member) -> None:
        super().__init__(options)
        self.member = member

    def mine(self, site: SiteConfig) -> list[ServerConfig]:
        return [s for s in site.servers if s.node in ("", self.member.node)]

    def status(self) -> contract.NodeStatus:
        status = super().status()
        status["process"] = {
            "node": self.member.node,
            "index": self.member.index,
            "count": self.member.count,
            "parent_pid": os.getppid(),
        }
        return status


def cache_file(args: argparse.Namespace, member: Member | None) -> Path:
    """The last good configuration file: one per process, so no two processes ever write
    the same file. A child without one of its own starts from the single-process file."""
    data_dir: Path = args.data_dir
    shared = data_dir / f"smtpworker-{args.node}.json"
    if member is None:
        return shared
    own = data_dir / f"smtpworker-{member.name}.json"
    if not own.exists() and shared.exists():
        try:  # 0600 and never through a link: the file holds password verifiers
            with safefile.directory(data_dir) as dir_fd:
                seed = safefile.read_regular(dir_fd, shared.name, limit=SEED_LIMIT)
                if seed is not None:
                    safefile.write_replace(dir_fd, own.name, seed, mode=0o600)
        except OSError as exc:
            log.warning("cannot seed %s from %s: %s", own, shared, exc)
    return own


async def serve(args: argparse.Namespace, member: Member | None = None) -> None:
    loop = asyncio.get_running_loop()
    key = encryption_key()
    executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="smtp-io")
    options = NodeOptions(
        name=member.name if member else args.node,
        mailroot=args.mailroot.resolve(),
        box=SecretBox(key),
        mock_key=mock_key_for(key),
        hostname=args.hostname,
        executor=executor,
        brake=AuthBrake(args.redis),
        verifier=VerifyPool(),
        reverse_names=ReverseResolver().names,
        reuse_port=member is not None,
        # Each accepted message goes to delivery at once; the sweep is the backstop.
        enqueue=Handoff(args.broker or args.redis, executor, node=args.node),
    )
    node = Node(options) if member is None else MemberNode(options, member)
    follower = Follower(
        node, args.redis, cache_file(args, member), mac_key=body_key(key), poll_interval=args.poll
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await follower.start()
    control = ControlPlane(args.broker or args.redis, follower, loop)
    control.start()
    tasks = [follower.run()]
    if member is None or member.index == 0:
        tasks.append(node.pickup_loop())  # one scanner per node, or two would race
    runner = asyncio.gather(*tasks)
    log.info("node %s running (config v%s)", node.name, node.site.version if node.site else 0)
    await stop.wait()
    log.info("node %s stopping: closing listeners, letting sessions finish", node.name)
    runner.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await runner  # retrieve the cancellation, or asyncio logs it as never retrieved
    control.stop()
    await node.close(grace=args.grace)
    await follower.publish_status(final=True)
    await follower.close()
    executor.shutdown(wait=True)
    log.info("node %s stopped", node.name)


# --- several processes --------------------------------------------------------------------


class Supervisor:
    """Forks ``count`` children that each run :func:`serve`, and keeps them running."""

    SIGNALS = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT}

    def __init__(self, args: argparse.Namespace, count: int) -> None:
        self.args = args
        self.count = count
        self.children: dict[int, tuple[int, float]] = {}  # pid -> (index, started)
        self.delays = [RESTART_DELAY] * count
        self.young_deaths = [0] * count
        self.restart_at: dict[int, float] = {}  # index -> monotonic time
        self.stopping_since: float | None = None
        self.failed = False

    def run(self) -> int:
        # Signals are taken synchronously (sigtimedwait), never by handlers: no race
        # between "a child died" and "we were told to stop".
        old_mask: set[int] = set(signal.pthread_sigmask(signal.SIG_BLOCK, self.SIGNALS))
        try:
            log.info("node %s: starting %d processes", self.args.node, self.count)
            for index in range(self.count):
                self._spawn(index, old_mask)
            while self.children or (self.stopping_since is None and self.restart_at):
                self._step(old_mask)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        log.info("node %s: all processes exited", self.args.node)
        return 1 if self.failed else 0

    def _step(self, old_mask: set[int]) -> None:
        now = time.monotonic()
        timeout = 1.0
        if self.restart_at:
            timeout = max(0.0, min(timeout, min(self.restart_at.values()) - now))
        info = signal.sigtimedwait(self.SIGNALS, timeout)
        if info is not None and info.si_signo in (signal.SIGTERM, signal.SIGINT):
            self._stop(signal.Signals(info.si_signo).name)
        self._reap()
        now = time.monotonic()
        if self.stopping_since is not None:
            if now - self.stopping_since > self.args.grace + STOP_MARGIN:
                for pid in list(self.children):
                    log.warning("process %d did not stop; killing it", pid)
                    self._signal(pid, signal.SIGKILL)
                self.stopping_since = now  # once per margin
            return
        for index, when in list(self.restart_at.items()):
            if when <= now:
                del self.restart_at[index]
                self._spawn(index, old_mask)

    def _stop(self, reason: str) -> None:
        if self.stopping_since is None:
            log.info(
                "node %s: %s, stopping %d processes", self.args.node, reason, len(self.children)
            )
            self.stopping_since = time.monotonic()
            self.restart_at.clear()
        for pid in list(self.children):
            self._signal(pid, signal.SIGTERM)

    def _signal(self, pid: int, signo: int) -> None:
        try:
            os.kill(pid, signo)  # only our own children, by pid
        except ProcessLookupError:
            pass

    def _reap(self) -> None:
        while self.children:
            try:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            if pid not in self.children:
                continue
            index, started = self.children.pop(pid)
            code = os.waitstatus_to_exitcode(wait_status)
            if self.stopping_since is not None:
                if code != 0:
                    self.failed = True
                    log.warning(
                        "process %d (%s.%d) exited with %d", pid, self.args.node, index, code
                    )
                continue
            lived = time.monotonic() - started
            if lived < YOUNG_SECONDS:
                delay = self.delays[index]
                self.delays[index] = min(delay * 2, RESTART_DELAY_MAX)
                self.young_deaths[index] += 1
            else:
                delay = self.delays[index] = RESTART_DELAY
                self.young_deaths[index] = 0
            if self.young_deaths[index] >= YOUNG_DEATHS_MAX:
                log.error(
                    "process %s.%d exited %d times in a row within %.0fs of starting "
                    "(last: %s); stopping the node",
                    self.args.node,
                    index,
                    self.young_deaths[index],
                    YOUNG_SECONDS,
                    code,
                )
                self.failed = True
                self._stop("a process keeps failing")
                continue
            log.error(
                "process %d (%s.%d) exited with %s after %.1fs; restarting in %.0fs",
                pid,
                self.args.node,
                index,
                code,
                lived,
                delay,
            )
            self.restart_at[index] = time.monotonic() + delay

    def _spawn(self, index: int, old_mask: set[int]) -> None:
        member = Member(self.args.node, index, self.count)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child's side
            os._exit(_child(self.args, member, old_mask))
        self.children[pid] = (index, time.monotonic())
        log.info("node %s: process %s.%d is pid %d", self.args.node, self.args.node, index, pid)


def _child(args: argparse.Namespace, member: Member, old_mask: set[int]) -> int:
    code = 1
    try:
        for signo in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(signo, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        _die_with_parent()
        configure_logging(args.log_level, args.log_format, node=member.name, show_node=True)
        asyncio.run(serve(args, member))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - the parent restarts us; say why first
        traceback.print_exc()
    finally:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
    return code


def _die_with_parent() -> None:
    """Get SIGTERM when the supervising parent dies (Linux), so no orphan keeps a port."""
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the parent's SIGTERM is all we get
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    encryption_key()  # refuse to start without a usable key, before anything is bound
    configure_logging(args.log_level, args.log_format, node=args.node)
    # aiosmtpd logs every connection and command at INFO; our own logs say what matters.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    count = args.processes or usable_cpus()
    if count == 1:
        asyncio.run(serve(args))
        return 0
    return Supervisor(args, count).run()


if __name__ == "__main__":
    sys.exit(main())
