"""What the crash run starts for itself: PostgreSQL, Redis, a smart-host sink, the product.

Everything here runs on loopback at ports below the ephemeral range, is started by the
crash run and is stopped again by the PID it started (PostgreSQL through ``pg_ctl`` on its
own data directory, which names the one postmaster it started). The machine's own
PostgreSQL (5432) and Redis (6379) are never touched.

* :class:`PrivatePostgres`: ``initdb`` into a fresh directory, ``pg_ctl start/stop``
  (``fsync`` on, as in production). As root, the server tools run as the ``postgres``
  OS user (``runuser``), since PostgreSQL refuses to run as root.
* :class:`PrivateRedis`: the ``redis-server`` of ``bin/devredis.py`` (no persistence), on
  a fixed port so the product's URL stays valid across a kill and restart.
* :class:`TimedSink`: ``smtpworker.tests.sink.Sink`` that also notes when each message
  arrived, so a duplicate can be set against the faults around it.
* :class:`Product`: the SMTP worker, the Celery worker and beat of
  :class:`~mailadmin.tests.stack.Stack`, killed with SIGKILL and started again by role.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import redis
from aiosmtpd.smtp import Envelope, Session

from mailadmin.tests.stack import Process, Stack
from smtpworker.tests.factories import free_port
from smtpworker.tests.sink import Sink

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bin"))

import devredis  # noqa: E402 - bin/devredis.py, the private Redis of make run / make test

PG_OWNER = "postgres"
PG_DATABASE = "mailadmin"


def postgres_bindir() -> Path | None:
    """The newest PostgreSQL server tools installed (Debian layout first), or None."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0,
    )
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def postgres_unavailable() -> str | None:
    """Why a private PostgreSQL cannot be started here, or None if it can."""
    if postgres_bindir() is None:
        return "no PostgreSQL server tools (initdb, pg_ctl) installed"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(PG_OWNER)
        except KeyError:
            return f"running as root and there is no {PG_OWNER!r} user to run PostgreSQL as"
        if shutil.which("runuser") is None:
            return "running as root and runuser is missing"
    return None


