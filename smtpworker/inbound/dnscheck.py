"""Forward-confirmed reverse DNS of SMTP clients, for domain entries in access lists.

A PTR record is the client's own claim (whoever controls the address's reverse zone
writes it). A name counts only if it resolves back to the same address, which is what
IIS's "reverse DNS lookup" is trusted for in connection control.
"""

from __future__ import annotations

import ipaddress
import logging
import time

import dns.asyncresolver
import dns.exception
import dns.resolver
import dns.reversename

log = logging.getLogger(__name__)


class ReverseResolver:
    """Async, bounded and cached: a slow DNS server costs a session at most ``timeout``."""

    def __init__(
        self,
        *,
        timeout: float = 3.0,
        ttl: float = 300.0,
        capacity: int = 10_000,
        nameservers: tuple[tuple[str, int], ...] = (),
    ) -> None:
        self.timeout = timeout
        self.ttl = ttl
        self.capacity = capacity
        self._cache: dict[str, tuple[float, tuple[str, ...]]] = {}
        # The system resolver, unless name servers are given (tests, split-horizon DNS).
        self._resolver = dns.asyncresolver.Resolver(configure=not nameservers)
        if nameservers:
            self._resolver.nameservers = [host for host, _port in nameservers]
            self._resolver.port = nameservers[0][1]
        self._resolver.lifetime = timeout

    async def names(self, ip: str) -> tuple[str, ...]:
        """Forward-confirmed names of ``ip``, lower case without the trailing dot; () if none."""
        now = time.monotonic()
        cached = self._cache.get(ip)
        if cached is not None and cached[0] > now:
            return cached[1]
        confirmed = await self._lookup(ip)
        if len(self._cache) >= self.capacity:
            self._cache.clear()
        self._cache[ip] = (now + self.ttl, confirmed)
        return confirmed

    async def _lookup(self, ip: str) -> tuple[str, ...]:
        try:
            address = ipaddress.ip_address(ip)
            answer = await self._resolver.resolve(dns.reversename.from_address(ip), "PTR")
        except (ValueError, dns.exception.DNSException) as exc:
            log.debug("no PTR for %s: %s", ip, exc)
            return ()
        names = [str(r.target).rstrip(".").lower() for r in answer]
        record = "AAAA" if address.version == 6 else "A"
        confirmed = []
        for name in names[:5]:  # bound the work a hostile reverse zone can cause
            try:
                forward = await self._resolver.resolve(name, record)
            except dns.exception.DNSException:
                continue
            if any(ipaddress.ip_address(r.address) == address for r in forward):
                confirmed.append(name)
        return tuple(confirmed)
