"""The one grammar for addresses, networks and names in mailadmin.

Django forms, DRF serializers, the config document and the relay policy all parse through
these functions, so a value means the same thing everywhere. Every parser returns a
canonical form (lower-case domains as IDNA A-labels, compressed IP addresses, CIDR
networks) or raises `GrammarError` whose text can be shown to an administrator as is.

IDN conversion uses the stdlib 'idna' codec, which implements IDNA 2003 (nameprep):
e.g. 'ß' maps to 'ss' and full-width letters map to ASCII.
"""

from __future__ import annotations

import encodings.idna
import ipaddress
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, TypeAlias

__all__ = [
    "AccessEntry",
    "Binding",
    "GrammarError",
    "Mailbox",
    "SmartHost",
    "access_entry_matches",
    "bindings_conflict",
    "domain_matches",
    "parse_access_entry",
    "parse_binding",
    "parse_dns_server",
    "parse_domain",
    "parse_forward_path",
    "parse_reverse_path",
    "parse_smart_host",
    "parse_trusted_proxy",
]

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")
_PORT = re.compile(r"[0-9]{1,5}")
_PREFIX = re.compile(r"[0-9]{1,3}")
# RFC 5321 atext; non-ASCII (RFC 6531) is gated separately by the smtputf8 flag.
_ATEXT = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~\u0080-\U0010ffff]+")
_ROUTE_DOMAIN = r"(?:\[[^\]]*\]|[^,:@\[\]]+)"
_SOURCE_ROUTE = re.compile(rf"@{_ROUTE_DOMAIN}(?:,@{_ROUTE_DOMAIN})*:")
_MAX_PATH_INPUT = 512  # an SMTP command line; anything longer is refused before parsing


class GrammarError(ValueError):
    """A value that does not parse; str() is a message fit to show beside a form field."""


def _show(text: str) -> str:
    # repr() makes control characters visible; long input would drown the message.
    return repr(text if len(text) <= 80 else text[:77] + "...")


def _ip_text(addr: IPAddress) -> str:
    # Spelled out because str() of IPv4-mapped addresses changed in Python 3.13, and the
    # config document is hashed on its canonical text.
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return f"::ffff:{addr.ipv4_mapped}"
    return addr.compressed


def _ip_or_none(text: str) -> IPAddress | None:
    if "%" in text:  # ipaddress accepts IPv6 scope ids; one address must have one spelling
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _unmapped(addr: IPAddress) -> IPAddress:
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _parse_port(text: str, whole: str) -> int:
    if not _PORT.fullmatch(text) or not 1 <= int(text) <= 65535:
        raise GrammarError(f"{_show(whole)}: the port must be a number from 1 to 65535")
    return int(text)


def _config_text(text: str, what: str) -> str:
    """Strip surrounding whitespace; refuse empty input, whitespace and control or
    invisible characters inside."""
    text = text.strip()
    if not text:
        raise GrammarError(f"Enter {what}.")
    if any(ch.isspace() for ch in text):
        raise GrammarError(f"{_show(text)} contains a space; enter just {what}.")
    if any(unicodedata.category(ch)[0] == "C" for ch in text):
        # nameprep would silently drop some of these (soft hyphen, zero-width joiner)
        raise GrammarError(f"{_show(text)} contains a control or invisible character.")
    return text


# --- Domain names -------------------------------------------------------------------------


