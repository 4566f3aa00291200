"""SMTP users over the API: verifiers instead of passwords, CRAM-MD5 only when allowed."""

from __future__ import annotations

import hmac
import json
from typing import Any

import pytest
from rest_framework.test import APIClient

from mailadmin.models import ConfigSnapshot, SmtpUser
from mailadmin.services.config.secrets import secret_open
from mailadmin.tests.factories import make_server
from smtpworker.core.credentials import ScramVerifier, cram_md5_digest, verify_password

pytestmark = pytest.mark.django_db

PASSWORD = "Correct horse 42!"
CHALLENGE = b"<1.2@x>"
PUBLIC_KEYS = {
    "id",
    "username",
    "active",
    "allow_cram_md5",
    "servers",
    "cram_md5_ready",
    "password_changed",
}


@pytest.fixture
def servers(api: APIClient) -> list[str]:
    make_server(api, name="Corp", bindings=["127.0.0.2:25"])
    make_server(api, name="Branch", default_domain="branch.test", bindings=["127.0.0.3:25"])
    return ["Corp", "Branch"]


def create_user(api: APIClient, **fields: Any) -> dict[str, Any]:
    body = {"username": "alice@corp.test", "password": PASSWORD}
    body.update(fields)
    response = api.post("/api/v1/users/", body, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def assert_no_secrets(body: Any) -> None:
    text = json.dumps(body)
    user = SmtpUser.objects.get()
    assert PASSWORD not in text
    for stored in (user.password_hash, user.scram_sha256, user.cram_md5_context):
        assert not stored or stored not in text
    for word in ("hash", "scram", "verifier", "context", "enc:v1:", "SCRAM-SHA-256"):
        assert word not in text


def hmac_md5(password: str, challenge: bytes) -> str:
    return hmac.new(password.encode(), challenge, "md5").hexdigest()


def test_it_creates_a_user_for_named_servers(api: APIClient, servers: list[str]) -> None:
    body = create_user(api, servers=servers)
    assert set(body) == PUBLIC_KEYS
    assert body["username"] == "alice@corp.test"
    assert body["active"] is True
    assert body["allow_cram_md5"] is False
    assert body["cram_md5_ready"] is False
    assert sorted(body["servers"]) == ["Branch", "Corp"]
    assert body["password_changed"]
    user = SmtpUser.objects.get()
    assert sorted(s.name for s in user.servers.all()) == ["Branch", "Corp"]
    assert ConfigSnapshot.objects.latest().author == "api:root"


def test_it_never_shows_the_password_or_its_verifiers(api: APIClient, servers: list[str]) -> None:
    created = create_user(api, servers=["Corp"], allow_cram_md5=True)
    assert_no_secrets(created)
    assert_no_secrets(api.get(f"/api/v1/users/{created['id']}/").json())
    assert_no_secrets(api.get("/api/v1/users/").json())
    patched = api.patch(f"/api/v1/users/{created['id']}/", {"password": "Another one 43"})
    assert set(patched.json()) == PUBLIC_KEYS
    assert "Another one 43" not in patched.content.decode()


def test_it_stores_a_salted_hash_and_a_scram_verifier(api: APIClient) -> None:
    create_user(api)
    user = SmtpUser.objects.get()
    assert user.password_hash and user.password_hash != PASSWORD
    assert PASSWORD not in user.password_hash
    assert verify_password(PASSWORD, user.password_hash)
    assert not verify_password(PASSWORD + "x", user.password_hash)
    verifier = ScramVerifier.from_text(user.scram_sha256)
    assert verifier.iterations >= 4096
    assert user.cram_md5_context == ""


def test_it_seals_a_cram_md5_context_only_when_allowed(api: APIClient) -> None:
    body = create_user(api, allow_cram_md5=True)
    assert body["cram_md5_ready"] is True
    sealed = SmtpUser.objects.get().cram_md5_context
    assert sealed.startswith("enc:v1:")
    context = secret_open(sealed)
    assert cram_md5_digest(context, CHALLENGE) == hmac_md5(PASSWORD, CHALLENGE)


def test_turning_cram_md5_off_drops_the_context(api: APIClient) -> None:
    body = create_user(api, allow_cram_md5=True)
    response = api.patch(f"/api/v1/users/{body['id']}/", {"allow_cram_md5": False})
    assert response.status_code == 200, response.content
    assert response.json()["cram_md5_ready"] is False
    assert SmtpUser.objects.get().cram_md5_context == ""


def test_turning_cram_md5_on_takes_effect_with_the_next_password(api: APIClient) -> None:
    body = create_user(api)
    response = api.patch(f"/api/v1/users/{body['id']}/", {"allow_cram_md5": True})
    assert response.status_code == 200, response.content
    assert response.json()["cram_md5_ready"] is False  # the password is not known here
    again = api.patch(f"/api/v1/users/{body['id']}/", {"password": PASSWORD})
    assert again.json()["cram_md5_ready"] is True
    context = secret_open(SmtpUser.objects.get().cram_md5_context)
    assert cram_md5_digest(context, CHALLENGE) == hmac_md5(PASSWORD, CHALLENGE)


def test_a_new_password_replaces_every_verifier(api: APIClient) -> None:
    body = create_user(api, allow_cram_md5=True)
    before = SmtpUser.objects.get()
    version = ConfigSnapshot.objects.latest().pk
    response = api.patch(f"/api/v1/users/{body['id']}/", {"password": "Brand new 44"})
    assert response.status_code == 200, response.content
    after = SmtpUser.objects.get()
    assert after.password_hash != before.password_hash
    assert verify_password("Brand new 44", after.password_hash)
    assert not verify_password(PASSWORD, after.password_hash)
    assert after.scram_sha256 != before.scram_sha256
    context = secret_open(after.cram_md5_context)
    assert cram_md5_digest(context, CHALLENGE) == hmac_md5("Brand new 44", CHALLENGE)
    assert after.password_changed and before.password_changed
    assert after.password_changed > before.password_changed
    assert ConfigSnapshot.objects.latest().pk == version + 1


@pytest.mark.parametrize("allow_cram_md5", [False, True])
def test_the_same_password_again_creates_no_version(api: APIClient, allow_cram_md5: bool) -> None:
    body = create_user(api, allow_cram_md5=allow_cram_md5)
    before = SmtpUser.objects.get()
    versions = ConfigSnapshot.objects.count()
    response = api.patch(f"/api/v1/users/{body['id']}/", {"password": PASSWORD})
    assert response.status_code == 200, response.content
    after = SmtpUser.objects.get()
    assert after.password_hash == before.password_hash
    assert after.cram_md5_context == before.cram_md5_context
    assert after.password_changed == before.password_changed
    assert ConfigSnapshot.objects.count() == versions


def test_a_new_user_needs_a_password(api: APIClient) -> None:
    response = api.post("/api/v1/users/", {"username": "bob"}, format="json")
    assert response.status_code == 400
    assert response.json() == {"password": ["Give a password for the new user."]}
    empty = api.post("/api/v1/users/", {"username": "bob", "password": ""}, format="json")
    assert empty.status_code == 400
    assert list(empty.json()) == ["password"]
    assert not SmtpUser.objects.exists()


def test_a_user_name_is_unique(api: APIClient) -> None:
    create_user(api, username="bob")
    versions = ConfigSnapshot.objects.count()
    response = api.post("/api/v1/users/", {"username": "bob", "password": "x"}, format="json")
    assert response.status_code == 400
    assert list(response.json()) == ["username"]
    assert SmtpUser.objects.count() == 1
    assert ConfigSnapshot.objects.count() == versions


def test_an_unknown_server_name_is_refused(api: APIClient, servers: list[str]) -> None:
    response = api.post(
        "/api/v1/users/",
        {"username": "bob", "password": "x", "servers": ["Corp", "Nowhere"]},
        format="json",
    )
    assert response.status_code == 400
    assert response.json() == {"servers": ["Object with name=Nowhere does not exist."]}
    assert not SmtpUser.objects.exists()


@pytest.mark.parametrize("username", ["bob smith", "bob:smith", ""])
def test_a_bad_user_name_is_refused(api: APIClient, username: str) -> None:
    response = api.post("/api/v1/users/", {"username": username, "password": "x"}, format="json")
    assert response.status_code == 400
    assert list(response.json()) == ["username"]
    assert not SmtpUser.objects.exists()


def test_it_changes_servers_and_deletes_a_user(api: APIClient, servers: list[str]) -> None:
    body = create_user(api, servers=["Corp"])
    response = api.patch(f"/api/v1/users/{body['id']}/", {"servers": []}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["servers"] == []
    assert SmtpUser.objects.get().servers.count() == 0
    assert api.delete(f"/api/v1/users/{body['id']}/").status_code == 204
    assert not SmtpUser.objects.exists()


def test_a_full_update_keeps_the_name_and_the_password(api: APIClient) -> None:
    body = create_user(api, username="bob")
    before = SmtpUser.objects.get()
    response = api.put(
        f"/api/v1/users/{body['id']}/", {"username": "bob", "active": False}, format="json"
    )
    assert response.status_code == 200, response.content
    assert response.json()["active"] is False
    after = SmtpUser.objects.get()
    assert (after.username, after.is_active) == ("bob", False)
    assert after.password_hash == before.password_hash


def test_a_rename_onto_another_user_is_refused(api: APIClient) -> None:
    create_user(api, username="bob")
    carol = create_user(api, username="carol")
    response = api.patch(f"/api/v1/users/{carol['id']}/", {"username": "bob"}, format="json")
    assert response.status_code == 400
    assert list(response.json()) == ["username"]
    assert sorted(SmtpUser.objects.values_list("username", flat=True)) == ["bob", "carol"]


def test_a_server_name_with_a_nul_byte_is_a_field_error(api: APIClient) -> None:
    # Found by the API fuzzer on PostgreSQL, which cannot compare a text holding NUL.
    response = api.post(
        "/api/v1/users/",
        {"username": "nul", "password": "pw-12345", "servers": ["Relay\x00"]},
        format="json",
    )
    assert response.status_code == 400
    assert response.json() == {"servers": ["Null characters are not allowed."]}
