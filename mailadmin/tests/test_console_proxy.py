"""The bindings dialog on the General tab: PROXY per identity and the trusted proxies,
saved through the service, errors beside their fields."""

from __future__ import annotations

import pytest
from django.test import Client

from mailadmin.models import ConfigSnapshot, VirtualServer
from mailadmin.tests.factories import error_beside, get_tab, post

pytestmark = pytest.mark.django_db


def test_the_bindings_dialog_has_the_trusted_proxies(
    admin_client: Client, corp: VirtualServer
) -> None:
    html = admin_client.get(f"/servers/{corp.pk}/properties/general/").content.decode()
    dialog = html[html.index('<dialog id="dlg-bindings"') : html.index("</dialog>")]
    assert 'name="bindings"' in dialog and 'name="proxy_entries"' in dialog
    assert "Trusted proxies" in dialog and "PROXY protocol" in dialog


def test_it_saves_a_proxy_binding_and_shows_it_back(
    admin_client: Client, corp: VirtualServer
) -> None:
    before = ConfigSnapshot.objects.count()
    data = get_tab(admin_client, corp, "general")
    data["bindings"] = "127.0.0.2:2525 proxy\n127.0.0.2:2526"
    data["proxy_entries"] = "10.0.0.5\n10.0.9.0/255.255.255.0"
    response = post(admin_client, corp, "general", data)
    assert response.status_code == 302, response.content.decode()[:3000]
    assert ConfigSnapshot.objects.count() == before + 1
    server = VirtualServer.objects.get(pk=corp.pk)
    assert [str(b) for b in server.bindings.all()] == ["127.0.0.2:2525 proxy", "127.0.0.2:2526"]
    assert [e.value for e in server.access_entries.filter(list="proxy")] == [
        "10.0.0.5",
        "10.0.9.0/24",
    ]
    shown = get_tab(admin_client, corp, "general")
    assert shown["bindings"] == "127.0.0.2:2525 proxy\n127.0.0.2:2526"
    assert shown["proxy_entries"] == "10.0.0.5\n10.0.9.0/24"
    html = admin_client.get(f"/servers/{corp.pk}/properties/general/").content.decode()
    assert "127.0.0.2:2525 proxy, 127.0.0.2:2526" in html  # the summary beside Advanced…
    # Posted back unchanged: no new version.
    assert post(admin_client, corp, "general", shown).status_code == 302
    assert ConfigSnapshot.objects.count() == before + 1


@pytest.mark.parametrize(
    ("bindings", "proxies", "field", "message"),
    [
        ("127.0.0.2:2525 proxy", "", "bindings", "Line 1: 127.0.0.2:2525 proxy takes the PROXY"),
        ("127.0.0.2:2525 proxy", "10.0.0.5\nlb.example.net", "proxy_entries", "Line 2"),
        (
            "127.0.0.2:2525 via-lb",
            "10.0.0.5",
            "bindings",
            "only the word &#x27;proxy&#x27; may follow",
        ),
    ],
)
def test_it_shows_proxy_errors_beside_their_field(
    admin_client: Client, corp: VirtualServer, bindings: str, proxies: str, field: str, message: str
) -> None:
    before = ConfigSnapshot.objects.count()
    data = get_tab(admin_client, corp, "general")
    data.update(bindings=bindings, proxy_entries=proxies)
    response = post(admin_client, corp, "general", data)
    assert response.status_code == 400
    assert message in error_beside(response.content.decode(), field)
    assert ConfigSnapshot.objects.count() == before
    assert not corp.bindings.filter(proxy_protocol=True).exists()
