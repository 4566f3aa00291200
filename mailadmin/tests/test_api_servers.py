"""Virtual servers over the API: IIS defaults, nested sections, validation, actions."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from mailadmin.models import ConfigSnapshot, VirtualServer
from mailadmin.tests.factories import make_server

pytestmark = pytest.mark.django_db


def test_it_creates_a_server_with_iis_defaults(api: APIClient) -> None:
    server = make_server(api, name="Corp")
    assert server["state"] == "started"
    assert server["connection_timeout"] == 600
    assert server["connection_limit"] is None
    assert server["messages"] == {
        "max_message_size_kb": 2048,
        "max_session_size_kb": 10240,
        "max_messages_per_connection": 20,
        "max_recipients_per_message": 100,
        "ndr_copy_to": "",
        "badmail_directory": "",
    }
    delivery = server["delivery"]
    assert delivery["retry_minutes"] == [15, 30, 60, 240]
    assert delivery["delay_notification_minutes"] == 720
    assert delivery["expiration_minutes"] == 2880
    assert delivery["local_expiration_minutes"] == 2880
    assert delivery["max_hop_count"] == 15
    assert delivery["outbound"]["port"] == 25
    assert delivery["outbound"]["connection_limit"] == 1000
    assert delivery["outbound"]["per_domain_limit"] == 100
    assert delivery["outbound"]["timeout"] == 600
    assert delivery["outbound"]["auth"] == {
        "method": "anonymous",
        "username": "",
        "password_set": False,
        "allow_cleartext": False,
    }
    assert (delivery["outbound"]["tls"], delivery["outbound"]["tls_ca"]) == ("opportunistic", "")
    assert server["authentication"]["anonymous"] is True
    assert server["relay"] == {"mode": "only_list", "list": [], "allow_authenticated": True}
    assert server["connection_control"] == {"mode": "all_except_list", "list": []}
    assert server["default_domain"] == "test.example"
    assert server["tls"] == {"certificate": "", "private_key_set": False, "require": False}


def test_it_defaults_to_all_unassigned_port_25(api: APIClient) -> None:
    response = api.post(
        "/api/v1/servers/", {"name": "Solo", "default_domain": "solo.test"}, format="json"
    )
    assert response.status_code == 201, response.content
    assert response.json()["bindings"] == ["*:25"]


def test_it_requires_a_default_domain(api: APIClient) -> None:
    response = api.post("/api/v1/servers/", {"name": "NoDomain"}, format="json")
    assert response.status_code == 400
    assert "default_domain" in response.json()


def test_it_updates_one_nested_field_and_keeps_the_rest(api: APIClient) -> None:
    server = make_server(api)
    response = api.patch(
        f"/api/v1/servers/{server['id']}/",
        {
            "relay": {"list": ["10.1.0.0/255.255.0.0", "10.0.0.5"]},
            "messages": {"max_message_size_kb": None},
        },
        format="json",
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["relay"] == {
        "mode": "only_list",
        "list": ["10.1.0.0/16", "10.0.0.5"],
        "allow_authenticated": True,
    }
    assert body["messages"]["max_message_size_kb"] is None
    assert body["messages"]["max_session_size_kb"] == 10240


def test_it_reports_each_bad_list_item_at_its_index(api: APIClient) -> None:
    server = make_server(api)
    response = api.patch(
        f"/api/v1/servers/{server['id']}/",
        {"relay": {"list": ["10.0.0.5", "10.1.2.3/16"]}},
        format="json",
    )
    assert response.status_code == 400
    message = response.json()["relay"]["list"]["1"][0]
    assert "did you mean 10.1.0.0/16" in message
    assert VirtualServer.objects.get().access_entries.count() == 0


def test_it_refuses_a_bare_ip_smart_host_with_an_explanation(api: APIClient) -> None:
    server = make_server(api)
    response = api.patch(
        f"/api/v1/servers/{server['id']}/", {"delivery": {"smart_host": "10.0.0.2"}}, format="json"
    )
    assert response.status_code == 400
    assert "[10.0.0.2]" in response.json()["delivery"]["smart_host"][0]


@pytest.mark.parametrize(
    ("typed", "stored"),
    [
        ("[10.0.0.2]", "[10.0.0.2]"),
        ("[10.0.0.2]:2525", "[10.0.0.2]:2525"),
        ("[IPv6:2001:db8::1]:587", "[IPv6:2001:db8::1]:587"),
        ("Mail.Example.COM.", "mail.example.com"),
        ("mail.example.com:587", "mail.example.com:587"),
    ],
)
def test_it_stores_smart_hosts_in_canonical_form(api: APIClient, typed: str, stored: str) -> None:
    server = make_server(api)
    response = api.patch(
        f"/api/v1/servers/{server['id']}/", {"delivery": {"smart_host": typed}}, format="json"
    )
    assert response.status_code == 200, response.content
    assert response.json()["delivery"]["smart_host"] == stored


def test_it_refuses_a_binding_used_by_another_running_server(api: APIClient) -> None:
    make_server(api, name="First", bindings=["127.0.0.2:2525"])
    response = api.post(
        "/api/v1/servers/",
        {
            "name": "Second",
            "default_domain": "b.test",
            "bindings": ["127.0.0.3:25", "127.0.0.2:2525"],
        },
        format="json",
    )
    assert response.status_code == 400
    message = response.json()["bindings"]["1"][0]
    assert "'First'" in message and "127.0.0.2:2525" in message
    assert not VirtualServer.objects.filter(name="Second").exists()


def test_all_unassigned_conflicts_with_any_address_on_its_port(api: APIClient) -> None:
    make_server(api, name="Specific", bindings=["127.0.0.2:2525"])
    response = api.post(
        "/api/v1/servers/",
        {"name": "Wild", "default_domain": "w.test", "bindings": ["0.0.0.0:2525"]},
        format="json",
    )
    assert response.status_code == 400
    assert "'Specific'" in response.json()["bindings"]["0"][0]
    ok = api.post(
        "/api/v1/servers/",
        {"name": "OtherPort", "default_domain": "o.test", "bindings": ["*:2526"]},
        format="json",
    )
    assert ok.status_code == 201


def test_a_stopped_server_may_share_until_it_is_started(api: APIClient) -> None:
    make_server(api, name="Running", bindings=["127.0.0.2:2525"])
    spare = make_server(api, name="Spare", bindings=["127.0.0.2:2525"], state="stopped")
    response = api.post(f"/api/v1/servers/{spare['id']}/start/")
    assert response.status_code == 400
    assert "'Running'" in response.json()["bindings"]["0"][0]
    paused = api.post(f"/api/v1/servers/{spare['id']}/pause/")
    assert paused.status_code == 400  # a paused server keeps its sockets
    assert VirtualServer.objects.get(name="Spare").state == "stopped"


def test_start_stop_pause_change_the_state(api: APIClient) -> None:
    server = make_server(api)
    for action, state in (("stop", "stopped"), ("pause", "paused"), ("start", "started")):
        response = api.post(f"/api/v1/servers/{server['id']}/{action}/")
        assert response.status_code == 200, response.content
        assert response.json()["state"] == state


def test_overlapping_bindings_on_one_server_are_refused(api: APIClient) -> None:
    response = api.post(
        "/api/v1/servers/",
        {"name": "Twice", "default_domain": "t.test", "bindings": ["*:25", "127.0.0.2:25"]},
        format="json",
    )
    assert response.status_code == 400
    assert "overlaps" in response.json()["bindings"]["1"][0]


@pytest.mark.parametrize(
    ("patch", "path"),
    [
        ({"connection_timeout": 0}, ("connection_timeout",)),
        ({"delivery": {"retry_minutes": [15, 30]}}, ("delivery", "retry_minutes")),
        ({"delivery": {"dns_servers": ["dns.example.com"]}}, ("delivery", "dns_servers")),
        ({"delivery": {"outbound": {"port": 70000}}}, ("delivery", "outbound", "port")),
        ({"messages": {"ndr_copy_to": "postmaster%evil.com@x.test"}}, ("messages", "ndr_copy_to")),
        ({"bindings": ["mail.example.com:25"]}, ("bindings", "0")),
        ({"bindings": []}, ("bindings",)),
        ({"fqdn": "bad_host.example"}, ("fqdn",)),
        ({"state": "running"}, ("state",)),
        ({"tls": {"require": True}}, ("tls", "require")),
        ({"home_directory": "relative/path"}, ("home_directory",)),
    ],
)
def test_bad_input_is_a_400_at_its_field_and_changes_nothing(
    api: APIClient, patch: dict[str, object], path: tuple[str, ...]
) -> None:
    server = make_server(api)
    version = ConfigSnapshot.objects.latest().pk
    response = api.patch(f"/api/v1/servers/{server['id']}/", patch, format="json")
    assert response.status_code == 400, response.content
    node = response.json()
    for key in path:
        node = node[key]
    assert isinstance(node, list) and node and all(isinstance(m, str) and m for m in node)
    assert api.get(f"/api/v1/servers/{server['id']}/").json() == server
    assert ConfigSnapshot.objects.latest().pk == version


def test_every_change_bumps_the_version_and_a_no_op_does_not(api: APIClient) -> None:
    server = make_server(api)
    v1 = ConfigSnapshot.objects.latest().pk
    api.patch(f"/api/v1/servers/{server['id']}/", {"connection_timeout": 300}, format="json")
    v2 = ConfigSnapshot.objects.latest().pk
    assert v2 == v1 + 1
    api.patch(f"/api/v1/servers/{server['id']}/", {"connection_timeout": 300}, format="json")
    assert ConfigSnapshot.objects.latest().pk == v2
    assert ConfigSnapshot.objects.latest().author == "api:root"


def test_it_deletes_a_server(api: APIClient) -> None:
    server = make_server(api)
    assert api.delete(f"/api/v1/servers/{server['id']}/").status_code == 204
    assert not VirtualServer.objects.exists()
    assert ConfigSnapshot.objects.latest().body["servers"] == []


def test_it_filters_and_pages(api: APIClient) -> None:
    make_server(api, name="A1", bindings=["127.0.0.2:25"])
    make_server(api, name="B1", bindings=["127.0.0.3:25"], state="stopped")
    body = api.get("/api/v1/servers/?state=stopped").json()
    assert [s["name"] for s in body["results"]] == ["B1"]
    page = api.get("/api/v1/servers/?limit=1").json()
    assert page["count"] == 2 and len(page["results"]) == 1 and page["next"]


@pytest.mark.parametrize("fmt", ["multipart", None])
def test_a_form_with_too_many_fields_is_a_400(api: APIClient, settings: Any, fmt: Any) -> None:
    # Django refuses it while the parser reads it; DRF let that out as an HTML 400 page.
    settings.DATA_UPLOAD_MAX_NUMBER_FIELDS = 5
    fields = {f"f{i}": "x" for i in range(10)}
    if fmt is None:  # application/x-www-form-urlencoded
        response = api.generic(
            "POST",
            "/api/v1/servers/",
            "&".join(f"{k}={v}" for k, v in fields.items()),
            content_type="application/x-www-form-urlencoded",
        )
    else:
        response = api.post("/api/v1/servers/", fields, format=fmt)
    assert response.status_code == 400
    assert response.json() == {
        "detail": "The form has more than 5 fields; send long lists as JSON."
    }
