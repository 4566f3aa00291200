"""Table-driven tests of smtpworker.inbound.policy over every IIS option; no database."""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Any

import pytest

from smtpworker.core.config import (
    AccessPolicy,
    AuthConfig,
    DomainConfig,
    MessageLimits,
    RelayPolicy,
    ServerConfig,
    TlsConfig,
)
from smtpworker.core.grammar import Binding, GrammarError, Mailbox, parse_access_entry
from smtpworker.inbound import policy
from smtpworker.inbound.policy import Client, Decision
from smtpworker.tests.factories import NO_SECURITY, server

KB = 1024


def domain(name: str, kind: str = "remote", *, relay: bool = False, default: bool = False):
    return DomainConfig(
        name=name,
        kind=kind,
        default=default,
        relay_allowed=relay,
        smart_host="",
        forward_all_to_smart_host=False,
        use_helo=False,
        security=NO_SECURITY,
    )


# factories.server's IIS 6 defaults: anonymous only, no TLS, connection control "all
# except" an empty list, relay "only the list below" with an empty list plus "allow
# authenticated", 2,048 KB messages, 10,240 KB sessions, 20 messages per connection, 100
# recipients, 15 hops; here with a home directory and five domains.
BASE = server(
    "SMTP Virtual Server #1",
    node="node1",
    bindings=(Binding(None, 25),),
    fqdn="mail.local.test",
    home_directory="/var/mailroot",
    logging={"enabled": True, "fields": ()},
    messages={"badmail_directory": "/var/mailroot/Badmail"},
    domains=(
        domain("local.test", "local", default=True),
        domain("alias.test", "local"),
        domain("partner.test", relay=True),
        domain("*.example.com", relay=True),
        domain("norelay.test", relay=False),
    ),
)


def make_server(**overrides: Any) -> ServerConfig:
    return replace(BASE, **overrides)


def auth(**kw: Any) -> AuthConfig:
    return replace(BASE.auth, **kw)


def limits(**kw: Any) -> MessageLimits:
    return replace(BASE.messages, **kw)


def entries(*texts: str) -> tuple[Any, ...]:
    return tuple(parse_access_entry(t) for t in texts)


def connection(mode: str, *texts: str) -> AccessPolicy:
    return AccessPolicy(mode=mode, entries=entries(*texts))


def relay(mode: str, *texts: str, allow_authenticated: bool = True) -> RelayPolicy:
    return RelayPolicy(mode=mode, entries=entries(*texts), allow_authenticated=allow_authenticated)


TLS_ON = TlsConfig(certificate="-----BEGIN CERTIFICATE-----", private_key="sealed", require=False)
TLS_REQUIRED = replace(TLS_ON, require=True)
ANON = Client("192.0.2.7")
LISTED = Client("10.1.2.3", ptr_names=("host.relay.test",))
USER = Client("192.0.2.7", authenticated_user="alice")
ANON_TLS = replace(ANON, tls=True)


def verdict(decision: Decision) -> Decision:
    """Every decision's enhanced code has the class of its reply code (RFC 3463)."""
    assert isinstance(decision, Decision)
    assert decision.enhanced.split(".")[0] == str(decision.code)[0], decision
    assert len(decision.enhanced.split(".")) == 3
    assert decision.ok == (decision.code < 400)
    assert decision.reply == f"{decision.code} {decision.enhanced} {decision.text}"
    assert decision.rule
    return decision


def connect(cfg: ServerConfig, client: Client = ANON, active: int = 0) -> Decision:
    return verdict(policy.check_connect(cfg, client, active_connections=active))


def mail(cfg: ServerConfig, client: Client = ANON, **kw: Any) -> policy.SenderDecision:
    facts: dict[str, Any] = {
        "sender": "<s@sender.test>",
        "size": None,
        "smtputf8": False,
        "messages_sent": 0,
        "session_bytes": 0,
    }
    facts.update(kw)
    decision = verdict(policy.check_mail(cfg, client, **facts))
    assert isinstance(decision, policy.SenderDecision)
    return decision


def rcpt(
    cfg: ServerConfig, client: Client, recipient: str, *, accepted: int = 0, smtputf8: bool = False
) -> policy.RecipientDecision:
    decision = verdict(
        policy.check_rcpt(
            cfg, client, recipient=recipient, accepted_so_far=accepted, smtputf8=smtputf8
        )
    )
    assert isinstance(decision, policy.RecipientDecision)
    assert (decision.mailbox is not None) == decision.ok
    return decision


