"""--processes N: several worker processes share each listener and report one by one."""

from __future__ import annotations

import json
import os
import signal
import smtplib
import subprocess
import sys
import time
from pathlib import Path

import redis

from smtpworker.core import contract
from smtpworker.core.config import dump_site
from smtpworker.tests.factories import free_port, published, server, site

ROOT = Path(__file__).resolve().parents[2]


def statuses(client: redis.Redis) -> dict[str, dict[str, object]]:
    found = {}
    for key in client.scan_iter(contract.worker_key("multi*")):
        body = client.get(key)
        if body:
            status = json.loads(body)
            found[str(status["node"])] = status
    return found


def test_two_processes_share_the_port_and_stop_together(redis_url: str, tmp_path: Path) -> None:
    port = free_port()
    cfg = server("Test", f"127.0.0.1:{port}", messages={"max_messages_per_connection": None})
    client = redis.Redis.from_url(redis_url)
    client.set(contract.CONFIG_BODY_KEY, published(dump_site(site(cfg))))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "smtpworker",
            "--node",
            "multi",
            "--processes",
            "2",
            "--redis",
            redis_url,
            "--data-dir",
            str(tmp_path),
            "--mailroot",
            str(tmp_path / "mailroot"),
            "--grace",
            "1",
            "--log-level",
            "WARNING",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 20
        while set(statuses(client)) != {"multi.0", "multi.1"} or not all(
            s["servers"] for s in statuses(client).values()
        ):
            assert time.monotonic() < deadline, statuses(client)
            time.sleep(0.1)
        for i in range(30):
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
                smtp.ehlo("client.test")
                smtp.mail("a@sender.test")
                smtp.rcpt("b@test.test")
                assert smtp.data(f"Subject: {i}\r\n\r\nx\r\n".encode())[0] == 250
        deadline = time.monotonic() + 10
        while True:  # the reports say who accepted what (they refresh every 2 s)
            counts = {
                n: s["servers"]["Test"]["counters"].get("accepted", 0)  # type: ignore[index]
                for n, s in statuses(client).items()
            }
            if sum(counts.values()) == 30 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert sum(counts.values()) == 30
        assert all(s["servers"]["Test"]["listening"] for s in statuses(client).values())  # type: ignore[index]
    finally:
        os.kill(proc.pid, signal.SIGTERM)  # the parent forwards it to its children
        assert proc.wait(20) == 0
        client.close()
    assert session_members(proc.pid) == []  # nothing the worker started is left running


def session_members(sid: int) -> list[int]:
    """PIDs still in the session the test started the worker in (/proc/<pid>/stat)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":  # field 6 of stat is the session
            members.append(int(stat.parent.name))
    return members
