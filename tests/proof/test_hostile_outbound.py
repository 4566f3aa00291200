"""Hostile input: outbound credentials never travel in clear, and TLS levels hold (DESIGN
invariant 10, issue 10 item 5).

Delivery runs in-process (the Celery task is a thin wrapper) against a real sink on
loopback, through a real TCP man in the middle (:class:`smtpworker.tests.mitm.Mitm`)
that records every byte it carries: one strips STARTTLS from the EHLO reply, one relays
a certificate for another name or from an unknown CA. The configuration goes in through
the API and the configuration document, as an administrator's would.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from django.contrib.auth.models import User
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.test import Client
from rest_framework.test import APIClient

from mailadmin.models import ConfigSnapshot, Domain, Message, RecipientState, VirtualServer
from mailadmin.tests.factories import get_tab, make_server, post, run, spool
from mailadmin.tracking import message_events
from smtpworker.tests.dnsserver import DnsServer
from smtpworker.tests.mitm import Mitm
from smtpworker.tests.sink import Sink

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("mailroot")]

USER, PASSWORD = "relayuser", "smart-host-pw-7c41"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture
def tls_sink() -> Iterator[Sink]:
    with Sink(tls=True, auth=(USER, PASSWORD)) as sink:
        yield sink


def relay(api: APIClient, outbound: dict[str, Any], **delivery: Any) -> dict[str, Any]:
    """The server "Relay" for corp.test, with basic AUTH to the next hop."""
    auth = {"method": "basic", "username": USER, "password": PASSWORD}
    outbound = {**outbound, "auth": {**auth, **outbound.get("auth", {})}}
    return make_server(
        api,
        name="Relay",
        default_domain="corp.test",
        delivery={**delivery, "outbound": outbound},
    )


def deliver(api: APIClient) -> tuple[str, Message]:
    """Queue one message to b@example.test and run its delivery now."""
    queue_id = spool("a@corp.test", "b@example.test")
    outcome = run(queue_id)
    return outcome, Message.objects.get(queue_id=queue_id)


def in_clear(wire: bytes) -> list[bytes]:
    """The forms of the password found in ``wire``: as typed, in AUTH PLAIN, in AUTH LOGIN."""
    forms = [
        PASSWORD.encode(),
        base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()),
        base64.b64encode(PASSWORD.encode()),
    ]
    return [form for form in forms if form in wire]


def history(message: Message) -> str:
    """The message's tracking history, as the console and the API show it."""
    return "\n".join(event["detail"] for event in message_events(message))


def assert_deferred(outcome: str, message: Message, reason: str) -> None:
    assert outcome == "retry"
    assert set(message.recipients.values_list("state", flat=True)) == {RecipientState.PENDING}
    assert reason in message.last_error
    assert reason in history(message)


# --- the MITM strips STARTTLS ---------------------------------------------------------------


def test_stripped_starttls_defers_and_the_password_never_crosses(
    api: APIClient, tls_sink: Sink
) -> None:
    with Mitm(tls_sink.address, tls_sink.port, mode="strip_starttls") as mitm:
        relay(api, {}, smart_host=mitm.smart_host)  # opportunistic, the default
        outcome, message = deliver(api)
        wire = mitm.client_bytes()
    assert_deferred(
        outcome,
        message,
        f"4.7.10 refusing to send credentials in clear text to "
        f"127.0.0.1[127.0.0.1]:{mitm.port}: STARTTLS not offered",
    )
    assert b"AUTH" not in wire and in_clear(wire) == []
    assert tls_sink.messages == []


def test_allowing_clear_text_auth_is_what_sends_it_in_clear(api: APIClient, tls_sink: Sink) -> None:
    # The administrator's explicit choice for this hop; also proof that the recorder
    # would see the password if it crossed in clear.
    with Mitm(tls_sink.address, tls_sink.port, mode="strip_starttls") as mitm:
        relay(api, {"auth": {"allow_cleartext": True}}, smart_host=mitm.smart_host)
        outcome, _message = deliver(api)
        wire = mitm.client_bytes()
    assert outcome == "delivered"
    assert in_clear(wire) != []
    received = tls_sink.wait_for(1)[0]
    assert received.auth_user == USER and not received.tls