# --- Decision and Client ----------------------------------------------------------------------


@pytest.mark.parametrize(("code", "enhanced"), [(250, "4.0.0"), (550, "4.7.1"), (421, "5.3.2")])
def test_decision_refuses_mismatched_enhanced_class(code: int, enhanced: str) -> None:
    with pytest.raises(ValueError, match="does not fit"):
        Decision(code, enhanced, "text", "rule")


def test_decision_reply_line() -> None:
    decision = verdict(Decision(550, "5.7.1", "Unable to relay for a@b.test", "r"))
    assert decision.reply == "550 5.7.1 Unable to relay for a@b.test"
    assert not decision.ok


@pytest.mark.parametrize("ip", ["", "mail.example.com", "10.0.0", "10.0.0.0/8"])
def test_client_refuses_bad_ip(ip: str) -> None:
    with pytest.raises(GrammarError):
        Client(ip)


# --- Connect ----------------------------------------------------------------------------------


CONNECT_CASES = [
    # (mode, entries, client, granted, rule fragment)
    ("all_except_list", (), ANON, True, "192.0.2.7 matches no entry"),
    ("all_except_list", ("192.0.2.7",), ANON, False, "192.0.2.7 is denied"),
    ("all_except_list", ("192.0.2.8",), ANON, True, "matches no entry"),
    ("all_except_list", ("10.0.0.0/8",), LISTED, False, "10.0.0.0/8 is denied"),
    ("all_except_list", ("10.0.0.0/255.0.0.0",), LISTED, False, "10.0.0.0/8 is denied"),
    ("all_except_list", ("10.0.0.0/8",), Client("::ffff:10.9.9.9"), False, "10.0.0.0/8"),
    ("all_except_list", ("relay.test",), LISTED, False, "relay.test is denied"),
    ("all_except_list", ("*.relay.test",), LISTED, False, "*.relay.test is denied"),
    ("all_except_list", ("other.test",), LISTED, True, "10.1.2.3 matches no entry"),
    ("all_except_list", ("relay.test",), Client("10.1.2.3"), True, "matches no entry"),
    ("only_list", (), ANON, False, "(only the list below): 192.0.2.7 matches no entry"),
    ("only_list", ("192.0.2.7",), ANON, True, "192.0.2.7 matched"),
    ("only_list", ("10.1.0.0/16",), LISTED, True, "(only the list below): 10.1.0.0/16 matched"),
    ("only_list", ("10.2.0.0/16",), LISTED, False, "matches no entry"),
    ("only_list", ("relay.test",), LISTED, True, "relay.test matched"),
    ("only_list", ("*.relay.test",), LISTED, True, "*.relay.test matched"),
    ("only_list", ("*.host.relay.test",), LISTED, False, "matches no entry"),
    ("only_list", ("2001:db8::/32",), Client("2001:db8::25"), True, "2001:db8::/32 matched"),
]


@pytest.mark.parametrize(("mode", "listed", "client", "granted", "why"), CONNECT_CASES)
def test_connection_control(
    mode: str, listed: tuple[str, ...], client: Client, granted: bool, why: str
) -> None:
    decision = connect(make_server(connection=connection(mode, *listed)), client)
    assert why in decision.rule
    assert decision.rule.startswith("connection control")
    if granted:
        assert (decision.code, decision.enhanced) == (220, "2.0.0")
    else:
        assert decision.reply == "554 5.7.1 mail.local.test Access denied"


@pytest.mark.parametrize(
    ("limit", "active", "code"),
    [(None, 0, 220), (None, 10_000, 220), (5, 4, 220), (5, 5, 421), (5, 6, 421), (0, 0, 421)],
)
def test_connection_limit(limit: int | None, active: int, code: int) -> None:
    decision = connect(make_server(connection_limit=limit), ANON, active)
    assert decision.code == code
    if code == 421:
        assert decision.reply == "421 4.7.0 mail.local.test Too many connections, try later"
        assert f"connection limit ({limit})" in decision.rule


@pytest.mark.parametrize(
    ("limit", "mine", "code"), [(50, 49, 220), (50, 50, 421), (None, 10_000, 220)]
)
def test_client_connection_limit(limit: int | None, mine: int, code: int) -> None:
    cfg = make_server(client_connection_limit=limit)
    decision = policy.check_connect(cfg, ANON, active_connections=mine, client_connections=mine)
    assert decision.code == code
    if code == 421:
        assert decision.reply == (
            "421 4.7.0 mail.local.test Too many connections from your address, try later"
        )
        assert "client connection limit (50)" in decision.rule


