"""Console access rules: login everywhere, operators read only, CSRF on every form."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from mailadmin import configdoc
from mailadmin.models import ConfigSnapshot, Domain, SmtpUser, VirtualServer

pytestmark = pytest.mark.django_db


@pytest.fixture
def site(typical_site: dict[str, Any]) -> dict[str, int]:
    configdoc.document_import(typical_site, author="test")
    corp = VirtualServer.objects.get(name="CorpServer")
    return {
        "server": corp.pk,
        "domain": Domain.objects.get(server=corp, is_default=True).pk,
        "user": SmtpUser.objects.get(username="alice").pk,
    }


def pages(ids: dict[str, int]) -> list[str]:
    s, d, u = ids["server"], ids["domain"], ids["user"]
    return [
        "/",
        "/dashboard/",
        "/dashboard/?fragment=1",
        "/state.json",
        "/servers/new/",
        f"/servers/{s}/",
        f"/servers/{s}/delete/",
        f"/servers/{s}/properties/",
        f"/servers/{s}/properties/access/",
        f"/servers/{s}/domains/",
        f"/servers/{s}/domains/new/",
        f"/servers/{s}/sessions/",
        f"/servers/{s}/sessions/?fragment=1",
        f"/servers/{s}/relay-test/",
        f"/domains/{d}/",
        f"/domains/{d}/delete/",
        "/users/",
        "/users/new/",
        f"/users/{u}/",
        f"/users/{u}/password/",
        f"/users/{u}/delete/",
        "/audit/",
        "/config/",
        "/config/export/",
    ]


WRITE_POSTS = [
    "/servers/{s}/stop/",
    "/servers/{s}/delete/",
    "/servers/{s}/properties/",
    "/servers/{s}/domains/new/",
    "/servers/{s}/sessions/terminate/",
    "/servers/new/",
    "/domains/{d}/",
    "/domains/{d}/delete/",
    "/users/new/",
    "/users/{u}/",
    "/users/{u}/password/",
    "/users/{u}/delete/",
    "/config/",
]


def test_it_sends_anonymous_users_to_the_login_page_from_every_page(site: dict[str, int]) -> None:
    client = Client()
    for url in pages(site):
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith("/accounts/login/?next="), url


def test_it_shows_every_page_to_an_administrator(site: dict[str, int], admin_user: User) -> None:
    client = Client()
    client.force_login(admin_user)
    for url in pages(site):
        response = client.get(url)
        assert response.status_code == 200, (url, response.content[:300])


def test_it_refuses_users_in_no_group(site: dict[str, int]) -> None:
    client = Client()
    client.force_login(User.objects.create_user("nobody", password="nobody-password"))
    assert client.get("/").status_code == 403


def test_it_shows_operators_the_console_without_write_controls(
    site: dict[str, int], operator_user: User
) -> None:
    client = Client()
    client.force_login(operator_user)
    s = site["server"]
    for url in ["/", f"/servers/{s}/", f"/servers/{s}/properties/", f"/servers/{s}/domains/"]:
        html = client.get(url).content.decode()
        assert "read-only" in html, url
        for control in (
            'value="apply"',
            'data-state-action="start"',
            "New Virtual Server",
            ">Delete<",
        ):
            assert control not in html, (url, control)
    sheet = client.get(f"/servers/{s}/properties/").content.decode()
    assert re.search(r'<fieldset class="sheet-body"\s+disabled', sheet)
    # Reading tools stay available: the relay tester is a GET form.
    tester = client.get(
        f"/servers/{s}/relay-test/",
        {"client_ip": "10.0.0.1", "sender": "a@b.example", "recipient": "x@example.com"},
    )
    assert tester.status_code == 200


def test_it_refuses_every_write_from_an_operator(site: dict[str, int], operator_user: User) -> None:
    client = Client()
    client.force_login(operator_user)
    before = ConfigSnapshot.objects.count()
    for template in WRITE_POSTS:
        url = template.format(s=site["server"], d=site["domain"], u=site["user"])
        assert client.post(url, {"state": "stopped"}).status_code == 403, url
    assert ConfigSnapshot.objects.count() == before
    assert VirtualServer.objects.get(pk=site["server"]).state == "started"


def test_it_refuses_a_post_without_the_csrf_token(site: dict[str, int], admin_user: User) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    before = ConfigSnapshot.objects.count()
    for template in WRITE_POSTS:
        url = template.format(s=site["server"], d=site["domain"], u=site["user"])
        assert client.post(url, {}).status_code == 403, url
    assert ConfigSnapshot.objects.count() == before


def test_it_accepts_a_post_with_the_csrf_token(site: dict[str, int], admin_user: User) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    page = client.get(f"/servers/{site['server']}/").content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert token is not None
    response = client.post(f"/servers/{site['server']}/stop/", {"csrfmiddlewaretoken": token[1]})
    assert response.status_code == 302
    assert VirtualServer.objects.get(pk=site["server"]).state == "stopped"


def test_it_puts_a_csrf_token_in_every_post_form(site: dict[str, int], admin_user: User) -> None:
    client = Client()
    client.force_login(admin_user)
    for url in pages(site):
        if "fragment" in url or url.endswith((".json", "/export/")):
            continue
        html = client.get(url).content.decode()
        for form in re.findall(r"<form[^>]*method=\"post\".*?</form>", html, flags=re.S):
            assert "csrfmiddlewaretoken" in form, (url, form[:200])
