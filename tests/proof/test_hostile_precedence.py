"""Issue 10 item 2: the relay decision and routing pick the same domain entry.

One function (:func:`smtpworker.core.config.domain_entry`) decides which domain entry governs a
recipient domain: a local domain of that exact name, then a remote domain of that exact
name, then the most specific remote wildcard. The same table is checked at three levels:
the function itself (with the policy and routing that call it), a real SMTP session on
loopback, and the API's check-relay (which runs the console's relay tester).

The reproduction: ``*.example.com`` allows relay, ``secret.example.com`` does not; an
anonymous client's mail to ``x@secret.example.com`` used to be relayed because the policy
took the first remote entry that allowed relay, while routing used the exact one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from rest_framework.test import APIClient

from smtpworker.core.config import DomainConfig, domain_entry
from smtpworker.inbound import policy
from smtpworker.outbound.routing import route
from smtpworker.tests.factories import free_port, local, remote, server
from smtpworker.tests.harness import LiveNode
from tests.proof.conftest import LOCAL_DOMAIN, Wire, internet_relay, serve

ANONYMOUS = policy.Client(ip="203.0.113.9")  # on no relay list


@dataclass(frozen=True)
class Entry:
    name: str
    kind: str = "remote"
    relay: bool = False


@dataclass(frozen=True)
class Case:
    """``recipient_domain`` as a client may type it; ``entry`` the name of the entry that
    must decide (None: no entry); ``accepted`` the anonymous relay verdict."""

    recipient_domain: str
    entry: str | None
    accepted: bool


WILD = Entry("*.example.com", relay=True)
SECRET = Entry("secret.example.com", relay=False)
EXACT_VS_WILDCARD = [
    Case("secret.example.com", "secret.example.com", False),
    Case("SECRET.Example.COM.", "secret.example.com", False),
    Case("x.example.com", "*.example.com", True),
    Case("x.secret.example.com", "*.example.com", True),  # an exact name covers no subdomain
    Case("example.com", None, False),  # a wildcard does not cover its own apex
    Case("badexample.com", None, False),  # nor a name that only ends in the same letters
]
NESTED = [
    Case("x.a.example.com", "*.a.example.com", True),
    Case("y.X.A.example.com.", "*.a.example.com", True),
    Case("a.example.com", "*.example.com", False),
    Case("b.example.com", "*.example.com", False),
]
NESTED_INVERSE = [
    Case("x.a.example.com", "*.a.example.com", False),
    Case("b.example.com", "*.example.com", True),
    Case("a.example.com", "*.example.com", True),
]
LOCAL_UNDER_WILDCARD = [
    Case("a.example.com", "a.example.com", True),
    Case("x.a.example.com", "*.example.com", False),
]

# (name, entries as listed, cases). Every set is listed in both orders below: the listing
# order must not matter.
SETS: list[tuple[str, list[Entry], list[Case]]] = [
    ("exact-vs-wildcard", [WILD, SECRET], EXACT_VS_WILDCARD),
    (
        "nested-wildcards",
        [Entry("*.example.com"), Entry("*.a.example.com", relay=True)],
        NESTED,
    ),
    (
        "nested-wildcards-inverse",
        [Entry("*.example.com", relay=True), Entry("*.a.example.com")],
        NESTED_INVERSE,
    ),
    (
        "local-under-wildcard",
        [Entry("*.example.com"), Entry("a.example.com", kind="local")],
        LOCAL_UNDER_WILDCARD,
    ),
]
ORDERED = [
    (f"{name}-{order}", entries if order == "listed" else entries[::-1], cases)
    for name, entries, cases in SETS
    for order in ("listed", "reversed")
]
FLAT = [
    pytest.param(entries, case, id=f"{name}:{case.recipient_domain}")
    for name, entries, cases in ORDERED
    for case in cases
]


REMOTE_NAMES = ("*.example.com", "secret.example.com", "*.a.example.com")


def smart_host_of(name: str) -> str:
    # Each remote entry forwards to its own (documentation-range) host, so the hop that
    # routing picks names the entry it used. Nothing is ever sent there.
    return f"[192.0.2.{REMOTE_NAMES.index(name) + 1}]"


def configs(entries: list[Entry], *, shown: bool = False) -> tuple[DomainConfig, ...]:
    """The entries as worker config, after the default local domain. ``shown`` writes the
    names as a hand-edited body might (upper case, trailing dot)."""

    def text(name: str) -> str:
        return name.upper() + "." if shown else name

    built = [
        local(text(e.name))
        if e.kind == "local"
        else remote(text(e.name), relay=e.relay, smart_host=smart_host_of(e.name))
        for e in entries
    ]
    return (local(LOCAL_DOMAIN, default=True), *built)


# --- the function, the policy and routing ----------------------------------------------------


@pytest.mark.parametrize("shown", [False, True], ids=["canonical-names", "shouted-names"])
@pytest.mark.parametrize(("entries", "case"), FLAT)
def test_one_entry_decides_relay_and_route(entries: list[Entry], case: Case, shown: bool) -> None:
    cfg = server("InternetRelay", "127.0.0.1:2525", domains=configs(entries, shown=shown))
    found = domain_entry(cfg.domains, case.recipient_domain)
    found_name = None if found is None else found.name.lower().removesuffix(".")
    assert found_name == case.entry

    decision = policy.check_rcpt(
        cfg, ANONYMOUS, recipient=f"x@{case.recipient_domain}", accepted_so_far=0, smtputf8=False
    )
    assert (decision.code, decision.enhanced) == (
        (250, "2.1.5") if case.accepted else (550, "5.7.1")
    )
    if case.entry is not None:
        assert case.entry in decision.rule.lower()

    hop = route(cfg, case.recipient_domain.lower().removesuffix("."))
    if found is None:
        assert hop.kind == "mx"
    elif found.kind == "local":
        assert hop.kind == "local"
    else:
        assert hop.name == smart_host_of(case.entry or "")


def test_an_exact_local_name_beats_a_remote_entry_of_the_same_name() -> None:
    # The console cannot store both (names are unique per server), but a body can carry
    # them: the local domain keeps deciding, as it did before, for relay and route alike.
    domains = (local("example.com"), remote("example.com", relay=False, smart_host="[192.0.2.9]"))
    cfg = server("InternetRelay", "127.0.0.1:2525", domains=domains)
    assert domain_entry(cfg.domains, "Example.COM.") == domains[0]
    assert route(cfg, "example.com").kind == "local"
    decision = policy.check_rcpt(
        cfg, ANONYMOUS, recipient="x@example.com", accepted_so_far=0, smtputf8=False
    )
    assert decision.code == 250 and decision.rule == "local domain example.com"


def test_two_equal_wildcards_the_first_listed_decides() -> None:
    first = remote("*.example.com", relay=False)
    second = remote("*.EXAMPLE.com.", relay=True)
    assert domain_entry((first, second), "a.example.com") is first
    assert domain_entry((second, first), "a.example.com") is second


# --- a real SMTP session on loopback ---------------------------------------------------------


def test_the_reproduction_over_smtp(live: LiveNode) -> None:
    address = serve(live, internet_relay(domains=configs([WILD, SECRET])))
    with Wire(address) as wire:
        wire.hello()
        assert wire.command("MAIL FROM:<a@sender.test>").code == 250
        reply = wire.command("RCPT TO:<x@secret.example.com>")
        assert (reply.code, reply.enhanced) == (550, "5.7.1"), reply
        assert wire.command("RCPT TO:<x@other.example.com>").code == 250


@pytest.mark.parametrize(
    ("entries", "cases"),
    [pytest.param(entries, cases, id=name) for name, entries, cases in ORDERED],
)
def test_the_table_over_smtp(live: LiveNode, entries: list[Entry], cases: list[Case]) -> None:
    address = serve(live, internet_relay(domains=configs(entries, shown=True)))
    with Wire(address) as wire:
        wire.hello()
        assert wire.command("MAIL FROM:<a@sender.test>").code == 250
        for case in cases:
            reply = wire.command(f"RCPT TO:<x@{case.recipient_domain}>")
            expected = (250, "2.1.5") if case.accepted else (550, "5.7.1")
            assert (reply.code, reply.enhanced) == expected, (case, str(reply))


# --- the API's check-relay (the console's relay tester) --------------------------------------


def api_server(api: APIClient, entries: list[Entry]) -> int:
    body = {
        "name": "Relay",
        "default_domain": LOCAL_DOMAIN,
        "bindings": [f"127.0.0.2:{free_port()}"],
    }
    response = api.post("/api/v1/servers/", body, format="json")
    assert response.status_code == 201, response.content
    server_id: int = response.json()["id"]
    for entry in entries:
        fields: dict[str, Any] = {"server": server_id, "name": entry.name, "type": entry.kind}
        if entry.kind == "remote":
            fields["relay_allowed"] = entry.relay
        response = api.post("/api/v1/domains/", fields, format="json")
        assert response.status_code == 201, response.content
    return server_id


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("entries", "cases"),
    [pytest.param(entries, cases, id=name) for name, entries, cases in ORDERED],
)
def test_the_table_through_check_relay(
    api: APIClient, entries: list[Entry], cases: list[Case]
) -> None:
    server_id = api_server(api, entries)
    for case in cases:
        facts = {"client_ip": ANONYMOUS.ip, "recipient": f"x@{case.recipient_domain}"}
        response = api.post(f"/api/v1/servers/{server_id}/check-relay/", facts, format="json")
        assert response.status_code == 200, response.content
        body = response.json()
        assert body["accepted"] is case.accepted, (case, body)
        if case.entry is not None:
            assert case.entry in body["decided_by"], (case, body)
