"""TLS certificate and key upload over the API: checked as a pair, key sealed, never shown."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
import trustme
from cryptography import x509
from rest_framework.test import APIClient

from mailadmin.models import ConfigSnapshot, VirtualServer
from mailadmin.services.config.secrets import secret_open
from mailadmin.tests.factories import make_server

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def leaf(ca: trustme.CA) -> trustme.LeafCert:
    return ca.issue_cert("mail.example.test")


def chain_pem(cert: trustme.LeafCert) -> str:
    return b"".join(blob.bytes() for blob in cert.cert_chain_pems).decode()


def key_pem(cert: trustme.LeafCert) -> str:
    return cert.private_key_pem.bytes().decode()


def not_after(cert: trustme.LeafCert) -> datetime:
    return x509.load_pem_x509_certificate(cert.cert_chain_pems[0].bytes()).not_valid_after_utc


@pytest.fixture
def server(api: APIClient) -> dict[str, Any]:
    return make_server(api, name="Corp")


def patch_tls(api: APIClient, server: dict[str, Any], **tls: Any) -> Any:
    return api.patch(f"/api/v1/servers/{server['id']}/", {"tls": tls}, format="json")


def upload(api: APIClient, server: dict[str, Any], cert: trustme.LeafCert) -> dict[str, Any]:
    response = patch_tls(api, server, certificate=chain_pem(cert), private_key=key_pem(cert))
    assert response.status_code == 200, response.content
    return response.json()


def test_it_accepts_a_matching_certificate_and_key(
    api: APIClient, server: dict[str, Any], leaf: trustme.LeafCert
) -> None:
    body = upload(api, server, leaf)
    # The certificate field trims surrounding whitespace like every text field.
    assert body["tls"] == {
        "certificate": chain_pem(leaf).strip(),
        "private_key_set": True,
        "require": False,
    }
    assert datetime.fromisoformat(body["tls_not_after"]) == not_after(leaf)
    stored = VirtualServer.objects.get()
    assert stored.tls_not_after == not_after(leaf)
    assert stored.tls_private_key.startswith("enc:v1:")
    assert secret_open(stored.tls_private_key) == key_pem(leaf)


def test_it_never_shows_the_private_key(
    api: APIClient, server: dict[str, Any], leaf: trustme.LeafCert
) -> None:
    upload(api, server, leaf)
    sealed = VirtualServer.objects.get().tls_private_key
    key_body = "".join(key_pem(leaf).strip().splitlines()[1:-1])
    for response in (
        api.get(f"/api/v1/servers/{server['id']}/"),
        api.get("/api/v1/servers/"),
        api.get("/api/v1/config/"),
    ):
        text = response.content.decode().replace("\\n", "")
        assert "PRIVATE KEY" not in text
        assert key_body[:64] not in text
        assert sealed not in text


def test_tls_can_be_required_once_a_certificate_is_in_place(
    api: APIClient, server: dict[str, Any], leaf: trustme.LeafCert
) -> None:
    upload(api, server, leaf)
    response = patch_tls(api, server, require=True)
    assert response.status_code == 200, response.content
    assert response.json()["tls"]["require"] is True
    basic = api.patch(
        f"/api/v1/servers/{server['id']}/",
        {"authentication": {"basic": True, "basic_requires_tls": True}},
        format="json",
    )
    assert basic.status_code == 200, basic.content


def test_requiring_tls_without_a_certificate_is_refused(
    api: APIClient, server: dict[str, Any]
) -> None:
    response = patch_tls(api, server, require=True)
    assert response.status_code == 400
    assert response.json() == {"tls": {"require": ["Requiring TLS needs a certificate and key."]}}
    assert VirtualServer.objects.get().tls_require is False


def test_a_key_from_another_certificate_is_refused_and_changes_nothing(
    api: APIClient, server: dict[str, Any], ca: trustme.CA, leaf: trustme.LeafCert
) -> None:
    stranger = ca.issue_cert("other.example.test")
    before = api.get(f"/api/v1/servers/{server['id']}/").json()
    versions = ConfigSnapshot.objects.count()
    response = patch_tls(api, server, certificate=chain_pem(leaf), private_key=key_pem(stranger))
    assert response.status_code == 400
    assert list(response.json()) == ["tls"]
    assert list(response.json()["tls"]) == ["certificate"]
    assert "does not match" in response.json()["tls"]["certificate"][0]
    assert api.get(f"/api/v1/servers/{server['id']}/").json() == before
    stored = VirtualServer.objects.get()
    assert (stored.tls_certificate, stored.tls_private_key, stored.tls_not_after) == ("", "", None)
    assert ConfigSnapshot.objects.count() == versions


def test_a_new_certificate_must_match_the_stored_key(
    api: APIClient, server: dict[str, Any], ca: trustme.CA, leaf: trustme.LeafCert
) -> None:
    upload(api, server, leaf)
    before = VirtualServer.objects.get()
    stranger = ca.issue_cert("other.example.test")
    response = patch_tls(api, server, certificate=chain_pem(stranger))
    assert response.status_code == 400
    assert "does not match" in response.json()["tls"]["certificate"][0]
    after = VirtualServer.objects.get()
    assert after.tls_certificate == before.tls_certificate
    assert after.tls_private_key == before.tls_private_key


def test_a_renewed_certificate_moves_the_expiry(
    api: APIClient, server: dict[str, Any], ca: trustme.CA, leaf: trustme.LeafCert
) -> None:
    upload(api, server, leaf)
    renewed = ca.issue_cert("mail.example.test", not_after=datetime(2099, 1, 2, 3, 4, 5))
    body = upload(api, server, renewed)
    assert datetime.fromisoformat(body["tls_not_after"]) == not_after(renewed)
    assert not_after(renewed) != not_after(leaf)


@pytest.mark.parametrize(
    "certificate",
    [
        "not a certificate",
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    ],
)
def test_a_garbage_certificate_is_refused(
    api: APIClient, server: dict[str, Any], leaf: trustme.LeafCert, certificate: str
) -> None:
    response = patch_tls(api, server, certificate=certificate, private_key=key_pem(leaf))
    assert response.status_code == 400
    assert list(response.json()["tls"]) == ["certificate"]
    assert VirtualServer.objects.get().tls_certificate == ""


def test_a_garbage_key_is_refused(
    api: APIClient, server: dict[str, Any], leaf: trustme.LeafCert
) -> None:
    response = patch_tls(api, server, certificate=chain_pem(leaf), private_key="not a key")
    assert response.status_code == 400
    assert list(response.json()["tls"]) == ["certificate"]
    assert "private key" in response.json()["tls"]["certificate"][0]
    assert VirtualServer.objects.get().tls_private_key == ""


def test_a_certificate_without_its_key_is_refused(
    api: APIClient, server: dict[str, Any], leaf: trustme.LeafCert
) -> None:
    response = patch_tls(api, server, certificate=chain_pem(leaf))
    assert response.status_code == 400
    assert response.json() == {
        "tls": {"private_key": ["Upload the private key of this certificate."]}
    }
    assert VirtualServer.objects.get().tls_certificate == ""


def test_a_key_without_its_certificate_is_refused(
    api: APIClient, server: dict[str, Any], leaf: trustme.LeafCert
) -> None:
    response = patch_tls(api, server, private_key=key_pem(leaf))
    assert response.status_code == 400
    assert response.json() == {"tls": {"certificate": ["Upload the certificate for this key."]}}
    assert VirtualServer.objects.get().tls_private_key == ""


def test_removing_both_clears_the_expiry(
    api: APIClient, server: dict[str, Any], leaf: trustme.LeafCert
) -> None:
    upload(api, server, leaf)
    response = patch_tls(api, server, certificate="", private_key="")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["tls"] == {"certificate": "", "private_key_set": False, "require": False}
    assert body["tls_not_after"] is None
    stored = VirtualServer.objects.get()
    assert (stored.tls_certificate, stored.tls_private_key, stored.tls_not_after) == ("", "", None)


def test_tls_cannot_be_removed_while_required(
    api: APIClient, server: dict[str, Any], leaf: trustme.LeafCert
) -> None:
    upload(api, server, leaf)
    assert patch_tls(api, server, require=True).status_code == 200
    response = patch_tls(api, server, certificate="", private_key="")
    assert response.status_code == 400
    assert list(response.json()["tls"]) == ["require"]
    assert VirtualServer.objects.get().tls_private_key.startswith("enc:v1:")
