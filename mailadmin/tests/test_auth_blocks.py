"""The AUTH brake's settings (API, document, snapshot) and its blocks in the API and the
console, with Unblock (issue 10.4). Blocks are set by the worker's own brake, in the real
Redis the console reads."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis
from django.contrib.auth.models import User
from django.test import Client
from rest_framework.test import APIClient

from mailadmin import configdoc, snapshot
from mailadmin.models import VirtualServer
from mailadmin.tests.factories import make_server
from smtpworker.core.config import AuthBrakeConfig
from smtpworker.inbound import authbrake
from smtpworker.inbound.authbrake import AuthBrake
from smtpworker.tests.factories import free_port

pytestmark = pytest.mark.django_db

QUICK = AuthBrakeConfig(block_after_failures=2)


def block(redis_url: str, server: str, address: str) -> None:
    """Fail twice from ``address`` through the worker's brake: a block."""

    async def fail() -> None:
        brake = AuthBrake(redis_url)
        try:
            for _ in range(2):
                await brake.failure(server, authbrake.client_key(address), QUICK)
        finally:
            await brake.close()

    asyncio.run(fail())


@pytest.fixture
def test_server(api: APIClient) -> dict[str, Any]:
    return make_server(api)


def test_the_brake_settings_have_defaults_and_reach_the_worker(
    api: APIClient, test_server: dict[str, Any]
) -> None:
    assert test_server["client_connection_limit"] == 50
    assert test_server["authentication"]["brake"] == {
        "enabled": True,
        "failures_before_delay": 3,
        "block_after_failures": 10,
        "window_minutes": 15,
        "block_minutes": 15,
    }
    change = {"block_after_failures": 5, "block_minutes": 60, "enabled": False}
    url = f"/api/v1/servers/{test_server['id']}/"
    response = api.patch(
        url,
        {"authentication": {"brake": change}, "client_connection_limit": 8},
        format="json",
    )
    assert response.status_code == 200, response.content
    cfg = snapshot.server_config(VirtualServer.objects.get(pk=test_server["id"]))
    assert cfg.client_connection_limit == 8
    assert cfg.auth_brake == AuthBrakeConfig(
        enabled=False, failures_before_delay=3, block_after_failures=5, block_seconds=3600
    )
    exported = configdoc.document_export()["servers"][0]
    assert exported["authentication"]["brake"]["block_minutes"] == 60


def test_bad_brake_settings_are_refused_at_their_paths(
    api: APIClient, test_server: dict[str, Any]
) -> None:
    body = {"authentication": {"brake": {"block_after_failures": 0, "window_minutes": -1}}}
    response = api.patch(f"/api/v1/servers/{test_server['id']}/", body, format="json")
    assert response.status_code == 400, response.content
    text = response.content.decode()
    assert "block_after_failures" in text and "window_minutes" in text
    server = VirtualServer.objects.get(pk=test_server["id"])
    assert (server.auth_block_after_failures, server.auth_failure_window_minutes) == (10, 15)


def test_the_api_lists_blocks_to_operators_and_lets_administrators_unblock(
    api: APIClient, operator_api: APIClient, test_server: dict[str, Any], test_redis: str
) -> None:
    url = f"/api/v1/servers/{test_server['id']}/auth-blocks/"
    assert api.get(url).json() == []
    block(test_redis, "Test", "192.0.2.7")
    block(test_redis, "Test", "2001:db8:1:2::99")
    block(test_redis, "Other", "198.51.100.1")  # another server's block is not listed
    listed = operator_api.get(url)
    assert listed.status_code == 200
    assert sorted(b["client"] for b in listed.json()) == ["192.0.2.7", "2001:db8:1:2::/64"]
    assert all(800 < b["seconds_left"] <= 900 for b in listed.json())
    refused = operator_api.post(url + "unblock/", {"address": "192.0.2.7"}, format="json")
    assert refused.status_code == 403
    done = api.post(url + "unblock/", {"address": "2001:db8:1:2::1"}, format="json")
    assert (done.status_code, done.json()) == (200, {"client": "2001:db8:1:2::/64"})
    assert [b["client"] for b in api.get(url).json()] == ["192.0.2.7"]
    bad = api.post(url + "unblock/", {"address": "not-an-address"}, format="json")
    assert bad.status_code == 400 and "IP address" in bad.json()["address"][0]
    client = redis.Redis.from_url(test_redis)
    assert [c for c, _ in authbrake.list_blocks(client, "Other")] == ["198.51.100.1"]
    client.close()


def test_the_api_says_503_when_redis_is_down(
    api: APIClient, test_server: dict[str, Any], settings: Any
) -> None:
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    url = f"/api/v1/servers/{test_server['id']}/auth-blocks/"
    assert api.get(url).status_code == 503
    assert api.post(url + "unblock/", {"address": "192.0.2.7"}, format="json").status_code == 503


def test_the_schema_documents_the_block_routes(api: APIClient) -> None:
    schema = api.get("/api/v1/schema/?format=json").json()
    paths = schema["paths"]
    assert "get" in paths["/api/v1/servers/{id}/auth-blocks/"]
    assert "post" in paths["/api/v1/servers/{id}/auth-blocks/unblock/"]


def test_the_console_lists_a_block_and_unblock_lifts_it(
    admin_user: User, operator_user: User, test_server: dict[str, Any], test_redis: str
) -> None:
    block(test_redis, "Test", "192.0.2.7")
    page = f"/servers/{test_server['id']}/auth-blocks/"
    operator = Client()
    operator.force_login(operator_user)
    seen = operator.get(page)
    assert seen.status_code == 200
    assert "192.0.2.7" in seen.content.decode() and "Unblock" not in seen.content.decode()
    assert operator.post(page + "unblock/", {"address": "192.0.2.7"}).status_code == 403
    admin = Client()
    admin.force_login(admin_user)
    shown = admin.get(page).content.decode()
    assert "192.0.2.7" in shown and ">Unblock</button>" in shown
    response = admin.post(page + "unblock/", {"address": "192.0.2.7"}, follow=True)
    text = response.content.decode()
    assert "192.0.2.7 may log on to Test again." in text
    assert "No client is blocked from logging on to Test." in text
    bad = admin.post(page + "unblock/", {"address": "x"}, follow=True).content.decode()
    assert "Give the client&#x27;s IP address" in bad
