"""The PROXY protocol parser: exact headers accepted, everything else refused."""

from __future__ import annotations

import asyncio
import struct

import pytest

from smtpworker.core.grammar import parse_access_entry
from smtpworker.inbound.proxyproto import (
    V1_MAX_LENGTH,
    V2_MAX_LENGTH,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyProtocolError,
    parse_v1,
    parse_v2,
    read_header,
    trusted,
)
from smtpworker.tests.factories import tcp4, tcp6, tlv, v2

# --- version 1 --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "source", "destination"),
    [
        (b"PROXY TCP4 10.1.2.3 192.0.2.1 56324 25\r\n", ("10.1.2.3", 56324), ("192.0.2.1", 25)),
        (
            b"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n",
            ("0.0.0.0", 0),
            ("255.255.255.255", 65535),
        ),
        (
            b"PROXY TCP6 2001:DB8::1 2001:db8:0::2 1 587\r\n",
            ("2001:db8::1", 1),
            ("2001:db8::2", 587),
        ),
        # A dual-stack proxy's IPv4 client is an IPv4 client.
        (b"PROXY TCP6 ::ffff:10.1.2.3 ::1 4000 25\r\n", ("10.1.2.3", 4000), ("::1", 25)),
    ],
)
def test_v1_names_the_client(
    line: bytes, source: tuple[str, int], destination: tuple[str, int]
) -> None:
    assert parse_v1(line) == ProxyHeader(1, "PROXY", source, destination)


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY UNKNOWN\r\n",
        b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n",
        b"PROXY UNKNOWN whatever the proxy likes\r\n",
    ],
)
def test_v1_unknown_names_nobody(line: bytes) -> None:
    assert parse_v1(line) == ProxyHeader(1, "PROXY", None, None)


def test_v1_is_at_most_107_bytes() -> None:
    # The specification's worst case is exactly 107 bytes.
    full = ":".join(["ffff"] * 8)
    longest = f"PROXY UNKNOWN {full} {full} 65535 65535\r\n".encode()
    assert len(longest) == V1_MAX_LENGTH
    assert parse_v1(longest).source is None
    with pytest.raises(ProxyProtocolError, match="longer than 107"):
        parse_v1(longest[:-2] + b"5\r\n")


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        (b"PROXY TCP4 10.1.2.3 192.0.2.1 56324 25\n", "CRLF"),
        (b"PROXY TCP4 10.1.2.3 192.0.2.1 56324 25", "CRLF"),
        (b"PROXY TCP4 10.1.2.3 192.0.2.1 56324 25\r\n\r\n", "CRLF"),
        (b"PROXY TCP4 10.1.2.3\r192.0.2.1 56324 25\r\n", "CRLF"),
        (b"PROXY TCP4 10.1.2.3  192.0.2.1 56324 25\r\n", "two ports"),
        (b"PROXY TCP4 10.1.2.3 192.0.2.1 56324 25 \r\n", "two ports"),
        (b"PROXY TCP4 10.1.2.3 192.0.2.1 56324\r\n", "two ports"),
        (b"PROXY  TCP4 10.1.2.3 192.0.2.1 56324 25\r\n", "is not TCP4"),
        (b"PROXY tcp4 10.1.2.3 192.0.2.1 56324 25\r\n", "is not TCP4"),
        (b"PROXY TCP5 10.1.2.3 192.0.2.1 56324 25\r\n", "is not TCP4"),
        (b"PROXY UDP4 10.1.2.3 192.0.2.1 56324 25\r\n", "is not TCP4"),
        (b"PROXY \r\n", "is not TCP4"),
        (b"proxy TCP4 10.1.2.3 192.0.2.1 56324 25\r\n", "start with"),
        (b"PROXY TCP4 2001:db8::1 192.0.2.1 56324 25\r\n", "not IPv4"),
        (b"PROXY TCP6 10.1.2.3 2001:db8::2 56324 25\r\n", "not IPv6"),
        (b"PROXY TCP4 010.1.2.3 192.0.2.1 56324 25\r\n", "not IPv4"),
        (b"PROXY TCP4 10.1.2 192.0.2.1 56324 25\r\n", "not IPv4"),
        (b"PROXY TCP4 localhost 192.0.2.1 56324 25\r\n", "not IPv4"),
        (b"PROXY TCP6 fe80::1%eth0 ::1 56324 25\r\n", "scope id"),
        (b"PROXY TCP4 10.1.2.3 192.0.2.1 65536 25\r\n", "port"),
        (b"PROXY TCP4 10.1.2.3 192.0.2.1 056324 25\r\n", "port"),
        (b"PROXY TCP4 10.1.2.3 192.0.2.1 +5632 25\r\n", "port"),
        (b"PROXY TCP4 10.1.2.3 192.0.2.1 -1 25\r\n", "port"),
        (b"PROXY TCP4 10.1.2.3 192.0.2.1 56324 0x19\r\n", "port"),
        (b"PROXY TCP4 10.1.2.3 192.0.2.1 5\xd9\xa5 25\r\n", "printable ASCII"),
        (b"PROXY TCP4 10.1.2.3 192.0.2.1 56324 25\x00\r\n", "printable ASCII"),
    ],
)
def test_v1_refuses_anything_else(line: bytes, needle: str) -> None:
    with pytest.raises(ProxyProtocolError, match=needle):
        parse_v1(line)


