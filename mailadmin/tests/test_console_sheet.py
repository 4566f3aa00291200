"""The Properties sheet: each tab round-trips, changes go through the service, errors
stay beside their fields and save nothing."""

from __future__ import annotations

from typing import Any

import pytest
import trustme
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from mailadmin.models import ConfigSnapshot, VirtualServer
from mailadmin.tests.factories import error_beside, get_tab, post

pytestmark = pytest.mark.django_db

TABS = ["general", "access", "messages", "delivery"]


@pytest.mark.parametrize("tab", TABS)
def test_it_round_trips_each_tab_without_a_new_version(
    admin_client: Client, corp: VirtualServer, tab: str
) -> None:
    before = ConfigSnapshot.objects.count()
    response = post(admin_client, corp, tab, get_tab(admin_client, corp, tab))
    assert response.status_code == 302, response.content.decode()[:2000]
    assert response["Location"] == f"/servers/{corp.pk}/properties/{tab}/"
    assert ConfigSnapshot.objects.count() == before


def test_it_round_trips_the_whole_sheet_at_once(admin_client: Client, corp: VirtualServer) -> None:
    before = ConfigSnapshot.objects.count()
    data: dict[str, Any] = {"tab": TABS}
    for tab in TABS:
        one = get_tab(admin_client, corp, tab)
        one.pop("tab")
        data.update(one)
    response = admin_client.post(f"/servers/{corp.pk}/properties/", {**data, "action": "ok"})
    assert response.status_code == 302
    assert response["Location"] == f"/servers/{corp.pk}/"
    assert ConfigSnapshot.objects.count() == before


CHANGES = [
    ("general", {"connection_timeout": "1200"}, lambda s: s.connection_timeout == 1200),
    (
        "access",
        {"relay_entries": "10.0.0.5\n10.1.0.0/255.255.0.0"},
        lambda s: (
            sorted(e.value for e in s.access_entries.filter(list="relay"))
            == ["10.0.0.5", "10.1.0.0/16"]
        ),
    ),
    ("messages", {"max_message_size_kb_on": None}, lambda s: s.max_message_size_kb is None),
    ("delivery", {"smart_host": "[10.0.0.2]"}, lambda s: s.smart_host == "[10.0.0.2]"),
    (
        "delivery",
        {"expiration_minutes": "3", "expiration_minutes_unit": "1440"},
        lambda s: s.expiration_minutes == 3 * 1440,
    ),
    (
        "access",
        {
            "auth_block_after_failures": "5",
            "auth_block_minutes": "2",
            "auth_block_minutes_unit": "60",
        },
        lambda s: s.auth_block_after_failures == 5 and s.auth_block_minutes == 120,
    ),
    ("access", {"auth_brake_enabled": None}, lambda s: not s.auth_brake_enabled),
    (
        "general",
        {"client_connection_limit_on": None},
        lambda s: s.client_connection_limit is None,
    ),
]


@pytest.mark.parametrize(("tab", "change", "check"), CHANGES)
def test_it_saves_one_changed_field_as_a_new_version(
    admin_client: Client, corp: VirtualServer, tab: str, change: dict[str, Any], check: Any
) -> None:
    before = ConfigSnapshot.objects.count()
    data = get_tab(admin_client, corp, tab)
    for key, value in change.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    response = post(admin_client, corp, tab, data)
    assert response.status_code == 302, response.content.decode()[:2000]
    assert ConfigSnapshot.objects.count() == before + 1
    assert ConfigSnapshot.objects.latest().author == "console:root"
    assert check(VirtualServer.objects.get(pk=corp.pk))


@pytest.mark.parametrize(
    ("tab", "field", "value", "message"),
    [
        ("delivery", "smart_host", "10.0.0.2", "bare IP address"),
        ("access", "relay_entries", "10.0.0.5\n10.1.2.3/16", "Line 2"),
        ("general", "bindings", "127.0.0.3:2525", "InternetRelay"),
        ("access", "tls_require", "on", "Requiring TLS needs a certificate"),
        ("general", "connection_timeout", "soon", "whole number"),
        ("messages", "max_message_size_kb", "", "clear the check box"),
    ],
)
def test_it_shows_each_error_beside_its_field_and_saves_nothing(
    admin_client: Client, corp: VirtualServer, tab: str, field: str, value: str, message: str
) -> None:
    before = ConfigSnapshot.objects.count()
    data = get_tab(admin_client, corp, tab)
    data[field] = value
    response = post(admin_client, corp, tab, data)
    assert response.status_code == 400
    html = response.content.decode()
    assert message in error_beside(html, field)
    assert 'aria-invalid="true"' in html
    assert "Nothing was saved" in html
    assert ConfigSnapshot.objects.count() == before


def test_it_keeps_other_tabs_when_one_has_an_error(
    admin_client: Client, corp: VirtualServer
) -> None:
    general = get_tab(admin_client, corp, "general")
    delivery = get_tab(admin_client, corp, "delivery")
    general["connection_timeout"] = "900"
    delivery["smart_host"] = "10.0.0.2"
    data = {**general, **delivery, "tab": ["general", "delivery"], "action": "apply"}
    response = admin_client.post(f"/servers/{corp.pk}/properties/", data)
    assert response.status_code == 400
    assert response.context["active"] == "delivery"
    assert VirtualServer.objects.get(pk=corp.pk).connection_timeout == 600


def test_it_installs_a_certificate_and_never_shows_the_key(
    admin_client: Client, corp: VirtualServer
) -> None:
    leaf = trustme.CA().issue_cert("corp-relay.example.net")
    data = get_tab(admin_client, corp, "access")
    data["tls_certificate"] = SimpleUploadedFile("cert.pem", leaf.cert_chain_pems[0].bytes())
    data["tls_private_key"] = SimpleUploadedFile("key.pem", leaf.private_key_pem.bytes())
    data["tls_require"] = "on"
    response = post(admin_client, corp, "access", data)
    assert response.status_code == 302, response.content.decode()[:3000]
    server = VirtualServer.objects.get(pk=corp.pk)
    assert server.tls_require and server.tls_not_after is not None
    assert "PRIVATE KEY" not in server.tls_private_key
    html = admin_client.get(f"/servers/{corp.pk}/properties/access/").content.decode()
    assert "PRIVATE KEY" not in html
    assert "stored (never shown)" in html
    assert server.tls_not_after.strftime("%Y-%m-%d") in html
    # Posting the tab back without uploads keeps the pair.
    before = ConfigSnapshot.objects.count()
    assert (
        post(admin_client, corp, "access", get_tab(admin_client, corp, "access")).status_code == 302
    )
    assert ConfigSnapshot.objects.count() == before


def test_it_does_not_change_a_stored_password_left_empty(
    admin_client: Client, corp: VirtualServer
) -> None:
    data = get_tab(admin_client, corp, "delivery")
    data.update(outbound_auth_method="basic", outbound_username="relay", outbound_password="s3cret")
    assert post(admin_client, corp, "delivery", data).status_code == 302
    sealed = VirtualServer.objects.get(pk=corp.pk).outbound_password
    assert sealed and "s3cret" not in sealed
    html = admin_client.get(f"/servers/{corp.pk}/properties/delivery/").content.decode()
    assert "s3cret" not in html
    before = ConfigSnapshot.objects.count()
    assert (
        post(admin_client, corp, "delivery", get_tab(admin_client, corp, "delivery")).status_code
        == 302
    )
    assert VirtualServer.objects.get(pk=corp.pk).outbound_password == sealed
    assert ConfigSnapshot.objects.count() == before
