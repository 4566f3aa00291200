"""Where mail for a recipient domain goes (IIS 6 rules), and which hosts serve that place.

:func:`route` is pure: from a :class:`ServerConfig` and a domain it picks the next hop,
which is also the queue the message waits in. :func:`resolve` turns a hop into the hosts
to try, in order, with dnspython against the server's external DNS servers (or the
system resolver). Neither imports Django; both are safe to call from Celery tasks.
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import dns.exception
import dns.name
import dns.nameserver
import dns.rdata
import dns.resolver
from dns.rdtypes.ANY.MX import MX

from smtpworker.core.config import OutboundSecurity, ServerConfig, domain_entry
from smtpworker.core.contract import DomainKind
from smtpworker.core.grammar import SmartHost, parse_dns_server, parse_smart_host

__all__ = [
    "Hop",
    "NoRoute",
    "NullMX",
    "RouteError",
    "Target",
    "TemporaryDNSError",
    "make_resolver",
    "resolve",
    "route",
]

# A DNS answer can list any number of MX hosts and addresses; past this many a delivery
# attempt has long since run out of time, and a hostile zone must not cost us more.
MAX_TARGETS = 20
# dnspython's per-server try; the whole lookup is bounded by resolve()'s timeout.
_PER_SERVER_TIMEOUT = 2.0


@dataclass(frozen=True, slots=True)
class Hop:
    """One next hop, which is also one queue.

    ``name`` is the domain for ``local`` and ``mx`` hops and the canonical smart host text
    (``[10.0.0.2]:2525``, ``relay.example.com``) for ``smarthost`` hops. ``security`` and
    ``use_helo`` are what to use when talking to it; ``port`` is the TCP port to connect
    to. ``fallback`` is where to go when direct delivery fails ("attempt direct delivery
    before sending to smart host"): the ``mx`` hop first, then its fallback.
    """

    kind: Literal["local", "smarthost", "mx"]
    name: str
    security: OutboundSecurity
    use_helo: bool
    port: int
    fallback: Hop | None = None


@dataclass(frozen=True, slots=True)
class Target:
    """One address to connect to: ``host`` is the name it came from (the MX host, the
    domain for an implicit MX, or the address itself for a literal), used in messages.
    ``tls_name`` is the name a verified certificate must carry (and the TLS SNI): the
    configured name of a smart host; empty means ``host`` (an MX host's own name)."""

    host: str
    address: str
    port: int
    preference: int
    tls_name: str = ""

    @property
    def verify_name(self) -> str:
        return self.tls_name or self.host


class RouteError(Exception):
    """No host to deliver to; ``code`` and ``enhanced`` are the reply to record."""

    code = 550
    enhanced = "5.1.2"


class NullMX(RouteError):
    """The domain publishes a null MX (RFC 7505): it accepts no mail. Permanent."""

    code = 556
    enhanced = "5.1.10"


class NoRoute(RouteError):
    """The domain does not exist, or has neither MX nor address records. Permanent."""


class TemporaryDNSError(RouteError):
    """DNS did not answer (time-out, SERVFAIL, no server reachable). Retry later."""

    code = 451
    enhanced = "4.4.3"


def route(cfg: ServerConfig, domain: str) -> Hop:
    """The next hop for mail to ``domain`` (canonical: lower case, A-labels) on ``cfg``.

    In order: a local domain (exact name) is ``local``; a remote domain (the entry
    :func:`~smtpworker.core.config.domain_entry` picks: exact name, then the most specific
    wildcard) with its own smart host, or with "forward all
    mail to smart host", goes to that host (or the server's, when the domain names none)
    with the domain's outbound security and HELO setting; otherwise the server's smart
    host when one is set, preceded by an ``mx`` hop when "attempt direct delivery first"
    is on; otherwise ``mx``. Direct delivery uses a listed remote domain's security and
    HELO setting, else the server's outbound security. Raises GrammarError if a smart
    host in ``cfg`` does not parse (the config loader does not check its grammar).
    """
    domain = domain.lower().removesuffix(".")
    outbound = cfg.delivery.outbound
    # The same entry the relay policy judged the recipient by.
    remote = domain_entry(cfg.domains, domain)
    if remote is not None and remote.kind == DomainKind.LOCAL:
        return Hop("local", domain, outbound.security, False, outbound.port)
    server_smart_host = cfg.delivery.smart_host
    if remote is not None and (remote.smart_host or remote.forward_all_to_smart_host):
        text = remote.smart_host or server_smart_host
        if text:
            return _smart_host_hop(text, remote.security, remote.use_helo, outbound.port)
    if remote is not None:
        direct = Hop("mx", domain, remote.security, remote.use_helo, outbound.port)
    else:
        direct = Hop("mx", domain, outbound.security, False, outbound.port)
    if not server_smart_host:
        return direct
    # The server's smart host is spoken to with the server's security, not the domain's.
    smart = _smart_host_hop(server_smart_host, outbound.security, False, outbound.port)
    return replace(direct, fallback=smart) if cfg.delivery.attempt_direct_first else smart


@functools.lru_cache(maxsize=1024)
def _smart_host(text: str) -> SmartHost:
    # Every recipient routed parses one of a few smart hosts again: parse each once.
    return parse_smart_host(text)


def _smart_host_hop(text: str, security: OutboundSecurity, use_helo: bool, port: int) -> Hop:
    smart = _smart_host(text)
    return Hop("smarthost", str(smart), security, use_helo, smart.port or port)


def resolve(
    hop: Hop,
    *,
    dns_servers: Sequence[str],
    timeout: float,
    rng: random.Random | None = None,
) -> list[Target]:
    """The addresses to try for ``hop``, best first; never empty.

    A literal smart host (``[10.0.0.2]``) is its address, with no DNS query. A named smart
    host and an ``mx`` hop's domain are looked up alike: MX records by preference (equal
    preferences shuffled with ``rng``), each MX host's A then AAAA records; with no MX,
    the name's own A/AAAA records (the implicit MX of RFC 5321 5.1). ``dns_servers`` are
    "ip" or "ip:port" entries; empty means the system resolver. The whole call takes at
    most about ``timeout`` seconds.

    Raises NullMX for a null MX, NoRoute for NXDOMAIN or no usable address,
    TemporaryDNSError when DNS fails or times out, ValueError for a ``local`` hop.
    """
    if hop.kind == "local":
        raise ValueError("a local hop is delivered to Drop/, not resolved")
    name = hop.name
    if hop.kind == "smarthost":
        smart = _smart_host(hop.name)
        if smart.literal:
            return [Target(smart.host, smart.host, hop.port, 0)]
        name = smart.host
    lookup = _Lookup(make_resolver(dns_servers), time.monotonic() + timeout)
    targets = lookup.mail_targets(name, hop.port, rng or random.Random())
    if hop.kind == "smarthost":
        # A smart host is verified by the name the administrator gave, never by a name
        # that DNS (which an attacker may answer) led to.
        targets = [replace(t, tls_name=name) for t in targets]
    return targets


def make_resolver(dns_servers: Sequence[str]) -> dns.resolver.Resolver:
    """A resolver for the given "ip" / "ip:port" servers, or the system's when empty.

    Raises TemporaryDNSError when there is no system configuration to fall back on.
    """
    if not dns_servers:
        try:
            resolver = dns.resolver.Resolver()
        except dns.exception.DNSException as exc:
            raise TemporaryDNSError(f"no DNS configuration: {exc}") from exc
    else:
        resolver = dns.resolver.Resolver(configure=False)
        servers = [parse_dns_server(text) for text in dns_servers]
        resolver.nameservers = [dns.nameserver.Do53Nameserver(ip, port) for ip, port in servers]
    resolver.timeout = _PER_SERVER_TIMEOUT
    resolver.cache = None  # a retry must see the zone as it is now
    return resolver


class _Lookup:
    def __init__(self, resolver: dns.resolver.Resolver, deadline: float) -> None:
        self._resolver = resolver
        self._deadline = deadline

    def mail_targets(self, name: str, port: int, rng: random.Random) -> list[Target]:
        records = self._query(name, "MX")
        if records is None:
            raise NoRoute(f"{name}: no such domain (NXDOMAIN)")
        mx = [r for r in records if isinstance(r, MX)]
        if not mx:
            addresses = self._addresses(name)
            if not addresses:
                raise NoRoute(f"{name}: no MX and no A/AAAA record")
            return [Target(name, a, port, 0) for a in addresses][:MAX_TARGETS]
        if len(mx) == 1 and mx[0].exchange == dns.name.root:
            raise NullMX(f"{name} does not accept mail (null MX, RFC 7505)")
        return self._mx_targets(name, mx, port, rng)

    def _mx_targets(self, name: str, mx: list[MX], port: int, rng: random.Random) -> list[Target]:
        by_preference: dict[int, list[str]] = {}
        for record in mx:
            if record.exchange != dns.name.root:  # a null MX beside real ones is ignored
                host = record.exchange.to_text(omit_final_dot=True).lower()
                by_preference.setdefault(record.preference, []).append(host)
        targets: list[Target] = []
        failure: TemporaryDNSError | None = None
        for preference in sorted(by_preference):
            hosts = list(dict.fromkeys(by_preference[preference]))
            rng.shuffle(hosts)  # RFC 5321 5.1: spread load over equal preferences
            for host in hosts:
                try:
                    addresses = self._addresses(host)
                except TemporaryDNSError as exc:
                    failure = exc  # a worse MX may still resolve; report only if none does
                    continue
                targets += [Target(host, a, port, preference) for a in addresses]
        unique = _first_per_address(targets)
        if unique:
            return unique[:MAX_TARGETS]
        if failure is not None:
            raise failure
        raise NoRoute(f"{name}: no MX host has an address")

    def _addresses(self, host: str) -> list[str]:
        """A then AAAA addresses of ``host``; empty when it has none or does not exist."""
        found: list[str] = []
        for rdtype in ("A", "AAAA"):
            records = self._query(host, rdtype)
            if records is None:
                return []  # NXDOMAIN covers every type
            found += [r.to_text() for r in records]
        return found

    def _query(self, name: str, rdtype: str) -> list[dns.rdata.Rdata] | None:
        """The records of ``rdtype`` at ``name`` ([] for none), or None for NXDOMAIN."""
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TemporaryDNSError(f"DNS lookups for {name} ran out of time")
        try:
            answer = self._resolver.resolve(
                dns.name.from_text(name),
                rdtype,
                search=False,
                lifetime=remaining,
                raise_on_no_answer=False,
            )
        except dns.resolver.NXDOMAIN:
            return None
        except dns.exception.Timeout as exc:
            raise TemporaryDNSError(f"DNS lookup {name}/{rdtype} timed out") from exc
        except dns.exception.DNSException as exc:  # SERVFAIL, refused, malformed answers
            raise TemporaryDNSError(f"DNS lookup {name}/{rdtype} failed: {exc}") from exc
        return list(answer.rrset) if answer.rrset is not None else []


def _first_per_address(targets: list[Target]) -> list[Target]:
    # Two MX names for one address would only mean trying the same server twice.
    seen: set[str] = set()
    unique = []
    for target in targets:
        if target.address not in seen:
            seen.add(target.address)
            unique.append(target)
    return unique
