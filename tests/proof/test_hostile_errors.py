"""Every error at once (issue 10.9): a document, an API body or a property sheet with
several problems gets all of them in one answer, the cross-object rules included.

Before, field errors hid the checks that span objects (a binding another running server
holds, PROXY without a trusted proxy, the services' own rules such as the NDR copy
address on the sheet), so an administrator fixed errors in waves.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from rest_framework.test import APIClient

from mailadmin.exceptions import ConfigError, FieldError
from mailadmin.models import ConfigSnapshot, VirtualServer
from mailadmin.tests.factories import db_state, make_server

pytestmark = pytest.mark.django_db

SHARED = "127.0.0.2:2525"


def corp(api: APIClient) -> dict[str, Any]:
    """The running server 'Corp', holding the binding the others' tests reach for."""
    return make_server(api, name="Corp", default_domain="corp.test", bindings=[SHARED])


def broken_server(**extra: Any) -> dict[str, Any]:
    """A server with a bare-IP smart host, a host-bits relay entry, garbage in the
    connection list and a binding the server 'Corp' already holds."""
    return {
        "name": "Internet",
        "default_domain": "internet.test",
        "bindings": [SHARED],
        "delivery": {"smart_host": "10.0.0.2"},
        "relay": {"mode": "only_list", "list": ["10.1.2.3/16"]},
        "connection_control": {"mode": "all_except_list", "list": ["garbage!!"]},
        **extra,
    }


def test_it_lists_every_error_of_a_document_at_its_path(api: APIClient) -> None:
    doc = {
        "servers": [
            {"name": "Corp", "default_domain": "corp.test", "bindings": [SHARED]},
            broken_server(),
        ],
        "users": [],
    }
    before = db_state()
    response = api.put("/api/v1/config/", doc, format="json")
    assert response.status_code == 400, response.content
    errors = {e["path"]: e["message"] for e in response.json()["errors"]}
    assert set(errors) == {
        "servers[1].delivery.smart_host",
        "servers[1].relay.list[0]",
        "servers[1].connection_control.list[0]",
        "servers[1].bindings[0]",
    }, errors
    assert "[10.0.0.2]" in errors["servers[1].delivery.smart_host"]
    assert "10.1.0.0/16" in errors["servers[1].relay.list[0]"]
    assert "'Corp'" in errors["servers[1].bindings[0]"]
    assert response.json()["detail"].startswith("The document has 4 errors")
    assert db_state() == before


def test_a_document_reports_proxy_and_user_rules_beside_field_errors(api: APIClient) -> None:
    doc = {
        "servers": [
            {"name": "Corp", "default_domain": "corp.test", "bindings": [SHARED]},
            broken_server(bindings=["bad binding", "127.0.0.3:25 proxy", SHARED]),
        ],
        "users": [{"username": "alice", "password": "pw-alice-1", "servers": ["Nowhere"]}],
    }
    response = api.put("/api/v1/config/", doc, format="json")
    assert response.status_code == 400
    paths = [e["path"] for e in response.json()["errors"]]
    # positions are kept past the binding that does not parse
    assert "servers[1].bindings[0]" in paths  # does not parse
    assert "servers[1].bindings[1]" in paths  # PROXY without a trusted proxy
    assert "servers[1].bindings[2]" in paths  # held by Corp
    assert "users[0].servers[0]" in paths
    assert len(paths) == len(set(paths))


def test_the_api_lists_field_and_binding_errors_together(api: APIClient) -> None:
    corp(api)
    versions = ConfigSnapshot.objects.count()
    response = api.post("/api/v1/servers/", broken_server(), format="json")
    assert response.status_code == 400
    body = response.json()
    assert "[10.0.0.2]" in body["delivery"]["smart_host"][0]
    assert "10.1.0.0/16" in body["relay"]["list"]["0"][0]
    assert "garbage" in body["connection_control"]["list"]["0"][0]
    assert "'Corp'" in body["bindings"]["0"][0]
    assert ConfigSnapshot.objects.count() == versions
    assert not VirtualServer.objects.filter(name="Internet").exists()


