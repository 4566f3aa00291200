"""Routing by the IIS rules, and DNS resolution against a real DNS server on loopback."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import dns.message
import dns.query
import pytest

from smtpworker.core.config import DomainConfig, OutboundConfig, OutboundSecurity, ServerConfig
from smtpworker.outbound.routing import (
    Hop,
    NoRoute,
    NullMX,
    Target,
    TemporaryDNSError,
    resolve,
    route,
)
from smtpworker.tests.dnsserver import DnsServer, Zone
from smtpworker.tests.factories import NO_SECURITY, local, remote, server

SERVER_SECURITY = OutboundSecurity(
    tls="required", auth_method="basic", username="srv", password="s"
)
DOMAIN_SECURITY = OutboundSecurity(
    tls="opportunistic", auth_method="integrated", username="dom", password="d"
)


def cfg(*domains: DomainConfig, smart_host: str = "", direct_first: bool = False) -> ServerConfig:
    base = server("Relay")
    outbound = OutboundConfig(2525, 1000, 100, 600, SERVER_SECURITY)
    delivery = replace(
        base.delivery, smart_host=smart_host, attempt_direct_first=direct_first, outbound=outbound
    )
    return replace(base, delivery=delivery, domains=(*base.domains, *domains))


def domain(name: str, *, smart_host: str = "", forward: bool = False, **kw: Any) -> DomainConfig:
    entry = remote(name, smart_host=smart_host)
    kw.setdefault("security", DOMAIN_SECURITY)
    return replace(entry, forward_all_to_smart_host=forward or bool(smart_host), **kw)


# --- route() ----------------------------------------------------------------------------


def test_the_default_domain_and_aliases_are_local() -> None:
    config = cfg(local("alias.test"))
    assert route(config, "relay.test") == Hop("local", "relay.test", SERVER_SECURITY, False, 2525)
    assert route(config, "alias.test").kind == "local"
    assert route(config, "sub.alias.test").kind == "mx"  # local domains match exactly


def test_an_unlisted_domain_goes_by_mx_with_the_server_security_and_port() -> None:
    hop = route(cfg(), "Example.ORG.")
    assert hop == Hop("mx", "example.org", SERVER_SECURITY, False, 2525)


@pytest.mark.parametrize(
    ("smart_host", "name", "port"),
    [
        ("[10.0.0.2]", "[10.0.0.2]", 2525),
        ("[10.0.0.2]:26", "[10.0.0.2]:26", 26),
        ("[IPv6:2001:db8::1]", "[IPv6:2001:db8::1]", 2525),
        ("Relay.Example.TEST", "relay.example.test", 2525),
        ("relay.example.test:587", "relay.example.test:587", 587),
    ],
)
def test_the_server_smart_host_takes_everything_remote(
    smart_host: str, name: str, port: int
) -> None:
    hop = route(cfg(smart_host=smart_host), "example.org")
    assert hop == Hop("smarthost", name, SERVER_SECURITY, False, port)


def test_attempt_direct_first_tries_mx_then_falls_back_to_the_smart_host() -> None:
    hop = route(cfg(smart_host="[10.0.0.2]", direct_first=True), "example.org")
    assert hop.kind == "mx" and hop.name == "example.org"
    assert hop.fallback == Hop("smarthost", "[10.0.0.2]", SERVER_SECURITY, False, 2525)


def test_a_remote_domain_with_its_own_smart_host_uses_it_with_its_own_settings() -> None:
    config = cfg(
        domain("partner.test", smart_host="[10.9.9.9]:25", use_helo=True),
        smart_host="[10.0.0.2]",
        direct_first=True,
    )
    hop = route(config, "partner.test")
    assert hop == Hop("smarthost", "[10.9.9.9]:25", DOMAIN_SECURITY, True, 25)
    assert hop.fallback is None


def test_forward_all_without_a_host_of_its_own_uses_the_server_smart_host() -> None:
    config = cfg(domain("partner.test", forward=True, use_helo=True), smart_host="[10.0.0.2]")
    assert route(config, "partner.test") == Hop(
        "smarthost", "[10.0.0.2]", DOMAIN_SECURITY, True, 2525
    )


def test_forward_all_with_no_smart_host_anywhere_goes_direct() -> None:
    config = cfg(domain("partner.test", forward=True, use_helo=True))
    assert route(config, "partner.test") == Hop("mx", "partner.test", DOMAIN_SECURITY, True, 2525)


def test_a_listed_remote_domain_without_a_smart_host_goes_direct_with_its_settings() -> None:
    config = cfg(domain("partner.test", use_helo=True))
    assert route(config, "partner.test") == Hop("mx", "partner.test", DOMAIN_SECURITY, True, 2525)


def test_the_server_smart_host_is_spoken_to_with_the_server_security() -> None:
    config = cfg(domain("partner.test", use_helo=True), smart_host="[10.0.0.2]", direct_first=True)
    hop = route(config, "partner.test")
    assert hop == Hop(
        "mx",
        "partner.test",
        DOMAIN_SECURITY,
        True,
        2525,
        fallback=Hop("smarthost", "[10.0.0.2]", SERVER_SECURITY, False, 2525),
    )


def test_wildcard_remote_domains_match_below_but_not_the_name_itself() -> None:
    config = cfg(domain("*.partner.test", smart_host="[10.1.1.1]"))
    assert route(config, "a.partner.test").name == "[10.1.1.1]"
    assert route(config, "a.b.partner.test").name == "[10.1.1.1]"
    assert route(config, "partner.test").kind == "mx"
    assert route(config, "xpartner.test").kind == "mx"


def test_an_exact_remote_domain_beats_a_wildcard_listed_first() -> None:
    config = cfg(
        domain("*.partner.test", smart_host="[10.1.1.1]"),
        domain("a.partner.test", smart_host="[10.2.2.2]"),
    )
    assert route(config, "a.partner.test").name == "[10.2.2.2]"
    assert route(config, "b.partner.test").name == "[10.1.1.1]"


def test_the_most_specific_matching_wildcard_wins() -> None:
    config = cfg(
        domain("*.partner.test", smart_host="[10.1.1.1]"),
        domain("*.a.partner.test", smart_host="[10.2.2.2]"),
    )
    assert route(config, "x.a.partner.test").name == "[10.2.2.2]"
    assert route(config, "x.b.partner.test").name == "[10.1.1.1]"
    assert route(config, "a.partner.test").name == "[10.1.1.1]"


# --- resolve() against a real DNS server --------------------------------------------------

ZONE: Zone = {
    "example.test": {"MX": [(20, "mx2.example.test"), (10, "mx1.example.test")]},
    "mx1.example.test": {"A": ["127.0.0.11"]},
    "mx2.example.test": {"A": ["127.0.0.12"], "AAAA": ["::1"]},
    "equal.test": {"MX": [(10, "a.equal.test"), (10, "b.equal.test")]},
    "a.equal.test": {"A": ["127.0.0.21"]},
    "b.equal.test": {"A": ["127.0.0.22"]},
    "implicit.test": {"A": ["127.0.0.31"], "TXT": ['"v=spf1 -all"']},
    "nullmx.test": {"MX": [(0, ".")]},
    "nothing.test": {"TXT": ['"no mail here"']},
    "dangling.test": {"MX": [(10, "gone.dangling.test")]},
    "halfbroken.test": {"MX": [(10, "broken.halfbroken.test"), (20, "ok.halfbroken.test")]},
    "broken.halfbroken.test": {"A": ["127.0.0.41"]},
    "ok.halfbroken.test": {"A": ["127.0.0.42"]},
    "relay.test": {"MX": [(5, "in.relay.test")]},
    "in.relay.test": {"A": ["127.0.0.51"]},
    "plain-relay.test": {"A": ["127.0.0.61"]},
}


@pytest.fixture
def dns_server() -> Iterator[DnsServer]:
    with DnsServer(ZONE) as running:
        yield running


def mx(name: str, port: int = 25) -> Hop:
    return Hop("mx", name, NO_SECURITY, False, port)


def smart(name: str, port: int = 25) -> Hop:
    return Hop("smarthost", name, NO_SECURITY, False, port)


def lookup(dns_server: DnsServer, hop: Hop, **kw: Any) -> list[Target]:
    kw.setdefault("timeout", 5.0)
    return resolve(hop, dns_servers=[dns_server.address], **kw)


def test_mx_hosts_come_in_preference_order_with_their_addresses(dns_server: DnsServer) -> None:
    assert lookup(dns_server, mx("example.test", 2525)) == [
        Target("mx1.example.test", "127.0.0.11", 2525, 10),
        Target("mx2.example.test", "127.0.0.12", 2525, 20),
        Target("mx2.example.test", "::1", 2525, 20),
    ]


def test_equal_preferences_are_shuffled(dns_server: DnsServer) -> None:
    orders = {
        tuple(t.host for t in lookup(dns_server, mx("equal.test"), rng=random.Random(seed)))
        for seed in range(20)
    }
    assert orders == {("a.equal.test", "b.equal.test"), ("b.equal.test", "a.equal.test")}


def test_no_mx_means_the_domain_itself_is_the_mail_host(dns_server: DnsServer) -> None:
    assert lookup(dns_server, mx("implicit.test")) == [Target("implicit.test", "127.0.0.31", 25, 0)]


def test_a_null_mx_is_a_permanent_failure(dns_server: DnsServer) -> None:
    with pytest.raises(NullMX) as caught:
        lookup(dns_server, mx("nullmx.test"))
    assert (caught.value.code, caught.value.enhanced) == (556, "5.1.10")


@pytest.mark.parametrize("name", ["unknown.test", "nothing.test", "dangling.test"])
def test_no_such_domain_or_no_address_is_no_route(dns_server: DnsServer, name: str) -> None:
    with pytest.raises(NoRoute) as caught:
        lookup(dns_server, mx(name))
    assert (caught.value.code, caught.value.enhanced) == (550, "5.1.2")


def test_servfail_is_temporary(dns_server: DnsServer) -> None:
    dns_server.mode = "servfail"
    with pytest.raises(TemporaryDNSError) as caught:
        lookup(dns_server, mx("example.test"))
    assert (caught.value.code, caught.value.enhanced) == (451, "4.4.3")


def test_a_silent_server_is_temporary_within_the_timeout(dns_server: DnsServer) -> None:
    dns_server.mode = "silent"
    started = time.monotonic()
    with pytest.raises(TemporaryDNSError):
        lookup(dns_server, mx("example.test"), timeout=0.5)
    assert time.monotonic() - started < 2.0


def test_an_mx_host_that_fails_to_resolve_is_skipped(dns_server: DnsServer) -> None:
    dns_server.servfail_names = {"broken.halfbroken.test"}
    assert lookup(dns_server, mx("halfbroken.test")) == [
        Target("ok.halfbroken.test", "127.0.0.42", 25, 20)
    ]
    dns_server.servfail_names = {"broken.halfbroken.test", "ok.halfbroken.test"}
    with pytest.raises(TemporaryDNSError):
        lookup(dns_server, mx("halfbroken.test"))


def test_a_literal_smart_host_needs_no_dns(dns_server: DnsServer) -> None:
    dns_server.mode = "servfail"
    hop = smart("[10.0.0.2]:2626", 2626)
    assert lookup(dns_server, hop) == [Target("10.0.0.2", "10.0.0.2", 2626, 0)]
    assert lookup(dns_server, smart("[IPv6:::1]")) == [Target("::1", "::1", 25, 0)]
    assert dns_server.queries == []


def test_a_named_smart_host_is_looked_up_mx_first_then_address(dns_server: DnsServer) -> None:
    # Verified TLS checks the smart host's configured name, not the MX name DNS gave.
    [via_mx] = lookup(dns_server, smart("relay.test:587", 587))
    assert via_mx == Target("in.relay.test", "127.0.0.51", 587, 5, tls_name="relay.test")
    assert via_mx.verify_name == "relay.test"
    assert lookup(dns_server, smart("plain-relay.test")) == [
        Target("plain-relay.test", "127.0.0.61", 25, 0, tls_name="plain-relay.test")
    ]
    assert ("relay.test", "MX") in dns_server.queries


def test_an_mx_host_is_verified_by_its_own_name(dns_server: DnsServer) -> None:
    assert [t.verify_name for t in lookup(dns_server, mx("example.test"))] == [
        "mx1.example.test",
        "mx2.example.test",
        "mx2.example.test",
    ]


def test_a_failing_dns_server_gives_way_to_the_next(dns_server: DnsServer) -> None:
    with DnsServer(ZONE) as failing:
        failing.mode = "servfail"
        targets = resolve(
            mx("implicit.test"), dns_servers=[failing.address, dns_server.address], timeout=5
        )
    assert targets == [Target("implicit.test", "127.0.0.31", 25, 0)]
    assert failing.queries and dns_server.queries


def test_the_dns_server_answers_over_tcp_too(dns_server: DnsServer) -> None:
    query = dns.message.make_query("mx1.example.test", "A")
    response = dns.query.tcp(query, "127.0.0.1", port=dns_server.port, timeout=5)
    assert [r.to_text() for r in response.answer[0]] == ["127.0.0.11"]


def test_a_local_hop_is_not_resolved() -> None:
    with pytest.raises(ValueError):
        resolve(Hop("local", "relay.test", NO_SECURITY, False, 25), dns_servers=[], timeout=1)


def test_route_and_resolve_together(dns_server: DnsServer) -> None:
    config = cfg(smart_host="relay.test", direct_first=True)
    hop = route(config, "example.test")
    first = lookup(dns_server, hop)
    assert first[0] == Target("mx1.example.test", "127.0.0.11", 2525, 10)
    assert hop.fallback is not None
    assert lookup(dns_server, hop.fallback)[0].address == "127.0.0.51"
