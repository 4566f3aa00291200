"""The product and Postfix side by side in one run: same sink, same generator, interleaved.

Run ``python bench/sidebyside.py`` from the repository (with the venv active); ``--quick``
is the smoke run of ``make proof``. Postfix is used only when it is installed
(``/usr/sbin/postfix``; see bench/README.md); without it the script says why it did not run
and exits 0 (``--json`` then holds ``{"skipped": reason}``).
On loopback only, it starts, and stops again by PID (also on errors):

* **the sink**: Postfix's ``smtp-sink`` (C, one process) on a free port, behind a small
  helper process that reads its running counter and notes when each message arrived; the
  Python sink of ``bench/relay.py`` when ``smtp-sink`` is missing;
* **a private Postfix**: its own ``config_directory`` (main.cf, master.cf written here),
  ``queue_directory``, ``data_directory`` and log file (``maillog_file``, so nothing goes
  to syslog) under the run's temporary directory; ``smtpd`` on 127.0.0.1 at a free port
  (never 25), no local delivery (``mydestination`` empty), ``mynetworks = 127.0.0.0/8``,
  ``relayhost = [127.0.0.1]:<sink port>``; everything else Postfix's defaults. It runs as
  ``postfix -c DIR start-fg``, a child of this script, and is stopped with
  ``postfix -c DIR stop`` and by the PIDs it started;
* **the product as ``make run`` starts it**: ``bin/run`` itself (its supervisor copying
  every child's output, the SMTP worker with its default process count, the Celery worker,
  beat and the web process, at their shipped log levels), with a private Redis, one
  virtual server relaying from 127.0.0.0/8 to the sink as its smart host, on SQLite and on
  PostgreSQL (a private cluster as the crash run makes, or ``DATABASE_URL``'s server);
* **the generator**: Postfix's ``smtp-source`` for one message per connection, the Python
  epoll generator of ``bench/relay.py`` for 10 per connection (smtp-source has no such
  count; see ``Generator``) and whenever smtp-source is missing.

Each cell (size x sessions x messages per connection) runs product, Postfix, product,
Postfix... (``REPEATS`` pairs after a warm-up of each); medians are compared. A run's rate
is from the moment the generator starts (smtp-source) or sends its first MAIL FROM (the
Python one) to the N-th message at the sink; the accept rate to the generator's last 250.
CPU per message is read from /proc for every process of each side (see ``cpu_seconds``).
bench/README.md ("sidebyside.py") explains the method and the output.
"""

from __future__ import annotations

import argparse
import contextlib
import grp
import json
import os
import platform
import pwd
import re
import resource
import secrets
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bin"), str(ROOT / "bench")]

import accept  # noqa: E402 - bench/accept.py: machine facts, foreign load (and our keys)
import relay  # noqa: E402 - bench/relay.py: the Python sink and generator, the site document
from relay import KB, RECIPIENT, SENDER  # noqa: E402

from smtpworker.core import contract  # noqa: E402
from smtpworker.core.contract import delivery_queue  # noqa: E402

POSTFIX = "/usr/sbin/postfix"
NODE = "bench"
SERVER = "Bench"
# (size, sessions, messages per connection) -> messages per timed run
CELLS: dict[tuple[int, int, int], int] = {
    (1 * KB, 10, 1): 1500,
    (1 * KB, 50, 1): 1500,
    (100 * KB, 10, 1): 400,
    (1 * KB, 10, 10): 1500,
    (1 * KB, 50, 10): 1500,
    (100 * KB, 10, 10): 400,
}
QUICK_CELLS: dict[tuple[int, int, int], int] = {(1 * KB, 10, 1): 300, (1 * KB, 10, 10): 300}
WARMUP = {1 * KB: 200, 100 * KB: 60}
REPEATS = 3
RUN_TIMEOUT = 240.0
DRAIN_TIMEOUT = 60.0
FOREIGN_LIMIT = 0.15  # cores other programs may use during a kept pair of runs
RETRIES = 2  # pairs run again per cell at most when other programs were busier than that
QUIET_BUDGET = 90.0  # seconds of waiting for quiet in the whole benchmark
CLK_TCK = os.sysconf("SC_CLK_TCK")
SINK_HOST = "sink.bench.test"


# --- CPU from /proc -----------------------------------------------------------------------


@dataclass(frozen=True)
class Proc:
    """One process as /proc showed it: CPU in seconds, its own and its reaped children's."""

    pid: int
    ppid: int
    comm: str
    own: float
    reaped: float


def read_proc(pid: int) -> Proc | None:
    """A process's CPU: utime + stime, or for a single-threaded process the scheduler's
    nanosecond count (``/proc/PID/schedstat``, the same total without the clock-tick
    truncation that would lose ~1 tick per short-lived Postfix daemon); and cutime +
    cstime, the time of the children it has reaped (Postfix's master reaps its daemons,
    PostgreSQL's postmaster its backends, bin/run its restarted children)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            raw = f.read()
    except OSError:
        return None
    head, _, tail = raw.rpartition(")")
    fields = tail.split()
    own = (int(fields[11]) + int(fields[12])) / CLK_TCK
    if fields[17] == "1":  # num_threads: the leader's runtime is the whole process's
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open(f"/proc/{pid}/schedstat") as f:
                own = int(f.read().split()[0]) / 1e9
    reaped = (int(fields[13]) + int(fields[14])) / CLK_TCK
    return Proc(pid, int(fields[1]), head.partition("(")[2], own, reaped)


def snapshot() -> dict[int, Proc]:
    """Every process now."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (proc := read_proc(int(entry))) is not None:
            found[proc.pid] = proc
    return found


