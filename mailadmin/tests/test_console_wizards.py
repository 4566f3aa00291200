"""The New SMTP Virtual Server and New Domain wizards: every step validated, one write."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from mailadmin import configdoc
from mailadmin.models import ConfigSnapshot, Domain, VirtualServer

pytestmark = pytest.mark.django_db


def step(client: Client, url: str, answers: dict[str, Any], index: int, nav: str = "next") -> Any:
    return client.post(
        url, {**answers, "wizard_step": index, "nav": nav, "seen": list(range(index + 1))}
    )


NEW = "/servers/new/"
GOOD = {
    "name": "CorpServer",
    "description": "Corporate relay",
    "ip_address": "127.0.0.2",
    "port": "2525",
    "home_directory": "/srv/mailroot/corp",
    "default_domain": "bogus1",
}


def test_it_walks_the_new_server_wizard_and_creates_once(admin_client: Client) -> None:
    assert "Step 1 of 4" in admin_client.get(NEW).content.decode()
    before = ConfigSnapshot.objects.count()
    for index, title in enumerate(["IP address", "Home directory", "Default domain"]):
        response = step(admin_client, NEW, GOOD, index)
        assert response.status_code == 200
        assert f"Step {index + 2} of 4: {title}" in response.content.decode()
    assert ConfigSnapshot.objects.count() == before  # checking a step writes nothing
    response = step(admin_client, NEW, GOOD, 3, nav="finish")
    server = VirtualServer.objects.get(name="CorpServer")
    assert response.status_code == 302
    assert response["Location"] == f"/servers/{server.pk}/"
    assert [str(b) for b in server.bindings.all()] == ["127.0.0.2:2525"]
    assert server.home_directory == "/srv/mailroot/corp"
    assert server.state == "stopped"
    assert server.domains.get(is_default=True).name == "bogus1"
    assert ConfigSnapshot.objects.count() == before + 1
    assert ConfigSnapshot.objects.latest().author == "console:root"


@pytest.mark.parametrize(
    ("index", "answers", "field", "message"),
    [
        (0, {"name": "bad name!"}, "name", "Use letters, digits"),
        (1, {"ip_address": "mail.example.com"}, "ip_address", "not a name"),
        (1, {"port": "70000"}, "port", "65535"),
        (2, {"home_directory": "relative/path"}, "home_directory", "absolute path"),
        (3, {"default_domain": "not a domain"}, "default_domain", ""),
    ],
)
def test_it_stops_at_the_step_with_the_error(
    admin_client: Client, index: int, answers: dict[str, Any], field: str, message: str
) -> None:
    nav = "finish" if index == 3 else "next"
    response = step(admin_client, NEW, {**GOOD, **answers}, index, nav=nav)
    assert response.status_code == 400
    assert response.context["index"] == index
    assert message in " ".join(response.context["form"].errors[field])
    assert not VirtualServer.objects.exists()


def test_it_refuses_a_taken_name_on_the_first_step(
    admin_client: Client, typical_site: dict[str, Any]
) -> None:
    configdoc.document_import(typical_site, author="test")
    response = step(admin_client, NEW, {**GOOD}, 0)
    assert response.status_code == 400
    assert "already exists" in " ".join(response.context["form"].errors["name"])


def test_it_refuses_to_start_on_a_taken_binding(
    admin_client: Client, typical_site: dict[str, Any]
) -> None:
    configdoc.document_import(typical_site, author="test")
    answers = {**GOOD, "name": "Second", "start": "on"}
    response = step(admin_client, NEW, answers, 1)
    assert response.status_code == 400
    assert "CorpServer" in " ".join(response.context["form"].errors["ip_address"])
    del answers["start"]
    assert step(admin_client, NEW, answers, 1).status_code == 200  # stopped: no conflict


def test_it_goes_back_without_losing_answers(admin_client: Client) -> None:
    response = step(admin_client, NEW, GOOD, 2, nav="back")
    assert response.context["index"] == 1
    html = response.content.decode()
    assert 'value="127.0.0.2"' in html
    assert 'name="home_directory" value="/srv/mailroot/corp"' in html  # carried along


def test_it_creates_a_remote_domain_and_opens_its_properties(
    admin_client: Client, typical_site: dict[str, Any]
) -> None:
    configdoc.document_import(typical_site, author="test")
    server = VirtualServer.objects.get(name="InternalRelay")
    url = f"/servers/{server.pk}/domains/new/"
    assert step(admin_client, url, {"kind": "remote"}, 0).status_code == 200
    bad = step(admin_client, url, {"kind": "remote", "name": "exa mple.com"}, 1, nav="finish")
    assert bad.status_code == 400 and bad.context["form"].errors["name"]
    response = step(admin_client, url, {"kind": "remote", "name": "*.Example.org"}, 1, nav="finish")
    domain = Domain.objects.get(server=server, name="*.example.org")
    assert response["Location"] == f"/domains/{domain.pk}/"
    assert domain.kind == "remote" and not domain.relay_allowed


def test_it_refuses_a_wildcard_alias(admin_client: Client, typical_site: dict[str, Any]) -> None:
    configdoc.document_import(typical_site, author="test")
    server = VirtualServer.objects.get(name="InternalRelay")
    response = step(
        admin_client,
        f"/servers/{server.pk}/domains/new/",
        {"kind": "local", "name": "*.corp.test"},
        1,
        nav="finish",
    )
    assert response.status_code == 400
    assert "wildcard" in " ".join(response.context["form"].errors["name"])