def test_a_patch_reports_the_binding_held_elsewhere_beside_a_field_error(
    api: APIClient,
) -> None:
    corp(api)
    other = make_server(api, name="Other", default_domain="other.test", bindings=["127.0.0.3:2525"])
    response = api.patch(
        f"/api/v1/servers/{other['id']}/",
        {"bindings": [SHARED], "messages": {"max_message_size_kb": "lots"}},
        format="json",
    )
    assert response.status_code == 400
    body = response.json()
    assert "max_message_size_kb" in body["messages"]
    assert "'Corp'" in body["bindings"]["0"][0]


def test_the_sheet_shows_service_errors_beside_field_errors(admin_user: User) -> None:
    client = Client()
    client.force_login(admin_user)
    api = APIClient()
    api.force_login(admin_user)
    corp(api)
    other = make_server(api, name="Other", default_domain="other.test", bindings=["127.0.0.3:2525"])
    server = VirtualServer.objects.get(pk=other["id"])
    page = client.get(f"/servers/{server.pk}/properties/general/")
    forms = {t["name"]: t["form"] for t in page.context["tabs"]}
    data: dict[str, Any] = {"tab": ["general", "messages"], "action": "apply"}
    for tab in ("general", "messages"):
        form = forms[tab]
        for name in form.fields:
            value = form[name].value()
            if value in (None, False):
                continue
            data[name] = "on" if value is True else value
    # General: one line that does not parse and one held by Corp; Messages: a bad NDR
    # copy address, which only the service checks.
    data["bindings"] = f"nonsense\n{SHARED}"
    data["ndr_copy_to"] = "postmaster@"
    before = db_state()
    response = client.post(f"/servers/{server.pk}/properties/general/", data)
    assert response.status_code == 400
    tabs = {t["name"]: t["form"] for t in response.context["tabs"]}
    binding_errors = " ".join(tabs["general"].errors["bindings"])
    assert "Line 1" in binding_errors and "'Corp'" in binding_errors
    assert "ndr_copy_to" in tabs["messages"].errors
    assert db_state() == before


def test_a_domain_lists_every_broken_rule_and_refuses_helo_with_required_tls(
    api: APIClient,
) -> None:
    server = corp(api)
    versions = ConfigSnapshot.objects.count()
    response = api.post(
        "/api/v1/domains/",
        {
            "server": server["id"],
            "name": "partner.test",
            "type": "remote",
            "forward_all_to_smart_host": True,  # but no smart host
            "use_helo": True,  # STARTTLS needs EHLO: required TLS could never deliver
            "outbound": {"tls": "required"},
        },
        format="json",
    )
    assert response.status_code == 400
    body = response.json()
    assert "smart host" in body["smart_host"][0]
    assert "EHLO" in body["outbound"]["tls"][0]
    assert ConfigSnapshot.objects.count() == versions


def test_a_list_given_as_something_else_is_one_error_and_no_guess(api: APIClient) -> None:
    # Found by the API fuzzer: bindings given as an object were read as "absent", so the
    # default *:25 was checked against the other servers; the two errors at "bindings" and
    # "bindings[0]" then could not be rendered together (a 500).
    api.post("/api/v1/servers/", {"name": "Corp", "default_domain": "corp.test"}, format="json")
    response = api.post(
        "/api/v1/servers/",
        {"name": "Corp", "default_domain": "other.test", "bindings": {"0": "*:25"}},
        format="json",
    )
    assert response.status_code == 400
    body = response.json()
    assert body["bindings"] == ['Expected a list of items but got type "dict".']
    assert "already exists" in body["name"][0]


def test_an_error_about_a_list_and_one_about_its_item_are_both_answered() -> None:
    error = ConfigError(
        [
            FieldError(("bindings",), "about the list"),
            FieldError(("bindings", 0), "about its first item"),
            FieldError(("relay", "list", 1), "about an item"),
            FieldError(("relay", "list"), "about the list"),
        ]
    )
    assert error.as_drf_detail() == {
        "bindings": {"non_field_errors": ["about the list"], "0": ["about its first item"]},
        "relay": {"list": {"1": ["about an item"], "non_field_errors": ["about the list"]}},
    }
