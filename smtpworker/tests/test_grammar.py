from __future__ import annotations

import pytest

from smtpworker.core.grammar import (
    AccessEntry,
    Binding,
    GrammarError,
    Mailbox,
    SmartHost,
    access_entry_matches,
    bindings_conflict,
    domain_matches,
    parse_access_entry,
    parse_binding,
    parse_dns_server,
    parse_domain,
    parse_forward_path,
    parse_reverse_path,
    parse_smart_host,
)

# --- parse_domain ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("example.com", "example.com"),
        ("  Example.COM  ", "example.com"),
        ("example.com.", "example.com"),
        ("bogus1", "bogus1"),
        ("localhost", "localhost"),
        ("a-b.example.com", "a-b.example.com"),
        ("3com.com", "3com.com"),
        ("xn--bcher-kva.de", "xn--bcher-kva.de"),
        ("XN--BCHER-KVA.DE", "xn--bcher-kva.de"),
        ("bücher.de", "xn--bcher-kva.de"),
        ("BÜCHER.de", "xn--bcher-kva.de"),
        ("bücher\u3002de", "xn--bcher-kva.de"),  # ideographic full stop is a label dot
        ("\uff45xample.com", "example.com"),  # full-width 'e' folds to ASCII (nameprep)
        ("a" * 63 + ".com", "a" * 63 + ".com"),
        (".".join(["a" * 63] * 3 + ["b" * 61]), ".".join(["a" * 63] * 3 + ["b" * 61])),
    ],
)
def test_parse_domain_accepts(text: str, expected: str) -> None:
    assert parse_domain(text) == expected


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "Enter"),
        ("   ", "Enter"),
        (".", "empty label"),
        ("example.com..", "empty label"),
        (".example.com", "empty label"),
        ("a..example.com", "empty label"),
        ("exa mple.com", "space"),
        ("a_b.example.com", "'_'"),
        ("-a.example.com", "'-'"),
        ("a-.example.com", "'-'"),
        ("a" * 64 + ".com", "longer than 63"),
        (".".join(["a" * 63] * 4), "253"),
        ("exa$mple.com", "letters, digits"),
        ("user@example.com", "letters, digits"),
        ("example.com:25", "letters, digits"),
        ("10.0.0.2", "is an IP address"),
        ("::1", "is an IP address"),
        ("10.0.0.256", "all digits"),
        ("127.1", "all digits"),
        ("25", "all digits"),
        ("*.example.com", "wildcard"),
        ("xn--a-.com", "internationalised"),
        ("xn--zz.com", "internationalised"),
        ("xn--\u00df.com", "internationalised"),  # nameprep would make it 'xn--ss'
        ("a\u200d.com", "invisible"),  # nameprep would drop the zero-width joiner
        ("a\u00adb.com", "invisible"),  # soft hyphen, likewise
        ("a\x00.com", "control"),
        ("a\u00a0b.com", "space"),
    ],
)
def test_parse_domain_refuses(text: str, needle: str) -> None:
    with pytest.raises(GrammarError, match=None) as info:
        parse_domain(text)
    assert needle in str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("*.example.com", "*.example.com"), ("*.EXAMPLE.com.", "*.example.com"), ("x.com", "x.com")],
)
def test_parse_domain_wildcard_accepts(text: str, expected: str) -> None:
    assert parse_domain(text, allow_wildcard=True) == expected


@pytest.mark.parametrize("text", ["*", "*.", "a.*.com", "*example.com", "**.example.com", "*.*.a"])
def test_parse_domain_wildcard_refuses(text: str) -> None:
    with pytest.raises(GrammarError):
        parse_domain(text, allow_wildcard=True)


@pytest.mark.parametrize(
    ("pattern", "domain", "expected"),
    [
        ("*.example.com", "a.example.com", True),
        ("*.example.com", "a.b.example.com", True),
        ("*.example.com", "example.com", False),
        ("*.example.com", "badexample.com", False),
        ("*.example.com", "a.badexample.com", False),
        ("example.com", "example.com", True),
        ("example.com", "a.example.com", False),
        ("example.com", "badexample.com", False),
    ],
)
def test_domain_matches(pattern: str, domain: str, expected: bool) -> None:
    assert domain_matches(pattern, domain) is expected