@pytest.mark.parametrize("level", ["required", "verified"])
def test_stripped_starttls_defers_a_required_level(
    api: APIClient, tls_sink: Sink, level: str
) -> None:
    with Mitm(tls_sink.address, tls_sink.port, mode="strip_starttls") as mitm:
        relay(api, {"tls": level, "tls_ca": tls_sink.ca_pem()}, smart_host=mitm.smart_host)
        outcome, message = deliver(api)
        wire = mitm.client_bytes()
    assert_deferred(
        outcome,
        message,
        f"4.7.4 TLS is required, but 127.0.0.1[127.0.0.1]:{mitm.port} does not offer STARTTLS",
    )
    assert b"AUTH" not in wire and b"MAIL FROM" not in wire and in_clear(wire) == []


# --- the MITM presents a certificate for another name, or from an unknown CA -----------------


def test_verified_refuses_a_certificate_for_another_name_required_accepts_it(
    api: APIClient, tls_sink: Sink
) -> None:
    # The client dials [127.0.0.2]; the certificate it is shown names 127.0.0.1 and
    # sink.test (from the CA the administrator uploaded).
    with Mitm(tls_sink.address, tls_sink.port, host="127.0.0.2") as mitm:
        server = relay(
            api, {"tls": "verified", "tls_ca": tls_sink.ca_pem()}, smart_host=mitm.smart_host
        )
        outcome, message = deliver(api)
        refused_wire = mitm.client_bytes()
        assert_deferred(
            outcome, message, f"4.7.5 verified TLS handshake with 127.0.0.2[127.0.0.2]:{mitm.port}"
        )
        assert "certificate verify failed: IP address mismatch" in message.last_error
        assert b"STARTTLS" in refused_wire and b"AUTH" not in refused_wire
        patch = {"delivery": {"outbound": {"tls": "required"}}}
        assert (
            api.patch(f"/api/v1/servers/{server['id']}/", patch, format="json").status_code == 200
        )
        assert run(message.queue_id) == "delivered"
        wire = mitm.client_bytes()
    received = tls_sink.wait_for(1)[0]
    assert received.tls and received.auth_user == USER
    assert in_clear(wire) == []  # encrypted: any certificate, but never clear text


def test_verified_mx_delivery_checks_the_mx_name_and_the_domain_ca(
    api: APIClient, tls_sink: Sink
) -> None:
    # Per remote domain: direct delivery by MX with the domain's own TLS level and CA.
    # The sink's certificate names *.example.test, so mx.example.test passes and
    # mx.partner.test does not.
    zone: dict[str, dict[str, list[Any]]] = {
        "example.test": {"MX": [(10, "mx.example.test")]},
        "mx.example.test": {"A": ["127.0.0.2"]},
        "partner.test": {"MX": [(10, "mx.partner.test")]},
        "mx.partner.test": {"A": ["127.0.0.2"]},
    }
    other_ca = trustme.CA().cert_pem.bytes().decode()
    with (
        Mitm(tls_sink.address, tls_sink.port, host="127.0.0.2") as mitm,
        DnsServer(zone) as dns,
    ):
        server = make_server(
            api,
            name="Relay",
            default_domain="corp.test",
            delivery={"dns_servers": [dns.address], "outbound": {"port": mitm.port}},
        )
        domains = {}
        for name in ("example.test", "partner.test"):
            body = {
                "server": server["id"],
                "name": name,
                "type": "remote",
                "outbound": {
                    "tls": "verified",
                    "tls_ca": other_ca,
                    "auth": {"method": "basic", "username": USER, "password": PASSWORD},
                },
            }
            response = api.post("/api/v1/domains/", body, format="json")
            assert response.status_code == 201, response.content
            domains[name] = response.json()["id"]
        first = spool("a@corp.test", "b@example.test")
        assert run(first) == "retry"
        untrusted = Message.objects.get(queue_id=first)
        assert "certificate verify failed: unable to get local issuer" in untrusted.last_error
        assert "mx.example.test[127.0.0.2]" in untrusted.last_error
        for pk in domains.values():
            patch = {"outbound": {"tls_ca": tls_sink.ca_pem()}}
            assert api.patch(f"/api/v1/domains/{pk}/", patch, format="json").status_code == 200
        assert run(first) == "delivered"
        second = spool("a@corp.test", "c@partner.test")
        assert run(second) == "retry"
        wrong_name = Message.objects.get(queue_id=second)
        assert "verified TLS handshake with mx.partner.test[127.0.0.2]" in wrong_name.last_error
        assert "Hostname mismatch" in wrong_name.last_error
        wire = mitm.client_bytes()
    assert [m.recipients for m in tls_sink.wait_for(1)] == [("b@example.test",)]
    assert in_clear(wire) == []