def test_connection_control_decides_before_the_limit() -> None:
    cfg = make_server(connection_limit=1, connection=connection("only_list"))
    assert connect(cfg, ANON, 5).code == 554


@pytest.mark.parametrize("state", ["paused", "stopped"])
def test_server_not_started_refuses(state: str) -> None:
    decision = connect(make_server(state=state))
    assert decision.reply == "421 4.3.2 mail.local.test Service not available"
    assert state in decision.rule


# --- EHLO and AUTH ----------------------------------------------------------------------------

BASIC_TLS = auth(basic=True, basic_requires_tls=True)
COMMON = ("SIZE 2097152", "8BITMIME", "PIPELINING", "ENHANCEDSTATUSCODES", "SMTPUTF8")

EHLO_CASES = [
    # (auth, tls config, session has tls, extra keywords after COMMON)
    (auth(), BASE.tls, False, ()),
    (auth(), TLS_ON, False, ("STARTTLS",)),
    (auth(), TLS_ON, True, ()),
    (auth(basic=True), BASE.tls, False, ("AUTH PLAIN LOGIN",)),
    (auth(basic=True, basic_requires_tls=True), TLS_ON, False, ("STARTTLS",)),
    (auth(basic=True, basic_requires_tls=True), TLS_ON, True, ("AUTH PLAIN LOGIN",)),
    (auth(integrated=True), BASE.tls, False, ("AUTH SCRAM-SHA-256",)),
    (auth(integrated=True, cram_md5=True), BASE.tls, False, ("AUTH SCRAM-SHA-256 CRAM-MD5",)),
    (auth(cram_md5=True), BASE.tls, False, ()),  # CRAM-MD5 only as part of integrated
    (
        auth(basic=True, basic_requires_tls=True, integrated=True),
        TLS_ON,
        False,
        ("STARTTLS", "AUTH SCRAM-SHA-256"),
    ),
    (
        auth(basic=True, integrated=True, cram_md5=True),
        TLS_ON,
        True,
        ("AUTH PLAIN LOGIN SCRAM-SHA-256 CRAM-MD5",),
    ),
    (auth(basic=True, integrated=True), TLS_REQUIRED, False, ("STARTTLS",)),
    (auth(basic=True, integrated=True), TLS_REQUIRED, True, ("AUTH PLAIN LOGIN SCRAM-SHA-256",)),
]


@pytest.mark.parametrize(("auth_cfg", "tls_cfg", "tls", "extra"), EHLO_CASES)
def test_ehlo_keywords(
    auth_cfg: AuthConfig, tls_cfg: TlsConfig, tls: bool, extra: tuple[str, ...]
) -> None:
    cfg = make_server(auth=auth_cfg, tls=tls_cfg)
    assert policy.ehlo_keywords(cfg, tls=tls) == COMMON + extra


def test_ehlo_size_without_limit_and_no_dsn_or_chunking() -> None:
    keywords = policy.ehlo_keywords(make_server(messages=limits(max_message_size=None)), tls=False)
    assert keywords[0] == "SIZE"
    assert not any(k.startswith(("DSN", "CHUNKING")) for k in keywords)


AUTH_CASES = [
    # (auth, tls config, client, mechanism, code, enhanced)
    (auth(basic=True), BASE.tls, ANON, "PLAIN", 250, "2.0.0"),
    (auth(basic=True), BASE.tls, ANON, "login", 250, "2.0.0"),
    (auth(basic=True), BASE.tls, ANON, "SCRAM-SHA-256", 504, "5.5.4"),
    (auth(basic=True), BASE.tls, ANON, "GSSAPI", 504, "5.5.4"),
    (auth(basic=True), BASE.tls, USER, "PLAIN", 503, "5.5.1"),
    (auth(basic=True, basic_requires_tls=True), TLS_ON, ANON, "PLAIN", 530, "5.7.0"),
    (auth(basic=True, basic_requires_tls=True), TLS_ON, ANON, "LOGIN", 530, "5.7.0"),
    (auth(basic=True, basic_requires_tls=True), TLS_ON, ANON_TLS, "PLAIN", 250, "2.0.0"),
    (replace(BASIC_TLS, integrated=True), TLS_ON, ANON, "SCRAM-SHA-256", 250, "2.0.0"),
    (auth(integrated=True), BASE.tls, ANON, "SCRAM-SHA-256", 250, "2.0.0"),
    (auth(integrated=True), BASE.tls, ANON, "CRAM-MD5", 504, "5.5.4"),
    (auth(integrated=True, cram_md5=True), BASE.tls, ANON, "CRAM-MD5", 250, "2.0.0"),
    (auth(integrated=True), BASE.tls, ANON, "PLAIN", 504, "5.5.4"),
    (auth(), BASE.tls, ANON, "PLAIN", 504, "5.5.4"),
    (auth(integrated=True), TLS_REQUIRED, ANON, "SCRAM-SHA-256", 530, "5.7.0"),
    (auth(integrated=True), TLS_REQUIRED, ANON, "BOGUS", 530, "5.7.0"),
    (auth(integrated=True), TLS_REQUIRED, ANON_TLS, "SCRAM-SHA-256", 250, "2.0.0"),
]  # fmt: skip