def descendants(snap: dict[int, Proc], root: int) -> list[int]:
    """``root`` and every process below it."""
    children: dict[int, list[int]] = {}
    for proc in snap.values():
        children.setdefault(proc.ppid, []).append(proc.pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in snap:
            found.append(pid)
            todo += children.get(pid, [])
    return found


def cpu_seconds(snap: dict[int, Proc], root: int) -> float:
    """CPU of a process tree: own + reaped time of each live member. A member that exited
    and was reaped is in its reaper's ``reaped``; so the sum only grows, and the
    difference of two readings is what the tree used in between, exited processes
    included (as long as the root lives)."""
    return sum(snap[pid].own + snap[pid].reaped for pid in descendants(snap, root))


def cmdline(pid: int) -> list[str]:
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [part.decode(errors="replace") for part in f.read().split(b"\0") if part]
    return []


def foreign_cores(before: dict[int, int], after: dict[int, int], wall: float) -> float:
    return accept.foreign_cores(before, after, wall)


def foreign_ticks(exclude: list[int]) -> dict[int, int]:
    """accept.py's other programs' ticks, less the trees of ``exclude`` (a private
    PostgreSQL's postmaster is ours but not our child: pg_ctl detaches it)."""
    table = accept.process_table()
    if exclude:
        snap = {pid: Proc(pid, ppid, "", 0.0, 0.0) for pid, (ppid, _t) in table.items()}
        for root in exclude:
            for pid in descendants(snap, root):
                table.pop(pid, None)
    return accept.foreign_ticks(table)


# --- the sink: smtp-sink behind relay.py's sink protocol ----------------------------------


def smtp_sink_main(port: int) -> int:
    """Run ``smtp-sink -c`` and answer relay.sink_main's commands about its count.

    smtp-sink prints ``sess=N quit=N mesg=N`` and a CR each time a message's final dot
    arrives (and at each session end); a thread reads that and notes the time at which
    each count was first seen, so arrival times are those of the read (microseconds late).
    """
    argv = [
        shutil.which("smtp-sink") or "smtp-sink",
        "-c",  # the running counter, on stdout
        "-a",  # no AUTH offered
        "-h", SINK_HOST,
        "-4",
        "-u", "nobody",  # required as root: it drops to this user after binding
        f"127.0.0.1:{port}",
        "1024",
    ]  # fmt: skip
    if os.geteuid() != 0:
        argv.remove("-u")
        argv.remove("nobody")
    sink = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    lock = threading.Condition()
    state: dict[str, Any] = {"count": 0, "offset": 0, "arrivals": []}
    pattern = re.compile(rb"mesg=(\d+)")

    def reader() -> None:
        assert sink.stdout is not None
        fd = sink.stdout.fileno()
        while chunk := os.read(fd, 65536):
            counts = pattern.findall(chunk)
            if not counts:
                continue
            now = time.monotonic()
            with lock:
                new = int(counts[-1])
                if new > state["count"]:
                    state["arrivals"] += [now] * (new - state["count"])
                    state["count"] = new
                    lock.notify_all()

    threading.Thread(target=reader, daemon=True).start()
    relay.wait_greeting(port)
    print(json.dumps({"ready": True}), flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.stdin.close())
    try:
        for line in sys.stdin:
            words = line.split()
            with lock:
                if words[0] == "reset":
                    state["offset"] = state["count"]
                    state["arrivals"] = []
                    answer: dict[str, Any] = {"ok": True}
                elif words[0] == "total":
                    answer = {"total": state["count"]}
                else:  # wait N TIMEOUT
                    want, timeout = int(words[1]), float(words[2])
                    lock.wait_for(
                        lambda want=want: state["count"] - state["offset"] >= want, timeout
                    )
                    arrivals = state["arrivals"]
                    answer = {
                        "count": state["count"] - state["offset"],
                        "total": state["count"],
                        "first": arrivals[0] if arrivals else None,
                        "nth": arrivals[want - 1] if len(arrivals) >= want else None,
                    }
            print(json.dumps(answer), flush=True)
    except (ValueError, OSError):
        pass  # stdin closed by SIGTERM
    finally:
        relay.stop_process(sink)
    return 0


class SmtpSink(relay.SinkProcess):
    """relay.SinkProcess's interface over ``smtp_sink_main``."""

    def command(self) -> list[str]:
        return [sys.executable, __file__, "--smtp-sink", str(self.port)]

    def pids(self) -> list[int]:
        return [self.proc.pid]  # its tree: the helper and smtp-sink


# --- the generator --------------------------------------------------------------------------


def source_argv(tool: str, port: int, size: int, sessions: int, count: int, keep: bool) -> list:
    argv = [
        tool,
        "-s", str(sessions),
        "-m", str(count),
        "-l", str(size),
        "-f", SENDER,
        "-t", RECIPIENT,
        "-M", "bench.test",
        "-4",
    ]  # fmt: skip
    if keep:
        argv.append("-d")  # the next message over the same connection
    return [*argv, f"127.0.0.1:{port}"]


def run_smtp_source(
    tool: str, port: int, size: int, sessions: int, per_connection: int, count: int
) -> dict[str, Any]:
    """One run with smtp-source.

    One message per connection: one ``smtp-source -s SESSIONS -m COUNT -l SIZE``. More:
    smtp-source has no per-connection count (``-d`` sends all of ``-m`` over the ``-s``
    connections), so each connection is its own ``smtp-source -d -s 1 -m N``, with up to
    SESSIONS of them running at a time and a new one started as one ends.
    """
    jobs: list[list[str]] = []
    if per_connection == 1:
        jobs.append(source_argv(tool, port, size, sessions, count, keep=False))
    else:
        left = count
        while left > 0:
            n = min(per_connection, left)
            jobs.append(source_argv(tool, port, size, 1, n, keep=True))
            left -= n
        jobs.reverse()
    width = 1 if per_connection == 1 else sessions
    running: dict[int, subprocess.Popen[bytes]] = {}  # pidfd -> process
    poller = select.epoll()
    errors: list[str] = []
    failed = 0
    t0 = time.monotonic()
    while jobs or running:
        while jobs and len(running) < width:
            proc = subprocess.Popen(
                jobs.pop(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )  # fmt: skip
            pidfd = os.pidfd_open(proc.pid)
            running[pidfd] = proc
            poller.register(pidfd, select.EPOLLIN)
        for pidfd, _ in poller.poll(RUN_TIMEOUT):
            proc = running.pop(pidfd)
            poller.unregister(pidfd)
            os.close(pidfd)
            assert proc.stderr is not None
            message = proc.stderr.read().decode(errors="replace").strip()
            proc.stderr.close()
            if proc.wait() != 0:
                failed += 1
                if len(errors) < 5:
                    errors.append(message[-300:])
    poller.close()
    t1 = time.monotonic()
    return {"failed": failed, "errors": errors, "first_mail": t0, "last_ack": t1}


def generator_main() -> int:
    """The generator process: one JSON job per stdin line, one JSON result per line."""
    for line in sys.stdin:
        job = json.loads(line)
        usage = [
            resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
        ]
        if job["tool"] == "python":
            result = relay.generate(
                [job["port"]], job["size"], job["sessions"], job["count"], job["per_connection"]
            )
        else:
            result = run_smtp_source(
                job["tool"], job["port"], job["size"], job["sessions"], job["per_connection"],
                job["count"],
            )  # fmt: skip
        after = [
            resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
        ]
        result["cpu"] = sum(
            (a.ru_utime - b.ru_utime) + (a.ru_stime - b.ru_stime)
            for a, b in zip(after, usage, strict=True)
        )
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()
    return 0


class Generator:
    """The generator process; each job names its tool.

    ``auto`` (the default) uses smtp-source for one message per connection and the Python
    generator for more: smtp-source has no per-connection count, and starting one per
    connection costs ~4 ms of CPU each (it loads some 20 shared libraries), 0.4-0.6 ms per
    message at 10 per connection against the Python generator's ~0.2. On a 2-core machine
    the generator's CPU is taken from the server under test, and a per-message overhead
    common to both sides pulls their ratio towards 1, so the cheaper generator is the
    fairer one there. Within a cell both sides always get the same generator.
    """

    def __init__(self, choice: str, smtp_source: str | None) -> None:
        self.choice = choice  # auto, smtp-source or python
        self.smtp_source = smtp_source
        self.tool = "python"
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--generator"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def tool_for(self, per_connection: int) -> str:
        """ "python" or the path of smtp-source."""
        if self.smtp_source is None or self.choice == "python":
            return "python"
        if self.choice == "smtp-source" or per_connection == 1:
            return self.smtp_source
        return "python"

    def start(self, port: int, size: int, sessions: int, per_connection: int, count: int) -> None:
        self.tool = self.tool_for(per_connection)
        job = {
            "tool": self.tool, "port": port, "size": size, "sessions": sessions,
            "per_connection": per_connection, "count": count,
        }  # fmt: skip
        assert self.proc.stdin is not None
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
            relay.stop_process(self.proc)


# --- a private Postfix ----------------------------------------------------------------------

# The services a relay needs, with the columns of Postfix's own master.cf (``-`` is the
# default); chroot off (there is no chroot jail in the temporary directory), no local,
# virtual, lmtp or pipe deliveries, no tlsmgr (no TLS here). The smtpd line is added with
# the port.
MASTER_CF = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""
QUEUES = ("maildrop", "incoming", "active", "deferred", "hold")


def postfix_unavailable() -> str | None:
    """Why a private Postfix cannot run here, or None."""
    if not os.path.exists(POSTFIX):
        return f"Postfix is not installed ({POSTFIX} is missing; see bench/README.md)"
    if os.geteuid() != 0:
        return "Postfix's master must start as root (it drops to mail_owner itself)"
    try:
        pwd.getpwnam("postfix")
        grp.getgrnam("postdrop")
    except KeyError:
        return "no 'postfix' user (mail_owner) or 'postdrop' group (setgid_group)"
    return None


class PrivatePostfix:
    """A Postfix instance of its own under ``root`` (config, queue, data, log)."""

    def __init__(self, root: Path, sink_port: int, port: int | None = None) -> None:
        self.root = root
        self.config = root / "etc"
        self.queue = root / "queue"
        self.data = root / "data"
        self.log = root / "postfix.log"
        self.port = port or relay.free_port()
        self.sink_port = sink_port
        self.proc: subprocess.Popen[bytes] | None = None
        self.master: int | None = None

    def main_cf(self) -> str:
        settings = {
            "compatibility_level": "3.6",
            "config_directory": str(self.config),
            "queue_directory": str(self.queue),
            "data_directory": str(self.data),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": "postfix.bench.test",
            "mydomain": "bench.test",
            "myorigin": "$myhostname",
            # No local delivery: nothing is local, and the local transport would refuse.
            "mydestination": "",
            "local_recipient_maps": "",
            "local_transport": "error:5.1.1 no local delivery in this benchmark",
            "alias_maps": "",
            "alias_database": "",
            "relay_domains": "",
            "relayhost": f"[127.0.0.1]:{self.sink_port}",
            "mynetworks": "127.0.0.0/8",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "smtpd_banner": "$myhostname ESMTP",
            "biff": "no",
            # Logging to a file of ours through postlogd, never to syslog.
            "maillog_file": str(self.log),
            "maillog_file_prefixes": str(self.root),
        }
        return "".join(f"{key} = {value}\n" for key, value in settings.items())

    def master_cf(self) -> str:
        return f"{self.port}      inet  n       -       n       -       -       smtpd\n" + MASTER_CF

    def write_config(self) -> None:
        """main.cf and master.cf; the directories (the queue's subdirectories are made by
        ``postfix start``'s ``post-install create-missing``, owned by mail_owner). The
        postfix user must reach them: every parent of ``root`` needs the x bit for others."""
        self.root.mkdir(mode=0o711, exist_ok=True)
        for path in [self.root, *self.root.parents]:
            if path.stat().st_mode & 0o001 == 0:
                raise RuntimeError(
                    f"{path} is not searchable by others, so Postfix's mail_owner cannot reach "
                    f"{self.root}: give --work-dir a path under a world-searchable directory"
                )
        self.config.mkdir(parents=True, exist_ok=True)
        self.queue.mkdir(exist_ok=True)
        (self.config / "main.cf").write_text(self.main_cf())
        (self.config / "master.cf").write_text(self.master_cf())

    def postfix(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [POSTFIX, "-c", str(self.config), *args],
            capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        )  # fmt: skip

    def start(self) -> None:
        """``postfix -c DIR start-fg`` as our child (postfix-script runs ``master -s`` below
        it), then until the smtpd port greets."""
        self.write_config()
        out = open(self.root / "start-fg.out", "ab")  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(
                [POSTFIX, "-c", str(self.config), "start-fg"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                # Out of the terminal's process group: a Ctrl-C stops it through our
                # finally (postfix stop), not by killing postfix-script under its master.
                start_new_session=True,
            )  # fmt: skip
        finally:
            out.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postfix start-fg exited: {self.tail()}")
            master = self.master_pid()
            if master is not None:
                with contextlib.suppress(RuntimeError):
                    relay.wait_greeting(self.port, timeout=0.5)
                    self.master = master
                    return
            time.sleep(0.1)
        raise RuntimeError(f"Postfix did not greet on 127.0.0.1:{self.port}: {self.tail()}")

    def master_pid(self) -> int | None:
        """The master in our queue's pid file, if it is the one below our start-fg."""
        with contextlib.suppress(OSError, ValueError):
            pid = int((self.queue / "pid" / "master.pid").read_text().split()[0])
            proc = read_proc(pid)
            if proc is not None and self.proc is not None and proc.ppid == self.proc.pid:
                return pid
        return None

    def pids(self) -> list[int]:
        return [self.proc.pid] if self.proc is not None else []

    def queued(self) -> int:
        """Queue files not yet delivered and removed."""
        return sum(len(files) for q in QUEUES for _d, _s, files in os.walk(self.queue / q))

    def processes(self) -> list[int]:
        """Every process whose working directory is our queue (Postfix's daemons chdir
        there), whoever its parent is now."""
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{entry}/cwd") == str(self.queue):
                        found.append(int(entry))
        return found

    def stop(self) -> None:
        """``postfix -c DIR stop`` (SIGTERM to our master by its pid file), then SIGKILL to
        the master's process group (master is its leader, setsid) if anything is left."""
        if self.proc is None:
            return
        if self.processes():  # also when postfix-script is gone but its master is not
            self.postfix("stop")
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            if self.master is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.master, signal.SIGKILL)
            self.proc.kill()
            self.proc.wait()
        deadline = time.monotonic() + 10
        while (left := self.processes()) and time.monotonic() < deadline:
            time.sleep(0.1)
        if left and self.master is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.master, signal.SIGKILL)

    def tail(self, lines: int = 15) -> str:
        text = ""
        for path in (self.root / "start-fg.out", self.log):
            with contextlib.suppress(OSError):
                text += path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def version(self) -> str:
        done = subprocess.run(
            ["/usr/sbin/postconf", "-d", "-h", "mail_version"], capture_output=True, text=True
        )
        return done.stdout.strip() or "?"


# --- the product as make run starts it ------------------------------------------------------


def site_document(port: int, sink_port: int) -> dict[str, Any]:
    """relay.py's site: one virtual server relaying from 127.0.0.0/8 to the sink as its
    smart host. The per-client connection limit (IIS's default 50) is lifted, as Postfix
    exempts $mynetworks from its own: all load comes from 127.0.0.1."""
    doc = relay.site_document([relay.Node(NODE, SERVER, port)], sink_port)
    doc["servers"][0]["client_connection_limit"] = None
    doc["servers"][0]["description"] = "bench/sidebyside.py: relays from loopback to the sink"
    return doc


class MakeRun:
    """``bin/run`` with our database, Redis, data directory and node; stopped by its PID."""

    def __init__(self, work: Path, db_url: str, redis_url: str, sink_port: int) -> None:
        self.work = work
        self.port = relay.free_port()
        self.sink_port = sink_port
        self.redis_url = redis_url
        env = {
            k: v
            for k, v in os.environ.items()
            # make run's defaults, not this shell's: log levels, node, data directory...
            if not k.startswith(("MAILADMIN_", "CELERY_", "LOG_", "DJANGO_", "SECRET_KEY"))
            and k not in ("DATABASE_URL", "REDIS_URL", "WEB_ADDR", "STATIC_ROOT")
        }
        self.env = {
            **env,
            # Keys of this run's own (make run would generate them into its data directory).
            contract.SECRET_KEY_ENV: secrets.token_urlsafe(48),
            contract.ENCRYPTION_KEY_ENV: secrets.token_urlsafe(48),
            "DATABASE_URL": db_url,
            "REDIS_URL": redis_url,
            "CELERY_BROKER_URL": redis_url,
            "MAILADMIN_DATA_DIR": str(work / "data"),
            "MAILADMIN_NODE": NODE,
            "WEB_ADDR": f"127.0.0.1:{relay.free_port()}",
            "STATIC_ROOT": str(work / "static"),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.children: list[tuple[int, str]] = []  # (pid, start time) seen below bin/run

    def manage(self, *argv: str, timeout: float = 300) -> str:
        done = subprocess.run(
            [sys.executable, *argv], cwd=ROOT, env=self.env, capture_output=True, text=True,
            timeout=timeout, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        if done.returncode:
            raise RuntimeError(f"{' '.join(argv[:3])} failed:\n{done.stdout}\n{done.stderr}")
        return done.stdout

    def prepare(self) -> None:
        """Migrate, import the site, publish it to Redis (bin/run migrates again: a no-op)."""
        (self.work / "data").mkdir(parents=True, exist_ok=True)
        self.manage("manage.py", "migrate", "--noinput")
        doc = self.work / "site.json"
        doc.write_text(json.dumps(site_document(self.port, self.sink_port), indent=2))
        self.manage("manage.py", "config", "import", str(doc))
        self.manage(
            "-c",
            "import os, django; "
            "os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'mailadmin.settings'); "
            "django.setup(); "
            "from mailadmin.services.config.versions import config_republish; "
            "config_republish()",
        )

    def start(self) -> None:
        log = open(self.work / "make-run.log", "ab")  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(
                [sys.executable, str(ROOT / "bin" / "run")], cwd=ROOT, env=self.env,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        finally:
            log.close()
        self.wait_listening()
        relay.wait_greeting(self.port)

    def wait_listening(self, timeout: float = 180) -> None:
        import redis

        client = redis.Redis.from_url(self.redis_url)
        deadline = time.monotonic() + timeout
        try:
            while True:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise RuntimeError(f"bin/run exited: {self.tail()}")
                body = client.get(contract.worker_key(NODE))
                server = (json.loads(body) if body else {}).get("servers", {}).get(SERVER, {})
                if server.get("listening"):
                    return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the SMTP worker does not listen: {server} {self.tail()}")
                time.sleep(0.2)
        finally:
            client.close()

    def tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            text = (self.work / "make-run.log").read_text(errors="replace")
            return "\n".join(text.splitlines()[-lines:])
        return ""

    def pids(self) -> list[int]:
        return [self.proc.pid] if self.proc is not None else []

    def backlog(self) -> int:
        """Celery messages waiting or unacknowledged in the broker."""
        import redis

        client = redis.Redis.from_url(self.redis_url)
        try:
            waiting = sum(int(client.llen(q)) for q in ("celery", delivery_queue(NODE)))
            return waiting + int(client.hlen("unacked"))
        finally:
            client.close()

    def remember_children(self) -> None:
        """The children below bin/run now, to be killed by PID should bin/run die first."""
        if self.proc is None:
            return
        snap = snapshot()
        for pid in descendants(snap, self.proc.pid)[1:]:
            with contextlib.suppress(OSError):
                start = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19]
                if (pid, start) not in self.children:
                    self.children.append((pid, start))

    def stop(self) -> None:
        """SIGTERM to bin/run (it stops its children, 10 s grace, then kills them); then
        SIGKILL to any child it left, by the PIDs remembered (checked by start time)."""
        if self.proc is None:
            return
        self.remember_children()
        relay.stop_process(self.proc, timeout=40)
        for pid, start in self.children:
            with contextlib.suppress(OSError):
                now = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19]
                if now == start:
                    os.kill(pid, signal.SIGKILL)


def role_deltas(
    snap0: dict[int, Proc],
    snap1: dict[int, Proc],
    root: int,
    role_of: Callable[[dict[int, Proc], int], str],
    reaped_role: Callable[[dict[int, Proc], int], str] | None = None,
) -> dict[str, float]:
    """CPU seconds each role of ``root``'s tree used between two snapshots.

    Per process: the growth of its own time goes to ``role_of``, the growth of its reaped
    time to ``reaped_role`` (default the same). A process that was there before and is gone
    now was reaped by its parent, whose reaped time grew by all of its life; what it had
    used before the first snapshot is taken off that parent's role again. So the roles sum
    to ``cpu_seconds``' difference and none goes negative when a daemon exits.
    """
    reaped_of = reaped_role or role_of
    roles: dict[str, float] = {}

    def add(role: str, seconds: float) -> None:
        roles[role] = roles.get(role, 0.0) + seconds

    now = descendants(snap1, root)
    before = descendants(snap0, root)
    was = set(before)
    for pid in now:
        p1, p0 = snap1[pid], snap0.get(pid) if pid in was else None
        add(role_of(snap1, pid), p1.own - (p0.own if p0 else 0.0))
        add(reaped_of(snap1, pid), p1.reaped - (p0.reaped if p0 else 0.0))
    gone = set(before) - set(now)
    for pid in gone:
        p0 = snap0[pid]
        add(reaped_of(snap0, p0.ppid), -(p0.own + p0.reaped))
    return {role: seconds for role, seconds in roles.items() if seconds}


_COMMANDS: dict[int, str] = {}


def product_role(root: int) -> Callable[[dict[int, Proc], int], str]:
    """Role of a process below bin/run: the command of bin/run's child it descends from,
    the Celery worker's pool processes apart from its main process."""

    def role(snap: dict[int, Proc], pid: int) -> str:
        if pid == root:
            return "bin/run (supervisor, copying the logs)"
        top = pid
        while top in snap and snap[top].ppid != root:
            top = snap[top].ppid
        if top not in snap:
            return "other"
        if top not in _COMMANDS:
            _COMMANDS[top] = " ".join(cmdline(top))
        argv = _COMMANDS[top]
        if "smtpworker" in argv:
            return "SMTP worker"
        if "celery" in argv and " beat" in argv:
            return "Celery beat"
        if "celery" in argv and " worker" in argv:
            return "Celery worker, main" if pid == top else "Celery worker, pool"
        if "gunicorn" in argv:
            return "web (gunicorn)"
        return f"other ({snap[top].comm})"

    return role


def postfix_role(root: int) -> Callable[[dict[int, Proc], int], str]:
    """Role of a process of the Postfix tree: its program."""

    def role(snap: dict[int, Proc], pid: int) -> str:
        if pid == root:
            return "postfix-script (start-fg)"
        return snap[pid].comm if pid in snap else "?"

    return role


def postfix_reaped_role(root: int) -> Callable[[dict[int, Proc], int], str]:
    """Where reaped time goes: master's is its daemons that exited during the run (smtpd
    after 100 connections, idle ones after 100 s), which /proc cannot tell apart."""
    program = postfix_role(root)

    def role(snap: dict[int, Proc], pid: int) -> str:
        name = program(snap, pid)
        return "exited daemons (reaped by master)" if name == "master" else name

    return role


# --- the measurement ------------------------------------------------------------------------


@dataclass
class Side:
    """One system under test: where to send, how to tell it is done, what to measure."""

    name: str
    port: int
    roots: Callable[[], dict[str, list[int]]]  # CPU groups -> tree roots
    drained: Callable[[], bool]
    roles: Callable[[dict[int, Proc], dict[int, Proc]], dict[str, float]]  # deltas


@dataclass
class Run:
    rate: float
    accept_rate: float
    cpu: dict[str, float]  # CPU group -> seconds during the run
    roles: dict[str, float]  # finer: role -> seconds
    other_side: float  # cores the idle other system used
    sink_cpu: float
    gen_cpu: float
    foreign: float  # cores of other programs


@dataclass
class Cell:
    database: str
    size: int
    sessions: int
    per_connection: int
    count: int
    generator: str = ""
    product: list[Run] = field(default_factory=list)
    postfix: list[Run] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.size // KB} KB x {self.sessions}"


def total(run: Run) -> float:
    return sum(run.cpu.values())


def median(values: Iterator[float]) -> float:
    return float(statistics.median(values))


def medians(c: Cell, runs: list[Run]) -> tuple[float, float, float]:
    """(rate, accept rate, CPU ms per message) of these runs of a cell, medians."""
    return (
        median(r.rate for r in runs),
        median(r.accept_rate for r in runs),
        median(total(r) / c.count * 1000 for r in runs),
    )


class Bench:
    """Runs the pairs of a cell against one sink with one generator, and waits for quiet."""

    def __init__(
        self, sink: relay.SinkProcess, gen: Generator, exclude: list[int], quiet_budget: float
    ) -> None:
        self.sink = sink
        self.gen = gen
        self.exclude = exclude  # process trees that are ours though not our children
        self.quiet_budget = quiet_budget
        self.sent = 0  # messages accepted in all runs, warm-ups and repeated runs included

    def wait_quiet(self) -> None:
        while self.quiet_budget > 0:
            before = foreign_ticks(self.exclude)
            time.sleep(0.5)
            self.quiet_budget -= 0.5
            if foreign_cores(before, foreign_ticks(self.exclude), 0.5) < FOREIGN_LIMIT:
                return

    def one_run(
        self, side: Side, other: Side, size: int, sessions: int, per_conn: int, count: int
    ) -> Run:
        self.sink.reset()
        roots = side.roots()
        other_roots = [pid for pids in other.roots().values() for pid in pids]
        snap0 = snapshot()
        others0 = foreign_ticks(self.exclude)
        t0 = time.monotonic()
        self.gen.start(side.port, size, sessions, per_conn, count)
        arrived = self.sink.wait(count, RUN_TIMEOUT)
        sent = self.gen.result()
        if sent["failed"] or arrived["nth"] is None:
            raise RuntimeError(
                f"{side.name}, {size // KB} KB x {sessions}, {per_conn}/connection: "
                f"{sent['failed']} generator failures {sent['errors'][:2]}, "
                f"{arrived['count']} of {count} at the sink"
            )
        self.sent += count
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while not side.drained() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)  # the last outcome's bookkeeping after the sink's 250
        snap1 = snapshot()
        wall = time.monotonic() - t0
        busy = foreign_cores(others0, foreign_ticks(self.exclude), wall)
        cpu = {
            group: sum(cpu_seconds(snap1, r) - cpu_seconds(snap0, r) for r in pids)
            for group, pids in roots.items()
        }
        sink_cpu = sum(cpu_seconds(snap1, r) - cpu_seconds(snap0, r) for r in [self.sink.proc.pid])
        idle = sum(cpu_seconds(snap1, r) - cpu_seconds(snap0, r) for r in other_roots)
        span = arrived["nth"] - sent["first_mail"]
        return Run(
            rate=count / span,
            accept_rate=count / max(sent["last_ack"] - sent["first_mail"], 1e-9),
            cpu=cpu,
            roles=side.roles(snap0, snap1),
            other_side=idle / wall,
            sink_cpu=sink_cpu,
            gen_cpu=sent["cpu"],
            foreign=busy,
        )

    def measure(
        self, database: str, product: Side, postfix: Side, key: tuple[int, int, int],
        count: int, repeats: int, retries: int,
    ) -> Cell:  # fmt: skip
        size, sessions, per_conn = key
        tool = self.gen.tool_for(per_conn)
        cell = Cell(database, size, sessions, per_conn, count, Path(tool).name)
        warm = min(WARMUP[size], count)
        self.one_run(product, postfix, size, sessions, per_conn, warm)
        self.one_run(postfix, product, size, sessions, per_conn, warm)
        attempts = 0
        while len(cell.product) < repeats:
            attempts += 1
            self.wait_quiet()
            p = self.one_run(product, postfix, size, sessions, per_conn, count)
            f = self.one_run(postfix, product, size, sessions, per_conn, count)
            noisy = max(p.foreign, f.foreign)
            print(
                f"    {database}, {cell.label}, {per_conn}/conn: product {p.rate:6.0f} msg/s "
                f"({total(p) / count * 1000:.2f} ms CPU/msg), Postfix {f.rate:6.0f} msg/s "
                f"({total(f) / count * 1000:.2f} ms CPU/msg); generator "
                f"{(p.gen_cpu + f.gen_cpu) / 2 / count * 1000:.2f}, sink "
                f"{(p.sink_cpu + f.sink_cpu) / 2 / count * 1000:.2f} ms CPU/msg; other programs "
                f"{noisy:.2f} cores",
                file=sys.stderr,
            )
            if noisy > FOREIGN_LIMIT and attempts < repeats + retries:
                print("      (run again: other programs were busy)", file=sys.stderr)
                continue
            cell.product.append(p)
            cell.postfix.append(f)
        return cell


# --- the databases and the run --------------------------------------------------------------


@contextlib.contextmanager
def database(kind: str, work: Path) -> Iterator[tuple[str, str, int | None]]:
    """(DATABASE_URL, description, pid of a private postmaster or None)."""
    if kind == "sqlite":
        path = work / "product-sqlite" / "bench.sqlite3"
        yield f"sqlite:///{path}", "SQLite (WAL, synchronous=NORMAL)", None
        return
    from tests.proof.crashinfra import PrivatePostgres, postgres_unavailable

    if postgres_unavailable() is None:
        pg = PrivatePostgres()
        try:
            pg.create()
            yield (
                pg.url(),
                f"PostgreSQL, a private cluster ({pg.bindir.parent.name}, initdb defaults, "
                f"fsync on) in {pg.root}",
                pg.pid,
            )
        finally:
            pg.close()
        return
    given = os.environ.get("DATABASE_URL", "")
    if not given.startswith(("postgres://", "postgresql://")):
        raise RuntimeError(f"no PostgreSQL: {postgres_unavailable()}, and DATABASE_URL names none")
    with relay.bench_database(work) as (url, description):
        yield url, f"{description} on DATABASE_URL's server (its CPU not attributed)", None


def parse_cells(spec: str) -> dict[tuple[int, int, int], int]:
    """``1x10x1,1x50x10:900``: KB x sessions x messages per connection [: messages]."""
    cells = {}
    for part in spec.split(","):
        shape, _, messages = part.partition(":")
        kb, sessions, per_conn = (int(x) for x in shape.split("x"))
        key = (kb * KB, sessions, per_conn)
        cells[key] = int(messages) if messages else CELLS.get(key, 1000)
        WARMUP.setdefault(key[0], min(200, cells[key] // 4))
    return cells


def generator_note(gen: Generator, cells: list[Cell]) -> str:
    used = sorted({c.per_connection for c in cells})
    parts = []
    for per_conn in used:
        tool = gen.tool_for(per_conn)
        name = "Python epoll generator (relay.py)" if tool == "python" else "smtp-source"
        if tool != "python" and per_conn > 1:
            name += " (one process per connection)"
        parts.append(f"{name} at {per_conn} message(s) per connection")
    return "generator: " + ", ".join(parts)


def fmt(value: float, digits: int = 2) -> str:
    return f"{value:.{digits}f}"


def table(cells: list[Cell]) -> str:
    head = (
        "| database | cell | msgs/conn | product msg/s | Postfix msg/s | product/Postfix "
        "| product accept msg/s | Postfix accept msg/s | accept ratio "
        "| product CPU ms/msg | Postfix CPU ms/msg | CPU ratio | runs (product; Postfix) "
        "| other programs, cores | other side idle, cores |"
    )
    rows = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for c in cells:
        p, f = c.product, c.postfix
        (rate, acc, cpu), (pf_rate, pf_acc, pf_cpu) = medians(c, p), medians(c, f)
        runs = ", ".join(f"{r.rate:.0f}" for r in p) + "; " + ", ".join(f"{r.rate:.0f}" for r in f)
        foreign = max(r.foreign for r in p + f)
        idle = max(r.other_side for r in p + f)
        mark = "*" if foreign > FOREIGN_LIMIT else ""
        rows.append(
            f"| {c.database} | {c.label} | {c.per_connection} | {rate:,.0f}{mark} "
            f"| {pf_rate:,.0f}{mark} | {fmt(rate / pf_rate)} | {acc:,.0f} | {pf_acc:,.0f} "
            f"| {fmt(acc / pf_acc)} | {fmt(cpu)} | {fmt(pf_cpu)} | {fmt(cpu / pf_cpu)} "
            f"| {runs} | {fmt(foreign)} | {fmt(idle, 3)} |"
        )
    return "\n".join(rows)


def breakdown(cells: list[Cell], side: str) -> str:
    """ms of CPU per message by role, median run of each cell."""
    names: list[str] = []
    for c in cells:
        for r in getattr(c, side):
            names += [n for n in r.roles if n not in names]
    head = "| role | " + " | ".join(f"{c.database} {c.label} x{c.per_connection}" for c in cells)
    rows = [head + " |", "|" + "---|" * (len(cells) + 1)]
    for name in sorted(names):
        values = [
            median(r.roles.get(name, 0.0) / c.count * 1000 for r in getattr(c, side)) for c in cells
        ]
        if any(v >= 0.005 for v in values):
            rows.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in values) + " |")
    return "\n".join(rows)


def summary(cells: list[Cell], facts: dict[str, str], quick: bool) -> dict[str, Any]:
    rows = []
    for c in cells:
        p, f = c.product, c.postfix
        (rate, acc, cpu), (pf_rate, pf_acc, pf_cpu) = medians(c, p), medians(c, f)
        rows.append(
            {
                "database": c.database,
                "size_kb": c.size // KB,
                "sessions": c.sessions,
                "per_connection": c.per_connection,
                "generator": c.generator,
                "messages": c.count,
                "runs": len(p),
                "rate": round(rate, 1),
                "postfix_rate": round(pf_rate, 1),
                "per_postfix": round(rate / pf_rate, 3),
                "accept_rate": round(acc, 1),
                "postfix_accept_rate": round(pf_acc, 1),
                "accept_per_postfix": round(acc / pf_acc, 3),
                "cpu_ms": round(cpu, 3),
                "postfix_cpu_ms": round(pf_cpu, 3),
                "other_programs_cores": round(max(r.foreign for r in p + f), 3),
            }
        )
    return {"benchmark": "sidebyside", "quick": quick, "machine": facts, "cells": rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generator", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--smtp-sink", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="two small cells, one pair each")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")
    parser.add_argument(
        "--cells", help="KBxSESSIONSxPER_CONNECTION[:MESSAGES],... e.g. 1x10x1,1x50x10:900"
    )
    parser.add_argument(
        "--databases", default="sqlite,postgresql", help="sqlite, postgresql or both (default)"
    )
    parser.add_argument(
        "--repeats", type=int, default=0, help=f"pairs per cell (default {REPEATS})"
    )
    parser.add_argument(
        "--load-generator",
        choices=("auto", "smtp-source", "python"),
        default="auto",
        help="smtp-source when installed (auto), or the Python one",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=Path(tempfile.gettempdir()),
        help="where the run's temporary directory goes (removed at the end); Postfix's "
        "mail_owner must be able to reach it, so not under a root-only directory",
    )
    args = parser.parse_args()
    if args.generator:
        return generator_main()
    if args.smtp_sink:
        return smtp_sink_main(args.smtp_sink)

    why = postfix_unavailable()
    if why is not None:
        # Not a failure: the comparison needs Postfix, and this script installs nothing.
        print(f"sidebyside: not run: {why}", file=sys.stderr)
        if args.json:
            args.json.write_text(json.dumps({"benchmark": "sidebyside", "skipped": why}))
        return 0
    cells_wanted = QUICK_CELLS if args.quick else CELLS
    if args.quick:
        WARMUP.update({1 * KB: 50, 100 * KB: 20})
    if args.cells:
        cells_wanted = parse_cells(args.cells)
    repeats = args.repeats or (1 if args.quick else REPEATS)
    retries = 0 if args.quick else RETRIES
    quiet_budget = 5.0 if args.quick else QUIET_BUDGET
    databases = [d.strip() for d in args.databases.split(",") if d.strip()]
    source = shutil.which("smtp-source") or (
        "/usr/sbin/smtp-source" if os.path.exists("/usr/sbin/smtp-source") else None
    )
    if args.load_generator == "smtp-source" and source is None:
        parser.error("smtp-source is not installed")
    sink_tool = shutil.which("smtp-sink") or (
        "/usr/sbin/smtp-sink" if os.path.exists("/usr/sbin/smtp-sink") else None
    )

    started = time.monotonic()
    facts = accept.machine_facts()
    facts["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    facts["load_average"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    facts["host"] = platform.node()
    base = args.work_dir.resolve()
    work = Path(tempfile.mkdtemp(prefix="sidebyside-", dir=base))
    work.chmod(0o711)  # Postfix's mail_owner must reach its queue inside
    fs_kind, fs_device = accept.filesystem_of(work)
    cells: list[Cell] = []
    notes: list[str] = []
    benches: list[Bench] = []
    stack = contextlib.ExitStack()
    # A SIGTERM unwinds like an exception, so every finally and callback below runs.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    import atexit

    atexit.register(stack.close)
    try:
        with stack:
            from devredis import _start_private, _stop

            if sink_tool:
                os.environ["PATH"] = f"{os.environ.get('PATH', '')}:{Path(sink_tool).parent}"
                sink: relay.SinkProcess = SmtpSink(work)
            else:
                sink = relay.SinkProcess(work)
            stack.callback(sink.stop)
            gen = Generator(args.load_generator, source)
            stack.callback(gen.stop)
            postfix = PrivatePostfix(work / "postfix", sink.port)
            stack.callback(postfix.stop)
            postfix.start()
            print(
                f"  Postfix {postfix.version()} on 127.0.0.1:{postfix.port} (master pid "
                f"{postfix.master}), sink on 127.0.0.1:{sink.port}",
                file=sys.stderr,
            )
            postfix_side = Side(
                "Postfix",
                postfix.port,
                roots=lambda: {"Postfix": postfix.pids()},
                drained=lambda: postfix.queued() == 0,
                roles=lambda s0, s1: role_deltas(
                    s0,
                    s1,
                    postfix.pids()[0],
                    postfix_role(postfix.pids()[0]),
                    postfix_reaped_role(postfix.pids()[0]),
                ),
            )
            for kind in databases:
                with contextlib.ExitStack() as db_stack:
                    db_url, db_label, postmaster = db_stack.enter_context(database(kind, work))
                    redis_proc, redis_url = _start_private(work / f"redis-{kind}")
                    db_stack.callback(_stop, redis_proc)
                    product = MakeRun(work / f"product-{kind}", db_url, redis_url, sink.port)
                    t = time.monotonic()
                    product.prepare()
                    db_stack.callback(product.stop)
                    product.start()
                    product.remember_children()
                    print(
                        f"  {db_label}: bin/run up in {time.monotonic() - t:.0f} s, SMTP on "
                        f"127.0.0.1:{product.port}",
                        file=sys.stderr,
                    )
                    notes.append(f"{kind}: {db_label}")

                    def product_roots(
                        product: MakeRun = product, redis_pid: int = redis_proc.pid,
                        postmaster: int | None = postmaster,
                    ) -> dict[str, list[int]]:  # fmt: skip
                        roots = {"bin/run": product.pids(), "Redis": [redis_pid]}
                        if postmaster is not None:
                            roots["PostgreSQL"] = [postmaster]
                        return roots

                    def roles(
                        snap0: dict[int, Proc], snap1: dict[int, Proc],
                        roots: Callable[[], dict[str, list[int]]] = product_roots,
                        product: MakeRun = product,
                    ) -> dict[str, float]:  # fmt: skip
                        root = product.pids()[0]
                        found = role_deltas(snap0, snap1, root, product_role(root))
                        for name, pids in roots().items():
                            if name != "bin/run":
                                found[name] = sum(
                                    cpu_seconds(snap1, p) - cpu_seconds(snap0, p) for p in pids
                                )
                        return found

                    product_side = Side(
                        "product",
                        product.port,
                        roots=product_roots,
                        drained=lambda product=product: product.backlog() == 0,
                        roles=roles,
                    )
                    bench = Bench(sink, gen, [postmaster] if postmaster else [], quiet_budget)
                    benches.append(bench)
                    for key, count in cells_wanted.items():
                        cells.append(
                            bench.measure(
                                kind, product_side, postfix_side, key, count, repeats, retries
                            )
                        )
                    product.remember_children()
            sink_total = sink.total()
    finally:
        atexit.unregister(stack.close)
        shutil.rmtree(work, ignore_errors=True)
    elapsed = time.monotonic() - started
    sent = sum(b.sent for b in benches)

    print(
        "Side by side: the product as `make run` starts it and a private Postfix, each relaying "
        "from loopback to the same sink; end to end = from the generator's start (smtp-source) "
        "or first MAIL FROM (Python generator) to the N-th message at the sink; medians of "
        f"{repeats} interleaved pair(s) per cell (product, Postfix, product, Postfix...)."
    )
    print(
        f"Date: {facts['date']}. Machine: {facts['host']}, {facts['cpus']} CPUs, {facts['cpu']}; "
        f"Linux {facts['kernel']}; Python {facts['python']}; load average at the start "
        f"{facts['load_average']}."
    )
    print(
        f"Postfix {postfix.version()} (Debian package defaults, private instance); "
        f"{generator_note(gen, cells)}; sink: "
        f"{'smtp-sink' if sink_tool else 'Python sink (relay.py)'}; disk: {fs_kind}"
        f"{accept.journal_of(fs_kind, fs_device)} ({fs_device}), both queues on it."
    )
    for note in notes:
        print(f"Database {note}.")
    print()
    print(table(cells))
    print()
    print(
        "Product CPU by role, ms per message (median of the runs; Redis and PostgreSQL included):"
    )
    print()
    print(breakdown(cells, "product"))
    print()
    print("Postfix CPU by program, ms per message (median of the runs):")
    print()
    print(breakdown(cells, "postfix"))
    print()
    gen_ms = statistics.median(
        r.gen_cpu / c.count * 1000 for c in cells for r in c.product + c.postfix
    )
    sink_ms = statistics.median(
        r.sink_cpu / c.count * 1000 for c in cells for r in c.product + c.postfix
    )
    print(
        f"Not in either total: generator {gen_ms:.2f} ms CPU/msg, sink {sink_ms:.2f} ms CPU/msg "
        f"(medians). Other programs: pairs during which they used more than {FOREIGN_LIMIT} "
        f"cores were run again (up to {retries} times per cell); * marks a cell that kept one. "
        "'other side idle' is what the system not under test used meanwhile."
    )
    print(
        f"Check: the sink received {sink_total} messages; the generator sent {sent}"
        + (" (duplicates!)" if sink_total > sent else "")
        + f". Benchmark time: {elapsed:.0f} s."
    )
    if args.json:
        args.json.write_text(json.dumps(summary(cells, facts, args.quick), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