# --- bindings ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected", "canonical"),
    [
        ("127.0.0.2:2525", Binding("127.0.0.2", 2525), "127.0.0.2:2525"),
        (" 127.0.0.2:25 ", Binding("127.0.0.2", 25), "127.0.0.2:25"),
        ("[::1]:25", Binding("::1", 25), "[::1]:25"),
        ("[2001:DB8:0::1]:587", Binding("2001:db8::1", 587), "[2001:db8::1]:587"),
        ("*:25", Binding(None, 25), "*:25"),
        ("0.0.0.0:25", Binding(None, 25), "*:25"),
        ("[::]:25", Binding(None, 25), "*:25"),
        ("[127.0.0.1]:25", Binding("127.0.0.1", 25), "127.0.0.1:25"),
        ("10.0.0.1:65535", Binding("10.0.0.1", 65535), "10.0.0.1:65535"),
    ],
)
def test_parse_binding_accepts(text: str, expected: Binding, canonical: str) -> None:
    binding = parse_binding(text)
    assert binding == expected
    assert str(binding) == canonical
    assert parse_binding(canonical) == binding


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("25", "address:port"),
        ("127.0.0.1", "address:port"),
        ("[::1]", "address:port"),
        ("::1:25", "brackets"),
        ("[IPv6:::1]:25", "IP address"),
        ("localhost:25", "IP address"),
        ("10.0.0.256:25", "IP address"),
        ("010.0.0.1:25", "IP address"),
        ("fe80::1%eth0", "brackets"),
        ("[fe80::1%eth0]:25", "IP address"),
        ("127.0.0.1:0", "port"),
        ("127.0.0.1:65536", "port"),
        ("127.0.0.1:", "port"),
        ("127.0.0.1:+25", "port"),
        ("127.0.0.1:2\u0665", "port"),  # Arabic-Indic digit: int() would take it
        ("[::1]25", "write it as"),
        ("[::1:25", "write it as"),
        ("", "Enter"),
    ],
)
def test_parse_binding_refuses(text: str, needle: str) -> None:
    with pytest.raises(GrammarError) as info:
        parse_binding(text)
    assert needle in str(info.value)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("10.0.0.1:25", "10.0.0.1:25", True),
        ("10.0.0.1:25", "10.0.0.2:25", False),
        ("10.0.0.1:25", "10.0.0.1:587", False),
        ("*:25", "10.0.0.1:25", True),
        ("10.0.0.1:25", "*:25", True),
        ("*:25", "*:25", True),
        ("*:25", "[::1]:25", True),
        ("*:25", "*:587", False),
        ("0.0.0.0:25", "[::]:25", True),
        ("[::1]:25", "[0::1]:25", True),
        ("[::1]:25", "127.0.0.1:25", False),
    ],
)
def test_bindings_conflict(a: str, b: str, expected: bool) -> None:
    assert bindings_conflict(parse_binding(a), parse_binding(b)) is expected
    assert bindings_conflict(parse_binding(b), parse_binding(a)) is expected


# --- smart hosts -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected", "canonical"),
    [
        ("[10.0.0.2]", SmartHost("10.0.0.2", None, True), "[10.0.0.2]"),
        ("[10.0.0.2]:2525", SmartHost("10.0.0.2", 2525, True), "[10.0.0.2]:2525"),
        ("[IPv6:2001:db8::1]", SmartHost("2001:db8::1", None, True), "[IPv6:2001:db8::1]"),
        ("[ipv6:2001:DB8:0::1]:587", SmartHost("2001:db8::1", 587, True), "[IPv6:2001:db8::1]:587"),
        ("[2001:db8::1]", SmartHost("2001:db8::1", None, True), "[IPv6:2001:db8::1]"),
        ("mail.example.com", SmartHost("mail.example.com", None, False), "mail.example.com"),
        ("Mail.Example.COM.", SmartHost("mail.example.com", None, False), "mail.example.com"),
        (
            "mail.example.com:587",
            SmartHost("mail.example.com", 587, False),
            "mail.example.com:587",
        ),
        ("exchange01", SmartHost("exchange01", None, False), "exchange01"),
    ],
)
def test_parse_smart_host_accepts(text: str, expected: SmartHost, canonical: str) -> None:
    host = parse_smart_host(text)
    assert host == expected
    assert str(host) == canonical
    assert parse_smart_host(canonical) == host


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("10.0.0.2", "write it in brackets as [10.0.0.2]"),
        ("10.0.0.2:2525", "write it in brackets as [10.0.0.2]:2525"),
        ("2001:db8::1", "write it in brackets as [IPv6:2001:db8::1]"),
        ("::1", "bare IP address"),
        ("[IPv6:10.0.0.2]", "not an IPv6 address"),
        ("[mail.example.com]", "not an IP address"),
        ("[10.0.0.2", "write it as"),
        ("[10.0.0.2]x", "write it as"),
        ("[10.0.0.2]:0", "port"),
        ("mail.example.com:", "port"),
        ("mail.example.com:smtp", "port"),
        ("mail_host.example.com", "'_'"),
        ("10.0.0.256", "all digits"),
        ("*.example.com", "wildcard"),
        ("", "Enter"),
    ],
)
def test_parse_smart_host_refuses(text: str, needle: str) -> None:
    with pytest.raises(GrammarError) as info:
        parse_smart_host(text)
    assert needle in str(info.value)