# --- version 2 --------------------------------------------------------------------------


PROXY, LOCAL = 0x1, 0x0
TCP4, TCP6, UNSPEC = 0x11, 0x21, 0x00


def test_v2_tcp4_and_tcp6_name_the_client() -> None:
    assert parse_v2(v2(PROXY, TCP4, tcp4("10.1.2.3", "192.0.2.1", 56324, 25))) == ProxyHeader(
        2, "PROXY", ("10.1.2.3", 56324), ("192.0.2.1", 25)
    )
    header = parse_v2(v2(PROXY, TCP6, tcp6("2001:db8::1", "2001:db8::2", 1, 587)))
    assert header == ProxyHeader(2, "PROXY", ("2001:db8::1", 1), ("2001:db8::2", 587))
    mapped = parse_v2(v2(PROXY, TCP6, tcp6("::ffff:10.1.2.3", "::1", 7, 25)))
    assert mapped.source == ("10.1.2.3", 7)


def test_v2_skips_well_formed_tlvs() -> None:
    tlvs = tlv(0x01, b"smtp") + tlv(0x02, b"mx.example.test") + tlv(0x04, bytes(40))
    tlvs += tlv(0xEA, b"vpce-0123456789abcdef") + tlv(0x20, b"")
    header = parse_v2(v2(PROXY, TCP4, tcp4("10.1.2.3", "192.0.2.1", 1000, 25) + tlvs))
    assert header.source == ("10.1.2.3", 1000)


def test_v2_local_and_unspec_name_nobody() -> None:
    # LOCAL: the proxy's own health check; its address block (whatever it is) is ignored.
    assert parse_v2(v2(LOCAL, UNSPEC, b"")) == ProxyHeader(2, "LOCAL", None, None)
    assert parse_v2(v2(LOCAL, TCP4, tcp4("10.1.2.3", "192.0.2.1", 1, 25))).source is None
    assert parse_v2(v2(LOCAL, 0x77, b"\x01")).command == "LOCAL"
    assert parse_v2(v2(PROXY, UNSPEC, b"")) == ProxyHeader(2, "PROXY", None, None)
    assert parse_v2(v2(PROXY, UNSPEC, b"anything")).source is None


@pytest.mark.parametrize(
    ("header", "needle"),
    [
        (v2(PROXY, TCP4, tcp4("10.1.2.3", "192.0.2.1", 1, 25), version=1), "version 1"),
        (v2(PROXY, TCP4, tcp4("10.1.2.3", "192.0.2.1", 1, 25), version=3), "version 3"),
        (v2(0x2, TCP4, tcp4("10.1.2.3", "192.0.2.1", 1, 25)), "neither LOCAL nor PROXY"),
        (v2(0xF, TCP4, tcp4("10.1.2.3", "192.0.2.1", 1, 25)), "neither LOCAL nor PROXY"),
        (v2(PROXY, 0x12, tcp4("10.1.2.3", "192.0.2.1", 1, 25)), "UDP over IPv4"),
        (v2(PROXY, 0x22, tcp6("::1", "::1", 1, 25)), "UDP over IPv6"),
        (v2(PROXY, 0x31, bytes(216)), "UNIX stream"),
        (v2(PROXY, 0x32, bytes(216)), "UNIX datagram"),
        (v2(PROXY, 0x13, tcp4("10.1.2.3", "192.0.2.1", 1, 25)), "not assigned"),
        (v2(PROXY, 0x01, tcp4("10.1.2.3", "192.0.2.1", 1, 25)), "not assigned"),
        (v2(PROXY, 0x41, tcp4("10.1.2.3", "192.0.2.1", 1, 25)), "not assigned"),
        (v2(PROXY, TCP4, tcp4("10.1.2.3", "192.0.2.1", 1, 25)[:11]), "needs 12"),
        (v2(PROXY, TCP6, tcp4("10.1.2.3", "192.0.2.1", 1, 25)), "needs 36"),
        (v2(PROXY, TCP4, tcp4("10.1.2.3", "192.0.2.1", 1, 25) + b"\x01\x00"), "inside a TLV"),
        (
            v2(PROXY, TCP4, tcp4("10.1.2.3", "192.0.2.1", 1, 25) + b"\x01\x00\x05abc"),
            "past the end",
        ),
        (v2(PROXY, TCP4, tcp4("10.1.2.3", "192.0.2.1", 1, 25))[:-1], "announces"),
        (v2(PROXY, TCP4, tcp4("10.1.2.3", "192.0.2.1", 1, 25)) + b"EHLO", "announces"),
        (v2(PROXY, TCP4, tcp4("10.1.2.3", "192.0.2.1", 1, 25))[:15], "truncated"),
        (b"\r\n\r\n\x00\r\nQUIT\r" + bytes(4), "no v2 signature"),
        (b"PROXY TCP4 10.1.2.3 192.0.2.1 1 25\r\n", "no v2 signature"),
    ],
)
def test_v2_refuses_anything_else(header: bytes, needle: str) -> None:
    with pytest.raises(ProxyProtocolError, match=needle):
        parse_v2(header)


