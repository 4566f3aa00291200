"""The PROXY protocol (HAProxy's, versions 1 and 2): the real client behind a TCP proxy.

A load balancer that forwards SMTP connections opens its own connection to us, so the
address we see is the balancer's. On a binding marked ``proxy`` the balancer first sends
one header naming the client it is forwarding; this module reads and checks it.

:func:`parse_v1` and :func:`parse_v2` are pure and strict: a header is either exactly
what the specification allows or refused with :class:`ProxyProtocolError`.
:func:`read_header` reads one header from a stream, never a byte past it, so the SMTP
conversation that follows is untouched. :func:`trusted` says whether a connection may
send a header at all; the caller must ask it first, or any client could name itself.

Specification: https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from smtpworker.core.grammar import AccessEntry, GrammarError, IPAddress, access_entry_matches

__all__ = [
    "HEADER_TIMEOUT",
    "V1_MAX_LENGTH",
    "V2_MAX_LENGTH",
    "V2_SIGNATURE",
    "ProxyHeader",
    "ProxyProtocolError",
    "parse_v1",
    "parse_v2",
    "read_header",
    "trusted",
    "v2_length",
]

# Postfix's smtpd_upstream_proxy_timeout: a balancer sends the header at once.
HEADER_TIMEOUT = 5.0
V1_PREFIX = b"PROXY "
V1_MAX_LENGTH = 107  # the specification's bound, CRLF included
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED_LENGTH = 16  # signature, version/command, family/protocol, length
# The address block and TLVs. The specification's own largest address block is 216
# bytes (AF_UNIX); TLVs (ALPN, authority, TLS details, cloud ids) add a few hundred.
V2_MAX_LENGTH = 2048

_V1_PORT = re.compile(r"0|[1-9][0-9]{0,4}")
_V2_LOCAL, _V2_PROXY = 0x0, 0x1
# The family/transport byte (family << 4 | transport); UNSPEC carries no address.
_V2_TCP4, _V2_TCP6, _V2_UNSPEC = 0x11, 0x21, 0x00
# Two addresses and two ports.
_V2_ADDRESS_LENGTH = {_V2_TCP4: 12, _V2_TCP6: 36}
_V2_UNSUPPORTED = {
    0x12: "UDP over IPv4",
    0x22: "UDP over IPv6",
    0x31: "a UNIX stream socket",
    0x32: "a UNIX datagram socket",
}


class ProxyProtocolError(ValueError):
    """The bytes are not one valid PROXY protocol header; str() says what is wrong."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """One decoded header.

    ``source`` and ``destination`` are (IP, port) of the connection the proxy accepted;
    both are None when the header names no client: a v2 LOCAL command (the proxy's own
    health check), v1 ``UNKNOWN`` or a v2 UNSPEC family. The specification says the
    receiver then uses the connection's own endpoints.
    """

    version: Literal[1, 2]
    command: Literal["PROXY", "LOCAL"]
    source: tuple[str, int] | None
    destination: tuple[str, int] | None


def trusted(proxies: Iterable[AccessEntry], ip: str) -> bool:
    """Whether ``ip`` (the connection's own peer) is one of ``proxies`` (IPs, networks).

    Domain entries never match: a proxy is recognised by its address alone.
    """
    try:
        return any(e.kind != "domain" and access_entry_matches(e, ip) for e in proxies)
    except GrammarError:
        return False


def _ip_text(addr: IPAddress) -> str:
    # An IPv4 client seen by a dual-stack proxy arrives as ::ffff:a.b.c.d; it is an IPv4
    # client, and the relay lists, sessions and logs should say so in one spelling.
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return addr.compressed


# --- version 1: one text line -------------------------------------------------------------


def parse_v1(line: bytes) -> ProxyHeader:
    """Decode ``PROXY TCP4|TCP6 <src> <dst> <sport> <dport>\\r\\n`` or
    ``PROXY UNKNOWN[ anything]\\r\\n``.

    ``line`` is the whole header, CRLF included, at most 107 bytes. Fields are separated
    by exactly one space; addresses must be of the named family (no IPv6 scope ids, no
    leading zeros in IPv4); ports are decimal 0-65535 without leading zeros.
    """
    if len(line) > V1_MAX_LENGTH:
        raise ProxyProtocolError(f"v1 header longer than {V1_MAX_LENGTH} bytes")
    if not line.startswith(V1_PREFIX):
        raise ProxyProtocolError("v1 header does not start with 'PROXY '")
    if not line.endswith(b"\r\n") or b"\n" in line[:-1] or b"\r" in line[:-2]:
        raise ProxyProtocolError("v1 header does not end with one CRLF")
    body = line[len(V1_PREFIX) : -2]
    if not all(32 <= byte < 127 for byte in body):
        raise ProxyProtocolError("v1 header has bytes that are not printable ASCII")
    fields = body.decode("ascii").split(" ")
    if fields[0] == "UNKNOWN":
        # The specification: the receiver must ignore whatever follows UNKNOWN.
        return ProxyHeader(1, "PROXY", None, None)
    if fields[0] not in ("TCP4", "TCP6"):
        raise ProxyProtocolError(f"v1 protocol {fields[0][:10]!r} is not TCP4, TCP6 or UNKNOWN")
    if len(fields) != 5:
        raise ProxyProtocolError("v1 header needs source, destination and two ports")
    version = 4 if fields[0] == "TCP4" else 6
    source = _v1_address(fields[1], version), _v1_port(fields[3])
    destination = _v1_address(fields[2], version), _v1_port(fields[4])
    return ProxyHeader(1, "PROXY", source, destination)


def _v1_address(text: str, version: int) -> str:
    try:
        addr = ipaddress.IPv4Address(text) if version == 4 else ipaddress.IPv6Address(text)
    except ValueError:
        raise ProxyProtocolError(f"v1 address {text[:45]!r} is not IPv{version}") from None
    if isinstance(addr, ipaddress.IPv6Address) and addr.scope_id is not None:
        raise ProxyProtocolError(f"v1 address {text[:45]!r} has a scope id")
    return _ip_text(addr)


def _v1_port(text: str) -> int:
    if not _V1_PORT.fullmatch(text) or int(text) > 65535:
        raise ProxyProtocolError(f"v1 port {text[:10]!r} is not a number from 0 to 65535")
    return int(text)


# --- version 2: binary --------------------------------------------------------------------


def v2_length(fixed: bytes) -> int:
    """Check the 16 fixed bytes of a v2 header; return how many bytes follow them."""
    if not fixed.startswith(V2_SIGNATURE) and not V2_SIGNATURE.startswith(fixed):
        raise ProxyProtocolError("no v2 signature")
    if len(fixed) != V2_FIXED_LENGTH:
        raise ProxyProtocolError("v2 header is truncated")
    if fixed[12] >> 4 != 2:
        raise ProxyProtocolError(f"v2 header with version {fixed[12] >> 4}")
    if fixed[12] & 0xF not in (_V2_LOCAL, _V2_PROXY):
        raise ProxyProtocolError(f"v2 command {fixed[12] & 0xF} is neither LOCAL nor PROXY")
    length = int.from_bytes(fixed[14:16], "big")
    if length > V2_MAX_LENGTH:
        raise ProxyProtocolError(f"v2 header announces {length} bytes (at most {V2_MAX_LENGTH})")
    return length


def parse_v2(header: bytes) -> ProxyHeader:
    """Decode one whole v2 header (the 16 fixed bytes and exactly the length they announce).

    LOCAL (a health check by the proxy itself) ignores the address block, as the
    specification requires. PROXY takes TCP over IPv4 or IPv6, or UNSPEC (no client
    named); UDP and UNIX sockets are refused, as are unassigned family bytes. TLVs after
    the addresses are skipped but must be well formed.
    """
    length = v2_length(header[:V2_FIXED_LENGTH])
    if len(header) != V2_FIXED_LENGTH + length:
        raise ProxyProtocolError(
            f"v2 header is {len(header)} bytes but announces {V2_FIXED_LENGTH + length}"
        )
    if header[12] & 0xF == _V2_LOCAL:
        return ProxyHeader(2, "LOCAL", None, None)
    family = header[13]
    if family == _V2_UNSPEC:
        return ProxyHeader(2, "PROXY", None, None)
    if family in _V2_UNSUPPORTED:
        raise ProxyProtocolError(f"v2 header forwards {_V2_UNSUPPORTED[family]}, not TCP")
    if family not in _V2_ADDRESS_LENGTH:
        raise ProxyProtocolError(f"v2 family/protocol byte 0x{family:02x} is not assigned")
    size = _V2_ADDRESS_LENGTH[family]
    block = header[V2_FIXED_LENGTH:]
    if len(block) < size:
        raise ProxyProtocolError(f"v2 address block is {len(block)} bytes, needs {size}")
    _check_tlvs(block[size:])
    # Source address, destination address, source port, destination port.
    n = (size - 4) // 2
    ports = (
        int.from_bytes(block[2 * n : 2 * n + 2], "big"),
        int.from_bytes(block[2 * n + 2 : size], "big"),
    )
    addresses: tuple[IPAddress, IPAddress]
    if family == _V2_TCP4:
        addresses = ipaddress.IPv4Address(block[:n]), ipaddress.IPv4Address(block[n : 2 * n])
    else:
        addresses = ipaddress.IPv6Address(block[:n]), ipaddress.IPv6Address(block[n : 2 * n])
    source = _ip_text(addresses[0]), ports[0]
    destination = _ip_text(addresses[1]), ports[1]
    return ProxyHeader(2, "PROXY", source, destination)


def _check_tlvs(data: bytes) -> None:
    """Each TLV is a type byte, a 2-byte length and that many bytes, to the very end."""
    offset = 0
    while offset < len(data):
        if len(data) - offset < 3:
            raise ProxyProtocolError("v2 header ends inside a TLV")
        offset += 3 + int.from_bytes(data[offset + 1 : offset + 3], "big")
        if offset > len(data):
            raise ProxyProtocolError("v2 TLV runs past the end of the header")


# --- reading one header -------------------------------------------------------------------


async def read_header(reader: asyncio.StreamReader) -> ProxyHeader:
    """Read exactly one v1 or v2 header from ``reader`` and decode it.

    Raises ProxyProtocolError if the stream does not start with a valid header or ends
    inside one. A v1 line is read up to its LF, bounded by the reader's limit, then held
    to 107 bytes; v2 reads the 16 fixed bytes and then only what they announce (at most
    V2_MAX_LENGTH). The caller bounds the time (HEADER_TIMEOUT).
    """
    try:
        start = await reader.readexactly(len(V1_PREFIX))
        if start == V1_PREFIX:
            return parse_v1(start + await reader.readuntil(b"\n"))
        if start == V2_SIGNATURE[: len(start)]:
            fixed = start + await reader.readexactly(V2_FIXED_LENGTH - len(start))
            return parse_v2(fixed + await reader.readexactly(v2_length(fixed)))
    except asyncio.IncompleteReadError:
        raise ProxyProtocolError("the connection ended inside the PROXY header") from None
    except asyncio.LimitOverrunError:
        raise ProxyProtocolError(f"v1 header longer than {V1_MAX_LENGTH} bytes") from None
    raise ProxyProtocolError("the connection does not start with a PROXY protocol header")