@pytest.mark.parametrize(("auth_cfg", "tls_cfg", "client", "mech", "code", "enhanced"), AUTH_CASES)
def test_check_auth(
    auth_cfg: AuthConfig, tls_cfg: TlsConfig, client: Client, mech: str, code: int, enhanced: str
) -> None:
    cfg = make_server(auth=auth_cfg, tls=tls_cfg)
    decision = verdict(policy.check_auth(cfg, client, mechanism=mech))
    assert (decision.code, decision.enhanced) == (code, enhanced)
    if code == 530:
        assert decision.text == "Must issue a STARTTLS command first"
    if code == 504:
        assert decision.text == "Unrecognized authentication type"
    if code == 250:
        assert mech.upper() in policy.offered_auth_mechanisms(cfg, tls=client.tls)


# --- MAIL -------------------------------------------------------------------------------------

# Every IIS limit check box cleared.
NO_LIMITS = limits(
    max_message_size=None,
    max_session_size=None,
    max_messages_per_connection=None,
    max_recipients_per_message=None,
)
SESSION_UNLIMITED = limits(max_session_size=None)

MAIL_CASES = [
    # (server overrides, client, facts, code, enhanced)
    ({}, ANON, {}, 250, "2.1.0"),
    ({}, ANON, {"sender": "<>"}, 250, "2.1.0"),
    ({}, ANON, {"sender": "<@a.test,@b.test:s@c.test>"}, 250, "2.1.0"),
    ({}, ANON, {"sender": "<s@[10.0.0.1]>"}, 250, "2.1.0"),
    ({}, ANON, {"sender": "<s@bad..test>"}, 501, "5.1.7"),
    ({}, ANON, {"sender": "<s%x@a.test>"}, 501, "5.1.7"),
    ({}, ANON, {"sender": "<nodomain>"}, 501, "5.1.7"),
    ({}, ANON, {"sender": "<jö@a.test>"}, 501, "5.1.7"),
    ({}, ANON, {"sender": "<jö@a.test>", "smtputf8": True}, 250, "2.1.0"),
    ({"tls": TLS_REQUIRED}, ANON, {}, 530, "5.7.0"),
    ({"tls": TLS_REQUIRED}, ANON_TLS, {}, 250, "2.1.0"),
    ({"auth": auth(anonymous=False, basic=True)}, ANON, {}, 530, "5.7.0"),
    ({"auth": auth(anonymous=False, basic=True)}, USER, {}, 250, "2.1.0"),
    ({}, ANON, {"messages_sent": 19}, 250, "2.1.0"),
    ({}, ANON, {"messages_sent": 20}, 421, "4.7.0"),
    ({"messages": NO_LIMITS}, ANON, {"messages_sent": 10**6}, 250, "2.1.0"),
    ({}, ANON, {"size": 2048 * KB}, 250, "2.1.0"),
    ({}, ANON, {"size": 2048 * KB + 1}, 552, "5.3.4"),
    ({"messages": limits(max_message_size=None)}, ANON, {"size": 9 * 1024 * KB}, 250, "2.1.0"),
    ({}, ANON, {"size": 1000, "session_bytes": 10240 * KB - 1000}, 250, "2.1.0"),
    ({}, ANON, {"size": 1001, "session_bytes": 10240 * KB - 1000}, 552, "5.3.4"),
    ({}, ANON, {"size": None, "session_bytes": 10240 * KB - 1}, 250, "2.1.0"),
    ({}, ANON, {"size": None, "session_bytes": 10240 * KB}, 552, "5.3.4"),
    ({"messages": NO_LIMITS}, ANON, {"size": 10**10, "session_bytes": 10**12}, 250, "2.1.0"),
    ({"messages": SESSION_UNLIMITED}, ANON, {"size": 10, "session_bytes": 10**12}, 250, "2.1.0"),
    # Order: TLS before authentication before the per-connection count before syntax.
    ({"tls": TLS_REQUIRED, "auth": auth(anonymous=False)}, ANON, {}, 530, "5.7.0"),
    ({"auth": auth(anonymous=False)}, ANON, {"messages_sent": 99}, 530, "5.7.0"),
    ({}, ANON, {"messages_sent": 20, "sender": "bad"}, 421, "4.7.0"),
    ({}, ANON, {"sender": "bad", "size": 10**9}, 501, "5.1.7"),
]  # fmt: skip


