"""Domains over the API: one default local domain, aliases, remote domains and their rules."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from mailadmin.models import ConfigSnapshot, Domain
from mailadmin.services.config.secrets import secret_open
from mailadmin.tests.factories import make_server

pytestmark = pytest.mark.django_db


@pytest.fixture
def server(api: APIClient) -> dict[str, Any]:
    return make_server(api, name="Corp", default_domain="corp.test")


def add_domain(api: APIClient, server: dict[str, Any], **fields: Any) -> dict[str, Any]:
    response = api.post("/api/v1/domains/", {"server": server["id"], **fields}, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def test_a_new_server_has_exactly_its_default_domain(
    api: APIClient, server: dict[str, Any]
) -> None:
    body = api.get(f"/api/v1/domains/?server={server['id']}").json()
    assert body["count"] == 1
    [domain] = body["results"]
    assert domain == {
        "id": domain["id"],
        "server": server["id"],
        "name": "corp.test",
        "type": "local",
        "default": True,
        "relay_allowed": False,
        "smart_host": "",
        "forward_all_to_smart_host": False,
        "use_helo": False,
        "outbound": {
            "tls": "opportunistic",
            "tls_ca": "",
            "auth": {
                "method": "anonymous",
                "username": "",
                "password_set": False,
                "allow_cleartext": False,
            },
        },
    }
    assert server["default_domain"] == "corp.test"


def test_it_adds_an_alias_and_a_remote_wildcard(api: APIClient, server: dict[str, Any]) -> None:
    alias = add_domain(api, server, name="alias.test", type="local")
    assert (alias["type"], alias["default"]) == ("local", False)
    remote = add_domain(
        api,
        server,
        name="*.example.com",
        type="remote",
        relay_allowed=True,
        smart_host="[10.0.0.2]",
        forward_all_to_smart_host=True,
    )
    assert remote["name"] == "*.example.com"
    assert remote["relay_allowed"] is True
    assert remote["smart_host"] == "[10.0.0.2]"
    assert remote["forward_all_to_smart_host"] is True
    assert remote["default"] is False
    names = {d.name: (d.kind, d.is_default) for d in Domain.objects.all()}
    assert names == {
        "corp.test": ("local", True),
        "alias.test": ("local", False),
        "*.example.com": ("remote", False),
    }
    assert api.get(f"/api/v1/servers/{server['id']}/").json()["default_domain"] == "corp.test"


def test_a_remote_domain_is_the_default_kind(api: APIClient, server: dict[str, Any]) -> None:
    assert add_domain(api, server, name="partner.test")["type"] == "remote"


def test_it_stores_names_lowercased_without_the_trailing_dot(
    api: APIClient, server: dict[str, Any]
) -> None:
    alias = add_domain(api, server, name="Alias.Example.TEST.", type="local")
    assert alias["name"] == "alias.example.test"
    remote = add_domain(api, server, name="*.Partner.COM.", smart_host="Relay.Partner.COM.")
    assert remote["name"] == "*.partner.com"
    assert remote["smart_host"] == "relay.partner.com"
    stored = set(Domain.objects.values_list("name", flat=True))
    assert stored == {"corp.test", "alias.example.test", "*.partner.com"}


def test_a_local_domain_cannot_be_a_wildcard(api: APIClient, server: dict[str, Any]) -> None:
    versions = ConfigSnapshot.objects.count()
    response = api.post(
        "/api/v1/domains/",
        {"server": server["id"], "name": "*.corp.test", "type": "local"},
        format="json",
    )
    assert response.status_code == 400
    assert response.json() == {"name": ["A local domain cannot be a wildcard."]}
    assert Domain.objects.count() == 1
    assert ConfigSnapshot.objects.count() == versions


def test_forwarding_everything_needs_a_smart_host(api: APIClient, server: dict[str, Any]) -> None:
    response = api.post(
        "/api/v1/domains/",
        {"server": server["id"], "name": "partner.test", "forward_all_to_smart_host": True},
        format="json",
    )
    assert response.status_code == 400
    assert response.json() == {
        "smart_host": ["Give the smart host that all mail for this domain is forwarded to."]
    }
    assert Domain.objects.count() == 1


def test_a_bad_smart_host_is_reported_at_its_field(api: APIClient, server: dict[str, Any]) -> None:
    response = api.post(
        "/api/v1/domains/",
        {"server": server["id"], "name": "partner.test", "smart_host": "10.0.0.2"},
        format="json",
    )
    assert response.status_code == 400
    assert list(response.json()) == ["smart_host"]
    assert "[10.0.0.2]" in response.json()["smart_host"][0]


def test_a_name_is_unique_per_server(api: APIClient, server: dict[str, Any]) -> None:
    add_domain(api, server, name="partner.test")
    versions = ConfigSnapshot.objects.count()
    for name in ("partner.test", "Partner.Test.", "corp.test"):
        response = api.post(
            "/api/v1/domains/", {"server": server["id"], "name": name}, format="json"
        )
        assert response.status_code == 400, name
        assert list(response.json()) == ["name"], name
    assert Domain.objects.count() == 2
    assert ConfigSnapshot.objects.count() == versions
    other = make_server(api, name="Other", default_domain="other.test", bindings=["127.0.0.3:25"])
    assert add_domain(api, other, name="partner.test")["server"] == other["id"]


def test_a_rename_onto_an_existing_name_is_refused(api: APIClient, server: dict[str, Any]) -> None:
    alias = add_domain(api, server, name="alias.test", type="local")
    response = api.patch(f"/api/v1/domains/{alias['id']}/", {"name": "corp.test"}, format="json")
    assert response.status_code == 400
    assert list(response.json()) == ["name"]
    assert Domain.objects.get(pk=alias["id"]).name == "alias.test"


def test_the_default_domain_cannot_be_deleted(api: APIClient, server: dict[str, Any]) -> None:
    default = Domain.objects.get(is_default=True)
    versions = ConfigSnapshot.objects.count()
    response = api.delete(f"/api/v1/domains/{default.pk}/")
    assert response.status_code == 400
    assert list(response.json()) == ["name"]
    assert "default domain cannot be deleted" in response.json()["name"][0]
    assert Domain.objects.filter(pk=default.pk, is_default=True).exists()
    assert ConfigSnapshot.objects.count() == versions


def test_the_default_cannot_be_turned_off_or_made_remote(
    api: APIClient, server: dict[str, Any]
) -> None:
    default = Domain.objects.get(is_default=True)
    off = api.patch(f"/api/v1/domains/{default.pk}/", {"default": False}, format="json")
    assert off.status_code == 400
    assert list(off.json()) == ["default"]
    remote = api.patch(f"/api/v1/domains/{default.pk}/", {"type": "remote"}, format="json")
    assert remote.status_code == 400
    assert list(remote.json()) == ["default"]
    assert Domain.objects.get(pk=default.pk).is_default is True
    assert Domain.objects.get(pk=default.pk).kind == "local"


def test_it_deletes_an_alias(api: APIClient, server: dict[str, Any]) -> None:
    alias = add_domain(api, server, name="alias.test", type="local")
    assert api.delete(f"/api/v1/domains/{alias['id']}/").status_code == 204
    assert list(Domain.objects.values_list("name", flat=True)) == ["corp.test"]


def test_making_an_alias_the_default_demotes_the_old_one(
    api: APIClient, server: dict[str, Any]
) -> None:
    alias = add_domain(api, server, name="alias.test", type="local")
    old = Domain.objects.get(is_default=True)
    response = api.patch(f"/api/v1/domains/{alias['id']}/", {"default": True}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["default"] is True
    old.refresh_from_db()
    assert (old.name, old.kind, old.is_default) == ("corp.test", "local", False)
    assert Domain.objects.filter(is_default=True).get().pk == alias["id"]
    assert api.get(f"/api/v1/servers/{server['id']}/").json()["default_domain"] == "alias.test"


def test_a_remote_domain_cannot_be_the_default(api: APIClient, server: dict[str, Any]) -> None:
    remote = add_domain(api, server, name="partner.test")
    response = api.patch(f"/api/v1/domains/{remote['id']}/", {"default": True}, format="json")
    assert response.status_code == 400
    assert list(response.json()) == ["default"]
    assert Domain.objects.get(is_default=True).name == "corp.test"


def test_renaming_the_servers_default_domain_renames_the_row(
    api: APIClient, server: dict[str, Any]
) -> None:
    default = Domain.objects.get(is_default=True)
    response = api.patch(
        f"/api/v1/servers/{server['id']}/", {"default_domain": "Dummy.Invalid."}, format="json"
    )
    assert response.status_code == 200, response.content
    assert response.json()["default_domain"] == "dummy.invalid"
    renamed = Domain.objects.get()
    assert (renamed.pk, renamed.name, renamed.is_default) == (default.pk, "dummy.invalid", True)


def test_a_domain_cannot_move_to_another_server(api: APIClient, server: dict[str, Any]) -> None:
    alias = add_domain(api, server, name="alias.test", type="local")
    other = make_server(api, name="Other", default_domain="other.test", bindings=["127.0.0.3:25"])
    response = api.patch(f"/api/v1/domains/{alias['id']}/", {"server": other["id"]}, format="json")
    assert response.status_code == 400
    assert list(response.json()) == ["server"]
    assert Domain.objects.get(pk=alias["id"]).server_id == server["id"]


def test_the_outbound_password_is_write_only_and_sealed(
    api: APIClient, server: dict[str, Any]
) -> None:
    remote = add_domain(
        api,
        server,
        name="partner.test",
        smart_host="smtp.partner.test:587",
        outbound={
            "tls": "required",
            "auth": {"method": "basic", "username": "corp", "password": "s3cret-pw"},
        },
    )
    assert remote["outbound"] == {
        "tls": "required",
        "tls_ca": "",
        "auth": {
            "method": "basic",
            "username": "corp",
            "password_set": True,
            "allow_cleartext": False,
        },
    }
    for body in (api.get(f"/api/v1/domains/{remote['id']}/"), api.get("/api/v1/domains/")):
        assert "s3cret-pw" not in body.content.decode()
        assert "enc:v1:" not in body.content.decode()
    stored = Domain.objects.get(pk=remote["id"]).outbound_password
    assert stored.startswith("enc:v1:")
    assert secret_open(stored) == "s3cret-pw"
    cleared = api.patch(
        f"/api/v1/domains/{remote['id']}/", {"outbound": {"auth": {"password": ""}}}, format="json"
    )
    assert cleared.status_code == 200, cleared.content
    assert cleared.json()["outbound"]["auth"]["password_set"] is False
    assert Domain.objects.get(pk=remote["id"]).outbound_password == ""


def test_the_same_outbound_password_again_creates_no_version(
    api: APIClient, server: dict[str, Any]
) -> None:
    remote = add_domain(api, server, name="partner.test", outbound={"auth": {"password": "pw"}})
    versions = ConfigSnapshot.objects.count()
    response = api.patch(
        f"/api/v1/domains/{remote['id']}/",
        {"outbound": {"auth": {"password": "pw"}}},
        format="json",
    )
    assert response.status_code == 200, response.content
    assert ConfigSnapshot.objects.count() == versions


def test_it_filters_by_server(api: APIClient, server: dict[str, Any]) -> None:
    add_domain(api, server, name="alias.test", type="local")
    other = make_server(api, name="Other", default_domain="other.test", bindings=["127.0.0.3:25"])
    add_domain(api, other, name="partner.test")
    mine = api.get(f"/api/v1/domains/?server={server['id']}").json()
    assert [d["name"] for d in mine["results"]] == ["corp.test", "alias.test"]
    theirs = api.get(f"/api/v1/domains/?server={other['id']}").json()
    assert [d["name"] for d in theirs["results"]] == ["other.test", "partner.test"]
    assert api.get("/api/v1/domains/").json()["count"] == 4


def test_the_default_domain_cannot_take_a_remote_domains_name(
    api: APIClient, server: dict[str, Any]
) -> None:
    add_domain(api, server, name="partner.test")
    response = api.patch(
        f"/api/v1/servers/{server['id']}/", {"default_domain": "partner.test"}, format="json"
    )
    assert response.status_code == 400
    assert list(response.json()) == ["default_domain"]
    assert Domain.objects.get(is_default=True).name == "corp.test"
    assert Domain.objects.get(name="partner.test").kind == "remote"


def test_the_default_domain_can_take_an_aliass_name(api: APIClient, server: dict[str, Any]) -> None:
    add_domain(api, server, name="alias.test", type="local")
    default = Domain.objects.get(is_default=True)
    response = api.patch(
        f"/api/v1/servers/{server['id']}/", {"default_domain": "alias.test"}, format="json"
    )
    assert response.status_code == 200, response.content
    [domain] = Domain.objects.all()
    assert (domain.pk, domain.name, domain.is_default) == (default.pk, "alias.test", True)
