"""Suite 1: an open-relay tester's battery against each relay mode of a running server.

Each address form is sent by an anonymous client over a real socket to the typical site's
Internet relay (local domain ``bogus2``, remote domain ``example.com`` with relay
allowed). A form passes if it is refused, or if every recipient of the message it left
in the spool is a plain mailbox in an allowed domain: whatever the client typed, the mail
can only go where the configuration allows (DESIGN invariant 4).

The oracle (:func:`stays_inside`) is written here, independently of ``smtpworker.core.grammar``
and ``smtpworker.inbound.policy``, and :func:`test_the_battery_reports_an_open_relay` shows it
fails an open configuration.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field

import pytest

from smtpworker.core.config import ServerConfig
from smtpworker.core.spool import Spool
from smtpworker.tests.factories import user
from smtpworker.tests.harness import LiveNode
from tests.proof.conftest import (
    ALLOWED_DOMAINS,
    LOCAL_DOMAIN,
    Wire,
    internet_relay,
    serve,
    spool_of,
)

EVIL = "evil.test"
ATTACKER = f"<spammer@{EVIL}>"


@dataclass(frozen=True)
class Form:
    """One attempt: ``rcpt`` is sent as ``RCPT TO:<rcpt>`` verbatim (brackets included)."""

    name: str
    rcpt: str
    sender: str = ATTACKER
    utf8: bool = False
    # A control: mail for an allowed domain that a correct server accepts. The battery is
    # worthless if it "passes" because everything was refused.
    control: bool = False
    # Look-alikes that IDNA maps onto an allowed domain (full-width letters, the
    # ideographic full stop): a server may take them, as long as it stores the mapped name.
    either: bool = False


FORMS: tuple[Form, ...] = (
    # Plain foreign recipients, and controls for the allowed domains.
    Form("plain-foreign", f"<victim@{EVIL}>"),
    Form("plain-remote-allowed", "<victim@example.com>", control=True),
    Form("plain-local", f"<victim@{LOCAL_DOMAIN}>", control=True),
    Form("bare-postmaster", "<postmaster>", control=True),
    Form("postmaster-foreign", f"<postmaster@{EVIL}>"),
    # Percent hack.
    Form("percent-remote", f"<victim%{EVIL}@example.com>"),
    Form("percent-local", f"<victim%{EVIL}@{LOCAL_DOMAIN}>"),
    Form("percent-quoted", f'<"victim%{EVIL}"@example.com>'),
    Form("percent-double", f"<victim%{EVIL}%example.com@example.com>"),
    Form("percent-in-domain", f"<victim@{EVIL}%example.com>"),
    Form("percent-fullwidth", f"<victim\uff05{EVIL}@example.com>", utf8=True),
    Form("percent-small", f"<victim\ufe6a{EVIL}@example.com>", utf8=True),
    # Bang paths (UUCP).
    Form("bang-remote", f"<{EVIL}!victim@example.com>"),
    Form("bang-local", f"<{EVIL}!victim@{LOCAL_DOMAIN}>"),
    Form("bang-quoted", f'<"{EVIL}!victim"@example.com>'),
    Form("bang-chain", f"<example.com!{EVIL}!victim@{LOCAL_DOMAIN}>"),
    Form("bang-bare", f"<{EVIL}!victim>"),
    Form("bang-fullwidth", f"<{EVIL}\uff01victim@example.com>", utf8=True),
    # Source routes.
    Form("route-through-allowed", f"<@example.com:victim@{EVIL}>"),
    Form("route-two-hops", f"<@example.com,@{LOCAL_DOMAIN}:victim@{EVIL}>"),
    Form("route-through-foreign", f"<@{EVIL}:victim@example.com>"),
    Form("route-literal", f"<@[127.0.0.1]:victim@{EVIL}>"),
    # Quoted local parts carrying an address.
    Form("quoted-at", f'<"victim@{EVIL}"@example.com>'),
    Form("quoted-at-local", f'<"victim@{EVIL}"@{LOCAL_DOMAIN}>'),
    Form("quoted-escaped-at", f'<"victim\\@{EVIL}"@example.com>'),
    Form("quoted-only", f'<"victim@{EVIL}">'),
    Form("quoted-foreign", f'<"victim"@{EVIL}>'),
    Form("quoted-allowed-inside", f'<"victim@example.com"@{EVIL}>'),
    Form("double-at", f"<victim@{EVIL}@example.com>"),
    Form("fullwidth-at", f"<victim\uff20{EVIL}@example.com>", utf8=True),
    # IP literals and bare addresses.
    Form("literal-loopback", "<victim@[127.0.0.1]>"),
    Form("literal-testnet", "<victim@[192.0.2.1]>"),
    Form("literal-ipv6", "<victim@[IPv6:::1]>"),
    Form("literal-name", "<victim@[example.com]>"),
    Form("bare-ip", "<victim@127.0.0.1>"),
    Form("localhost", "<victim@localhost>"),
    # Trailing dots and case.
    Form("trailing-dot-allowed", "<victim@example.com.>", control=True),
    Form("trailing-dot-foreign", f"<victim@{EVIL}.>"),
    Form("two-trailing-dots", "<victim@example.com..>"),
    Form("upper-case-allowed", "<VICTIM@EXAMPLE.COM>", control=True),
    Form("mixed-case-trailing-dot", "<Victim@ExAmPlE.CoM.>", control=True),
    Form("upper-case-foreign", f"<VICTIM@{EVIL.upper()}>"),
    # Domains that only end with, or contain, an allowed domain.
    Form("suffix-glued", "<victim@evilexample.com>"),
    Form("suffix-hyphen", "<victim@evil-example.com>"),
    Form("subdomain-of-allowed", "<victim@mx.example.com>"),
    Form("allowed-as-subdomain", f"<victim@example.com.{EVIL}>"),
    Form("allowed-as-subdomain-dot", f"<victim@example.com.{EVIL}.>"),
    Form("local-as-subdomain", f"<victim@{LOCAL_DOMAIN}.{EVIL}>"),
    Form("prefix-only", "<victim@example.co>"),
    Form("capital-i-for-l", "<victim@exampIe.com>"),
    Form("punycode-lookalike", "<victim@xn--xample-2of.com>"),
    # Unicode look-alikes (with SMTPUTF8, as a client would have to declare it).
    Form("cyrillic-e", "<victim@\u0435xample.com>", utf8=True),
    Form("cyrillic-a", "<victim@ex\u0430mple.com>", utf8=True),
    Form("cyrillic-without-smtputf8", "<victim@\u0435xample.com>"),
    Form(
        "fullwidth-allowed",
        "<victim@\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45.com>",
        utf8=True,
        either=True,
    ),
    Form("ideographic-full-stop", "<victim@example\u3002com>", utf8=True, either=True),
    Form("fullwidth-foreign", "<victim@\uff45\uff56\uff49\uff4c.test>", utf8=True),
    Form("zero-width-space", "<victim@exam\u200bple.com>", utf8=True),
    Form("soft-hyphen", "<victim@exam\u00adple.com>", utf8=True),
    Form("rtl-override", "<victim@moc.elpmaxe\u202e>", utf8=True),
    Form("utf8-local-allowed", "<\u00fcser@example.com>", utf8=True, control=True),
    Form("utf8-local-foreign", f"<\u043f\u043e\u0447\u0442\u0430@{EVIL}>", utf8=True),
    Form("utf8-without-smtputf8", "<\u00fcser@example.com>"),
    # Odd syntax.
    Form("no-domain", "<victim>"),
    Form("empty-path", "<>"),
    Form("domain-with-port", f"<victim@{EVIL}:25>"),
    Form("comma-list", f"<victim@example.com,victim@{EVIL}>"),
    Form("space-inside", f"<victim@example.com {EVIL}>"),
    Form("tab-inside", f"<victim@example.com\t{EVIL}>"),
    Form("no-brackets", f"victim@{EVIL}"),
    Form("orcpt-parameter", f"<victim@example.com> ORCPT=rfc822;victim@{EVIL}"),
    Form("notify-parameter", f"<victim@{EVIL}> NOTIFY=NEVER"),
    Form("angle-inside", f"<victim@{EVIL}>@example.com>"),
    # Null and odd senders with a foreign recipient (IIS relays by client, not sender).
    Form("null-sender", f"<victim@{EVIL}>", sender="<>"),
    Form("null-sender-allowed", "<victim@example.com>", sender="<>", control=True),
    Form("forged-local-sender", f"<victim@{EVIL}>", sender=f"<postmaster@{LOCAL_DOMAIN}>"),
    Form("forged-remote-sender", f"<victim@{EVIL}>", sender="<boss@example.com>"),
    Form("source-routed-sender", f"<victim@{EVIL}>", sender="<@example.com:a@example.com>"),
    Form("literal-sender", f"<victim@{EVIL}>", sender="<a@[127.0.0.1]>"),
    Form("utf8-sender", f"<victim@{EVIL}>", sender="<\u00fc@example.com>", utf8=True),
)

MESSAGE = b"From: spammer@evil.test\r\nSubject: relay test\r\n\r\nIs this an open relay?\r\n.\r\n"


@dataclass
class BatteryResult:
    """What the battery saw; ``relayed`` lists the forms that left mail in the spool for a
    recipient outside the allowed domains."""

    refused: dict[str, str] = field(default_factory=dict)
    accepted: dict[str, tuple[str, ...]] = field(default_factory=dict)
    relayed: list[str] = field(default_factory=list)


def stays_inside(recipient: str, allowed: frozenset[str]) -> bool:
    """Whether a spooled recipient can only be delivered inside ``allowed``: its domain is
    one of them exactly, and nothing in the local part could route it onwards."""
    local, at, domain = recipient.rpartition("@")
    if not at or domain not in allowed:
        return False
    folded = unicodedata.normalize("NFKC", local)
    return not any(ch in folded for ch in "@%!:,<>[]") and local != ""


def try_form(address: tuple[str, int], form: Form) -> tuple[str | None, str]:
    """Send one form; return (queue id or None, what the server said)."""
    with Wire(address) as wire:
        wire.hello()
        mail = f"MAIL FROM:{form.sender}" + (" SMTPUTF8" if form.utf8 else "")
        reply = wire.command(mail.encode())
        if reply.code != 250:
            return None, f"MAIL {reply}"
        reply = wire.command(f"RCPT TO:{form.rcpt}".encode())
        if reply.code != 250:
            assert reply.code >= 400, reply
            return None, f"RCPT {reply}"
        data = wire.command("DATA")
        assert data.code == 354, data
        wire.send(MESSAGE)
        reply = wire.reply()
        wire.command("QUIT")
    if reply.code != 250:
        return None, f"DATA {reply}"
    return reply.text.removeprefix("2.0.0 Queued as "), str(reply)


def run_battery(
    address: tuple[str, int],
    spool: Spool,
    forms: tuple[Form, ...] = FORMS,
    allowed: frozenset[str] = ALLOWED_DOMAINS,
) -> BatteryResult:
    """Try every form; then judge by what actually reached the spool."""
    result = BatteryResult()
    queued: dict[str, str] = {}
    for form in forms:
        queue_id, said = try_form(address, form)
        if queue_id is None:
            result.refused[form.name] = said
        else:
            queued[queue_id] = form.name
    for queue_id in spool.ids():
        envelope = spool.envelope(queue_id)
        name = queued.get(queue_id, f"unknown message {queue_id}")
        result.accepted[name] = envelope.recipients
        if not all(stays_inside(r, allowed) for r in envelope.recipients):
            result.relayed.append(name)
    missing = set(queued.values()) - set(result.accepted)
    assert not missing, f"250 after DATA but nothing in the spool: {missing}"
    return result


def test_the_battery_has_at_least_forty_attacks() -> None:
    attacks = [f for f in FORMS if not f.control and not f.either]
    assert len(attacks) >= 40
    assert len({f.name for f in FORMS}) == len(FORMS)


MODES: dict[str, dict[str, object]] = {
    "only_list-empty": {"relay": {"mode": "only_list", "entries": ()}},
    "only_list-other-machines": {
        "relay": {"mode": "only_list", "entries": ("127.0.0.5", "10.1.0.0/16")}
    },
    "all_except_list-client": {"relay": {"mode": "all_except_list", "entries": ("127.0.0.1",)}},
    "all_except_list-client-network": {
        "relay": {"mode": "all_except_list", "entries": ("127.0.0.0/8",)}
    },
    "allow_authenticated-off": {
        "relay": {"mode": "only_list", "entries": (), "allow_authenticated": False},
        "auth": {"basic": True, "integrated": True},
    },
    "allow_authenticated-on-anonymous-client": {
        "relay": {"mode": "only_list", "entries": (), "allow_authenticated": True},
        "auth": {"basic": True, "integrated": True},
    },
    "allow_authenticated-on-all_except_list-client": {
        "relay": {
            "mode": "all_except_list",
            "entries": ("127.0.0.1",),
            "allow_authenticated": True,
        },
        "auth": {"basic": True},
    },
}


def relay_server(spec: dict[str, object]) -> ServerConfig:
    return internet_relay(**spec)


@pytest.mark.parametrize("mode", list(MODES))
def test_no_form_relays_outside_the_allowed_domains(live: LiveNode, mode: str) -> None:
    cfg = relay_server(MODES[mode])
    address = serve(live, cfg, users=(user("alice", "s3cret"),))
    result = run_battery(address, spool_of(live, cfg.name))
    assert result.relayed == [], (result.relayed, result.accepted)
    controls = {f.name for f in FORMS if f.control}
    assert controls <= set(result.accepted), controls - set(result.accepted)
    # Everything else was refused, at RCPT or before: nothing foreign slipped through as a
    # "harmless" normalisation either.
    either = {f.name for f in FORMS if f.either}
    assert set(result.accepted) - either == controls, set(result.accepted) - controls
    assert all(stays_inside(r, ALLOWED_DOMAINS) for rs in result.accepted.values() for r in rs)


def test_accepted_forms_are_stored_in_their_canonical_form(live: LiveNode) -> None:
    cfg = relay_server(MODES["only_list-empty"])
    address = serve(live, cfg)
    result = run_battery(address, spool_of(live, cfg.name))
    assert result.accepted["trailing-dot-allowed"] == ("victim@example.com",)
    assert result.accepted["upper-case-allowed"] == ("VICTIM@example.com",)
    assert result.accepted["mixed-case-trailing-dot"] == ("Victim@example.com",)
    assert result.accepted["bare-postmaster"] == (f"postmaster@{LOCAL_DOMAIN}",)
    assert result.accepted["utf8-local-allowed"] == ("\u00fcser@example.com",)
    assert result.accepted["fullwidth-allowed"] == ("victim@example.com",)


def test_refusals_name_the_reason_with_an_enhanced_code(live: LiveNode) -> None:
    cfg = relay_server(MODES["only_list-empty"])
    address = serve(live, cfg)
    result = run_battery(address, spool_of(live, cfg.name))
    assert result.refused["plain-foreign"] == f"RCPT 550 5.7.1 Unable to relay for victim@{EVIL}"
    assert result.refused["percent-remote"].startswith("RCPT 501 5.1.3 ")
    assert result.refused["route-through-allowed"].startswith("RCPT 501 5.1.3 ")
    assert result.refused["orcpt-parameter"] == "RCPT 555 5.5.4 Unsupported RCPT parameter ORCPT"
    for name, said in result.refused.items():
        code = said.split(" ")[1]
        enhanced = said.split(" ")[2]
        assert enhanced[0] == code[0] and enhanced.count(".") == 2, (name, said)


def test_the_battery_reports_an_open_relay(live: LiveNode) -> None:
    """A deliberately open server ("all except the list below" with an empty list) must
    make the battery report relays; otherwise its passing verdicts mean nothing."""
    cfg = internet_relay(relay={"mode": "all_except_list", "entries": ()})
    address = serve(live, cfg)
    result = run_battery(address, spool_of(live, cfg.name))
    assert result.relayed, "the battery missed an open relay"
    for name in ("plain-foreign", "null-sender", "forged-local-sender", "allowed-as-subdomain"):
        assert name in result.relayed, name


def test_the_oracle_itself() -> None:
    assert stays_inside("victim@example.com", ALLOWED_DOMAINS)
    assert stays_inside('"john smith"@bogus2', ALLOWED_DOMAINS)
    for bad in (
        f"victim@{EVIL}",
        "victim@mx.example.com",
        f"victim%{EVIL}@example.com",
        f"{EVIL}!victim@example.com",
        f'"victim@{EVIL}"@example.com',
        f"victim\uff05{EVIL}@example.com",
        "victim@EXAMPLE.COM",
        "victim@example.com.",
        "@example.com",
    ):
        assert not stays_inside(bad, ALLOWED_DOMAINS), bad