def parse_domain(text: str, *, allow_wildcard: bool = False) -> str:
    """Return the canonical form of a DNS domain name, or raise GrammarError.

    Surrounding whitespace and one trailing dot are stripped; the result is lower case,
    with IDN labels as A-labels (xn--...). Labels must be letter-digit-hyphen (no
    underscore), 1-63 octets, not starting or ending with a hyphen; 253 octets in all.
    Single-label names ('localhost') are accepted. A last label of all digits is refused,
    so an IPv4 address is never taken for a name. With allow_wildcard, '*.' may stand as
    the whole first label ('*.example.com').
    """
    text = _config_text(text, "a domain name")
    if _ip_or_none(text) is not None:
        raise GrammarError(f"{_show(text)} is an IP address, not a domain name.")
    if allow_wildcard and text.startswith("*."):
        return "*." + parse_domain(text[2:])
    if "*" in text:
        where = "only as '*.' at the start" if allow_wildcard else "not allowed here"
        raise GrammarError(f"{_show(text)}: a wildcard '*' is {where}.")
    if not text.isascii():
        text = encodings.idna.dots.sub(".", text)
    name = text[:-1] if text.endswith(".") else text
    labels = [_parse_label(label, text) for label in name.split(".")]
    name = ".".join(labels)
    if len(name) > 253:
        raise GrammarError(f"{_show(text)} is longer than 253 characters.")
    if labels[-1].isdigit():
        raise GrammarError(
            f"{_show(text)} is neither an IP address nor a domain name "
            "(a domain's last label cannot be all digits)."
        )
    return name


def _parse_label(label: str, whole: str) -> str:
    if not label:
        raise GrammarError(f"{_show(whole)} has an empty label (a leading dot or two dots).")
    label = _to_a_label(label, whole)
    if len(label) > 63:
        raise GrammarError(f"{_show(whole)}: the label {_show(label)} is longer than 63.")
    if "_" in label:
        raise GrammarError(f"{_show(whole)}: '_' is not allowed in a host name.")
    if label.startswith("-") or label.endswith("-"):
        raise GrammarError(f"{_show(whole)}: a label cannot start or end with '-'.")
    if not _LABEL.fullmatch(label):
        raise GrammarError(
            f"{_show(whole)}: only letters, digits, '-' and '.' are allowed in a domain name."
        )
    return label


def _to_a_label(label: str, whole: str) -> str:
    """Convert a U-label to its A-label and lower-case; check that any xn-- label decodes."""
    try:
        if not label.isascii():
            label = encodings.idna.ToASCII(label).decode("ascii")
        label = label.lower()
        # Checked after conversion too: nameprep can turn 'xn--ß' into 'xn--ss'.
        if label.startswith("xn--"):
            encodings.idna.ToUnicode(label)  # raises if not a valid A-label
        return label
    except ValueError as exc:  # UnicodeError and its codec subclasses
        raise GrammarError(f"{_show(whole)} is not a valid internationalised name.") from exc


def domain_matches(pattern: str, domain: str) -> bool:
    """Whether a canonical domain matches a canonical pattern.

    '*.example.com' matches any name below example.com ('a.example.com',
    'a.b.example.com') but not 'example.com' itself; any other pattern matches only
    itself.
    """
    if pattern.startswith("*."):
        suffix = pattern[1:]
        return domain.endswith(suffix) and len(domain) > len(suffix)
    return pattern == domain


# --- Listener bindings --------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class Binding:
    """An ip:port a virtual server listens on; host None is IIS's "All Unassigned".

    ``proxy`` marks a binding behind a TCP load balancer: every connection must start with
    a PROXY protocol header (v1 or v2) from one of the server's trusted proxies. Its text
    form is the address followed by the word ``proxy`` ('10.0.0.5:25 proxy').
    """

    host: str | None
    port: int
    proxy: bool = False

    def __str__(self) -> str:
        if self.host is None:
            text = f"*:{self.port}"
        elif ":" in self.host:
            text = f"[{self.host}]:{self.port}"
        else:
            text = f"{self.host}:{self.port}"
        return f"{text} {PROXY_OPTION}" if self.proxy else text

    @property
    def address(self) -> Binding:
        """The ip:port alone, without the PROXY flag: what a socket binds."""
        return Binding(self.host, self.port) if self.proxy else self


PROXY_OPTION = "proxy"


