"""The brake on SMTP AUTH password guessing: per virtual server, per client, node-wide.

A client is an IPv4 address or an IPv6 /64 (:func:`client_key`): one host usually holds a
whole /64, so counting single IPv6 addresses would give it 2**64 fresh starts. Failures are
counted in Redis with one Lua script per failure, so every process of the node (and every
node on the same Redis) sees the same count and a block set by one is enforced by all.

Redis keys (``PREFIX`` = ``mailadmin:authbrake``):

* ``PREFIX:<server>:c:<client>`` a hash ``n`` (failures in the window), ``first`` (when
  the window began), ``until`` (blocked until, Unix time; 0 when not blocked). It expires
  when its window or its block ends, never sooner: nothing evicts a blocked entry (the
  product's Redis runs without an eviction policy, which the Celery broker needs anyway).
* ``PREFIX:<server>:blocks`` a sorted set of blocked clients scored by ``until``, for the
  API's and console's list of current blocks.

When Redis cannot be reached the brake keeps working in this process (:class:`LocalBrake`)
and logs it: mail acceptance never waits on Redis, guessing is still braked (per process),
and the shared count resumes when Redis is back.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from smtpworker.core.config import AuthBrakeConfig

log = logging.getLogger(__name__)

PREFIX = "mailadmin:authbrake"
# How long a Redis call may take before this process brakes on its own (seconds).
REDIS_TIMEOUT = 0.5

# KEYS: client hash, blocks index. ARGV: now, window, limit, block seconds, client.
# Returns {failures, blocked until (as text: Lua numbers come back as integers)}.
FAILURE_SCRIPT = """
local key, index = KEYS[1], KEYS[2]
local now, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local limit, block = tonumber(ARGV[3]), tonumber(ARGV[4])
local v = redis.call('HMGET', key, 'n', 'first', 'until')
local n, first, untl = tonumber(v[1]) or 0, tonumber(v[2]) or 0, tonumber(v[3]) or 0
if untl > now then return {n, tostring(untl)} end
if n == 0 or now - first > window then n = 0; first = now end
n = n + 1
untl = 0
local ttl = window
if n >= limit then
  untl = now + block
  ttl = block
  redis.call('ZREMRANGEBYSCORE', index, '-inf', now)
  redis.call('ZADD', index, untl, ARGV[5])
  local last = redis.call('ZRANGE', index, -1, -1, 'WITHSCORES')
  redis.call('EXPIREAT', index, math.ceil(tonumber(last[2])) + 1)
