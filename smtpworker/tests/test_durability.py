"""kill -9 under load: every message that got its 250 is in the spool afterwards.

The worker runs as a real process (`python -m smtpworker`) configured through a real
Redis; several client threads send mail as fast as they can and record each queue id the
server acknowledged; the worker is killed with SIGKILL mid-stream, three times.
"""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis

from smtpworker.core import contract
from smtpworker.core.config import dump_site
from smtpworker.core.spool import Spool
from smtpworker.tests.factories import free_port, published, server, site

ROOT = Path(__file__).resolve().parents[2]


def start_worker(redis_url: str, data: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "smtpworker",
            "--node",
            "durable",
            "--redis",
            redis_url,
            "--data-dir",
            str(data),
            "--mailroot",
            str(data / "mailroot"),
            "--log-level",
            "WARNING",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def wait_listening(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                if sock.recv(3) == b"220":
                    return
        except OSError:
            pass
        time.sleep(0.05)
    pytest.fail("worker did not start listening")


def sender(port: int, acked: list[tuple[str, bytes]], stop: threading.Event, tag: str) -> None:
    count = 0
    while not stop.is_set():
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=5) as client:
                client.ehlo("load.test")
                while not stop.is_set():
                    count += 1
                    marker = f"{tag}-{count}".encode()
                    body = b"Subject: " + marker + b"\r\n\r\n" + (b"x" * 78 + b"\r\n") * 25
                    client.mail("load@sender.test")
                    client.rcpt("sink@test.test")
                    code, reply = client.data(body)
                    if code == 250:
                        acked.append((reply.decode().rsplit(" ", 1)[-1], marker))
        except (OSError, smtplib.SMTPException):
            time.sleep(0.01)  # the worker is down or restarting; try again


def test_no_acknowledged_message_is_lost_to_kill_9(redis_url: str, tmp_path: Path) -> None:
    port = free_port()
    cfg = server("Test", f"127.0.0.1:{port}", messages={"max_messages_per_connection": None})
    redis.Redis.from_url(redis_url).set(contract.CONFIG_BODY_KEY, published(dump_site(site(cfg))))
    acked: list[tuple[str, bytes]] = []
    stop = threading.Event()
    threads = [threading.Thread(target=sender, args=(port, acked, stop, f"t{i}")) for i in range(6)]
    worker = start_worker(redis_url, tmp_path)
    try:
        wait_listening(port)
        for thread in threads:
            thread.start()
        for _round in range(3):
            target = len(acked) + 60
            deadline = time.monotonic() + 20
            while len(acked) < target and time.monotonic() < deadline:
                time.sleep(0.005)
            os.kill(worker.pid, signal.SIGKILL)  # only the process this test started
            worker.wait(10)
            worker = start_worker(redis_url, tmp_path)
            wait_listening(port)
    finally:
        stop.set()
        for thread in threads:
            thread.join(15)
        worker.send_signal(signal.SIGTERM)
        worker.wait(15)
    spool = Spool(tmp_path / "mailroot" / "Test" / "Queue")
    assert len(acked) >= 180
    for queue_id, marker in acked:
        envelope, data = spool.load(queue_id)
        assert envelope.recipients == ("sink@test.test",)
        assert b"Subject: " + marker + b"\r\n" in data
    assert len(spool.ids()) >= len(acked)
