"""End to end: configuration through the API, enforced by a real SMTP worker process.

The worker runs as `python -m smtpworker` against the test Redis (its own database number,
so a developer's running worker is not disturbed), and the tests speak SMTP to it over
loopback addresses, as the typical site's three servers.
"""

from __future__ import annotations

import json
import os
import signal
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from rest_framework.test import APIClient

from mailadmin.celery import app as celery_app
from mailadmin.models import ConfigSnapshot
from mailadmin.tests.stack import until
from smtpworker.core import contract
from smtpworker.tests.factories import free_port

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parents[2]


class Worker:
    def __init__(self, redis_url: str, data_dir: Path, node: str) -> None:
        self.redis_url, self.data_dir, self.node = redis_url, data_dir, node
        self.proc: subprocess.Popen[bytes] | None = None
        self.log: Any = None

    def start(self) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.log = open(self.data_dir / f"{self.node}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "smtpworker",
                "--node",
                self.node,
                "--redis",
                self.redis_url,
                "--broker",
                str(celery_app.conf.broker_url),
                "--data-dir",
                str(self.data_dir),
                "--mailroot",
                str(self.data_dir / "mailroot"),
                "--poll",
                "0.5",
                "--grace",
                "2",
            ],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def status(self) -> dict[str, Any] | None:
        client = redis.Redis.from_url(self.redis_url)
        body = client.get(contract.worker_key(self.node))
        client.close()
        return json.loads(body) if body else None

    def wait_applied(self, version: int, timeout: float = 15.0) -> dict[str, Any]:
        def applied() -> dict[str, Any] | None:
            status = self.status()
            return (
                status
                if status and status["applied_version"] >= version and not status.get("stopped")
                else None
            )

        return dict(until(applied, timeout))

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(15)
        if self.log is not None:
            self.log.close()


@pytest.fixture
def worker(site: dict[str, tuple[str, int]], test_redis: str, tmp_path: Path) -> Iterator[Worker]:
    """A worker process, started once the typical site is put, running its latest version."""
    node = Worker(test_redis, tmp_path, f"e2e{os.getpid()}")
    try:
        node.start()
        node.wait_applied(latest())
        yield node
    finally:
        node.stop()


@pytest.fixture
def site(
    api: APIClient,
    typical_site: dict[str, Any],
    test_redis: str,
    django_capture_on_commit_callbacks: Any,
) -> dict[str, tuple[str, int]]:
    addresses = {}
    for server, host in zip(
        typical_site["servers"], ("127.0.0.2", "127.0.0.3", "127.0.0.4"), strict=True
    ):
        port = free_port(host)
        server["bindings"] = [f"{host}:{port}"]
        addresses[server["name"]] = (host, port)
    with django_capture_on_commit_callbacks(execute=True):
        response = api.put("/api/v1/config/", typical_site, format="json")
    assert response.status_code == 200, response.content
    return addresses


def latest() -> int:
    return ConfigSnapshot.objects.latest().pk


def server_named(api: APIClient, name: str) -> int:
    """The id of the server called ``name``, as the API lists it."""
    return next(s["id"] for s in api.get("/api/v1/servers/").json()["results"] if s["name"] == name)


def smtp(address: tuple[str, int], source: str = "127.0.0.1") -> smtplib.SMTP:
    client = smtplib.SMTP(timeout=10, source_address=(source, 0))
    client.connect(*address)
    client.ehlo("client.test")
    return client


def test_the_typical_site_holds_its_policy(
    api: APIClient, site: dict[str, tuple[str, int]], worker: Worker
) -> None:
    servers = {s["name"]: s for s in api.get("/api/v1/servers/").json()["results"]}
    assert {name: s["runtime"]["status"] for name, s in servers.items()} == {
        "CorpServer": "listening",
        "InternalRelay": "listening",
        "InternetRelay": "listening",
    }
    with smtp(site["CorpServer"]) as corp:  # relays only after AUTH
        assert corp.mail("a@corp.test") == (530, b"5.7.0 Authentication required")
        corp.login("alice", "change-me-alice")
        assert corp.mail("alice@corp.test")[0] == 250
        assert corp.rcpt("someone@internet.test")[0] == 250
    with smtp(site["InternetRelay"]) as internet:  # its own domains only
        internet.mail("sender@internet.test")
        assert internet.rcpt("user@example.com")[0] == 250
        assert internet.rcpt("user@elsewhere.test")[0] == 550
    with smtp(site["InternalRelay"], source="127.0.0.5") as listed:  # listed machines relay
        listed.mail("app@corp.test")
        assert listed.rcpt("user@elsewhere.test")[0] == 250
    with smtp(site["InternalRelay"], source="127.0.0.6") as unlisted:
        unlisted.mail("app@corp.test")
        assert unlisted.rcpt("user@elsewhere.test")[0] == 550