@pytest.mark.parametrize(("overrides", "client", "facts", "code", "enhanced"), MAIL_CASES)
def test_check_mail(
    overrides: dict[str, Any], client: Client, facts: dict[str, Any], code: int, enhanced: str
) -> None:
    decision = mail(make_server(**overrides), client, **facts)
    assert (decision.code, decision.enhanced) == (code, enhanced)
    if code != 250:
        assert decision.mailbox is None


@pytest.mark.parametrize(
    ("overrides", "client", "text"),
    [
        ({"tls": TLS_REQUIRED}, ANON, "Must issue a STARTTLS command first"),
        ({"auth": auth(anonymous=False)}, ANON, "Authentication required"),
        ({"messages": limits(max_message_size=10)}, ANON, "fixed maximum message size"),
    ],
)
def test_check_mail_texts(overrides: dict[str, Any], client: Client, text: str) -> None:
    assert text in mail(make_server(**overrides), client, size=11).text


def test_check_mail_returns_the_parsed_sender() -> None:
    assert mail(BASE, sender="<S@Sender.TEST.>").mailbox == Mailbox("S", "sender.test")
    null = mail(BASE, sender="<>")
    assert null.ok and null.mailbox is None
    assert "null sender" in null.rule
    bad = mail(BASE, sender="<a@@b>")
    assert bad.text == "Bad sender address syntax" and "sender:" in bad.rule


# --- RCPT: the relay decision -----------------------------------------------------------------

DOMAIN_KINDS = {
    "local": "user@local.test",
    "remote-relay": "user@partner.test",
    "remote-norelay": "user@norelay.test",
    "foreign": "user@foreign.test",
}


@pytest.mark.parametrize(
    ("kind", "authenticated", "mode", "listed", "allow_auth"),
    list(
        itertools.product(
            DOMAIN_KINDS,
            [False, True],
            ["only_list", "all_except_list"],
            [False, True],
            [False, True],
        )
    ),
)
def test_relay_matrix(
    kind: str, authenticated: bool, mode: str, listed: bool, allow_auth: bool
) -> None:
    cfg = make_server(relay=relay(mode, "10.1.0.0/16", allow_authenticated=allow_auth))
    client = Client(
        "10.1.2.3" if listed else "192.0.2.7",
        authenticated_user="alice" if authenticated else None,
    )
    # DESIGN invariant 4, stated independently of the implementation.
    may_relay = (
        (authenticated and allow_auth)
        or (mode == "only_list" and listed)
        or (mode == "all_except_list" and not listed)
    )
    expected = kind in ("local", "remote-relay") or may_relay
    decision = rcpt(cfg, client, DOMAIN_KINDS[kind])
    if expected:
        assert (decision.code, decision.enhanced, decision.text) == (250, "2.1.5", "Recipient OK")
        assert decision.mailbox == Mailbox("user", DOMAIN_KINDS[kind].split("@")[1])
    else:
        assert decision.reply == f"550 5.7.1 Unable to relay for {DOMAIN_KINDS[kind]}"


RELAY_RULES = [
    # (relay policy, client, recipient, rule fragment)
    (relay("only_list"), ANON, "u@local.test", "local domain local.test"),
    (relay("only_list"), ANON, "u@alias.test", "local domain alias.test"),
    (relay("only_list"), ANON, "u@partner.test", "remote domain partner.test allows relay"),
    (relay("only_list"), ANON, "u@a.example.com", "remote domain *.example.com allows relay"),
    (relay("only_list"), USER, "u@foreign.test", "authenticated users may relay"),
    (
        relay("only_list", "10.1.0.0/16"),
        LISTED,
        "u@foreign.test",
        "relay list (only the list below): 10.1.0.0/16 matched",
    ),
    (relay("only_list", "relay.test"), LISTED, "u@foreign.test", "relay.test matched"),
    (
        relay("all_except_list", "10.1.0.0/16"),
        ANON,
        "u@foreign.test",
        "relay list (all except the list below): 192.0.2.7 matches no entry",
    ),
    (relay("all_except_list", "*.relay.test"), LISTED, "u@foreign.test", "*.relay.test is denied"),
    (relay("only_list"), ANON, "u@norelay.test", "remote domain norelay.test does not allow"),
    (relay("only_list"), ANON, "u@foreign.test", "client is not authenticated"),
    (
        relay("only_list", allow_authenticated=False),
        USER,
        "u@foreign.test",
        "authenticated users may not relay",
    ),
]


