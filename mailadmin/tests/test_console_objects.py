"""Domains (remote domain properties, delete) and SMTP users (create, set password)."""

from __future__ import annotations

import pytest
from django.test import Client

from mailadmin.models import ConfigSnapshot, Domain, SmtpUser, VirtualServer
from smtpworker.core import credentials

pytestmark = pytest.mark.django_db


REMOTE = {
    "name": "example.com",
    "relay_allowed": "on",
    "forward_all_to_smart_host": "on",
    "smart_host": "[127.0.0.10]:2526",
    "outbound_auth_method": "anonymous",
    "outbound_username": "",
    "outbound_tls": "opportunistic",
}


def test_it_lists_domains_by_type(admin_client: Client, site: dict[str, VirtualServer]) -> None:
    html = admin_client.get(f"/servers/{site['InternetRelay'].pk}/domains/").content.decode()
    assert "Local (Default)" in html and "Remote" in html and "example.com" in html


def test_it_edits_a_remote_domain(admin_client: Client, site: dict[str, VirtualServer]) -> None:
    domain = Domain.objects.get(name="example.com")
    response = admin_client.post(f"/domains/{domain.pk}/", {**REMOTE, "outbound_tls": "required"})
    assert response.status_code == 302
    domain.refresh_from_db()
    assert not domain.use_helo and domain.outbound_tls == "required" and domain.relay_allowed
    assert ConfigSnapshot.objects.latest().author == "console:root"


def test_it_shows_a_domain_error_beside_the_field(
    admin_client: Client, site: dict[str, VirtualServer]
) -> None:
    domain = Domain.objects.get(name="example.com")
    before = ConfigSnapshot.objects.count()
    response = admin_client.post(f"/domains/{domain.pk}/", {**REMOTE, "smart_host": ""})
    assert response.status_code == 400
    assert "smart host" in " ".join(response.context["form"].errors["smart_host"])
    response = admin_client.post(f"/domains/{domain.pk}/", {**REMOTE, "smart_host": "10.0.0.2"})
    assert "bare IP" in " ".join(response.context["form"].errors["smart_host"])
    assert ConfigSnapshot.objects.count() == before


def test_it_renames_the_default_domain_and_refuses_to_delete_it(
    admin_client: Client, site: dict[str, VirtualServer]
) -> None:
    default = Domain.objects.get(server=site["CorpServer"], is_default=True)
    assert admin_client.post(f"/domains/{default.pk}/", {"name": "corp.test"}).status_code == 302
    default.refresh_from_db()
    assert default.name == "corp.test" and default.is_default
    page = admin_client.post(f"/domains/{default.pk}/delete/", follow=True).content.decode()
    assert "cannot be deleted" in page
    assert Domain.objects.filter(pk=default.pk).exists()


def test_it_deletes_a_remote_domain(admin_client: Client, site: dict[str, VirtualServer]) -> None:
    domain = Domain.objects.get(name="example.com")
    assert (
        "Delete the domain example.com?"
        in admin_client.get(f"/domains/{domain.pk}/delete/").content.decode()
    )
    admin_client.post(f"/domains/{domain.pk}/delete/")
    assert not Domain.objects.filter(pk=domain.pk).exists()


def test_it_creates_a_user_keeping_only_verifiers(
    admin_client: Client, site: dict[str, VirtualServer]
) -> None:
    corp = site["CorpServer"]
    mismatch = admin_client.post(
        "/users/new/",
        {"username": "bob", "password": "pw-one", "confirm": "pw-two", "is_active": "on"},
    )
    assert mismatch.status_code == 400
    assert mismatch.context["form"].errors["confirm"] == ["The two passwords differ."]
    response = admin_client.post(
        "/users/new/",
        {
            "username": "bob",
            "password": "s3cret-pw",
            "confirm": "s3cret-pw",
            "is_active": "on",
            "servers": [corp.pk],
        },
    )
    assert response.status_code == 302
    bob = SmtpUser.objects.get(username="bob")
    assert credentials.verify_password("s3cret-pw", bob.password_hash)
    assert [s.name for s in bob.servers.all()] == ["CorpServer"]
    listing = admin_client.get("/users/").content.decode()
    assert "bob" in listing and "s3cret-pw" not in listing


def test_it_resets_a_password(admin_client: Client, site: dict[str, VirtualServer]) -> None:
    alice = SmtpUser.objects.get(username="alice")
    old = alice.password_hash
    response = admin_client.post(
        f"/users/{alice.pk}/password/", {"password": "new-alice-pw", "confirm": "new-alice-pw"}
    )
    assert response.status_code == 302
    alice.refresh_from_db()
    assert alice.password_hash != old
    assert credentials.verify_password("new-alice-pw", alice.password_hash)


def test_it_refuses_a_bad_user_name_beside_the_field(
    admin_client: Client, site: dict[str, VirtualServer]
) -> None:
    response = admin_client.post(
        "/users/new/",
        {"username": "has space", "password": "pw", "confirm": "pw", "is_active": "on"},
    )
    assert response.status_code == 400
    assert "no spaces" in " ".join(response.context["form"].errors["username"])
    assert not SmtpUser.objects.filter(username="has space").exists()


def test_it_disables_a_user_and_deletes_one(
    admin_client: Client, site: dict[str, VirtualServer]
) -> None:
    alice = SmtpUser.objects.get(username="alice")
    assert admin_client.post(f"/users/{alice.pk}/", {"servers": []}).status_code == 302
    alice.refresh_from_db()
    assert not alice.is_active and not alice.servers.exists()
    admin_client.post(f"/users/{alice.pk}/delete/")
    assert not SmtpUser.objects.exists()