# --- API and configuration document ----------------------------------------------------------

PRIVATE_KEY = trustme.CA().issue_cert("x.test").private_key_pem.bytes().decode()
DAMAGED = "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"


@pytest.mark.parametrize(
    ("outbound", "key", "message"),
    [
        ({"tls": "sometimes"}, "tls", "not a valid choice"),
        ({"tls_ca": PRIVATE_KEY}, "tls_ca", "Only CA certificates belong here, not EC PRIVATE KEY"),
        ({"tls_ca": DAMAGED}, "tls_ca", "damaged or incomplete"),
        ({"tls_ca": "just text"}, "tls_ca", "not in PEM format"),
        ({"auth": {"allow_cleartext": "perhaps"}}, "auth", "valid boolean"),
    ],
)
def test_bad_outbound_security_is_a_400_at_its_field_and_changes_nothing(
    api: APIClient, outbound: dict[str, Any], key: str, message: str
) -> None:
    server = relay(api, {})
    before = api.get(f"/api/v1/servers/{server['id']}/").json()
    version = ConfigSnapshot.objects.latest().pk
    patch = {"delivery": {"outbound": outbound}}
    response = api.patch(f"/api/v1/servers/{server['id']}/", patch, format="json")
    assert response.status_code == 400, response.content
    assert message in str(response.json()["delivery"]["outbound"][key])
    assert api.get(f"/api/v1/servers/{server['id']}/").json() == before
    assert ConfigSnapshot.objects.latest().pk == version
    domain = {"server": server["id"], "name": "p.test", "type": "remote", "outbound": outbound}
    response = api.post("/api/v1/domains/", domain, format="json")
    assert response.status_code == 400 and message in str(response.json()["outbound"][key])


def test_the_document_carries_the_levels_and_reads_old_check_boxes(api: APIClient) -> None:
    ca = trustme.CA().cert_pem.bytes().decode()
    doc = {
        "servers": [
            {
                "name": "Old",
                "default_domain": "old.test",
                "bindings": ["127.0.0.2:2525"],
                "delivery": {"outbound": {"tls": True}},  # a backup from before the levels
                "domains": [
                    {"name": "a.test", "type": "remote", "outbound": {"tls": False}},
                    {
                        "name": "b.test",
                        "type": "remote",
                        "outbound": {
                            "tls": "verified",
                            "tls_ca": ca,
                            "auth": {"allow_cleartext": True},
                        },
                    },
                ],
            }
        ],
        "users": [],
    }
    response = api.put("/api/v1/config/", doc, format="json")
    assert response.status_code == 200, response.content
    assert VirtualServer.objects.get().outbound_tls == "required"
    assert Domain.objects.get(name="a.test").outbound_tls == "opportunistic"
    b = Domain.objects.get(name="b.test")
    assert (b.outbound_tls, b.outbound_tls_ca, b.outbound_cleartext_auth) == (
        "verified",
        ca.strip(),
        True,
    )
    exported = api.get("/api/v1/config/").json()["servers"][0]
    assert exported["delivery"]["outbound"]["tls"] == "required"
    assert exported["delivery"]["outbound"]["auth"]["allow_cleartext"] is False
    remote = {d["name"]: d["outbound"] for d in exported["domains"] if d["type"] == "remote"}
    assert remote["a.test"]["tls"] == "opportunistic"
    b_out = remote["b.test"]
    assert (b_out["tls"], b_out["tls_ca"], b_out["auth"]["allow_cleartext"]) == (
        "verified",
        ca.strip(),
        True,
    )
    # The export reads back as the same configuration: no new version.
    again = api.put("/api/v1/config/", {**api.get("/api/v1/config/").json()}, format="json")
    assert again.json()["changed"] is False


def test_a_bad_ca_in_a_document_is_reported_at_its_path(api: APIClient) -> None:
    doc = {
        "servers": [
            {
                "name": "S",
                "default_domain": "s.test",
                "bindings": ["127.0.0.2:2525"],
                "delivery": {"outbound": {"tls": "verified", "tls_ca": PRIVATE_KEY}},
                "domains": [{"name": "r.test", "type": "remote", "outbound": {"tls": "maybe"}}],
            }
        ]
    }
    response = api.put("/api/v1/config/", doc, format="json")
    assert response.status_code == 400
    paths = {e["path"] for e in response.json()["errors"]}
    assert {"servers[0].delivery.outbound.tls_ca", "servers[0].domains[0].outbound.tls"} <= paths
    assert not VirtualServer.objects.exists()