def test_v2_length_is_bounded() -> None:
    block = tcp4("10.1.2.3", "192.0.2.1", 1, 25)
    largest = v2(PROXY, TCP4, block + tlv(0x04, bytes(V2_MAX_LENGTH - len(block) - 3)))
    assert parse_v2(largest).source == ("10.1.2.3", 1)
    with pytest.raises(ProxyProtocolError, match="at most 2048"):
        parse_v2(v2(PROXY, TCP4, block + tlv(0x04, bytes(V2_MAX_LENGTH - len(block) - 2))))


# --- reading from a stream --------------------------------------------------------------


def read(data: bytes, *, eof: bool = True) -> tuple[ProxyHeader, bytes]:
    """Feed ``data`` to a stream with aiosmtpd's line limit; return the header and what
    is left for the SMTP session."""

    async def run() -> tuple[ProxyHeader, bytes]:
        reader = asyncio.StreamReader(limit=1001)
        reader.feed_data(data)
        if eof:
            reader.feed_eof()
        header = await asyncio.wait_for(read_header(reader), 2)
        return header, await reader.read() if eof else b""

    return asyncio.run(run())


def test_reading_takes_the_header_and_not_a_byte_more() -> None:
    header, rest = read(b"PROXY TCP4 10.1.2.3 192.0.2.1 56324 25\r\nEHLO c.test\r\n")
    assert header.source == ("10.1.2.3", 56324) and rest == b"EHLO c.test\r\n"
    block = tcp6("2001:db8::7", "2001:db8::2", 9, 25) + tlv(0x01, b"smtp")
    header, rest = read(v2(PROXY, TCP6, block) + b"PROXY TCP4 1.1.1.1 2.2.2.2 1 1\r\n")
    assert header.source == ("2001:db8::7", 9) and rest == b"PROXY TCP4 1.1.1.1 2.2.2.2 1 1\r\n"
    header, rest = read(v2(LOCAL, UNSPEC, b"") + b"QUIT\r\n")
    assert header.command == "LOCAL" and rest == b"QUIT\r\n"


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"EHLO client.test\r\n", "does not start with a PROXY"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", "does not start with a PROXY"),
        (b"PROX", "ended inside"),
        (b"PROXY TCP4 10.1.2.3 192.0.2.1 56324", "ended inside"),
        (v2(PROXY, TCP4, tcp4("10.1.2.3", "192.0.2.1", 1, 25))[:20], "ended inside"),
        (V2_SIGNATURE[:9], "ended inside"),
        (b"PROXY TCP4 " + b"1" * 200 + b"\r\n", "longer than 107"),
        (b"PROXY UNKNOWN\nEHLO c.test\r\n", "CRLF"),
    ],
)
def test_reading_refuses_what_is_not_a_whole_header(data: bytes, needle: str) -> None:
    with pytest.raises(ProxyProtocolError, match=needle):
        read(data)


def test_reading_does_not_wait_for_an_endless_v1_line() -> None:
    # Past the stream's limit without a line end: refused at once, not at the time-out.
    with pytest.raises(ProxyProtocolError, match="longer than 107"):
        read(b"PROXY " + b"A" * 2000, eof=False)


def test_reading_does_not_wait_for_an_oversized_v2_block() -> None:
    announced = V2_SIGNATURE + bytes([0x21, TCP4]) + struct.pack("!H", 65535)
    with pytest.raises(ProxyProtocolError, match="announces 65535"):
        read(announced, eof=False)


# --- who may send one -------------------------------------------------------------------


def test_only_listed_addresses_are_trusted() -> None:
    proxies = [parse_access_entry(t) for t in ("127.0.0.1", "10.0.0.0/24", "2001:db8::/64")]
    assert trusted(proxies, "127.0.0.1")
    assert trusted(proxies, "::ffff:127.0.0.1")
    assert trusted(proxies, "10.0.0.200")
    assert trusted(proxies, "2001:db8::5")
    assert not trusted(proxies, "127.0.0.2")
    assert not trusted(proxies, "10.0.1.1")
    assert not trusted(proxies, "not an address")
    assert not trusted([], "127.0.0.1")
    # A name never makes a proxy: it is recognised by its address before anything is read.
    assert not trusted([parse_access_entry("localhost")], "127.0.0.1")