def test_bare_ip_smart_host_message_is_the_documented_one() -> None:
    with pytest.raises(GrammarError) as info:
        parse_smart_host("10.0.0.2")
    assert str(info.value) == (
        "'10.0.0.2' is a bare IP address: write it in brackets as [10.0.0.2], "
        "or IIS would try to look it up as a host name."
    )


# --- access lists ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind", "value"),
    [
        ("10.0.0.5", "ip", "10.0.0.5"),
        ("2001:DB8::0:5", "ip", "2001:db8::5"),
        ("::ffff:10.0.0.5", "ip", "10.0.0.5"),
        ("10.1.0.0/16", "network", "10.1.0.0/16"),
        ("10.1.0.0/255.255.0.0", "network", "10.1.0.0/16"),
        ("10.1.2.0/255.255.255.0", "network", "10.1.2.0/24"),
        ("10.0.0.5/255.255.255.255", "network", "10.0.0.5/32"),
        ("0.0.0.0/0", "network", "0.0.0.0/0"),
        ("0.0.0.0/0.0.0.0", "network", "0.0.0.0/0"),
        ("2001:db8::/32", "network", "2001:db8::/32"),
        ("::ffff:10.0.0.0/104", "network", "10.0.0.0/8"),
        ("example.com", "domain", "example.com"),
        ("Example.COM.", "domain", "example.com"),
        ("*.example.com", "domain", "*.example.com"),
        ("bücher.de", "domain", "xn--bcher-kva.de"),
    ],
)
def test_parse_access_entry_accepts(text: str, kind: str, value: str) -> None:
    entry = parse_access_entry(text)
    assert entry == AccessEntry(kind, value)  # type: ignore[arg-type]
    assert str(entry) == value
    assert parse_access_entry(value) == entry


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("10.1.2.3/16", "10.1.2.3/16 has host bits set; did you mean 10.1.0.0/16?"),
        (
            "10.1.2.3/255.255.0.0",
            "10.1.2.3/255.255.0.0 has host bits set; did you mean 10.1.0.0/16?",
        ),
        ("2001:db8::1/32", "2001:db8::1/32 has host bits set; did you mean 2001:db8::/32?"),
    ],
)
def test_parse_access_entry_host_bits_message(text: str, message: str) -> None:
    with pytest.raises(GrammarError) as info:
        parse_access_entry(text)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("10.0.0.0/33", "prefix length"),
        ("10.0.0.0/", "prefix length"),
        ("10.0.0.0/-1", "prefix length"),
        ("10.0.0.0/255.0.255.0", "subnet mask"),  # not contiguous
        ("10.0.0.0/0.0.255.255", "subnet mask"),  # a host mask, not IIS's subnet mask
        ("2001:db8::/129", "prefix length"),
        ("2001:db8::/ffff::", "prefix length"),
        ("10.0.0/8", "not an IP address"),
        ("example.com/24", "not an IP address"),
        ("10.0.0.256", "all digits"),
        ("a_b.example.com", "'_'"),
        ("a.*.example.com", "wildcard"),
        ("10.0.0.1 10.0.0.2", "space"),
        ("", "Enter"),
    ],
)
def test_parse_access_entry_refuses(text: str, needle: str) -> None:
    with pytest.raises(GrammarError) as info:
        parse_access_entry(text)
    assert needle in str(info.value)


