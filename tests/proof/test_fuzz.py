"""Suite 3: property-based fuzzing (hypothesis) of the grammar, the policy and the session.

* The parsers of ``smtpworker.core.grammar`` and the decisions of ``smtpworker.inbound.policy`` take
  arbitrary text: the only exception allowed is GrammarError (the ValueError subclass they
  are documented to raise), and what parses is canonical (parsing its text again gives
  the same value).
* The relay property (DESIGN invariant 4): for an anonymous client that the relay list
  does not let through, an accepted recipient is always a plain mailbox in a local domain
  or a remote domain with relay allowed, for generated configurations and addresses.
* The SMTP session, fed random command sequences over a real socket, never answers with
  an internal error, never logs one, always ends, and leaves a concurrent client's session
  working.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from smtpworker.core import grammar
from smtpworker.core.config import DomainConfig, ServerConfig
from smtpworker.core.grammar import GrammarError
from smtpworker.inbound import policy
from smtpworker.tests.factories import local, remote, server, user
from smtpworker.tests.harness import LiveNode
from tests.proof.conftest import LOCAL_DOMAIN, Wire, internet_relay, serve

FAST = settings(max_examples=400, deadline=None)

# Characters that matter to the grammars, plus look-alikes and invisible ones.
SPECIAL = list(
    "abcxyzEXAMPLE0123456789@.%!:,;[]<>\"\\ -_*/=+'\t"
    "\u0435\u0430\uff45\uff0e\u3002\uff05\uff01\uff20\ufe6a\u00df\u00fc\u200b\u00ad\u202e"
)
TEXT = st.one_of(
    st.text(max_size=80),
    st.text(alphabet=st.sampled_from(SPECIAL), max_size=60),
    st.text(alphabet=st.sampled_from(SPECIAL), min_size=500, max_size=600),
)

PARSERS: dict[str, Callable[[str], Any]] = {
    "domain": grammar.parse_domain,
    "domain-wildcard": partial(grammar.parse_domain, allow_wildcard=True),
    "binding": grammar.parse_binding,
    "smart-host": grammar.parse_smart_host,
    "access-entry": grammar.parse_access_entry,
    "dns-server": grammar.parse_dns_server,
    "forward-path": grammar.parse_forward_path,
    "forward-path-utf8": partial(grammar.parse_forward_path, smtputf8=True),
    "reverse-path": grammar.parse_reverse_path,
    "reverse-path-utf8": partial(grammar.parse_reverse_path, smtputf8=True),
}


def _canonical_text(name: str, value: Any) -> str:
    if name == "dns-server":
        host, port = value
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return str(value)


@pytest.mark.parametrize("name", list(PARSERS))
@FAST
@given(text=TEXT)
def test_parsers_raise_nothing_but_grammar_error_and_are_canonical(name: str, text: str) -> None:
    parse = PARSERS[name]
    try:
        value = parse(text)
    except GrammarError:
        return
    if value is None:  # the null reverse path
        return
    again = parse(_canonical_text(name, value))
    assert again == value, (text, value, again)


# --- Policy on arbitrary input --------------------------------------------------------------

IPS = st.one_of(
    st.ip_addresses().map(str),
    st.sampled_from(["127.0.0.1", "::1", "::ffff:10.0.0.5", "10.1.2.3", "fe80::1%eth0"]),
)


_LABELS = st.tuples(st.sampled_from("abcdexyz"), st.text(alphabet="abex0-9", max_size=5)).map(
    lambda t: (t[0] + t[1]).rstrip("-")
)


@st.composite
def canonical_domains(draw: st.DrawFn) -> str:
    labels = draw(st.lists(_LABELS, min_size=1, max_size=3))
    return ".".join(labels)


@dataclass(frozen=True)
class Site:
    cfg: ServerConfig
    client: policy.Client


@st.composite
def configurations(draw: st.DrawFn) -> Site:
    """A server whose relay list does not let ``client`` relay, with random domains."""
    locals_ = draw(st.lists(canonical_domains(), min_size=1, max_size=3, unique=True))
    remotes = draw(
        st.lists(
            st.tuples(canonical_domains(), st.booleans(), st.booleans()),
            max_size=3,
            unique_by=lambda r: r[0],
        )
    )
    domains: list[DomainConfig] = [local(n, default=i == 0) for i, n in enumerate(locals_)]
    domains += [remote(("*." if wild else "") + n, relay=relay) for n, wild, relay in remotes]
    ip = draw(IPS)
    others = draw(st.lists(st.ip_addresses().map(str), max_size=3))
    others = [o for o in others if _unmapped(o) != _unmapped(ip)]
    mode = draw(st.sampled_from(["only_list", "all_except_list"]))
    # The client is not on an "only" list, and is on an "all except" list.
    entries = tuple(others) if mode == "only_list" else (*others, ip.partition("%")[0])
    cfg = server(
        "Fuzz",
        domains=tuple(domains),
        relay={
            "mode": mode,
            "entries": entries,
            "allow_authenticated": draw(st.booleans()),
        },
        auth={"anonymous": True, "basic": draw(st.booleans())},
    )
    return Site(cfg, policy.Client(ip=ip, tls=draw(st.booleans())))


def _unmapped(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    addr = ipaddress.ip_address(ip.partition("%")[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _tricks(domain: str) -> st.SearchStrategy[str]:
    """Addresses built around an allowed domain the way relay testers build them."""
    return st.sampled_from(
        [
            f"victim@{domain}",
            f"victim@{domain.upper()}.",
            f"victim@evil{domain}",
            f"victim@{domain}.evil.test",
            f"victim@mx.{domain}",
            f"victim%evil.test@{domain}",
            f"evil.test!victim@{domain}",
            f'"victim@evil.test"@{domain}',
            f"@{domain}:victim@evil.test",
            f"victim@evil.test@{domain}",
            f"victim@{domain}..",
            f"victim@{domain.replace('e', chr(0x435))}",
            f"victim@{domain.replace('a', chr(0x430))}",
            "victim@" + "".join(chr(ord(c) + 0xFEE0) if c.isalpha() else c for c in domain),
            f"victim\uff05evil.test@{domain}",
            f"victim@{domain}\u200b",
            f"victim@[{domain}]",
        ]
    )


@st.composite
def recipients(draw: st.DrawFn, cfg: ServerConfig) -> str:
    names = [d.name.removeprefix("*.") for d in cfg.domains]
    address = draw(
        st.one_of(
            TEXT,
            st.sampled_from(names).flatmap(_tricks),
            st.tuples(
                st.text(alphabet=st.sampled_from(SPECIAL), max_size=8), canonical_domains()
            ).map(lambda t: f"{t[0]}@{t[1]}"),
        )
    )
    return f"<{address}>" if draw(st.booleans()) else address


def domain_allowed(cfg: ServerConfig, domain: str) -> bool:
    """The oracle, written without smtpworker.core.grammar: an exact local domain, or a remote
    domain with relay allowed (``*.name`` means strictly below ``name``)."""
    for entry in cfg.domains:
        if entry.kind == "local" and entry.name == domain:
            return True
        if entry.kind == "remote" and entry.relay_allowed:
            if entry.name.startswith("*."):
                if domain.endswith(entry.name[1:]) and domain != entry.name[2:]:
                    return True
            elif entry.name == domain:
                return True
    return False


@settings(max_examples=1000, deadline=None)
@given(data=st.data(), site=configurations(), smtputf8=st.booleans())
def test_a_foreign_recipient_is_never_accepted_for_an_anonymous_client(
    data: st.DataObject, site: Site, smtputf8: bool
) -> None:
    recipient = data.draw(recipients(site.cfg))
    decision = policy.check_rcpt(
        site.cfg, site.client, recipient=recipient, accepted_so_far=0, smtputf8=smtputf8
    )
    if not decision.ok:
        assert decision.code in (501, 550) and decision.mailbox is None
        return
    assert decision.mailbox is not None
    assert domain_allowed(site.cfg, decision.mailbox.domain), (recipient, decision)
    local_part = unicodedata.normalize("NFKC", decision.mailbox.local)
    assert not any(ch in local_part for ch in "@%!"), (recipient, decision)


@FAST
@given(site=configurations(), sender=TEXT, recipient=TEXT, mechanism=TEXT, size=st.integers())
def test_policy_decisions_take_any_input(
    site: Site, sender: str, recipient: str, mechanism: str, size: int
) -> None:
    cfg, client = site.cfg, site.client
    for smtputf8 in (False, True):
        mail = policy.check_mail(
            cfg,
            client,
            sender=sender,
            size=abs(size),
            smtputf8=smtputf8,
            messages_sent=0,
            session_bytes=0,
        )
        assert mail.code in (250, 501, 530, 552), mail
        rcpt = policy.check_rcpt(
            cfg, client, recipient=recipient, accepted_so_far=0, smtputf8=smtputf8
        )
        assert rcpt.code in (250, 501, 550), rcpt
    auth = policy.check_auth(cfg, client, mechanism=mechanism)
    assert auth.code in (250, 503, 504, 530)
    steps = policy.explain_relay(cfg, client, sender=sender, recipient=recipient)
    assert steps and all(s.ok for s in steps[:-1])
    data = policy.check_data(cfg, size=abs(size), received_headers=abs(size) % 40, session_bytes=0)
    assert data.code in (250, 552, 554)


@FAST
@given(ip=TEXT)
def test_a_client_address_is_an_ip_or_a_grammar_error(ip: str) -> None:
    try:
        policy.Client(ip=ip)
    except GrammarError:
        pass


# --- The SMTP session with random command sequences -----------------------------------------


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.exc_info:
            self.records.append(record)


@dataclass
class Target:
    live: LiveNode
    address: tuple[str, int]
    errors: _Errors


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    # No AUTH brake: guessing is tested in test_protocol_abuse and test_hostile_auth.
    live = LiveNode(Path(tmp_path_factory.mktemp("fuzz")))
    cfg = internet_relay(
        auth_brake={"enabled": False},
        auth={"basic": True, "integrated": True, "cram_md5": True},
        messages={
            "max_message_size": 4000,
            "max_recipients_per_message": 4,
            "max_messages_per_connection": 3,
        },
        connection_timeout=20,
    )
    address = serve(live, cfg, users=(user("alice", "s3cret", cram=True),))
    errors = _Errors()
    logging.getLogger().addHandler(errors)
    try:
        yield Target(live, address, errors)
    finally:
        logging.getLogger().removeHandler(errors)
        live.close()


ADDRESSES = st.one_of(
    st.sampled_from(
        ["a@sender.test", f"b@{LOCAL_DOMAIN}", "x@example.com", "v@evil.test", "", "postmaster"]
    ),
    st.text(alphabet=st.sampled_from(SPECIAL), max_size=30),
)
WORDS = st.text(alphabet=st.sampled_from(SPECIAL), max_size=20)
B64 = st.sampled_from(["", "=", "*", "AGFsaWNlAHMzY3JldA==", "YWxpY2U=", "czNjcmV0", "!!!"])
PARAMS = st.sampled_from(
    [
        "",
        " SIZE=100",
        " SIZE=99999999",
        " SIZE=x",
        " BODY=8BITMIME",
        " SMTPUTF8",
        " AUTH=<>",
        " X=Y",
    ]
)


def _line(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass") + b"\r\n"


COMMANDS: st.SearchStrategy[bytes] = st.one_of(
    st.tuples(st.sampled_from(["EHLO", "HELO", "ehlo"]), WORDS).map(lambda t: _line(" ".join(t))),
    st.tuples(ADDRESSES, PARAMS).map(lambda t: _line(f"MAIL FROM:<{t[0]}>{t[1]}")),
    ADDRESSES.map(lambda a: _line(f"RCPT TO:<{a}>")),
    st.sampled_from(["RSET", "NOOP", "VRFY x", "EXPN x", "HELP", "STARTTLS", "DATA", "QUIT"]).map(
        _line
    ),
    st.tuples(
        st.sampled_from(["PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-256", "XOAUTH2", "plain"]),
        st.one_of(st.just(""), B64.map(lambda b: " " + b)),
    ).map(lambda t: _line(f"AUTH {t[0]}{t[1]}")),
    B64.map(_line),
    st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"") + b"\r\n"),
    st.integers(500, 3000).map(lambda n: b"X" * n + b"\r\n"),
    st.sampled_from(
        [b"\r\n", b"\n", b".\r\n", b"\r\n.\r\n", b"\n.\n", b"Subject: x\r\n\r\nbody\r\n"]
    ),
)
SEQUENCES = st.lists(COMMANDS, min_size=1, max_size=25)
# Whatever state the fuzzed session is left in (mid-message, mid-AUTH), this ends it.
TAIL = b"\r\n.\r\n*\r\n*\r\n*\r\nQUIT\r\n"


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(commands=SEQUENCES)
# Found by this test: a line past the stream limit in an AUTH exchange ended in a 451.
@example(commands=[b"EHLO 0\r\n", b"AUTH PLAIN\r\n", b"X" * 1001 + b"\r\n"])
@example(commands=[b"EHLO 0\r\n", b"AUTH LOGIN\r\n", b"YWxpY2U=\r\n", b"X" * 3000 + b"\r\n"])
# Undecodable bytes in EHLO reached the session list (see test_protocol_abuse).
@example(commands=[b"EHLO \xff\xfe.test\r\n", b"MAIL FROM:<\xe9@a.test> SMTPUTF8\r\n"])
def test_random_command_sequences(target: Target, commands: list[bytes]) -> None:
    target.errors.records.clear()
    with Wire(target.address) as bystander:
        bystander.hello("bystander.test")
        assert bystander.command("MAIL FROM:<a@sender.test>").code == 250
        assert bystander.command(f"RCPT TO:<b@{LOCAL_DOMAIN}>").code == 250
        fuzzed = socket.create_connection(target.address, timeout=15)
        try:
            fuzzed.sendall(b"".join(commands) + TAIL)
            transcript = _read_all(fuzzed)
        except TimeoutError:
            pytest.fail(f"the session did not end: {commands!r}")
        finally:
            fuzzed.close()
        # The other client's session is unharmed.
        assert bystander.command("DATA").code == 354
        bystander.send(b"Subject: bystander\r\n\r\nstill here\r\n.\r\n")
        assert bystander.reply().code == 250
        assert bystander.command("QUIT").code == 221
    lines = transcript.split(b"\r\n")
    assert lines[-1] == b"", transcript[-200:]
    for line in lines[:-1]:
        assert len(line) >= 3 and line[:3].isdigit() and line[3:4] in (b" ", b"-", b""), line
        assert not line.startswith(b"451 4.3.0"), (commands, transcript)
        code = int(line[:3])
        if code >= 400 and line[3:4] == b" " and not _greeting_refusal(line):
            enhanced = line[4:].split(b" ", 1)[0].split(b".")
            assert len(enhanced) == 3 and enhanced[0] == line[:1], (line, commands)
    assert not target.errors.records, [r.getMessage() for r in target.errors.records]


def _greeting_refusal(line: bytes) -> bool:
    # RFC 2034: the greeting (220, or 421/554 in its place) carries no enhanced code.
    return line.startswith((b"421 relay", b"421 internetrelay", b"554 internetrelay"))


def test_the_fuzzer_reaches_the_interesting_states(target: Target) -> None:
    """A guard on the strategies: a hand-written sequence from their vocabulary gets a
    message through, so random ones can too."""
    sequence = [
        _line("EHLO c.test"),
        _line("AUTH PLAIN AGFsaWNlAHMzY3JldA=="),
        _line("MAIL FROM:<a@sender.test> SIZE=100"),
        _line(f"RCPT TO:<b@{LOCAL_DOMAIN}>"),
        _line("RCPT TO:<v@evil.test>"),
        _line("DATA"),
        b"Subject: x\r\n\r\nbody\r\n",
    ]
    with socket.create_connection(target.address, timeout=15) as sock:
        sock.sendall(b"".join(sequence) + TAIL)
        transcript = _read_all(sock)
    assert b"\r\n235 2.7.0" in transcript and b"\r\n250 2.0.0 Queued as" in transcript
