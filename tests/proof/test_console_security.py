"""Suite 6: the console and the API keep their doors shut (DESIGN invariant 7).

The URLs come from ``mailadmin.urls`` itself, every pattern filled in with real ids, so a
page added later is checked without anyone remembering to list it:

* without login, every page and action is refused (console and Django admin: redirect to
  their login page; API: 401) and changes nothing;
* every POST without the CSRF token is refused (403) and changes nothing;
* an operator cannot write, neither through the console nor through the API;
* uploaded TLS private keys and passwords (smart host, remote domain, SMTP users) are
  never shown back, on any page, API answer or export, and not in their sealed or hashed
  forms either; nor does a form that failed validation echo a secret typed into it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
from django.contrib.auth.models import User
from django.test import Client
from django.urls import Resolver404, URLPattern, URLResolver, get_resolver, resolve
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from mailadmin import configdoc
from mailadmin.models import (
    Domain,
    SmtpUser,
    VirtualServer,
)
from mailadmin.tests.factories import db_state, spool

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_hashing")]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
LOGIN = "/accounts/login/"
# Pages that are public on purpose: logging in and out, and the API's token exchange (it
# authenticates by the name and password in its body and sets no cookie, so CSRF has
# nothing to ride on).
PUBLIC = {"login", "logout", "admin:login", "admin:logout", "token"}
CSRF_FREE = {"token"}
# Django's password reset by e-mail, which mailadmin/urls.py includes with the rest of
# django.contrib.auth.urls: see test_password_reset_is_not_open_to_anyone.
PASSWORD_RESET = {
    "password_reset",
    "password_reset_done",
    "password_reset_confirm",
    "password_reset_complete",
}

SMART_HOST_PASSWORD = "smart-host-secret-6f1c"
DOMAIN_PASSWORD = "partner-domain-secret-93ab"
SMTP_PASSWORD = "smtp-user-secret-41d7"
TYPED_PASSWORD = "typed-but-refused-secret-8e22"


@dataclass(frozen=True)
class Page:
    name: str  # namespace:name, or the view's name for unnamed patterns
    url: str
    area: str  # "console", "api", "admin" or "auth"


# --- The site under test --------------------------------------------------------------------


@dataclass
class Site:
    server: VirtualServer
    domain: Domain
    remote: Domain
    user: SmtpUser
    queue_id: str
    key_pem: str
    cert_pem: str

    def secrets(self) -> dict[str, str]:
        """Every secret in plain text, and every form it is stored in."""
        server = VirtualServer.objects.get(pk=self.server.pk)
        remote = Domain.objects.get(pk=self.remote.pk)
        user = SmtpUser.objects.get(pk=self.user.pk)
        key_lines = [line for line in self.key_pem.splitlines() if "-----" not in line]
        found = {
            "smart host password": SMART_HOST_PASSWORD,
            "remote domain password": DOMAIN_PASSWORD,
            "SMTP password": SMTP_PASSWORD,
            "private key (line 2)": key_lines[1],
            "private key (last line)": key_lines[-1],
            "sealed private key": server.tls_private_key,
            "sealed smart host password": server.outbound_password,
            "sealed domain password": remote.outbound_password,
            "password hash": user.password_hash,
            "SCRAM verifier": user.scram_sha256,
            "CRAM-MD5 context": user.cram_md5_context,
        }
        assert all(found.values()), [k for k, v in found.items() if not v]
        return found


@pytest.fixture
def site(settings: Any, tmp_path: Path, admin_user: User) -> Site:
    """The typical site with every kind of secret set through the API, and a queued message."""
    settings.MAILADMIN_MAILROOT = tmp_path / "mailroot"
    configdoc.document_import(json.loads((EXAMPLES / "typical-site.json").read_text()), author="t")
    api = APIClient()
    api.force_login(admin_user)
    ca = trustme.CA()
    leaf = ca.issue_cert("corp.example.net")
    cert_pem = "".join(blob.bytes().decode() for blob in leaf.cert_chain_pems)
    key_pem = leaf.private_key_pem.bytes().decode()
    server = VirtualServer.objects.get(name="CorpServer")
    body = {
        "tls": {"certificate": cert_pem, "private_key": key_pem},
        "delivery": {
            "outbound": {
                "auth": {"method": "basic", "username": "relay", "password": SMART_HOST_PASSWORD}
            }
        },
    }
    response = api.patch(f"/api/v1/servers/{server.pk}/", body, format="json")
    assert response.status_code == 200, response.content
    remote = Domain.objects.filter(kind="remote").first()
    assert remote is not None
    body = {"outbound": {"auth": {"method": "basic", "username": "p", "password": DOMAIN_PASSWORD}}}
    response = api.patch(f"/api/v1/domains/{remote.pk}/", body, format="json")
    assert response.status_code == 200, response.content
    user = SmtpUser.objects.get(username="alice")
    body = {"password": SMTP_PASSWORD, "allow_cram_md5": True}
    response = api.patch(f"/api/v1/users/{user.pk}/", body, format="json")
    assert response.status_code == 200, response.content
    return Site(
        server=server,
        domain=Domain.objects.get(server=server, is_default=True),
        remote=remote,
        user=user,
        queue_id=_queued_message(),
        key_pem=key_pem,
        cert_pem=cert_pem,
    )


def _queued_message() -> str:
    queue_id = spool(
        "a@corp.test",
        "b@example.com",
        data=b"Subject: queued\r\n\r\nhello\r\n",
        server="CorpServer",
    )
    return queue_id


# --- Every URL of mailadmin.urls ------------------------------------------------------------

_GROUP = re.compile(r"\(\?P<(\w+)>([^()]*)\)")


def _leaves(patterns: list[Any], prefix: str = "", namespace: str = "") -> Iterator[Any]:
    for pattern in patterns:
        regex = pattern.pattern.regex.pattern.lstrip("^").replace(r"\Z", "").rstrip("$")
        if isinstance(pattern, URLResolver):
            ns = pattern.namespace or namespace
            yield from _leaves(pattern.url_patterns, prefix + regex, ns)
        elif isinstance(pattern, URLPattern):
            name = f"{namespace}:{pattern.name}" if namespace and pattern.name else pattern.name
            yield prefix + regex, name or pattern.lookup_str, pattern.callback


def _value(param: str, choices: str, route: str, site: Site) -> str:
    if choices.startswith("\\."):  # DRF's format suffix converter: ".json"
        return ".json"
    if "|" in choices:
        return choices.split("|")[0]
    by_route = {"servers": site.server.pk, "domains": site.domain.pk, "users": site.user.pk}
    values: dict[str, Any] = {
        "tab": "access",
        "queue_id": site.queue_id,
        "format": "json",
        "object_id": 1,
        "app_label": "auth",
        "content_type_id": 1,
        "uidb64": "MQ",
        "token": "set-password",
        "id": f"node1:{'0' * 16}",
        "url": "no-such-page/",  # the admin's catch-all
    }
    if param == "pk":
        if route.startswith("api/v1/queues"):
            return "example.com"
        if route.startswith("api/v1/sessions"):
            return values["id"]
        prefix = route.removeprefix("api/v1/").split("/")[0]
        assert prefix in by_route, f"teach the suite which object {route} takes"
        return str(by_route[prefix])
    assert param in values, f"teach the suite a value for <{param}> in {route}"
    return str(values[param])


def pages(site: Site) -> list[Page]:
    """Every URL pattern of the project with its parameters filled in."""
    found: dict[str, Page] = {}
    for regex, name, callback in _leaves(get_resolver().url_patterns):
        if "static" in regex or "(?P<path>" in regex:
            continue
        url = _GROUP.sub(lambda m, r=regex: _value(m[1], m[2], r, site), regex)
        url = "/" + re.sub(r"\\(.)", r"\1", url.replace("/?", "/"))
        assert "(" not in url and "\\" not in url, f"cannot fill {regex}"
        if url.endswith("//"):
            url = url[:-1]
        try:
            resolved = resolve(url).func
        except Resolver404:
            raise AssertionError(f"built {url} from {regex}, which does not resolve") from None
        assert resolved is callback, (regex, url)
        area = url.split("/")[1]
        area = {"api": "api", "admin": "admin", "accounts": "auth"}.get(area, "console")
        found.setdefault(url, Page(str(name), url, area))
    return list(found.values())


def test_the_suite_sees_every_kind_of_page(site: Site) -> None:
    names = {page.name for page in pages(site)}
    for expected in (
        "console:home",
        "console:server-state",
        "console:properties-tab",
        "console:user-password",
        "console:config-export",
        "server-detail",
        "config-document",
        "admin:index",
        "password_change",
    ):
        assert expected in names, expected
    assert len(names) > 60


# --- Without login --------------------------------------------------------------------------


def _refused_without_login(page: Page, response: Any) -> bool:
    if page.area == "api":
        return bool(response.status_code == 401)
    if response.status_code in (401, 403):  # e.g. /metrics, which has its own rule
        return True
    if response.status_code == 405:  # a POST-only action asked with GET, or the reverse
        return True
    login = "/admin/login/" if page.area == "admin" else LOGIN
    return response.status_code == 302 and response["Location"].startswith(login + "?next=")


def test_every_page_and_action_is_refused_without_login(site: Site) -> None:
    client = Client()
    before = db_state()
    open_doors = []
    for page in pages(site):
        if page.name in PUBLIC | PASSWORD_RESET:
            continue
        for method in ("get", "post"):
            response = getattr(client, method)(page.url)
            if not _refused_without_login(page, response):
                open_doors.append((method.upper(), page.url, response.status_code))
    assert not open_doors, open_doors
    assert db_state() == before


def test_the_login_page_is_open(site: Site) -> None:
    response = Client().get(LOGIN)
    assert response.status_code == 200 and b"csrfmiddlewaretoken" in response.content


def test_password_reset_is_not_open_to_anyone(site: Site) -> None:
    client = Client()
    open_doors = [
        page.url
        for page in pages(site)
        if page.name in PASSWORD_RESET and not _refused_without_login(page, client.get(page.url))
    ]
    assert not open_doors, open_doors
    assert client.get("/accounts/password_reset/").status_code == 404


# --- CSRF -----------------------------------------------------------------------------------


def test_every_post_without_the_csrf_token_is_refused(site: Site, admin_user: User) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    before = db_state()
    accepted = []
    for page in pages(site):
        if page.name in CSRF_FREE:
            continue
        response = client.post(page.url, {"state": "stopped", "name": "x"})
        if response.status_code != 403:
            accepted.append((page.url, response.status_code))
    assert not accepted, accepted
    assert db_state() == before


def test_every_form_of_every_page_carries_the_csrf_token(site: Site, admin_user: User) -> None:
    client = Client()
    client.force_login(admin_user)
    for page in pages(site):
        if page.area not in ("console", "auth") or page.name == "logout":
            continue
        response = client.get(page.url)
        if response.status_code != 200 or "html" not in response.get("Content-Type", ""):
            continue
        html = response.content.decode()
        for form in re.findall(r"<form[^>]*method=\"post\".*?</form>", html, flags=re.S | re.I):
            assert "csrfmiddlewaretoken" in form, (page.url, form[:200])


# --- Operators ------------------------------------------------------------------------------


def test_an_operator_cannot_write_through_the_console(site: Site, operator_user: User) -> None:
    client = Client()
    client.force_login(operator_user)
    before = db_state()
    written = []
    for page in pages(site):
        if page.area != "console":
            continue
        response = client.post(page.url, {"state": "stopped", "name": "x", "action": "delete"})
        if response.status_code not in (403, 405):
            written.append((page.url, response.status_code))
    assert not written, written
    assert db_state() == before


@pytest.mark.parametrize("auth", ["session", "token"])
def test_an_operator_cannot_write_through_the_api(
    site: Site, operator_user: User, auth: str
) -> None:
    client = APIClient()
    if auth == "session":
        client.force_login(operator_user)
    else:
        token = Token.objects.create(user=operator_user)
        client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    before = db_state()
    written = []
    for page in pages(site):
        if page.area != "api" or page.name in PUBLIC | {"schema", "docs"}:
            continue
        for method in ("post", "put", "patch", "delete"):
            response = getattr(client, method)(page.url, {"name": "x"}, format="json")
            allowed = (403, 405)
            if page.name == "server-check-relay" and method == "post":
                allowed = (200, 400)  # computes an answer, changes nothing
            if response.status_code not in allowed:
                written.append((method.upper(), page.url, response.status_code))
    assert not written, written
    assert db_state() == before


def test_operators_and_users_in_no_group_stay_out_of_the_django_admin(
    site: Site, operator_user: User
) -> None:
    client = Client()
    client.force_login(operator_user)
    for page in pages(site):
        if page.area == "admin" and page.name not in PUBLIC:
            response = client.get(page.url)
            assert response.status_code in (302, 404, 405), (page.url, response.status_code)
            if response.status_code == 302:  # to the admin's login, or its index that does
                assert response["Location"].startswith(("/admin/login/", "/admin/"))


# --- Secrets --------------------------------------------------------------------------------


def _leaks(body: bytes, secrets: dict[str, str]) -> list[str]:
    text = body.decode("utf-8", "replace")
    return [what for what, secret in secrets.items() if secret in text]


def _exports(client: Client, api: APIClient) -> Iterator[tuple[str, bytes]]:
    yield "console export", client.get("/config/export/").content
    yield "API config JSON", api.get("/api/v1/config/").content
    yield "API config YAML", api.get("/api/v1/config/", {"format": "yaml"}).content
    yield "API schema", api.get("/api/v1/schema/", {"format": "json"}).content


@pytest.mark.parametrize("who", ["admin_user", "operator_user"])
def test_secrets_are_never_shown_back(site: Site, who: str, request: pytest.FixtureRequest) -> None:
    user = request.getfixturevalue(who)
    client = Client()
    client.force_login(user)
    api = APIClient()
    api.force_login(user)
    secrets = site.secrets()
    leaks = []
    shown = 0
    for page in pages(site):
        if page.area == "admin" or page.name == "logout":
            continue
        response = (api if page.area == "api" else client).get(page.url)
        if response.status_code == 200:
            shown += 1
        leaks += [(page.url, what) for what in _leaks(response.content, secrets)]
    for what_page, body in _exports(client, api):
        leaks += [(what_page, what) for what in _leaks(body, secrets)]
    assert not leaks, leaks
    assert shown > 30  # the pages were really shown, not refused
    # What is stored is at least said to be there.
    detail = api.get(f"/api/v1/servers/{site.server.pk}/").json()
    assert detail["tls"]["private_key_set"] is True


def test_a_refused_form_does_not_echo_a_secret(site: Site, admin_user: User) -> None:
    client = Client()
    client.force_login(admin_user)
    before = db_state()
    response = client.post(
        f"/users/{site.user.pk}/password/",
        {"password": TYPED_PASSWORD, "confirm": TYPED_PASSWORD + "x"},
    )
    assert response.status_code in (200, 400) and b"The two passwords differ" in response.content
    assert TYPED_PASSWORD.encode() not in response.content
    response = client.post(
        "/users/new/",
        {"username": "", "password": TYPED_PASSWORD, "confirm": TYPED_PASSWORD},
    )
    assert response.status_code in (200, 400)
    assert TYPED_PASSWORD.encode() not in response.content
    assert db_state() == before


def test_a_refused_api_write_does_not_echo_a_secret(site: Site, admin_user: User) -> None:
    api = APIClient()
    api.force_login(admin_user)
    before = db_state()
    body = {
        "tls": {"certificate": site.cert_pem, "private_key": "not a key " + TYPED_PASSWORD},
        "delivery": {"outbound": {"auth": {"method": "basic", "password": TYPED_PASSWORD}}},
    }
    response = api.patch(f"/api/v1/servers/{site.server.pk}/", body, format="json")
    assert response.status_code == 400, response.content
    assert TYPED_PASSWORD.encode() not in response.content
    response = api.post("/api/v1/users/", {"username": "", "password": TYPED_PASSWORD})
    assert response.status_code == 400
    assert TYPED_PASSWORD.encode() not in response.content
    assert db_state() == before