end
redis.call('HSET', key, 'n', n, 'first', tostring(first), 'until', tostring(untl))
redis.call('EXPIRE', key, math.ceil(ttl) + 1)
return {n, tostring(untl)}
"""


def client_key(address: str) -> str:
    """The brake's and the connection limit's name for a client address.

    IPv4 as is; IPv6 by its /64 (``2001:db8:1:2::/64``); an IPv4-mapped IPv6 address as
    the IPv4 address. Raises ValueError for text that is not an IP address.
    """
    ip = ipaddress.ip_address(address.strip().removeprefix("[").removesuffix("]"))
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def client_hash_key(server: str, client: str) -> str:
    return f"{PREFIX}:{server}:c:{client}"


def blocks_key(server: str) -> str:
    return f"{PREFIX}:{server}:blocks"


@dataclass(slots=True)
class Count:
    failures: int
    first: float
    until: float  # blocked until (Unix time); 0.0 when not blocked


def count_failure(record: Count | None, cfg: AuthBrakeConfig, now: float) -> tuple[Count, bool]:
    """The record after one more failure, and whether it is a new block.

    The same rule as ``FAILURE_SCRIPT``, for the in-process brake.
    """
    if record is not None and record.until > now:
        return record, False
    if record is None or record.failures == 0 or now - record.first > cfg.window_seconds:
        record = Count(0, now, 0.0)
    record.failures += 1
    record.until = 0.0
    if record.failures >= cfg.block_after_failures:
        record.until = now + cfg.block_seconds
        return record, True
    return record, False


class LocalBrake:
    """The brake of one process, used while Redis cannot be reached.

    Memory: entries whose window and block are over are dropped; past ``capacity`` the
    oldest entries that are not blocked go first. A blocked entry is never dropped
    before its block ends (each costs its client ``block_after_failures`` wrong
    passwords, so their number grows only as fast as guessing does).
    """

    def __init__(self, capacity: int = 10_000) -> None:
        self.capacity = capacity
        self._records: dict[tuple[str, str], tuple[Count, float]] = {}  # -> (count, expires)

    def blocked_until(self, server: str, client: str, now: float) -> float:
        entry = self._records.get((server, client))
        return entry[0].until if entry and entry[0].until > now else 0.0

    def failure(self, server: str, client: str, cfg: AuthBrakeConfig, now: float) -> Count:
        entry = self._records.pop((server, client), None)
        record = entry[0] if entry and entry[1] > now else None
        record, _new = count_failure(record, cfg, now)
        expires = record.until if record.until > now else record.first + cfg.window_seconds
        self._records[(server, client)] = (record, expires)
        if len(self._records) > self.capacity:
            self._shrink(now)
        return record

    def _shrink(self, now: float) -> None:
        # Down to three quarters, so that a flood does not pay for a pass per failure.
        target = self.capacity * 3 // 4
        live = {k: v for k, v in self._records.items() if v[1] > now}
        # Insertion order is age order (a failure re-inserts its entry at the end).
        loose = [k for k, v in live.items() if v[0].until <= now]
        for key in loose[: max(0, len(live) - target)]:
            del live[key]
        self._records = live

    def unblock(self, server: str, client: str) -> bool:
        return self._records.pop((server, client), None) is not None

    def blocks(self, server: str, now: float) -> dict[str, float]:
        return {
            client: count.until
            for (name, client), (count, _expires) in self._records.items()
            if name == server and count.until > now
        }


class AuthBrake:
    """The node's AUTH brake: Redis when it answers, this process's memory when not.

    ``delay`` and ``max_delay``: after a server's ``failures_before_delay`` failures, the
    n-th further failure's 535 waits ``delay * 2**(n-1)`` seconds, at most ``max_delay``.
    ``refusal_delay``: how long a 454 (blocked, or too many checks in progress) waits, as
    Postfix's smtpd_error_sleep_time, so a session that keeps asking gets one answer a
    second instead of a tight loop that would take the CPU from mail acceptance.
    """

    def __init__(
        self,
        redis_url: str | None = None,
        *,
        delay: float = 1.0,
        max_delay: float = 8.0,
        refusal_delay: float = 1.0,
    ) -> None:
        self.delay, self.max_delay, self.refusal_delay = delay, max_delay, refusal_delay
        self.local = LocalBrake()
        self.redis: aioredis.Redis | None = None
        if redis_url:
            self.redis = aioredis.Redis.from_url(
                redis_url, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT
            )
        self._script: Any = self.redis.register_script(FAILURE_SCRIPT) if self.redis else None
        self._redis_down_logged = False

    async def blocked_until(self, server: str, client: str) -> float:
        """When the client's block on this server ends (Unix time), or 0.0 if not blocked."""
        now = time.time()
        local = self.local.blocked_until(server, client, now)
        if self.redis is None:
            return local
        try:
            raw = await self.redis.hget(client_hash_key(server, client), "until")
        except (RedisError, OSError) as exc:
            self._redis_failed(exc)
            return local
        self._redis_back()
        until = float(raw) if raw else 0.0
        return max(until, local) if until > now else local

    async def failure(self, server: str, client: str, cfg: AuthBrakeConfig) -> tuple[float, bool]:
        """Count a wrong password; return (seconds to wait before the 535, blocked now?)."""
        now = time.time()
        count = await self._count(server, client, cfg, now)
        if count.until > now:
            return 0.0, True
        excess = count.failures - cfg.failures_before_delay
        wait = 0.0 if excess <= 0 else min(self.max_delay, self.delay * 2 ** (excess - 1))
        return wait, False

    async def _count(self, server: str, client: str, cfg: AuthBrakeConfig, now: float) -> Count:
        if self.redis is None:
            return self.local.failure(server, client, cfg, now)
        args = [now, cfg.window_seconds, cfg.block_after_failures, cfg.block_seconds, client]
        try:
            keys = [client_hash_key(server, client), blocks_key(server)]
            failures, until = await self._script(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            self._redis_failed(exc)
            return self.local.failure(server, client, cfg, now)
        self._redis_back()
        return Count(int(failures), now, float(until))

    def _redis_failed(self, exc: BaseException) -> None:
        # Once per outage: a flood of AUTH must not become a flood of log lines.
        if not self._redis_down_logged:
            log.warning("AUTH brake: Redis unreachable (%s); braking in this process", exc)
            self._redis_down_logged = True

    def _redis_back(self) -> None:
        if self._redis_down_logged:
            log.info("AUTH brake: Redis reachable again; braking node-wide")
            self._redis_down_logged = False

    async def close(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()


def list_blocks(client: Any, server: str, now: float | None = None) -> list[tuple[str, float]]:
    """Current blocks of one server as ``[(client, until)]``, soonest end first.

    ``client`` is a synchronous ``redis.Redis`` (the console and API call this).
    """
    now = time.time() if now is None else now
    rows = client.zrangebyscore(blocks_key(server), f"({now}", "+inf", withscores=True)
    return [(member.decode() if isinstance(member, bytes) else member, s) for member, s in rows]


def unblock(client: Any, server: str, address: str) -> str:
    """Lift the block (and forget the failures) of the client that ``address`` belongs
    to; return its key. Raises ValueError for text that is not an IP address or
    /64 network."""
    key = client_key(address.removesuffix("/64"))
    pipe = client.pipeline(transaction=True)
    pipe.delete(client_hash_key(server, key))
    pipe.zrem(blocks_key(server), key)
    pipe.execute()
    return key