@pytest.mark.parametrize(("relay_cfg", "client", "recipient", "why"), RELAY_RULES)
def test_relay_rule_is_named(
    relay_cfg: RelayPolicy, client: Client, recipient: str, why: str
) -> None:
    assert why in rcpt(make_server(relay=relay_cfg), client, recipient).rule


@pytest.mark.parametrize(
    ("recipient", "accepted"),
    [
        ("u@a.example.com", True),
        ("u@a.b.example.com", True),
        ("u@A.EXAMPLE.COM.", True),
        ("u@example.com", False),
        ("u@badexample.com", False),
        ("u@a.badexample.com", False),
        ("u@example.com.evil.test", False),
        ("u@a.example.com.evil.test", False),
        ("u@aexample.com", False),
    ],
)
def test_wildcard_remote_domain(recipient: str, accepted: bool) -> None:
    decision = rcpt(BASE, ANON, recipient)
    assert decision.ok == accepted
    assert decision.code == (250 if accepted else 550)


def test_remote_wildcard_without_relay_does_not_accept() -> None:
    cfg = make_server(domains=(domain("local.test", "local"), domain("*.example.com")))
    assert rcpt(cfg, ANON, "u@a.example.com").code == 550


def test_relay_allowed_wins_over_a_broader_refusing_match() -> None:
    cfg = make_server(
        domains=(domain("*.example.com", relay=False), domain("a.example.com", relay=True))
    )
    assert rcpt(cfg, ANON, "u@a.example.com").ok
    assert rcpt(cfg, ANON, "u@b.example.com").code == 550


# Anonymous client, not on the relay list: nothing here may get a 2xx, however the local part
# or a later part names a local or relay-allowed domain.
RELAY_TRICKS = [
    # (recipient, smtputf8 declared, code: 501 the grammar refuses it, 550 no relay)
    ("user%foreign.test@local.test", False, 501),
    ("user%foreign.test%local.test@local.test", False, 501),
    ("foreign.test!user@local.test", False, 501),
    ("local.test!foreign.test!user@local.test", False, 501),
    ("@local.test:user@foreign.test", False, 501),
    ("<@local.test:user@foreign.test>", False, 501),
    ("<@local.test,@partner.test:user@foreign.test>", False, 501),
    ('"user@foreign.test"@local.test', False, 501),
    ('"user%foreign.test"@local.test', False, 501),
    ('"foreign.test!user"@local.test', False, 501),
    ('"user\\@foreign.test"@local.test', False, 501),
    ("user@[127.0.0.1]", False, 501),
    ("user@[192.0.2.1]", False, 501),
    ("user@[IPv6:::1]", False, 501),
    ("user@[local.test]", False, 501),
    ("user@local.test.foreign.test", False, 550),
    ("user@partner.test.foreign.test", False, 550),
    ("user@foreign.test.local.test", False, 550),  # below local.test, which is no wildcard
    ("user@localtest", False, 550),
    ("user@local.test@foreign.test", False, 501),
    ("user@foreign.test@local.test", False, 501),
    ("user@local.test%foreign.test", False, 501),
    ("user@local.test:25", False, 501),
    ("user@local..test", False, 501),
    ("user@.local.test", False, 501),
    ("user@local.test..", False, 501),
    ("user@*.local.test", False, 501),
    ("user@local.test foreign.test", False, 501),
    ("user@local.test\r\nRCPT TO:<x@foreign.test>", False, 501),
    ("user@local.test\x00.foreign.test", False, 501),
    ("user@foreign.test>", False, 501),
    ("<user@foreign.test", False, 501),
    ('"user@foreign.test"', False, 501),
    ("user@foreign.test", False, 550),
    ("user@FOREIGN.TEST.", False, 550),
    ("postmaster@foreign.test", False, 550),
    ("user\uff05foreign.test@local.test", True, 501),  # full-width '%'
    ("user\uff01foreign.test@local.test", True, 501),  # full-width '!'
    ("user\uff20foreign.test@local.test", True, 501),  # full-width '@'
    ("user@l\u043ecal.test", True, 550),  # Cyrillic 'о': another domain (xn--...)
    ("user%local.test@foreign.test", False, 501),
    ("user@foreign.test,user@local.test", False, 501),
]


