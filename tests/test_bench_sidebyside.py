"""bench/sidebyside.py's parts that need no timing: the private Postfix stays private (its
configuration names no port 25 and no path outside its directory, it writes nothing
elsewhere, and stopping it leaves no process), CPU of a process tree includes the
children that exited, and the Python generator's sessions carry N messages each.

The Postfix cases run Postfix for real when it is installed (a start, three messages
and a stop take a few seconds) and are skipped otherwise.
"""

from __future__ import annotations

import os
import shutil
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "bin")]

import relay  # noqa: E402 - bench/relay.py
import sidebyside  # noqa: E402 - bench/sidebyside.py

from smtpworker.tests.sink import Sink  # noqa: E402

SYSTEM_POSTFIX = (Path("/etc/postfix"), Path("/var/spool/postfix"), Path("/var/lib/postfix"))
needs_postfix = pytest.mark.skipif(
    sidebyside.postfix_unavailable() is not None,
    reason=str(sidebyside.postfix_unavailable()),
)


def settings(text: str) -> dict[str, str]:
    """``name = value`` lines as a dict."""
    found = {}
    for line in text.splitlines():
        name, _, value = line.partition("=")
        found[name.strip()] = value.strip()
    return found


@pytest.fixture
def root() -> Iterator[Path]:
    """A directory Postfix's mail_owner can reach (pytest's tmp_path has root-only parents)."""
    path = Path(tempfile.mkdtemp(prefix="sidebyside-test-"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_postfix_configuration_names_only_its_port_and_its_directory(root: Path) -> None:
    postfix = sidebyside.PrivatePostfix(root / "postfix", sink_port=2600, port=2601)
    main = settings(postfix.main_cf())
    services = [line.split() for line in postfix.master_cf().splitlines() if line.strip()]

    inet = [s for s in services if s[1] == "inet"]
    assert inet == [["2601", "inet", "n", "-", "n", "-", "-", "smtpd"]]
    assert not any(s[0] in ("smtp", "25", "submission", "465", "587") and s[1] == "inet"
                   for s in services)  # fmt: skip
    assert not any(s[-1] in ("local", "virtual", "pipe", "lmtp") for s in services)
    assert main["inet_interfaces"] == "127.0.0.1"
    assert main["relayhost"] == "[127.0.0.1]:2600"
    assert main["mynetworks"] == "127.0.0.0/8"
    assert main["mydestination"] == ""
    assert main["local_transport"].startswith("error:")
    for name in ("config_directory", "queue_directory", "data_directory", "maillog_file"):
        assert Path(main[name]).is_relative_to(postfix.root), name
    assert main["maillog_file_prefixes"] == str(postfix.root)
    assert "25" not in " ".join(main.values()).replace("[127.0.0.1]:2600", "").split(":")


@needs_postfix
def test_postfix_reads_the_configuration_as_written(root: Path) -> None:
    """postconf, reading our config_directory, sees what main_cf() meant."""
    postfix = sidebyside.PrivatePostfix(root / "postfix", sink_port=2600, port=2601)
    postfix.write_config()
    done = subprocess.run(
        ["/usr/sbin/postconf", "-c", str(postfix.config), "-n"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    effective = settings(done.stdout)
    assert effective["queue_directory"] == str(postfix.queue)
    assert effective["maillog_file"] == str(postfix.log)
    assert effective["inet_interfaces"] == "127.0.0.1"
    listed = subprocess.run(
        ["/usr/sbin/postconf", "-c", str(postfix.config), "-M"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert [line.split()[0] for line in listed.splitlines() if " inet " in line] == ["2601"]


def system_postfix_state() -> dict[str, tuple[int, int]]:
    """Every file of the system's Postfix directories: (size, mtime_ns)."""
    state = {}
    for top in SYSTEM_POSTFIX:
        for directory, _dirs, files in os.walk(top):
            for name in [".", *files]:
                path = os.path.join(directory, name)
                stat = os.lstat(path)
                state[path] = (stat.st_size, stat.st_mtime_ns)
    return state


def port_25_answers() -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", 25)) == 0


@needs_postfix
def test_private_postfix_relays_to_the_sink_and_stops_without_a_trace(root: Path) -> None:
    system_before = system_postfix_state()
    port_25_before = port_25_answers()
    sink = sidebyside.SmtpSink(root)
    postfix = sidebyside.PrivatePostfix(root / "postfix", sink.port)
    try:
        postfix.start()
        master = postfix.master
        assert master is not None and postfix.processes()
        with smtplib.SMTP("127.0.0.1", postfix.port, timeout=10) as client:
            for i in range(3):
                client.sendmail(relay.SENDER, [relay.RECIPIENT], f"Subject: {i}\r\n\r\nhi\r\n")
        arrived = sink.wait(3, 30)
        assert arrived["count"] == 3
        deadline = time.monotonic() + 10
        while postfix.queued() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert postfix.queued() == 0
        assert "status=sent" in postfix.log.read_text()
    finally:
        postfix.stop()
        sink.stop()
    assert postfix.proc is not None and postfix.proc.poll() is not None
    assert postfix.processes() == []
    assert not Path(f"/proc/{master}").exists()
    assert system_postfix_state() == system_before
    assert port_25_answers() == port_25_before
    written = {p.relative_to(root).parts[0] for p in root.iterdir()}
    assert written <= {"postfix", "sink.log"}


def test_cpu_of_a_tree_includes_children_that_exited() -> None:
    """A child that burns CPU and is reaped by its parent still counts in the parent's tree."""
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n"
    parent = subprocess.Popen(
        [sys.executable, "-c",
         f"import subprocess, sys, time\nsubprocess.run([sys.executable, '-c', {burn!r}])\n"
         "print('done', flush=True)\ntime.sleep(30)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        before = sidebyside.cpu_seconds(sidebyside.snapshot(), parent.pid)
        assert parent.stdout is not None and parent.stdout.readline() == "done\n"
        snap = sidebyside.snapshot()
        assert sidebyside.descendants(snap, parent.pid) == [parent.pid]  # the child is gone
        assert sidebyside.cpu_seconds(snap, parent.pid) - before >= 0.28
    finally:
        parent.kill()
        parent.wait()
        parent.stdout.close()


def test_python_generator_closes_each_session_after_its_messages() -> None:
    with Sink() as sink:
        # Two sessions for 25 messages: without the limit each would carry 12 or 13.
        result = relay.generate([sink.port], 1024, 2, 25, per_connection=10)
        messages = sink.wait_for(25)
    assert result["done"] == 25 and result["failed"] == 0
    per_connection = Counter(m.peer[1] for m in messages)  # one client port per connection
    assert max(per_connection.values()) == 10
    assert sum(per_connection.values()) == 25 and len(per_connection) >= 3


def test_roles_split_a_run_without_negative_shares_when_a_daemon_exits() -> None:
    """An smtpd that had 0.5 s before the run, used 0.3 s more and exited (reaped by
    master) counts 0.3 s as exited; a new smtpd counts its own 0.2 s; the sum is the tree's."""
    proc = sidebyside.Proc
    before = {
        1: proc(1, 0, "sh", 0.1, 0.0),
        2: proc(2, 1, "master", 1.0, 0.0),
        3: proc(3, 2, "smtpd", 0.5, 0.0),
    }
    after = {
        1: proc(1, 0, "sh", 0.1, 0.0),
        2: proc(2, 1, "master", 1.2, 0.8),
        4: proc(4, 2, "smtpd", 0.2, 0.0),
    }
    roles = sidebyside.role_deltas(
        before, after, 1, sidebyside.postfix_role(1), sidebyside.postfix_reaped_role(1)
    )
    assert roles == pytest.approx(
        {"master": 0.2, "exited daemons (reaped by master)": 0.3, "smtpd": 0.2}
    )
    total = sidebyside.cpu_seconds(after, 1) - sidebyside.cpu_seconds(before, 1)
    assert sum(roles.values()) == pytest.approx(total)
