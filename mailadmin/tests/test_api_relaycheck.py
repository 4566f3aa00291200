"""POST /api/v1/servers/{id}/check-relay/: the worker's policy, explained."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from mailadmin.models import ConfigSnapshot

pytestmark = pytest.mark.django_db


@pytest.fixture
def internet_relay(api: APIClient, typical_site: dict[str, Any]) -> int:
    assert api.put("/api/v1/config/", typical_site, format="json").status_code == 200
    servers = api.get("/api/v1/servers/").json()["results"]
    return next(s["id"] for s in servers if s["name"] == "InternetRelay")


def check(client: APIClient, server: int, **facts: Any) -> Any:
    return client.post(f"/api/v1/servers/{server}/check-relay/", facts, format="json")


def test_it_accepts_the_organisations_domain_and_says_why(
    api: APIClient, internet_relay: int
) -> None:
    body = check(
        api, internet_relay, client_ip="203.0.113.9", sender="a@b.test", recipient="x@EXAMPLE.com"
    ).json()
    assert body["accepted"] is True
    assert body["decided_by"] == "remote domain example.com allows relay"
    assert [s["code"] for s in body["steps"]] == [220, 250, 250]


def test_it_refuses_a_foreign_domain_with_the_reasons(api: APIClient, internet_relay: int) -> None:
    body = check(api, internet_relay, client_ip="203.0.113.9", recipient="x@foreign.test").json()
    assert body["accepted"] is False
    assert body["steps"][-1]["reply"] == "550 5.7.1 Unable to relay for x@foreign.test"
    assert "client is not authenticated" in body["decided_by"]


def test_operators_may_ask_and_nothing_changes(
    operator_api: APIClient, internet_relay: int
) -> None:
    version = ConfigSnapshot.objects.latest().pk
    response = check(operator_api, internet_relay, client_ip="10.0.0.1", recipient="x@example.com")
    assert response.status_code == 200 and response.json()["accepted"] is True
    assert ConfigSnapshot.objects.latest().pk == version


def test_bad_input_is_a_field_error(api: APIClient, internet_relay: int) -> None:
    response = check(api, internet_relay, client_ip="not-an-ip", recipient="x@example.com")
    assert response.status_code == 400 and "client_ip" in response.json()
    assert "recipient" in check(api, internet_relay, client_ip="10.0.0.1").json()


def test_anonymous_is_refused(internet_relay: int) -> None:
    assert (
        check(
            APIClient(), internet_relay, client_ip="10.0.0.1", recipient="x@example.com"
        ).status_code
        == 401
    )