@pytest.mark.parametrize(
    "relay_cfg", [relay("only_list", "10.1.0.0/16"), relay("all_except_list", "192.0.2.0/24")]
)
@pytest.mark.parametrize(("recipient", "smtputf8", "code"), RELAY_TRICKS)
def test_relay_tricks_are_refused(
    relay_cfg: RelayPolicy, recipient: str, smtputf8: bool, code: int
) -> None:
    decision = rcpt(make_server(relay=relay_cfg), ANON, recipient, smtputf8=smtputf8)
    assert decision.code == code
    assert decision.mailbox is None
    if code == 501:
        assert decision.reply == "501 5.1.3 Bad destination mailbox address syntax"
        assert decision.rule.startswith("recipient: ")
    else:
        assert decision.reply.startswith("550 5.7.1 Unable to relay for ")


@pytest.mark.parametrize(
    ("recipient", "smtputf8"), [(r, utf8) for r, utf8, code in RELAY_TRICKS if code == 501]
)
def test_relay_tricks_are_refused_even_for_clients_that_may_relay(
    recipient: str, smtputf8: bool
) -> None:
    # A downstream MTA might honour '%', '!' or a source route, so syntax that can route mail
    # elsewhere is refused outright, not waved through for trusted clients.
    assert rcpt(BASE, USER, recipient, smtputf8=smtputf8).code == 501


def test_there_are_enough_relay_tricks() -> None:
    assert len(RELAY_TRICKS) >= 25
    assert sum(code == 501 for _r, _u, code in RELAY_TRICKS) >= 25


def test_subdomain_of_a_local_domain_under_a_remote_wildcard_is_accepted() -> None:
    # Not a trick: the mail is for a real subdomain the operator allowed relay to.
    cfg = make_server(domains=(*BASE.domains, domain("*.local.test", relay=True)))
    decision = rcpt(cfg, ANON, "user@foreign.test.local.test")
    assert decision.ok and decision.mailbox == Mailbox("user", "foreign.test.local.test")


@pytest.mark.parametrize(
    ("recipient", "mailbox"),
    [
        ("user@LOCAL.TEST.", Mailbox("user", "local.test")),
        ("<User@Local.Test>", Mailbox("User", "local.test")),
        ('"user"@local.test', Mailbox("user", "local.test")),
        ("<Postmaster>", Mailbox("postmaster", "local.test")),
        ("postmaster", Mailbox("postmaster", "local.test")),
        ("<POSTMASTER>", Mailbox("postmaster", "local.test")),
    ],
)
def test_recipient_is_normalised(recipient: str, mailbox: Mailbox) -> None:
    decision = rcpt(BASE, ANON, recipient)
    assert decision.code == 250 and decision.mailbox == mailbox


def test_bare_postmaster_without_default_domain_is_refused() -> None:
    cfg = make_server(domains=(domain("local.test", "local"),))
    assert rcpt(cfg, ANON, "<Postmaster>").code == 501


@pytest.mark.parametrize(
    ("max_recipients", "accepted", "code"),
    [(100, 99, 250), (100, 100, 452), (1, 1, 452), (None, 10**6, 250)],
)
def test_recipient_limit(max_recipients: int | None, accepted: int, code: int) -> None:
    cfg = make_server(messages=limits(max_recipients_per_message=max_recipients))
    decision = rcpt(cfg, ANON, "user@local.test", accepted=accepted)
    assert decision.code == code
    if code == 452:
        assert decision.reply == "452 4.5.3 Too many recipients"


# --- DATA -------------------------------------------------------------------------------------

DATA_CASES = [
    # (limits, size, received headers, session bytes, code, enhanced)
    ({}, 1000, 0, 0, 250, "2.0.0"),
    ({}, 2048 * KB, 15, 0, 250, "2.0.0"),
    ({}, 2048 * KB + 1, 0, 0, 552, "5.3.4"),
    ({}, 1000, 16, 0, 554, "5.4.6"),
    ({}, 1000, 0, 10240 * KB - 1000, 250, "2.0.0"),
    ({}, 1001, 0, 10240 * KB - 1000, 552, "5.3.4"),
    ({"max_message_size": None}, 50 * 1024 * KB, 0, 0, 552, "5.3.4"),  # still over the session
    ({"max_message_size": None, "max_session_size": None}, 10**10, 0, 10**10, 250, "2.0.0"),
    ({}, 2048 * KB + 1, 99, 0, 552, "5.3.4"),
]


