"""PROXY bindings and trusted proxies through the API, the configuration document and the
snapshot: one grammar, one rule, the same answer at the same path everywhere."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from rest_framework.test import APIClient

from mailadmin import configdoc
from mailadmin.exceptions import ConfigError
from mailadmin.models import Binding, ConfigSnapshot, VirtualServer
from mailadmin.snapshot import site_config
from mailadmin.tests.factories import make_server
from smtpworker.core import grammar

pytestmark = pytest.mark.django_db

NO_TRUSTED = "takes the PROXY protocol but no trusted proxy is listed"


def test_it_creates_a_proxy_binding_with_its_trusted_proxies(api: APIClient) -> None:
    server = make_server(
        api,
        bindings=["127.0.0.2:2525  PROXY", "127.0.0.3:2525"],
        trusted_proxies=["10.0.0.5", "10.1.0.0/255.255.0.0"],
    )
    assert server["bindings"] == ["127.0.0.2:2525 proxy", "127.0.0.3:2525"]
    assert server["trusted_proxies"] == ["10.0.0.5", "10.1.0.0/16"]
    rows = Binding.objects.filter(server_id=server["id"]).order_by("port", "host")
    assert [(b.host, b.proxy_protocol) for b in rows] == [("127.0.0.2", True), ("127.0.0.3", False)]
    (cfg,) = site_config().servers
    assert cfg.bindings == (
        grammar.Binding("127.0.0.2", 2525, proxy=True),
        grammar.Binding("127.0.0.3", 2525),
    )
    assert [str(e) for e in cfg.trusted_proxies] == ["10.0.0.5", "10.1.0.0/16"]


def test_a_plain_server_lists_no_trusted_proxies(api: APIClient) -> None:
    server = make_server(api)
    assert server["bindings"] == ["127.0.0.2:2525"] and server["trusted_proxies"] == []
    assert site_config().servers[0].trusted_proxies == ()


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"bindings": ["127.0.0.3:25", "127.0.0.2:2525 proxy"]}, {"bindings": {"1": [NO_TRUSTED]}}),
        (
            {"bindings": ["127.0.0.2:2525 proxy"], "trusted_proxies": ["lb.example.net"]},
            {"trusted_proxies": {"0": ["not by name"]}},
        ),
        (
            {"bindings": ["127.0.0.2:2525 proxy"], "trusted_proxies": ["10.0.0.5/24"]},
            {"trusted_proxies": {"0": ["did you mean 10.0.0.0/24"]}},
        ),
        ({"bindings": ["127.0.0.2:2525 haproxy"]}, {"bindings": {"0": ["only the word 'proxy'"]}}),
        (
            {"bindings": ["127.0.0.2:2525", "127.0.0.2:2525 proxy"], "trusted_proxies": ["::1"]},
            {"bindings": {"1": ["overlaps 127.0.0.2:2525"]}},
        ),
    ],
)
def test_it_refuses_bad_proxy_settings_at_their_path(
    api: APIClient, fields: dict[str, Any], expected: dict[str, Any]
) -> None:
    body = {"name": "Edge", "default_domain": "edge.test", **fields}
    response = api.post("/api/v1/servers/", body, format="json")
    assert response.status_code == 400, response.content
    answer = response.json()
    for key, items in expected.items():
        for index, needles in items.items():
            assert all(n in " ".join(answer[key][index]) for n in needles), answer
    assert not VirtualServer.objects.exists()


def test_it_keeps_a_proxy_binding_from_losing_its_trusted_proxies(api: APIClient) -> None:
    server = make_server(api, bindings=["127.0.0.2:2525 proxy"], trusted_proxies=["10.0.0.5"])
    url = f"/api/v1/servers/{server['id']}/"
    response = api.patch(url, {"trusted_proxies": []}, format="json")
    assert response.status_code == 400
    assert NO_TRUSTED in response.json()["bindings"]["0"][0]
    # Changing other fields checks the stored pair, which is fine.
    assert api.patch(url, {"connection_timeout": 60}, format="json").status_code == 200
    response = api.patch(
        url, {"bindings": ["127.0.0.2:2525"], "trusted_proxies": []}, format="json"
    )
    assert response.status_code == 200, response.content
    assert response.json()["bindings"] == ["127.0.0.2:2525"]
    response = api.patch(url, {"bindings": ["*:2525 proxy"]}, format="json")
    assert response.status_code == 400 and NO_TRUSTED in response.json()["bindings"]["0"][0]


def proxied(site: dict[str, Any]) -> dict[str, Any]:
    doc = copy.deepcopy(site)
    edge = doc["servers"][1]
    edge["bindings"] = [f"{edge['bindings'][0]} proxy"]
    edge["trusted_proxies"] = ["10.0.0.5", "10.0.9.0/24"]
    return doc


def test_the_document_round_trips_proxy_settings(typical_site: dict[str, Any]) -> None:
    doc = proxied(typical_site)
    configdoc.document_import(doc, author="test")
    exported = configdoc.document_export()
    edge = next(s for s in exported["servers"] if s["name"] == doc["servers"][1]["name"])
    assert edge["bindings"] == doc["servers"][1]["bindings"]
    assert edge["bindings"][0].endswith(" proxy")
    assert edge["trusted_proxies"] == ["10.0.0.5", "10.0.9.0/24"]
    others = [s for s in exported["servers"] if s is not edge]
    assert all(s["trusted_proxies"] == [] for s in others)
    before = ConfigSnapshot.objects.count()
    result = configdoc.document_import(exported, author="test")
    assert not result.changed and ConfigSnapshot.objects.count() == before
    # A document from before the PROXY protocol (no trusted_proxies keys) still imports,
    # and takes PROXY off again.
    result = configdoc.document_import(typical_site, author="test")
    assert result.changed
    assert not Binding.objects.filter(proxy_protocol=True).exists()


def test_the_document_lists_proxy_errors_with_their_paths(typical_site: dict[str, Any]) -> None:
    doc = proxied(typical_site)
    doc["servers"][1]["trusted_proxies"] = []
    doc["servers"][2]["bindings"].append("127.0.0.9:2525 proxy")
    with pytest.raises(ConfigError) as info:
        configdoc.document_import(doc, author="test")
    errors = {e.dotted: e.message for e in info.value.errors}
    assert sorted(errors) == ["servers[1].bindings[0]", "servers[2].bindings[1]"]
    assert all(NO_TRUSTED in message for message in errors.values())
    doc["servers"][1]["trusted_proxies"] = ["10.0.0.5", "*.example.net"]
    with pytest.raises(ConfigError) as info:
        configdoc.document_import(doc, author="test")
    errors = {e.dotted: e.message for e in info.value.errors}
    assert "not by name" in errors["servers[1].trusted_proxies[1]"]
    assert not VirtualServer.objects.exists()