# --- migration of the old check box ----------------------------------------------------------


def test_the_migration_keeps_the_meaning_of_the_old_check_box() -> None:
    before, after = ("mailadmin", "0007_auth_brake"), ("mailadmin", "0008_outbound_tls")
    executor = MigrationExecutor(connection)
    executor.migrate([before])
    old = executor.loader.project_state(before).apps
    servers = old.get_model("mailadmin", "VirtualServer")
    domains = old.get_model("mailadmin", "Domain")
    on = servers.objects.create(name="On", outbound_tls=True)
    off = servers.objects.create(name="Off", outbound_tls=False)
    domains.objects.create(server=on, name="on.test", kind="remote", outbound_tls=True)
    domains.objects.create(server=off, name="off.test", kind="remote", outbound_tls=False)
    executor = MigrationExecutor(connection)
    executor.migrate([after])
    new = executor.loader.project_state(after).apps
    levels = {
        s.name: (s.outbound_tls, s.outbound_cleartext_auth, s.outbound_tls_ca)
        for s in new.get_model("mailadmin", "VirtualServer").objects.all()
    }
    assert levels == {"On": ("required", False, ""), "Off": ("opportunistic", False, "")}
    domain_levels = {
        d.name: d.outbound_tls for d in new.get_model("mailadmin", "Domain").objects.all()
    }
    assert domain_levels == {"on.test": "required", "off.test": "opportunistic"}
    # And back: "required" and "verified" were TLS required, the check box ticked.
    new.get_model("mailadmin", "Domain").objects.filter(name="off.test").update(
        outbound_tls="verified"
    )
    executor = MigrationExecutor(connection)
    executor.migrate([before])
    back = executor.loader.project_state(before).apps
    assert dict(
        back.get_model("mailadmin", "Domain").objects.values_list("name", "outbound_tls")
    ) == {
        "on.test": True,
        "off.test": True,
    }
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())


# --- console: the Outbound Security dialog and a remote domain's sheet ---------------------


def test_the_console_sets_the_levels_and_shows_a_bad_ca_beside_its_field(
    api: APIClient, admin_user: User
) -> None:
    relay(api, {})
    server = VirtualServer.objects.get(name="Relay")
    client = Client()
    client.force_login(admin_user)
    page = client.get(f"/servers/{server.pk}/properties/delivery/").content.decode()
    assert "Required and verified" in page and "Allow authentication without TLS" in page
    ca = trustme.CA().cert_pem.bytes().decode()
    version = ConfigSnapshot.objects.latest().pk
    data = {**get_tab(client, server, "delivery"), "outbound_tls": "verified"}
    refused = post(client, server, "delivery", {**data, "outbound_tls_ca": PRIVATE_KEY})
    assert refused.status_code == 400
    assert "Only CA certificates belong here" in refused.content.decode()
    assert ConfigSnapshot.objects.latest().pk == version
    saved = post(client, server, "delivery", {**data, "outbound_tls_ca": ca})
    assert saved.status_code == 302
    server.refresh_from_db()
    assert (server.outbound_tls, server.outbound_cleartext_auth) == ("verified", False)
    assert server.outbound_tls_ca == ca.strip()

    domain = Domain.objects.create(server=server, name="partner.test", kind="remote")
    sheet = {"name": "partner.test", "outbound_auth_method": "anonymous", "outbound_tls": "x"}
    refused = client.post(f"/domains/{domain.pk}/", sheet)
    assert refused.status_code == 400 and "outbound_tls" in refused.context["form"].errors
    sheet.update(outbound_tls="required", outbound_tls_ca=DAMAGED, outbound_cleartext_auth="on")
    refused = client.post(f"/domains/{domain.pk}/", sheet)
    assert refused.status_code == 400
    assert "damaged" in " ".join(refused.context["form"].errors["outbound_tls_ca"])
    sheet["outbound_tls_ca"] = ""
    assert client.post(f"/domains/{domain.pk}/", sheet).status_code == 302
    domain.refresh_from_db()
    assert (domain.outbound_tls, domain.outbound_cleartext_auth) == ("required", True)