@pytest.mark.parametrize(
    ("entry", "ip", "ptr_names", "expected"),
    [
        ("10.0.0.5", "10.0.0.5", (), True),
        ("10.0.0.5", "10.0.0.6", (), False),
        ("10.0.0.5", "::ffff:10.0.0.5", (), True),
        ("::ffff:10.0.0.5", "10.0.0.5", (), True),
        ("2001:db8::5", "2001:DB8:0::5", (), True),
        ("2001:db8::5", "10.0.0.5", (), False),
        ("fe80::1", "fe80::1%eth0", (), True),
        ("10.1.0.0/16", "10.1.200.3", (), True),
        ("10.1.0.0/16", "10.2.0.1", (), False),
        ("10.1.0.0/16", "::ffff:10.1.0.9", (), True),
        ("10.1.0.0/255.255.0.0", "10.1.255.255", (), True),
        ("2001:db8::/32", "2001:db8:1::1", (), True),
        ("2001:db8::/32", "10.1.0.1", (), False),
        ("0.0.0.0/0", "192.0.2.1", (), True),
        # IIS domain restriction: a plain domain covers the host and everything under it.
        ("example.com", "192.0.2.1", ("example.com",), True),
        ("example.com", "192.0.2.1", ("mx.example.com",), True),
        ("example.com", "192.0.2.1", ("a.b.example.com",), True),
        ("example.com", "192.0.2.1", ("badexample.com",), False),
        ("example.com", "192.0.2.1", ("example.com.evil.net",), False),
        ("example.com", "192.0.2.1", ("MX.Example.COM.",), True),
        ("example.com", "192.0.2.1", ("bad_name.example.com",), True),
        ("example.com", "192.0.2.1", ("other.net", "mx.example.com"), True),
        ("example.com", "192.0.2.1", (), False),
        ("*.example.com", "192.0.2.1", ("mx.example.com",), True),
        ("*.example.com", "192.0.2.1", ("example.com",), False),
        ("*.example.com", "192.0.2.1", ("mxexample.com",), False),
        ("xn--bcher-kva.de", "192.0.2.1", ("mx.bücher.de",), True),
        ("10.0.0.5", "10.0.0.6", ("10.0.0.5",), False),
    ],
)
def test_access_entry_matches(
    entry: str, ip: str, ptr_names: tuple[str, ...], expected: bool
) -> None:
    assert access_entry_matches(parse_access_entry(entry), ip, ptr_names) is expected


@pytest.mark.parametrize("ip", ["", "mx.example.com", "10.0.0.256", "[10.0.0.1]"])
def test_access_entry_matches_refuses_a_bad_client_address(ip: str) -> None:
    with pytest.raises(GrammarError):
        access_entry_matches(parse_access_entry("10.0.0.1"), ip)


# --- DNS servers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1", ("127.0.0.1", 53)),
        (" 127.0.0.1:5353 ", ("127.0.0.1", 5353)),
        ("[::1]:5353", ("::1", 5353)),
        ("::1", ("::1", 53)),
        ("2001:DB8::53", ("2001:db8::53", 53)),
        ("[::1]", ("::1", 53)),
    ],
)
def test_parse_dns_server_accepts(text: str, expected: tuple[str, int]) -> None:
    assert parse_dns_server(text) == expected


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("dns.example.com", "by IP address"),
        ("dns.example.com:53", "by IP address"),
        ("127.0.0.1:0", "port"),
        ("127.0.0.1:99999", "port"),
        ("[::1]:", "port"),
        ("::1:5353:x", "brackets"),
        ("", "Enter"),
    ],
)
def test_parse_dns_server_refuses(text: str, needle: str) -> None:
    with pytest.raises(GrammarError) as info:
        parse_dns_server(text)
    assert needle in str(info.value)