def test_a_change_reaches_new_sessions_within_a_second(
    api: APIClient,
    site: dict[str, tuple[str, int]],
    worker: Worker,
    django_capture_on_commit_callbacks: Any,
) -> None:
    server_id = server_named(api, "InternetRelay")
    old = smtp(site["InternetRelay"])
    with django_capture_on_commit_callbacks(execute=True):
        response = api.patch(
            f"/api/v1/servers/{server_id}/", {"relay": {"list": ["127.0.0.1"]}}, format="json"
        )
    assert response.status_code == 200
    changed = time.monotonic()

    def relays_now() -> bool:
        with smtp(site["InternetRelay"]) as new:
            new.mail("a@b.test")
            return new.rcpt("user@elsewhere.test")[0] == 250

    until(relays_now, timeout=5, interval=0.02)
    assert time.monotonic() - changed < 1.0
    old.mail("a@b.test")  # the session opened before keeps its verdict
    assert old.rcpt("user@elsewhere.test")[0] == 550
    old.quit()


def test_pause_stop_and_start_from_the_api(
    api: APIClient,
    site: dict[str, tuple[str, int]],
    worker: Worker,
    django_capture_on_commit_callbacks: Any,
) -> None:
    server_id = server_named(api, "CorpServer")
    address = site["CorpServer"]
    open_session = smtp(address)
    with django_capture_on_commit_callbacks(execute=True):
        assert api.post(f"/api/v1/servers/{server_id}/pause/").status_code == 200

    def greeting() -> bytes:
        try:
            with socket.create_connection(address, timeout=2) as sock:
                return sock.recv(100)
        except OSError:
            return b"refused"

    until(lambda: greeting().startswith(b"421 "), timeout=2)
    assert open_session.noop()[0] == 250  # the open session goes on
    open_session.quit()
    with django_capture_on_commit_callbacks(execute=True):
        api.post(f"/api/v1/servers/{server_id}/stop/")
    until(lambda: greeting() == b"refused", timeout=2)
    with django_capture_on_commit_callbacks(execute=True):
        api.post(f"/api/v1/servers/{server_id}/start/")
    until(lambda: greeting().startswith(b"220 "), timeout=2)


def test_a_failed_bind_shows_as_that_servers_error(
    api: APIClient,
    site: dict[str, tuple[str, int]],
    worker: Worker,
    django_capture_on_commit_callbacks: Any,
) -> None:
    blocker = socket.socket()
    blocker.bind(("127.0.0.3", 0))
    blocker.listen()
    taken = blocker.getsockname()[1]
    server_id = server_named(api, "InternetRelay")
    with django_capture_on_commit_callbacks(execute=True):
        api.patch(
            f"/api/v1/servers/{server_id}/", {"bindings": [f"127.0.0.3:{taken}"]}, format="json"
        )
    worker.wait_applied(latest())
    servers = {s["name"]: s["runtime"] for s in api.get("/api/v1/servers/").json()["results"]}
    assert servers["InternetRelay"]["status"] == "error"
    assert "already in use" in servers["InternetRelay"]["error"]
    assert servers["CorpServer"]["status"] == "listening"
    with smtp(site["CorpServer"]) as corp:
        assert corp.noop()[0] == 250
    blocker.close()


def test_sessions_are_listed_and_terminated(
    api: APIClient, site: dict[str, tuple[str, int]], worker: Worker, operator_api: APIClient
) -> None:
    client = smtp(site["InternetRelay"])

    def listed() -> list[dict[str, Any]]:
        sessions = api.get("/api/v1/sessions/?server=InternetRelay").json()
        return [s for s in sessions if s["helo"] == "client.test"]

    (session,) = until(listed, timeout=6, interval=0.2)
    assert session["client_ip"] == "127.0.0.1" and session["node"] == worker.node
    assert operator_api.post(f"/api/v1/sessions/{session['id']}/terminate/").status_code == 403
    response = api.post(f"/api/v1/sessions/{session['id']}/terminate/")
    assert response.json() == {"terminated": True}
    with pytest.raises(smtplib.SMTPServerDisconnected):
        client.noop()
    workers = api.get("/api/v1/workers/").json()
    mine = next(w for w in workers if w["node"] == worker.node)
    assert mine["applied_version"] == latest() and not mine["behind"] and not mine["stale"]
    worker.stop()
    assert next(w for w in api.get("/api/v1/workers/").json() if w["node"] == worker.node)["stale"]


def test_a_worker_restarted_without_redis_runs_its_last_good_config(
    site: dict[str, tuple[str, int]], worker: Worker, test_redis: str
) -> None:
    worker.stop()
    redis.Redis.from_url(test_redis).flushdb()  # Redis lost everything
    worker.start()
    until(lambda: (worker.status() or {}).get("applied_version") == latest(), timeout=10)
    with smtp(site["InternetRelay"]) as internet:
        internet.mail("a@b.test")
        assert internet.rcpt("user@example.com")[0] == 250
