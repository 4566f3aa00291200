"""Who may use the API: anonymous nobody, operators read, administrators write; tokens."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from mailadmin.models import (
    ConfigSnapshot,
    VirtualServer,
)
from mailadmin.tests.factories import console_user, db_state, make_server

pytestmark = pytest.mark.django_db

NEW_SERVER = {"name": "New", "default_domain": "new.test", "bindings": ["127.0.0.9:25"]}


@pytest.fixture
def site(api: APIClient) -> dict[str, int]:
    """One running and one stopped server, an alias domain and an SMTP user."""
    corp = make_server(api, name="Corp", bindings=["127.0.0.2:25"])
    spare = make_server(api, name="Spare", bindings=["127.0.0.3:25"], state="stopped")
    alias = api.post(
        "/api/v1/domains/",
        {"server": corp["id"], "name": "alias.test", "type": "local"},
        format="json",
    )
    assert alias.status_code == 201, alias.content
    user = api.post(
        "/api/v1/users/",
        {"username": "relay", "password": "relay-password", "servers": ["Corp"]},
        format="json",
    )
    assert user.status_code == 201, user.content
    return {
        "server": corp["id"],
        "stopped": spare["id"],
        "domain": alias.json()["id"],
        "user": user.json()["id"],
    }


def read_urls(site: dict[str, int]) -> list[str]:
    return [
        "/api/v1/servers/",
        f"/api/v1/servers/{site['server']}/",
        "/api/v1/domains/",
        f"/api/v1/domains/{site['domain']}/",
        "/api/v1/users/",
        f"/api/v1/users/{site['user']}/",
        "/api/v1/config/",
        "/api/v1/config/version/",
        "/api/v1/sessions/",
        "/api/v1/workers/",
        "/api/v1/queues/",
        "/api/v1/messages/",
        "/api/v1/traffic/",
    ]


def write_requests(
    site: dict[str, int], typical_site: dict[str, Any]
) -> list[tuple[str, str, Any]]:
    server, domain, user = site["server"], site["domain"], site["user"]
    return [
        ("post", "/api/v1/servers/", NEW_SERVER),
        ("patch", f"/api/v1/servers/{server}/", {"description": "changed"}),
        ("put", f"/api/v1/servers/{server}/", {**NEW_SERVER, "name": "Corp"}),
        ("delete", f"/api/v1/servers/{server}/", None),
        ("post", f"/api/v1/servers/{site['stopped']}/start/", None),
        ("post", f"/api/v1/servers/{server}/stop/", None),
        ("post", f"/api/v1/servers/{server}/pause/", None),
        ("post", "/api/v1/sessions/node1:abc/terminate/", None),
        ("post", "/api/v1/queues/example.com/suspend/", None),
        ("post", "/api/v1/messages/bulk/", {"action": "delete", "queue_ids": ["X"]}),
        ("post", "/api/v1/domains/", {"server": server, "name": "other.test", "type": "local"}),
        ("patch", f"/api/v1/domains/{domain}/", {"name": "renamed.test"}),
        (
            "put",
            f"/api/v1/domains/{domain}/",
            {"server": server, "name": "renamed.test", "type": "local"},
        ),
        ("delete", f"/api/v1/domains/{domain}/", None),
        ("post", "/api/v1/users/", {"username": "another", "password": "pw"}),
        ("patch", f"/api/v1/users/{user}/", {"password": "new-password"}),
        ("put", f"/api/v1/users/{user}/", {"username": "relay", "password": "new-password"}),
        ("delete", f"/api/v1/users/{user}/", None),
        ("put", "/api/v1/config/", typical_site),
    ]


def send(client: APIClient, method: str, url: str, body: Any) -> Any:
    return getattr(client, method)(url, body, format="json")


@pytest.fixture
def administrator_user(db: None) -> User:
    return console_user("admin2", "administrators")


@pytest.fixture
def nobody_api(db: None) -> APIClient:
    client = APIClient()
    client.force_login(User.objects.create_user("nobody", password="nobody-password"))
    return client


def test_it_refuses_anonymous_reads(site: dict[str, int]) -> None:
    anonymous = APIClient()
    for url in read_urls(site):
        response = anonymous.get(url)
        assert response.status_code == 401, url
        assert response.json() == {"detail": "Authentication credentials were not provided."}


@pytest.mark.parametrize("url", ["/api/v1/schema/", "/api/v1/docs/"])
def test_it_hides_the_schema_and_docs_from_anonymous(url: str) -> None:
    response = APIClient().get(url)
    assert response.status_code == 401
    assert b"openapi" not in response.content.lower()
    assert b"swagger" not in response.content.lower()


def test_anonymous_writes_are_refused_and_change_nothing(
    site: dict[str, int], typical_site: dict[str, Any]
) -> None:
    before = db_state()
    anonymous = APIClient()
    for method, url, body in write_requests(site, typical_site):
        response = send(anonymous, method, url, body)
        assert response.status_code == 401, (method, url)
    assert db_state() == before


def test_an_operator_can_read_everything(operator_api: APIClient, site: dict[str, int]) -> None:
    for url in read_urls(site):
        response = operator_api.get(url)
        assert response.status_code == 200, (url, response.content)
    assert operator_api.get("/api/v1/servers/").json()["count"] == 2
    assert operator_api.get("/api/v1/schema/?format=json").status_code == 200
    assert operator_api.get("/api/v1/docs/").status_code == 200


def test_an_operator_cannot_change_anything(
    operator_api: APIClient, site: dict[str, int], typical_site: dict[str, Any]
) -> None:
    before = db_state()
    for method, url, body in write_requests(site, typical_site):
        response = send(operator_api, method, url, body)
        assert response.status_code == 403, (method, url)
        assert response.json() == {
            "detail": "Operators may look but not change anything; ask an administrator."
        }
    assert db_state() == before


def test_a_user_in_no_group_cannot_even_read(
    nobody_api: APIClient, site: dict[str, int], typical_site: dict[str, Any]
) -> None:
    before = db_state()
    for url in [*read_urls(site), "/api/v1/schema/", "/api/v1/docs/"]:
        assert nobody_api.get(url).status_code == 403, url
    for method, url, body in write_requests(site, typical_site):
        assert send(nobody_api, method, url, body).status_code == 403, (method, url)
    assert db_state() == before


def test_an_inactive_administrator_is_refused(
    administrator_user: User, site: dict[str, int]
) -> None:
    client = APIClient()
    client.force_login(administrator_user)
    administrator_user.is_active = False
    administrator_user.save()
    assert client.get("/api/v1/servers/").status_code in (401, 403)
    assert client.post("/api/v1/servers/", NEW_SERVER, format="json").status_code in (401, 403)
    assert not VirtualServer.objects.filter(name="New").exists()


def test_the_permission_itself_refuses_an_inactive_operator(
    operator_user: User, site: dict[str, int]
) -> None:
    # Django's login backends already refuse inactive users; the permission must not
    # rely on that, so authenticate past them.
    operator_user.is_active = False
    operator_user.save()
    client = APIClient()
    client.force_authenticate(operator_user)
    for url in read_urls(site):
        assert client.get(url).status_code == 403, url


def test_an_administrator_who_is_not_superuser_can_write(
    administrator_user: User, site: dict[str, int]
) -> None:
    assert not administrator_user.is_superuser
    client = APIClient()
    client.force_login(administrator_user)
    created = client.post("/api/v1/servers/", NEW_SERVER, format="json")
    assert created.status_code == 201, created.content
    server = created.json()["id"]
    assert client.patch(f"/api/v1/servers/{server}/", {"description": "x"}).status_code == 200
    assert client.post(f"/api/v1/servers/{server}/stop/").status_code == 200
    assert client.delete(f"/api/v1/servers/{server}/").status_code == 204
    assert client.patch(f"/api/v1/users/{site['user']}/", {"active": False}).status_code == 200
    assert ConfigSnapshot.objects.latest().author == "api:admin2"


def test_it_issues_a_token_for_a_name_and_password(administrator_user: User) -> None:
    response = APIClient().post(
        "/api/v1/token/", {"username": "admin2", "password": "admin2-password"}, format="json"
    )
    assert response.status_code == 200, response.content
    assert response.json() == {"token": Token.objects.get(user=administrator_user).key}
    again = APIClient().post(
        "/api/v1/token/", {"username": "admin2", "password": "admin2-password"}, format="json"
    )
    assert again.json() == response.json()


def test_it_issues_no_token_for_a_wrong_password(administrator_user: User) -> None:
    response = APIClient().post(
        "/api/v1/token/", {"username": "admin2", "password": "wrong"}, format="json"
    )
    assert response.status_code == 400
    assert response.json() == {"non_field_errors": ["Unable to log in with provided credentials."]}
    missing = APIClient().post("/api/v1/token/", {"username": "admin2"}, format="json")
    assert missing.status_code == 400
    assert missing.json() == {"password": ["This field is required."]}
    assert not Token.objects.exists()


def test_a_token_authenticates_without_a_session(administrator_user: User) -> None:
    key = (
        APIClient()
        .post(
            "/api/v1/token/", {"username": "admin2", "password": "admin2-password"}, format="json"
        )
        .json()["token"]
    )
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert client.get("/api/v1/servers/").json()["count"] == 0
    created = client.post("/api/v1/servers/", NEW_SERVER, format="json")
    assert created.status_code == 201, created.content
    assert "sessionid" not in client.cookies
    assert ConfigSnapshot.objects.latest().author == "api:admin2"


def test_an_operator_token_reads_but_does_not_write(operator_user: User) -> None:
    key = (
        APIClient()
        .post(
            "/api/v1/token/", {"username": "watcher", "password": "watcher-password"}, format="json"
        )
        .json()["token"]
    )
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert client.get("/api/v1/servers/").status_code == 200
    assert client.post("/api/v1/servers/", NEW_SERVER, format="json").status_code == 403
    assert not VirtualServer.objects.exists()


def test_a_bad_token_is_a_401(administrator_user: User) -> None:
    Token.objects.create(user=administrator_user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token 0123456789abcdef0123456789abcdef01234567")
    response = client.get("/api/v1/servers/")
    assert response.status_code == 401
    assert response.json() == {"detail": "Invalid token."}
    assert client.post("/api/v1/servers/", NEW_SERVER, format="json").status_code == 401
    assert not VirtualServer.objects.exists()