# --- envelope addresses ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "smtputf8", "local", "domain"),
    [
        ("user@example.com", False, "user", "example.com"),
        ("<user@example.com>", False, "user", "example.com"),
        ("User@EXAMPLE.COM.", False, "User", "example.com"),
        ("<User@EXAMPLE.COM.>", False, "User", "example.com"),
        ("first.last@example.com", False, "first.last", "example.com"),
        ("user+tag@example.com", False, "user+tag", "example.com"),
        ("o'brien@example.com", False, "o'brien", "example.com"),
        ("{a}=b?c^d~e@example.com", False, "{a}=b?c^d~e", "example.com"),
        ("postmaster@bogus1", False, "postmaster", "bogus1"),
        ('"user"@example.com', False, "user", "example.com"),
        ('"first.last"@example.com', False, "first.last", "example.com"),
        ('"us\\er"@example.com', False, "user", "example.com"),
        ('"john doe"@example.com', False, '"john doe"', "example.com"),
        ('"a\\"b"@example.com', False, '"a\\"b"', "example.com"),
        ('"a..b"@example.com', False, '"a..b"', "example.com"),
        ('".a"@example.com', False, '".a"', "example.com"),
        ('"a\\\\b"@example.com', False, '"a\\\\b"', "example.com"),
        ("user@xn--bcher-kva.de", False, "user", "xn--bcher-kva.de"),
        ("user@bücher.de", True, "user", "xn--bcher-kva.de"),
        ("usér@example.com", True, "usér", "example.com"),
        ("用户@bücher.de", True, "用户", "xn--bcher-kva.de"),
        ("a" * 64 + "@example.com", False, "a" * 64, "example.com"),
    ],
)
def test_parse_forward_path_accepts(text: str, smtputf8: bool, local: str, domain: str) -> None:
    mailbox = parse_forward_path(text, smtputf8=smtputf8)
    assert mailbox == Mailbox(local, domain)
    assert str(mailbox) == f"{local}@{domain}"
    assert parse_forward_path(str(mailbox), smtputf8=smtputf8) == mailbox


# Each of these must raise: accepting any of them as addressed to local.com could make
# this server an open relay, or smuggle a second command.
RELAY_TRICKS = [
    ("user%foreign.com@local.com", "percent hack"),
    ("user%foreign.com%other.net@local.com", "percent hack"),
    ("foreign.com!user@local.com", "bang path"),
    ("a!b!user@local.com", "bang path"),
    ("@local.com:user@foreign.com", "source route"),
    ("<@local.com:user@foreign.com>", "source route"),
    ("@local.com,@relay.net:user@foreign.com", "source route"),
    ('"user@foreign.com"@local.com', "'@'"),
    ('"user%foreign.com"@local.com', "'%'"),
    ('"foreign.com!user"@local.com', "'!'"),
    ('"user\\@foreign.com"@local.com', "'@'"),
    ("user\\@foreign.com@local.com", "more than one '@'"),
    ("user@[10.0.0.1]", "address literal"),
    ("user@[IPv6:2001:db8::1]", "address literal"),
    ("<user@[127.0.0.1]>", "address literal"),
    ("user@10.0.0.1", "IP address"),
    ("user@local.com@foreign.com", "more than one '@'"),
    ("user@@local.com", "more than one '@'"),
    ("@local.com", "source route"),
    ("user@", "empty"),
    ("@", "source route"),
    ("", "empty"),
    ("<>", "empty"),
    ("user", "no '@domain'"),
    ("user@.local.com", "empty label"),
    ("user@local..com", "empty label"),
    ("user@local.com..", "empty label"),
    ("user@.", "empty label"),
    (".user@local.com", "dot"),
    ("user.@local.com", "dot"),
    ("us..er@local.com", "dot"),
    ("user\x00@local.com", "control"),
    ("user@local.com\x00.foreign.com", "control"),
    ("user@local.com\r\nRCPT TO:<victim@foreign.com>", "control"),
    ("user@local.com\nDATA", "control"),
    ("user@local.com\t", "control"),
    ("us er@local.com", "quoted"),
    (" user@local.com", "quoted"),
    ("user@local.com ", "space"),
    ("user@local .com", "space"),
    ("user@local.com>", "pair up"),
    ("<user@local.com", "pair up"),
    ("<<user@local.com>>", "quoted"),
    ("a" * 65 + "@local.com", "64"),
    ("a@" + ".".join(["b" * 63] * 3 + ["c" * 61]), "254"),
    ("a" * 600 + "@local.com", "too long"),
    ("usér@local.com", "SMTPUTF8"),
    ("user@lócal.com", "SMTPUTF8"),
    ('"usér"@local.com', "SMTPUTF8"),
    ("user@local.com\u200b", "invisible"),
    ("user\u2028@local.com", "invisible"),
    ("user\u00a0@local.com", "invisible"),
    ("user@local_host.com", "'_'"),
    ("user@local.com:25", "letters, digits"),
    ("user@local.com;foreign.com", "letters, digits"),
    ("user@local.com,foreign.com", "letters, digits"),
    ("user@*.local.com", "wildcard"),
    ("user@-local.com", "'-'"),
    ("user,other@local.com", "quoted"),
    ("user(comment)@local.com", "quoted"),
    ('"unterminated@local.com', "not closed"),
    ('"user"x@local.com', "followed by '@'"),
    ('""@local.com', "empty"),
    ("user@[10.0.0.1", "address literal"),
]


