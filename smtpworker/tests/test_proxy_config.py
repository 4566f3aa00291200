"""PROXY bindings and trusted proxies in the grammar and the worker's snapshot."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from smtpworker.core.config import ConfigFormatError, dump_site, load_site
from smtpworker.core.grammar import (
    Binding,
    GrammarError,
    bindings_conflict,
    parse_access_entry,
    parse_binding,
    parse_trusted_proxy,
)
from smtpworker.tests.factories import server, site


@pytest.mark.parametrize(
    ("text", "expected", "canonical"),
    [
        ("127.0.0.2:2525 proxy", Binding("127.0.0.2", 2525, True), "127.0.0.2:2525 proxy"),
        ("  [::1]:25 \t PROXY ", Binding("::1", 25, True), "[::1]:25 proxy"),
        ("*:25 Proxy", Binding(None, 25, True), "*:25 proxy"),
        ("0.0.0.0:25 proxy", Binding(None, 25, True), "*:25 proxy"),
        ("127.0.0.2:2525", Binding("127.0.0.2", 2525), "127.0.0.2:2525"),
    ],
)
def test_a_binding_may_take_the_proxy_protocol(
    text: str, expected: Binding, canonical: str
) -> None:
    binding = parse_binding(text)
    assert binding == expected
    assert str(binding) == canonical
    assert parse_binding(canonical) == binding
    assert binding.address == Binding(expected.host, expected.port)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("127.0.0.1:25 proxi", "only the word 'proxy'"),
        ("127.0.0.1:25 proxy proxy", "only the word 'proxy'"),
        ("127.0.0.1: 25", "only the word 'proxy'"),
        ("proxy 127.0.0.1:25", "only the word 'proxy'"),
        ("127.0.0.1:25 pr\u043exy", "only the word 'proxy'"),  # Cyrillic o
        ("proxy", "address:port"),
        ("localhost:25 proxy", "IP address"),
        ("127.0.0.1:0 proxy", "port"),
    ],
)
def test_anything_else_after_a_binding_is_refused(text: str, needle: str) -> None:
    with pytest.raises(GrammarError, match=needle):
        parse_binding(text)


def test_proxy_does_not_change_which_bindings_conflict() -> None:
    assert bindings_conflict(parse_binding("10.0.0.1:25 proxy"), parse_binding("10.0.0.1:25"))
    assert bindings_conflict(parse_binding("*:25 proxy"), parse_binding("10.0.0.1:25 proxy"))
    assert not bindings_conflict(parse_binding("10.0.0.1:25 proxy"), parse_binding("*:587"))


def test_a_trusted_proxy_is_an_address_or_network_never_a_name() -> None:
    assert str(parse_trusted_proxy(" 10.0.0.5 ")) == "10.0.0.5"
    assert str(parse_trusted_proxy("10.0.0.0/255.255.255.0")) == "10.0.0.0/24"
    assert str(parse_trusted_proxy("::ffff:10.0.0.5")) == "10.0.0.5"
    with pytest.raises(GrammarError, match="not by name"):
        parse_trusted_proxy("lb.example.net")
    with pytest.raises(GrammarError, match="not by name"):
        parse_trusted_proxy("*.example.net")
    with pytest.raises(GrammarError, match="host bits"):
        parse_trusted_proxy("10.0.0.5/24")


def proxied_site() -> str:
    cfg = server("Edge", "127.0.0.2:2525 proxy", "127.0.0.3:25")
    cfg = replace(cfg, trusted_proxies=(parse_access_entry("10.0.0.0/24"),))
    return dump_site(site(cfg))


def test_the_snapshot_carries_proxy_bindings_and_trusted_proxies() -> None:
    body = proxied_site()
    data = json.loads(body)["servers"][0]
    assert data["bindings"] == ["127.0.0.2:2525 proxy", "127.0.0.3:25"]
    assert data["trusted_proxies"] == ["10.0.0.0/24"]
    loaded = load_site(body).servers[0]
    assert loaded.bindings == (Binding("127.0.0.2", 2525, True), Binding("127.0.0.3", 25))
    assert [str(e) for e in loaded.trusted_proxies] == ["10.0.0.0/24"]
    assert dump_site(load_site(body)) == body


def test_a_body_without_the_proxy_protocol_is_what_it_was_before() -> None:
    # Not written when unused: a configuration without PROXY keeps its text and hash, and
    # a node's last good file from before the PROXY protocol still loads.
    data = json.loads(dump_site(site(server("Old", "127.0.0.2:2525"))))
    assert "trusted_proxies" not in data["servers"][0]
    assert load_site(data).servers[0].trusted_proxies == ()
    del data["servers"][0]["domains"]  # fields without a default are still required
    with pytest.raises(ConfigFormatError, match="missing domains"):
        load_site(data)


def test_the_worker_refuses_a_named_trusted_proxy() -> None:
    data = json.loads(proxied_site())
    data["servers"][0]["trusted_proxies"] = ["lb.example.net"]
    with pytest.raises(ConfigFormatError, match=r"trusted_proxies\[0\]"):
        load_site(data)
    data["servers"][0]["trusted_proxies"] = ["10.0.0.5"]
    data["servers"][0]["bindings"] = ["127.0.0.2:2525 haproxy"]
    with pytest.raises(ConfigFormatError, match=r"bindings\[0\]"):
        load_site(data)
