"""Forward-confirmed reverse DNS against a real DNS server on loopback."""

from __future__ import annotations

import asyncio

from smtpworker.core.grammar import parse_dns_server
from smtpworker.inbound import policy
from smtpworker.inbound.dnscheck import ReverseResolver
from smtpworker.tests.dnsserver import DnsServer
from smtpworker.tests.factories import server

ZONE = {
    "1.0.0.127.in-addr.arpa": {"PTR": ["mail.partner.test."]},
    "mail.partner.test": {"A": ["127.0.0.1"]},
    "2.0.0.127.in-addr.arpa": {"PTR": ["liar.partner.test."]},  # claims a name...
    "liar.partner.test": {"A": ["192.0.2.99"]},  # ...that does not point back
}


def names(dns_server: DnsServer, ip: str) -> tuple[str, ...]:
    resolver = ReverseResolver(timeout=2, nameservers=(parse_dns_server(dns_server.address),))
    return asyncio.run(resolver.names(ip))


def test_a_confirmed_name_matches_a_domain_entry() -> None:
    with DnsServer(ZONE) as dns_server:
        found = names(dns_server, "127.0.0.1")
    assert found == ("mail.partner.test",)
    cfg = server("Test", connection={"mode": "only_list", "entries": ("partner.test",)})
    client = policy.Client("127.0.0.1", ptr_names=found)
    assert policy.check_connect(cfg, client, active_connections=0).ok


def test_an_unconfirmed_ptr_counts_for_nothing() -> None:
    with DnsServer(ZONE) as dns_server:
        assert names(dns_server, "127.0.0.2") == ()
        assert names(dns_server, "127.0.0.3") == ()  # no PTR at all


def test_a_dead_dns_server_costs_at_most_the_timeout() -> None:
    with DnsServer(ZONE) as dns_server:
        dns_server.mode = "silent"
        resolver = ReverseResolver(timeout=0.5, nameservers=(parse_dns_server(dns_server.address),))
        assert asyncio.run(resolver.names("127.0.0.1")) == ()