def _split_host_port(text: str, example: str) -> tuple[str, str | None]:
    """Split 'host', 'host:port', '[host]' or '[host]:port'; brackets are removed."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise GrammarError(f"{_show(text)}: write it as {example}.")
        return host, rest[1:] if rest else None
    host, sep, port = text.rpartition(":")
    if not sep:
        return text, None
    if ":" in host:
        raise GrammarError(f"{_show(text)}: put an IPv6 address in brackets, as in {example}.")
    return host, port


def parse_binding(text: str) -> Binding:
    """Parse 'ip:port', '[ipv6]:port' or '*:port', optionally followed by the word 'proxy'.

    '*', '0.0.0.0' and '[::]' all mean All Unassigned (host None). The host must be an
    IP address, in its compressed form; the port is required. A trailing ' proxy'
    (any case, after any whitespace) sets ``proxy``: the binding takes the PROXY protocol.
    """
    words = text.split()
    proxy = len(words) == 2 and words[1].lower() == PROXY_OPTION
    if len(words) > 1 and not proxy:
        raise GrammarError(
            f"{_show(text.strip())}: after address:port only the word '{PROXY_OPTION}' may "
            "follow (to take the PROXY protocol from a load balancer)."
        )
    binding = _parse_address_port(words[0] if proxy else text)
    return Binding(binding.host, binding.port, proxy=True) if proxy else binding


def _parse_address_port(text: str) -> Binding:
    text = _config_text(text, "an address and port")
    host, port = _split_host_port(text, "127.0.0.1:25, [::1]:25 or *:25")
    if port is None:
        raise GrammarError(f"{_show(text)}: write address:port, e.g. 127.0.0.1:25 or *:25.")
    number = _parse_port(port, text)
    if host == "*":
        return Binding(None, number)
    addr = _ip_or_none(host)
    if addr is None:
        raise GrammarError(
            f"{_show(text)}: a server binds to an IP address (or * for All Unassigned), not a name."
        )
    return Binding(None if addr.is_unspecified else _ip_text(addr), number)


def bindings_conflict(a: Binding, b: Binding) -> bool:
    """Whether two bindings cannot both be listening: same port and the same host, or
    either is All Unassigned."""
    return a.port == b.port and (a.host == b.host or a.host is None or b.host is None)


# --- Smart hosts --------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class SmartHost:
    """A smart host: a name (looked up, MX first) or, if literal, an IP address used as is.

    port None means the server's outbound TCP port.
    """

    host: str
    port: int | None
    literal: bool

    def __str__(self) -> str:
        host = self.host
        if self.literal:
            host = f"[IPv6:{host}]" if ":" in host else f"[{host}]"
        return host if self.port is None else f"{host}:{self.port}"


def _parse_literal(inner: str, whole: str) -> IPAddress:
    """The inside of '[1.2.3.4]' or '[IPv6:...]'; a bare '[::1]' is accepted too."""
    if inner[:5].lower() == "ipv6:":
        inner = inner[5:]
        addr = _ip_or_none(inner)
        if not isinstance(addr, ipaddress.IPv6Address):
            raise GrammarError(f"{_show(whole)}: {_show(inner)} is not an IPv6 address.")
        return addr
    addr = _ip_or_none(inner)
    if addr is None:
        raise GrammarError(f"{_show(whole)}: {_show(inner)} is not an IP address.")
    return addr


def parse_smart_host(text: str) -> SmartHost:
    """Parse '[10.0.0.2]', '[IPv6:2001:db8::1]', or a domain name, each with an optional
    ':port'.

    A bracketed address is a literal (literal=True, host the compressed IP). A bare IP
    address is refused: IIS would look it up as a name and mail would sit in the queue.
    """
    text = _config_text(text, "a smart host")
    if _ip_or_none(text) is not None:
        raise GrammarError(_bare_ip_message(text, text, None))
    host, port = _split_host_port(text, "[10.0.0.2]:25 or [IPv6:2001:db8::1]:25")
    number = None if port is None else _parse_port(port, text)
    if text.startswith("["):
        return SmartHost(_ip_text(_parse_literal(host, text)), number, literal=True)
    if _ip_or_none(host) is not None:
        raise GrammarError(_bare_ip_message(text, host, port))
    return SmartHost(parse_domain(host), number, literal=False)


def _bare_ip_message(text: str, host: str, port: str | None) -> str:
    literal = f"[IPv6:{host}]" if ":" in host else f"[{host}]"
    if port is not None:
        literal += f":{port}"
    return (
        f"{_show(text)} is a bare IP address: write it in brackets as {literal}, "
        "or IIS would try to look it up as a host name."
    )


# --- Connection and relay access lists ----------------------------------------------------


@dataclass(slots=True, frozen=True)
class AccessEntry:
    """One line of a grant/deny or relay list: a single computer, a group (network), or a
    domain matched against the client's reverse-DNS names."""

    kind: Literal["ip", "network", "domain"]
    value: str

    def __str__(self) -> str:
        return self.value


