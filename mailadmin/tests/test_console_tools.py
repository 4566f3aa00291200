"""Test relay, the audit log, and the configuration document's export/import."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from rest_framework.test import APIClient

from mailadmin import configdoc
from mailadmin.audit import snapshot_changes
from mailadmin.models import ConfigSnapshot, VirtualServer
from mailadmin.relaytest import relay_test

pytestmark = pytest.mark.django_db


def ask(client: Client, server: VirtualServer, **facts: str) -> Any:
    query = {"client_ip": "203.0.113.9", "sender": "someone@example.org", **facts}
    return client.get(f"/servers/{server.pk}/relay-test/", query)


def test_it_accepts_mail_for_the_internet_relays_remote_domain_from_anyone(
    admin_client: Client, site: dict[str, VirtualServer]
) -> None:
    response = ask(admin_client, site["InternetRelay"], recipient="bob@example.com")
    result = response.context["result"]
    assert result.accepted
    assert result.deciding.rule == "remote domain example.com allows relay"
    assert "Accepted" in response.content.decode()


def test_it_refuses_other_domains_and_names_the_rule(
    admin_client: Client, site: dict[str, VirtualServer]
) -> None:
    response = ask(admin_client, site["InternetRelay"], recipient="bob@example.net")
    result = response.context["result"]
    assert not result.accepted
    assert result.deciding.reply.startswith("550 5.7.1")
    assert "relay list (only the list below): 203.0.113.9 matches no entry" in result.deciding.rule
    assert "data-rule" in response.content.decode()


def test_it_lets_the_corporate_server_relay_only_after_auth(
    site: dict[str, VirtualServer],
) -> None:
    corp = site["CorpServer"]
    facts: dict[str, Any] = {
        "client_ip": "10.1.2.3",
        "tls": False,
        "sender": "a@corp.test",
        "recipient": "x@example.net",
    }
    anonymous = relay_test(corp, authenticated_user=None, **facts)
    assert not anonymous.accepted and anonymous.deciding.rule == "anonymous access is not allowed"
    alice = relay_test(corp, authenticated_user="alice", **facts)
    assert alice.accepted and alice.deciding.rule == "authenticated users may relay"
    assert alice.notes == []
    stranger = relay_test(corp, authenticated_user="mallory", **facts)
    assert any("no SMTP user mallory" in note for note in stranger.notes)


def test_it_answers_for_a_stopped_server_as_if_started(site: dict[str, VirtualServer]) -> None:
    internal = site["InternalRelay"]
    internal.state = "stopped"
    internal.save()
    result = relay_test(
        internal,
        client_ip="127.0.0.5",
        authenticated_user=None,
        tls=False,
        sender="app@corp.test",
        recipient="x@example.net",
    )
    assert result.accepted
    assert result.deciding.rule == "relay list (only the list below): 127.0.0.5 matched"
    assert "as if it were started" in result.notes[0]


def test_it_shows_a_bad_client_address_beside_its_field(
    admin_client: Client, site: dict[str, VirtualServer]
) -> None:
    response = ask(
        admin_client, site["InternetRelay"], client_ip="not-an-ip", recipient="b@example.com"
    )
    assert response.context["result"] is None
    assert response.context["form"].errors["client_ip"]


def test_it_lists_an_api_change_with_its_author(
    admin_client: Client, site: dict[str, VirtualServer], admin_user: User
) -> None:
    api = APIClient()
    api.force_login(admin_user)
    internal = site["InternalRelay"]
    response = api.patch(
        f"/api/v1/servers/{internal.pk}/",
        {"relay": {"list": ["127.0.0.5", "10.1.0.0/16", "10.0.0.5"]}},
        format="json",
    )
    assert response.status_code == 200
    page = admin_client.get("/audit/")
    newest = page.context["entries"][0]
    assert newest.author == "api:root"
    assert newest.changes == ["servers[InternalRelay].relay.list: added 10.0.0.5"]
    html = page.content.decode()
    assert "api:root" in html and "servers[InternalRelay].relay.list: added 10.0.0.5" in html


def test_it_reports_secret_changes_without_their_values(site: dict[str, VirtualServer]) -> None:
    corp = site["CorpServer"]
    from mailadmin.services.config.servers import server_update

    server_update(server=corp, data={"outbound_password": "hunter2"}, author="console:root")
    server_update(server=corp, data={"outbound_password": "hunter3"}, author="console:root")
    bodies = [s.body for s in ConfigSnapshot.objects.order_by("id")]
    assert snapshot_changes(bodies[-3], bodies[-2]) == [
        "servers[CorpServer].delivery.outbound.security.password: set"
    ]
    changed = snapshot_changes(bodies[-2], bodies[-1])
    assert changed == ["servers[CorpServer].delivery.outbound.security.password: changed"]
    assert "hunter" not in json.dumps(changed)


def test_it_describes_renames_users_and_domains(site: dict[str, VirtualServer]) -> None:
    before = ConfigSnapshot.objects.latest().body
    after = json.loads(json.dumps(before))
    after["servers"][0]["name"] = "Renamed"
    after["servers"][0]["domains"].append(
        dict(after["servers"][0]["domains"][0], name="alias.test", default=False)
    )
    after["users"][0]["password_hash"] = "other"
    after["users"][0]["scram_sha256"] = "other"
    changes = snapshot_changes(before, after)
    assert "servers[Renamed].name: CorpServer → Renamed" in changes
    assert "servers[Renamed].domains[alias.test]: added (local domain)" in changes
    assert "users[alice].password: changed" in changes


def test_it_exports_json_and_yaml(admin_client: Client, site: dict[str, VirtualServer]) -> None:
    as_json = admin_client.get("/config/export/", {"format": "json"})
    assert as_json["Content-Disposition"].startswith('attachment; filename="mailadmin-v')
    document = json.loads(as_json.content)
    assert sorted(s["name"] for s in document["servers"]) == sorted(site)
    as_yaml = admin_client.get("/config/export/", {"format": "yaml"})
    assert yaml.safe_load(as_yaml.content) == document


def test_it_previews_an_import_then_applies_it_on_confirm(
    admin_client: Client, site: dict[str, VirtualServer]
) -> None:
    document = configdoc.document_export()
    document["servers"][1]["relay"]["list"].append("10.9.0.0/16")
    document["users"] = []
    text = json.dumps(document)
    before = ConfigSnapshot.objects.count()
    upload = SimpleUploadedFile("site.json", text.encode())
    preview = admin_client.post("/config/", {"file": upload})
    assert preview.status_code == 200
    assert preview.context["changes"] == [
        "servers[InternalRelay].relay.list: added 10.9.0.0/16",
        "users[alice]: deleted",
    ]
    assert ConfigSnapshot.objects.count() == before
    assert VirtualServer.objects.get(name="InternalRelay").access_entries.count() == 2
    applied = admin_client.post("/config/", {"text": text, "confirm": "1"})
    assert applied.status_code == 302 and applied["Location"] == "/audit/"
    assert ConfigSnapshot.objects.count() == before + 1
    assert ConfigSnapshot.objects.latest().author == "console:root"


def test_it_previews_errors_with_their_paths(
    admin_client: Client, site: dict[str, VirtualServer]
) -> None:
    document = configdoc.document_export()
    document["servers"][0]["delivery"]["smart_host"] = "10.0.0.2"
    response = admin_client.post("/config/", {"text": yaml.safe_dump(document)})
    assert response.status_code == 400
    paths = [e.dotted for e in response.context["errors"]]
    assert paths == ["servers[0].delivery.smart_host"]
    assert "Apply this document" not in response.content.decode()


def test_it_says_when_an_import_would_change_nothing(
    admin_client: Client, site: dict[str, VirtualServer]
) -> None:
    response = admin_client.post("/config/", {"text": json.dumps(configdoc.document_export())})
    assert response.context["changes"] == []
    assert "would change nothing" in response.content.decode()
