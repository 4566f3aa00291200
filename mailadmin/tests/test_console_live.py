"""The live parts: the state feed, Start/Stop/Pause, Current Sessions, the Dashboard."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
import trustme
from django.test import Client

from mailadmin import configdoc
from mailadmin.models import VirtualServer
from mailadmin.services.config import control
from mailadmin.services.config.servers import server_update
from mailadmin.services.config.versions import current_version
from smtpworker.core import contract
from smtpworker.core.grammar import Binding

pytestmark = pytest.mark.django_db


@pytest.fixture
def workers(settings: Any) -> Iterator[redis.Redis]:
    settings.REDIS_URL = settings.REDIS_URL.rsplit("/", 1)[0] + "/12"
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def site(typical_site: dict[str, Any], workers: redis.Redis) -> dict[str, VirtualServer]:
    configdoc.document_import(typical_site, author="test")
    return {s.name: s for s in VirtualServer.objects.all()}


def report(workers: redis.Redis, node: str, **fields: Any) -> None:
    body = {
        "node": node,
        "applied_version": current_version(),
        "heartbeat": time.time(),
        "servers": {},
        "sessions": [],
        **fields,
    }
    workers.set(contract.worker_key(node), json.dumps(body))


def test_it_feeds_every_servers_state(
    admin_client: Client, site: dict[str, VirtualServer], workers: redis.Redis
) -> None:
    report(
        workers, "n1", servers={"InternetRelay": {"listening": False, "error": "address in use"}}
    )
    feed = admin_client.get("/state.json").json()
    states = {s["name"]: s for s in feed["servers"]}
    assert feed["version"] == current_version()
    assert states["CorpServer"]["state"] == "started"
    assert states["InternetRelay"]["state"] == "error"
    assert "address in use" in states["InternetRelay"]["detail"]


def test_it_starts_stops_and_pauses_with_json_for_the_script(
    admin_client: Client, site: dict[str, VirtualServer]
) -> None:
    corp = site["CorpServer"]
    for action, state in [("pause", "paused"), ("stop", "stopped"), ("start", "started")]:
        response = admin_client.post(
            f"/servers/{corp.pk}/{action}/", HTTP_ACCEPT="application/json"
        )
        assert response.json()["ok"] is True
        assert response.json()["server"]["requested"] == state
        assert VirtualServer.objects.get(pk=corp.pk).state == state


def test_it_explains_why_a_server_cannot_start(
    admin_client: Client, site: dict[str, VirtualServer]
) -> None:
    corp = site["CorpServer"]
    admin_client.post(f"/servers/{corp.pk}/stop/")
    taken = [Binding("127.0.0.3", 2525)]  # InternetRelay's, and it is started
    server_update(
        server=VirtualServer.objects.get(pk=corp.pk), data={"bindings": taken}, author="t"
    )
    response = admin_client.post(f"/servers/{corp.pk}/start/", HTTP_ACCEPT="application/json")
    assert response.status_code == 409
    assert "InternetRelay" in response.json()["error"]
    page = admin_client.post(f"/servers/{corp.pk}/start/", follow=True)
    assert "could not be started" in page.content.decode()


def test_it_lists_a_servers_sessions_and_terminates_one(
    admin_client: Client, site: dict[str, VirtualServer], workers: redis.Redis, monkeypatch: Any
) -> None:
    session = {
        "id": "7",
        "server": "CorpServer",
        "client_ip": "10.1.4.20",
        "client_port": 5000,
        "since": time.time() - 30,
        "helo": "ws-042",
        "user": "alice",
        "tls": True,
        "messages": 2,
        "bytes": 2048,
    }
    other = dict(session, id="8", server="InternetRelay", helo="elsewhere")
    report(workers, "n1", sessions=[session, other])
    corp = site["CorpServer"]
    html = admin_client.get(f"/servers/{corp.pk}/sessions/?fragment=1").content.decode()
    assert "ws-042" in html and "elsewhere" not in html and 'value="n1:7"' in html
    asked: list[str] = []

    def terminate(*, session_id: str, author: str) -> bool:
        asked.append(f"{session_id} by {author}")
        return True

    monkeypatch.setattr(control, "session_terminate", terminate)
    response = admin_client.post(f"/servers/{corp.pk}/sessions/terminate/", {"session_id": "n1:7"})
    assert response.status_code == 302
    assert asked == ["n1:7 by console:root"]


def test_it_shows_nodes_behind_or_stale_and_certificates_expiring(
    admin_client: Client, site: dict[str, VirtualServer], workers: redis.Redis
) -> None:
    report(workers, "fresh")
    report(workers, "old", applied_version=current_version() - 1, heartbeat=time.time() - 120)
    leaf = trustme.CA().issue_cert(
        "mx.example.com", not_after=datetime.now(UTC) + timedelta(days=9)
    )
    server_update(
        server=site["InternetRelay"],
        data={
            "tls_certificate": leaf.cert_chain_pems[0].bytes().decode(),
            "tls_private_key": leaf.private_key_pem.bytes().decode(),
        },
        author="t",
    )
    response = admin_client.get("/dashboard/?fragment=1")
    data = response.context
    workers_by_node = {w["node"]: w for w in data["workers"]}
    assert workers_by_node["old"]["stale"] and workers_by_node["old"]["behind"]
    assert not workers_by_node["fresh"]["stale"]
    assert [(c["server"].name, c["days"]) for c in data["certificates"]] == [("InternetRelay", 8)]
    counts = {key: n for key, _label, n in data["counts"]}
    assert counts == {"started": 3, "stopped": 0, "paused": 0, "error": 0}
    html = response.content.decode()
    assert "stale" in html and "behind v" in html and "InternetRelay" in html