def parse_access_entry(text: str) -> AccessEntry:
    """Parse an IP address, a network ('10.1.0.0/16' or IIS's '10.1.0.0/255.255.0.0'),
    or a domain ('example.com', '*.example.com').

    Networks are returned in CIDR form and must not have host bits set. IPv4-mapped IPv6
    addresses and networks are returned as IPv4.
    """
    text = _config_text(text, "an IP address, network or domain")
    if "/" in text:
        return AccessEntry("network", _network_text(_parse_network(text)))
    addr = _ip_or_none(text)
    if addr is not None:
        return AccessEntry("ip", _ip_text(_unmapped(addr)))
    return AccessEntry("domain", parse_domain(text, allow_wildcard=True))


def parse_trusted_proxy(text: str) -> AccessEntry:
    """Parse a trusted proxy: an IP address or a network, as for :func:`parse_access_entry`.

    A domain name is refused: the proxy must be recognised before its header is read,
    from the connection's own address, and reverse DNS is the connecting party's claim.
    """
    entry = parse_access_entry(text)
    if entry.kind == "domain":
        raise GrammarError(
            f"{_show(text.strip())}: give a trusted proxy by IP address or network "
            "(10.0.0.5, 10.0.0.0/24), not by name."
        )
    return entry


def _parse_network(text: str) -> IPNetwork:
    address, _, mask = text.partition("/")
    addr = _ip_or_none(address)
    if addr is None:
        raise GrammarError(f"{_show(text)}: {_show(address)} is not an IP address.")
    prefix = _prefix_length(mask, addr.max_prefixlen, text)
    try:
        return ipaddress.ip_network((addr, prefix))
    except ValueError:
        fixed = ipaddress.ip_network((addr, prefix), strict=False)
        raise GrammarError(
            f"{text} has host bits set; did you mean {_network_text(fixed)}?"
        ) from None


def _prefix_length(mask: str, max_prefix: int, whole: str) -> int:
    """A prefix length from '16' or, for IPv4, a contiguous netmask '255.255.0.0'."""
    if _PREFIX.fullmatch(mask) and int(mask) <= max_prefix:
        return int(mask)
    netmask = _ip_or_none(mask)
    if max_prefix == 32 and isinstance(netmask, ipaddress.IPv4Address):
        inverse = int(netmask) ^ 0xFFFFFFFF
        if inverse & (inverse + 1) == 0:  # ones then zeros, so a valid subnet mask
            return 32 - inverse.bit_length()
    raise GrammarError(
        f"{_show(whole)}: after '/' write a prefix length (0-{max_prefix})"
        + (" or a subnet mask such as 255.255.0.0." if max_prefix == 32 else ".")
    )


def _network_text(net: IPNetwork) -> str:
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96:
        mapped = net.network_address.ipv4_mapped
        if mapped is not None:
            return f"{mapped}/{net.prefixlen - 96}"
    return f"{_ip_text(net.network_address)}/{net.prefixlen}"


def access_entry_matches(entry: AccessEntry, ip: str, ptr_names: Sequence[str] = ()) -> bool:
    """Whether a client matches an access-list entry.

    ip is the client's address (an IPv4-mapped IPv6 address counts as its IPv4 address;
    a scope id is ignored). A domain entry is matched against ptr_names, which the
    caller must have forward-confirmed (a PTR record alone is the client's own claim).
    As in IIS, a plain domain 'example.com' matches that host and every host under it
    ('mx.example.com'); '*.example.com' matches only hosts under it. Names are compared
    case-insensitively and without a trailing dot. Raises GrammarError if ip is not an
    IP address.
    """
    peer = _ip_or_none(ip.partition("%")[0])
    if peer is None:
        raise GrammarError(f"{_show(ip)} is not an IP address.")
    peer = _unmapped(peer)
    if entry.kind == "ip":
        return _unmapped(ipaddress.ip_address(entry.value)) == peer
    if entry.kind == "network":
        return peer in ipaddress.ip_network(entry.value)
    names = [_loose_name(name) for name in ptr_names]
    return any(_domain_entry_matches(entry.value, name) for name in names)