class PrivatePostgres:
    """A PostgreSQL cluster of its own in a temporary directory, on 127.0.0.1:<port>."""

    def __init__(self) -> None:
        bindir = postgres_bindir()
        assert bindir is not None, postgres_unavailable()
        self.bindir = bindir
        # Not under pytest's tmp_path: its parents are root-only, and the server runs as
        # the postgres user. mkdtemp makes the directory 0700; it is then chowned.
        self.root = Path(tempfile.mkdtemp(prefix="mailadmin-crash-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.port = free_port()
        self.pid: int | None = None
        self._as_owner: list[str] = []
        if os.geteuid() == 0:
            owner = pwd.getpwnam(PG_OWNER)
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
            self._as_owner = ["runuser", "-u", PG_OWNER, "--"]

    def url(self, database: str = PG_DATABASE) -> str:
        return f"postgres://{PG_OWNER}@127.0.0.1:{self.port}/{database}"

    def connect_kwargs(self, database: str = PG_DATABASE) -> dict[str, Any]:
        return {
            "host": "127.0.0.1",
            "port": self.port,
            "user": PG_OWNER,
            "dbname": database,
            "connect_timeout": 5,
        }

    def _tool(self, name: str, *args: str, timeout: float = 120) -> None:
        done = subprocess.run(
            [*self._as_owner, str(self.bindir / name), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.root,
        )
        if done.returncode:
            raise RuntimeError(
                f"{name} {' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}"
                f"\nserver log:\n{self.log_tail()}"
            )

    def create(self) -> None:
        """initdb, start, and create the product's database."""
        # --no-sync only skips initdb's own final flush of the template files; the
        # server runs with fsync on (the default, stated again in start()).
        self._tool(
            "initdb", "-D", str(self.data), "-A", "trust", "-U", PG_OWNER,
            "-E", "UTF8", "--locale=C", "--no-sync",
        )  # fmt: skip
        self.start()
        import psycopg

        with psycopg.connect(**self.connect_kwargs("postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {PG_DATABASE}")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=on"
        self._tool(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
            "-o", options, "start",
        )  # fmt: skip
        self.pid = int((self.data / "postmaster.pid").read_text().split()[0])

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m fast`` (clients cut off, clean shutdown) or ``immediate``
        (every server process quits at once, like a crash: recovery runs at the next start)."""
        self._tool("pg_ctl", "-D", str(self.data), "-w", "-t", "60", "-m", mode, "stop")

    def running(self) -> bool:
        return self.pid is not None and _alive(self.pid)

    def close(self) -> None:
        """Stop the server whatever state it is in, then remove its directory."""
        try:
            if self.running():
                self.stop("immediate")
        except (RuntimeError, subprocess.TimeoutExpired):
            pass
        if self.pid is not None and _alive(self.pid):
            os.kill(self.pid, signal.SIGKILL)  # the postmaster we started; its children follow
            _wait_gone(self.pid, 10)
        shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (not reaped yet) counts as gone.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def _wait_gone(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


class PrivateRedis:
    """A redis-server without persistence: a kill and restart empties it, as a flush."""

    def __init__(self, workdir: Path) -> None:
        self.binary = devredis.redis_server_binary()
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = devredis._spawn(self.binary, self.port, self.workdir)
        if not devredis._wait_ready(self.proc, self.url):
            self.stop()
            raise RuntimeError(f"private Redis did not start on port {self.port}")

    def kill(self) -> None:
        """SIGKILL the redis-server started here: every key and queued task is gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def flushall(self) -> None:
        client = redis.Redis.from_url(self.url, socket_timeout=5)
        try:
            client.flushall()
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc is not None:
            devredis._stop(self.proc)


class TimedSink(Sink):
    """A :class:`Sink` that also notes each message's arrival (``time.monotonic()``):
    ``arrivals[i]`` belongs to ``messages[i]``."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.arrivals: list[float] = []

    def _record(self, session: Session, envelope: Envelope) -> None:
        # The condition's lock is re-entrant: both lists grow under it, in step.
        with self._cond:
            self.arrivals.append(time.monotonic())
            super()._record(session, envelope)

    def snapshot(self, start: int = 0) -> list[tuple[float, Any]]:
        """(arrival, message) pairs from index ``start`` on."""
        with self._cond:
            return list(zip(self.arrivals[start:], self.messages[start:], strict=True))


ROLES = ("smtp", "worker", "beat")


class Product:
    """The product's three processes by role; a kill is SIGKILL to the process group the
    run started (the Celery worker's pool children included)."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.current: dict[str, Process] = {}
        self.starts: Counter[str] = Counter()
        self.kills: Counter[str] = Counter()

    def start(self, role: str) -> Process:
        if role == "smtp":
            process = self.stack.smtp()
        elif role == "worker":
            process = self.stack.worker()
        else:
            process = self.stack.beat()
        self.current[role] = process
        self.starts[role] += 1
        return process

    def kill(self, role: str) -> int:
        """SIGKILL the role's process; returns its PID."""
        process = self.current.pop(role)
        pid = process.pid
        process.kill()
        process.stop()  # already dead: this only closes its log file
        self.kills[role] += 1
        return pid

    def exited(self) -> dict[str, int]:
        """Roles whose process ended without being killed here: role -> exit code."""
        gone = {}
        for role, process in self.current.items():
            code = process.proc.poll() if process.proc is not None else None
            if code is not None:
                gone[role] = code
        return gone

    def log_path(self, role: str) -> Path:
        return self.stack.log_dir / f"{role}.log"

    def last_words(self, role: str) -> str:
        """What the role's log says last about an error: its last CRITICAL line and the
        exception line of its last traceback (else its last five lines)."""
        text = self.current[role].output() if role in self.current else ""
        lines = text.splitlines()
        picked = [line for line in lines if "CRITICAL/" in line or "Unrecoverable" in line][-1:]
        if "Traceback (most recent call last):" in text:
            tail = text.rsplit("Traceback (most recent call last):", 1)[1].splitlines()
            ends = [line for line in tail if line and not line.startswith((" ", "\t"))]
            picked += ends[:1]
        return "\n".join(picked or lines[-5:])

    def stop(self) -> None:
        self.stack.stop()


def wait_greeting(address: tuple[str, int], timeout: float) -> bool:
    """Whether something answers 220 at ``address`` within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(address, timeout=2) as sock:
                if sock.recv(3) == b"220":
                    return True
        except OSError:
            pass
        time.sleep(0.1)
    return False