@pytest.mark.parametrize(("text", "needle"), RELAY_TRICKS)
def test_parse_forward_path_refuses_relay_tricks(text: str, needle: str) -> None:
    with pytest.raises(GrammarError) as info:
        parse_forward_path(text)
    assert needle in str(info.value)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("user\uff05foreign.com@local.com", "'%'"),  # full-width percent sign
        ("user\uff01foreign.com@local.com", "'!'"),  # full-width exclamation mark
        ("user\uff20foreign.com@local.com", "'@'"),  # full-width commercial at
        ('"user\ufe6bforeign.com"@local.com', "'@'"),  # small commercial at
        ("user@local\uff0ecom\uff20foreign.com", "letters, digits"),
        ("user@xn--a-.com", "internationalised"),
        ("user\u200d@local.com", "invisible"),
    ],
)
def test_parse_forward_path_refuses_unicode_tricks_under_smtputf8(text: str, needle: str) -> None:
    with pytest.raises(GrammarError) as info:
        parse_forward_path(text, smtputf8=True)
    assert needle in str(info.value)


def test_full_width_domain_folds_to_the_domain_it_spells_under_smtputf8() -> None:
    # Not a trick that gets through: the policy and delivery both see the folded form.
    assert parse_forward_path("user@local\uff0ecom", smtputf8=True) == Mailbox("user", "local.com")


def test_relay_trick_table_is_large_enough() -> None:
    assert len(RELAY_TRICKS) >= 30


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", None),
        ("<>", None),
        ("user@example.com", Mailbox("user", "example.com")),
        ("<User@Example.COM.>", Mailbox("User", "example.com")),
        ("@a,@b:user@c.example", Mailbox("user", "c.example")),
        ("<@relay.example:user@example.com>", Mailbox("user", "example.com")),
        ("@[10.0.0.1]:user@example.com", Mailbox("user", "example.com")),
        ("user@[10.0.0.1]", Mailbox("user", "[10.0.0.1]")),
        ("user@[IPv6:2001:DB8:0::1]", Mailbox("user", "[IPv6:2001:db8::1]")),
        ("user@[ipv6:::1]", Mailbox("user", "[IPv6:::1]")),
        ('"john doe"@example.com', Mailbox('"john doe"', "example.com")),
    ],
)
def test_parse_reverse_path_accepts(text: str, expected: Mailbox | None) -> None:
    assert parse_reverse_path(text) == expected


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("@a,@b:", "empty"),
        ("@a,user@c", "malformed"),
        ("@:user@c", "malformed"),
        ("@a:@b:user@c", "'@'"),
        ("@a,@b:user%foreign.com@c", "percent hack"),
        ("user%foreign.com@example.com", "percent hack"),
        ("foreign.com!user@example.com", "bang path"),
        ('"user@foreign.com"@example.com', "'@'"),
        ("user@[10.0.0.256]", "not an IP address"),
        ("user@[IPv6:10.0.0.1]", "not an IPv6 address"),
        ("user@[tag:content]", "not an IP address"),
        ("user@[10.0.0.1]x", "not closed"),
        ("user@example..com", "empty label"),
        ("user", "no '@domain'"),
        ("user@example.com\r\n", "control"),
        ("usér@example.com", "SMTPUTF8"),
        ("<user@example.com", "pair up"),
    ],
)
def test_parse_reverse_path_refuses(text: str, needle: str) -> None:
    with pytest.raises(GrammarError) as info:
        parse_reverse_path(text)
    assert needle in str(info.value)


def test_parse_reverse_path_accepts_non_ascii_with_smtputf8() -> None:
    assert parse_reverse_path("<usér@bücher.de>", smtputf8=True) == Mailbox(
        "usér", "xn--bcher-kva.de"
    )


def test_grammar_error_is_a_value_error() -> None:
    # Django validators and DRF fields catch ValueError-shaped errors from parsers.
    assert issubclass(GrammarError, ValueError)