def _domain_entry_matches(value: str, name: str) -> bool:
    if value.startswith("*."):
        return domain_matches(value, name)
    return name == value or name.endswith("." + value)


def _loose_name(name: str) -> str:
    # DNS data is not ours to refuse: a name that would fail parse_domain (say, with an
    # underscore) must still meet a deny entry for its parent domain.
    name = name.strip().lower().removesuffix(".")
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            pass
    return name


# --- DNS servers --------------------------------------------------------------------------


def parse_dns_server(text: str) -> tuple[str, int]:
    """Parse an external DNS server: '127.0.0.1', '127.0.0.1:5353', '::1' or '[::1]:5353'.

    Returns (compressed IP, port); the port defaults to 53.
    """
    text = _config_text(text, "a DNS server address")
    addr = _ip_or_none(text)
    if addr is not None:
        return _ip_text(addr), 53
    host, port = _split_host_port(text, "10.0.0.53, 10.0.0.53:53 or [::1]:53")
    addr = _ip_or_none(host)
    if addr is None:
        raise GrammarError(f"{_show(text)}: a DNS server must be given by IP address.")
    return _ip_text(addr), 53 if port is None else _parse_port(port, text)


# --- Envelope addresses -------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class Mailbox:
    """An envelope mailbox. local is in wire form (quoted only if it must be) with its case
    kept; domain is canonical: lower-case A-labels, or '[1.2.3.4]' / '[IPv6:...]' for a
    sender's address literal."""

    local: str
    domain: str

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}"


def parse_forward_path(text: str, *, smtputf8: bool = False) -> Mailbox:
    """Parse a RCPT TO address, with or without its '<>'.

    Anything that could route mail somewhere other than the domain the policy sees is
    refused: source routes, '%' or '!' in the local part (also inside quotes, and
    Unicode look-alikes), '@' inside quotes, address-literal domains, a second '@',
    dots that make empty labels. One trailing dot on the domain is dropped. Non-ASCII is
    refused unless smtputf8; then the domain is converted to A-labels. Limits: local
    part 64 octets, mailbox 254.
    """
    inner = _unwrap(text)
    if inner.startswith("@"):
        raise GrammarError(
            f"{_show(text)} is a source route; this server does not accept source routes."
        )
    return _parse_mailbox(inner, smtputf8=smtputf8, allow_literal=False)


def parse_reverse_path(text: str, *, smtputf8: bool = False) -> Mailbox | None:
    """Parse a MAIL FROM address, with or without its '<>'; '<>' or '' is the null sender
    (None).

    The rules of parse_forward_path apply, except that a source route is dropped
    (RFC 5321 section 3.3: '@a,@b:user@c' is 'user@c') and an address-literal domain
    ('user@[10.0.0.1]') is allowed.
    """
    inner = _unwrap(text)
    if not inner:
        return None
    route = _SOURCE_ROUTE.match(inner)
    if route is not None:
        inner = inner[route.end() :]
    elif inner.startswith("@"):
        raise GrammarError(f"{_show(text)}: the source route is malformed.")
    return _parse_mailbox(inner, smtputf8=smtputf8, allow_literal=True)


def _unwrap(text: str) -> str:
    """Refuse oversized input and invisible characters; remove one pair of '<>'."""
    if len(text) > _MAX_PATH_INPUT:
        raise GrammarError("The address is too long.")
    for ch in text:
        category = unicodedata.category(ch)
        if category[0] == "C" or (category[0] == "Z" and ch != " "):
            raise GrammarError(f"{_show(text)} contains a control or invisible character.")
    if text.startswith("<") or text.endswith(">"):
        if len(text) < 2 or not (text.startswith("<") and text.endswith(">")):
            raise GrammarError(f"{_show(text)}: '<' and '>' do not pair up.")
        text = text[1:-1]
    return text


