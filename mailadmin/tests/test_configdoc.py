"""The configuration document: export, atomic import, round trip, YAML, the CLI."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from mailadmin.models import ConfigSnapshot, Domain, SmtpUser, VirtualServer
from smtpworker.core.credentials import verify_password

pytestmark = pytest.mark.django_db


def put(api: APIClient, doc: Any) -> Any:
    return api.put("/api/v1/config/", doc, format="json")


def test_it_imports_the_typical_site(api: APIClient, typical_site: dict[str, Any]) -> None:
    response = put(api, typical_site)
    assert response.status_code == 200, response.content
    assert response.json()["changed"] is True
    corp = VirtualServer.objects.get(name="CorpServer")
    assert corp.auth_anonymous is False and corp.auth_basic and corp.auth_integrated
    assert corp.smart_host == "[127.0.0.10]:2526"
    assert [str(b) for b in corp.bindings.all()] == ["127.0.0.2:2525"]
    assert corp.domains.get(is_default=True).name == "bogus1"
    relay = VirtualServer.objects.get(name="InternetRelay")
    remote = relay.domains.get(name="example.com")
    assert remote.kind == "remote" and remote.relay_allowed and remote.forward_all_to_smart_host
    internal = VirtualServer.objects.get(name="InternalRelay")
    assert sorted(e.value for e in internal.access_entries.filter(list="relay")) == [
        "10.1.0.0/16",
        "127.0.0.5",
    ]
    alice = SmtpUser.objects.get(username="alice")
    assert verify_password("change-me-alice", alice.password_hash)
    assert [s.name for s in alice.servers.all()] == ["CorpServer"]
    # fields the document leaves out take the IIS defaults
    assert relay.max_message_size_kb == 2048 and relay.retry_minutes == [15, 30, 60, 240]


def test_a_reimported_export_changes_nothing(api: APIClient, typical_site: dict[str, Any]) -> None:
    put(api, typical_site)
    version = ConfigSnapshot.objects.latest().pk
    exported = api.get("/api/v1/config/").json()
    assert "password" not in json.dumps(exported["users"])
    response = put(api, exported)
    assert response.status_code == 200, response.content
    assert response.json() == {"version": version, "changed": False}
    assert api.get("/api/v1/config/").json() == exported
    # the secret left out of the export kept its stored value
    assert verify_password("change-me-alice", SmtpUser.objects.get().password_hash)


def test_the_same_document_twice_is_one_version(
    api: APIClient, typical_site: dict[str, Any]
) -> None:
    first = put(api, typical_site).json()
    second = put(api, typical_site).json()
    assert second == {"version": first["version"], "changed": False}


def test_a_bad_document_changes_nothing_and_lists_every_error(
    api: APIClient, typical_site: dict[str, Any]
) -> None:
    put(api, typical_site)
    version = ConfigSnapshot.objects.latest().pk
    before = api.get("/api/v1/config/").json()
    bad = copy.deepcopy(typical_site)
    bad["servers"][0]["delivery"]["smart_host"] = "10.0.0.2"
    bad["servers"][1]["bindings"] = ["127.0.0.2:2525"]  # taken by CorpServer
    bad["servers"][2]["relay"]["list"] = ["127.0.0.5", "not a network/99"]
    bad["servers"][2]["connection_timeout"] = -1
    bad["users"][0]["servers"] = ["NoSuchServer"]
    response = put(api, bad)
    assert response.status_code == 400
    body = response.json()
    assert "nothing was changed" in body["detail"]
    paths = {e["path"] for e in body["errors"]}
    assert {
        "servers[0].delivery.smart_host",
        "servers[2].relay.list[1]",
        "servers[2].connection_timeout",
        "users[0].servers[0]",
    } <= paths
    assert ConfigSnapshot.objects.latest().pk == version
    assert api.get("/api/v1/config/").json() == before


def test_service_level_errors_carry_their_paths(
    api: APIClient, typical_site: dict[str, Any]
) -> None:
    bad = copy.deepcopy(typical_site)
    bad["servers"][1]["bindings"] = ["127.0.0.9:2525", "*:2525"]
    bad["servers"][2]["bindings"] = ["127.0.0.4:2525", "127.0.0.2:2525"]
    bad["servers"][2]["domains"] = [{"name": "*.local.test", "type": "local"}]
    response = put(api, bad)
    assert response.status_code == 400
    errors: dict[str, str] = {}
    for error in response.json()["errors"]:
        errors[error["path"]] = errors.get(error["path"], "") + error["message"]
    assert "'CorpServer'" in errors["servers[1].bindings[1]"]
    assert "overlaps 127.0.0.9:2525" in errors["servers[1].bindings[1]"]
    assert "'CorpServer'" in errors["servers[2].bindings[1]"]
    assert "wildcard" in errors["servers[2].domains[0].name"]
    assert not VirtualServer.objects.exists()


def test_duplicate_names_are_reported(api: APIClient, typical_site: dict[str, Any]) -> None:
    bad = copy.deepcopy(typical_site)
    bad["servers"][2]["name"] = "CorpServer"
    response = put(api, bad)
    assert response.status_code == 400
    paths = {e["path"] for e in response.json()["errors"]}
    assert {"servers[0].name", "servers[2].name"} <= paths


def test_absent_objects_are_removed(api: APIClient, typical_site: dict[str, Any]) -> None:
    put(api, typical_site)
    smaller = copy.deepcopy(typical_site)
    del smaller["servers"][2]
    smaller["servers"][1]["domains"] = []
    smaller["users"] = []
    assert put(api, smaller).status_code == 200
    assert sorted(VirtualServer.objects.values_list("name", flat=True)) == [
        "CorpServer",
        "InternetRelay",
    ]
    assert not Domain.objects.filter(name="example.com").exists()
    assert not SmtpUser.objects.exists()


def test_yaml_is_accepted_and_served(api: APIClient, typical_site: dict[str, Any]) -> None:
    text = yaml.safe_dump(typical_site)
    response = api.put("/api/v1/config/", text, content_type="application/yaml")
    assert response.status_code == 200, response.content
    served = api.get("/api/v1/config/", HTTP_ACCEPT="application/yaml")
    assert served["Content-Type"].startswith("application/yaml")
    doc = yaml.safe_load(served.content)
    assert [s["name"] for s in doc["servers"]] == ["CorpServer", "InternalRelay", "InternetRelay"]


def test_bad_yaml_is_a_clear_400(api: APIClient) -> None:
    response = api.put("/api/v1/config/", "servers: [unclosed", content_type="application/yaml")
    assert response.status_code == 400
    assert "YAML" in response.json()["detail"]


def test_the_cli_round_trips(tmp_path: Path, typical_site: dict[str, Any]) -> None:
    source = tmp_path / "site.yaml"
    source.write_text(yaml.safe_dump(typical_site))
    out = io.StringIO()
    call_command("config", "import", str(source), stdout=out)
    assert "changed; version" in out.getvalue()
    exported = tmp_path / "export.json"
    call_command("config", "export", str(exported))
    out = io.StringIO()
    call_command("config", "import", str(exported), stdout=out)
    assert "unchanged" in out.getvalue()


def test_the_cli_lists_errors_and_fails(tmp_path: Path, typical_site: dict[str, Any]) -> None:
    typical_site["servers"][0]["bindings"] = ["nonsense"]
    source = tmp_path / "bad.json"
    source.write_text(json.dumps(typical_site))
    err = io.StringIO()
    with pytest.raises(CommandError, match="nothing was changed"):
        call_command("config", "import", str(source), stderr=err)
    assert "servers[0].bindings[0]:" in err.getvalue()
    assert not VirtualServer.objects.exists()