@pytest.mark.parametrize(("lim", "size", "hops", "session", "code", "enhanced"), DATA_CASES)
def test_check_data(
    lim: dict[str, Any], size: int, hops: int, session: int, code: int, enhanced: str
) -> None:
    cfg = make_server(messages=limits(**lim))
    decision = verdict(
        policy.check_data(cfg, size=size, received_headers=hops, session_bytes=session)
    )
    assert (decision.code, decision.enhanced) == (code, enhanced)
    if code == 554:
        assert decision.text == "Too many hops"
    if code == 552:
        assert decision.text == "Message size exceeds fixed maximum message size"


def test_hop_count_follows_the_config() -> None:
    cfg = make_server(delivery=replace(BASE.delivery, max_hop_count=2))
    decide = policy.check_data
    assert verdict(decide(cfg, size=1, received_headers=2, session_bytes=0)).ok
    assert verdict(decide(cfg, size=1, received_headers=3, session_bytes=0)).code == 554


# --- explain_relay ----------------------------------------------------------------------------


def explain(cfg: ServerConfig, client: Client, sender: str, recipient: str) -> list[Decision]:
    steps = policy.explain_relay(cfg, client, sender=sender, recipient=recipient)
    for step in steps:
        verdict(step)
    assert all(step.ok for step in steps[:-1])
    return steps


EXPLAIN_CASES = [
    # (server overrides, client, recipient, codes, rule of the last step)
    ({}, ANON, "u@local.test", [220, 250, 250], "local domain local.test"),
    ({}, ANON, "u@a.example.com", [220, 250, 250], "remote domain *.example.com allows relay"),
    ({}, ANON, "u@foreign.test", [220, 250, 550], "client is not authenticated"),
    (
        {"relay": relay("only_list", "10.1.0.0/16")},
        LISTED,
        "u@foreign.test",
        [220, 250, 250],
        "relay list (only the list below): 10.1.0.0/16 matched",
    ),
    (
        {"auth": auth(basic=True)},
        USER,
        "u@foreign.test",
        [220, 235, 250, 250],
        "authenticated users may relay",
    ),
    # "Authenticated" on a server that offers no authentication cannot relay that way.
    ({}, USER, "u@foreign.test", [220, 504], "AUTH PLAIN is not offered"),
    (
        {"auth": auth(basic=True, basic_requires_tls=True)},
        USER,
        "u@foreign.test",
        [220, 530],
        "basic authentication requires TLS",
    ),
    (
        {"connection": connection("all_except_list", "192.0.2.0/24")},
        ANON,
        "u@local.test",
        [554],
        "connection control (all except the list below): 192.0.2.0/24 is denied",
    ),
    ({"state": "paused"}, ANON, "u@local.test", [421], "server is paused"),
    ({"tls": TLS_REQUIRED}, ANON, "u@local.test", [220, 530], "the server requires TLS"),
    ({"auth": auth(anonymous=False)}, ANON, "u@local.test", [220, 530], "anonymous access"),
    ({}, ANON, "u%foreign.test@local.test", [220, 250, 501], "percent hack"),
]


@pytest.mark.parametrize(("overrides", "client", "recipient", "codes", "why"), EXPLAIN_CASES)
def test_explain_relay(
    overrides: dict[str, Any], client: Client, recipient: str, codes: list[int], why: str
) -> None:
    steps = explain(make_server(**overrides), client, "<s@sender.test>", recipient)
    assert [step.code for step in steps] == codes
    assert why in steps[-1].rule


def test_explain_relay_stops_at_a_bad_sender_and_assumes_smtputf8() -> None:
    assert [s.code for s in explain(BASE, ANON, "<bad", "u@local.test")] == [220, 501]
    steps = explain(BASE, ANON, "<jö@sender.test>", "ü@local.test")
    assert [s.code for s in steps] == [220, 250, 250]


def test_explain_relay_matches_the_worker_calls() -> None:
    cfg = make_server(relay=relay("only_list", "10.1.0.0/16"))
    steps = explain(cfg, LISTED, "<s@sender.test>", "u@foreign.test")
    assert steps[-1] == policy.check_rcpt(
        cfg, LISTED, recipient="u@foreign.test", accepted_so_far=0, smtputf8=False
    )