def _parse_mailbox(text: str, *, smtputf8: bool, allow_literal: bool) -> Mailbox:
    local_text, quoted, domain_text = _split_mailbox(text)
    if not smtputf8 and not text.isascii():
        raise GrammarError(f"{_show(text)}: non-ASCII addresses need SMTPUTF8.")
    local = _parse_local(local_text, quoted)
    domain = _parse_mail_domain(domain_text, allow_literal=allow_literal)
    if len(local.encode()) > 64:
        raise GrammarError(f"{_show(text)}: the part before '@' is longer than 64 octets.")
    if len(f"{local}@{domain}".encode()) > 254:
        raise GrammarError(f"{_show(text)} is longer than 254 octets.")
    return Mailbox(local, domain)


def _split_mailbox(text: str) -> tuple[str, bool, str]:
    """(local part, whether it was quoted, domain part); a quoted local is unescaped."""
    if not text:
        raise GrammarError("The address is empty.")
    quoted = text.startswith('"')
    if quoted:
        local, end = _read_quoted(text)
    else:
        end = text.find("@")
        if end < 0:
            raise GrammarError(f"{_show(text)} has no '@domain'.")
        local = text[:end]
    if text[end : end + 1] != "@":
        raise GrammarError(f"{_show(text)}: a quoted local part must be followed by '@'.")
    domain = text[end + 1 :]
    if "@" in domain:
        raise GrammarError(f"{_show(text)} has more than one '@'.")
    return local, quoted, domain


def _read_quoted(text: str) -> tuple[str, int]:
    """Unescape the quoted string that starts text; return it and the index after it."""
    chars: list[str] = []
    i = 1
    while i < len(text):
        ch = text[i]
        if ch == '"':
            return "".join(chars), i + 1
        if ch == "\\":
            i += 1
            if i == len(text):
                break
            ch = text[i]
        chars.append(ch)
        i += 1
    raise GrammarError(f"{_show(text)}: the quoted local part is not closed.")


def _parse_local(local: str, quoted: bool) -> str:
    """Check a local part and return its wire form (quoted only if it must be)."""
    if not local:
        raise GrammarError("The part before '@' is empty.")
    _refuse_routing(local)
    if quoted:
        if all(_ATEXT.fullmatch(atom) for atom in local.split(".")):
            return local  # quoting that changes nothing is dropped: one spelling per mailbox
        return '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'
    for atom in local.split("."):
        if not atom:
            raise GrammarError(f"{_show(local)}: a dot cannot start, end or double up here.")
        if not _ATEXT.fullmatch(atom):
            bad = next(ch for ch in atom if not _ATEXT.fullmatch(ch))
            raise GrammarError(f"{_show(local)}: {_show(bad)} needs the local part quoted.")
    return local


def _refuse_routing(local: str) -> None:
    # '%' and '!' are old relaying syntaxes ('user%other@us', 'other!user@us') that a
    # downstream MTA may still honour, so they are refused, not interpreted. NFKC catches
    # full-width look-alikes that a downstream system might fold into them.
    folded = unicodedata.normalize("NFKC", local)
    for ch, why in (("@", "a second address"), ("%", "the 'percent hack'"), ("!", "a bang path")):
        if ch in folded:
            raise GrammarError(
                f"{_show(local)}: '{ch}' in the local part ({why}) could relay mail "
                "to another domain, so it is refused."
            )


def _parse_mail_domain(text: str, *, allow_literal: bool) -> str:
    if not text:
        raise GrammarError("The part after '@' is empty.")
    if text.startswith("["):
        if not allow_literal:
            raise GrammarError(
                f"{_show(text)}: an address literal is not accepted as a recipient domain."
            )
        if not text.endswith("]"):
            raise GrammarError(f"{_show(text)}: the address literal is not closed with ']'.")
        addr = _parse_literal(text[1:-1], text)
        return f"[IPv6:{_ip_text(addr)}]" if addr.version == 6 else f"[{addr}]"
    if " " in text:
        raise GrammarError(f"{_show(text)}: a domain cannot contain a space.")
    return parse_domain(text)
