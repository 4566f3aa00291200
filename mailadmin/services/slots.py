"""Outbound connection limits held across every delivery worker (Redis semaphores).

A slot is a member of a sorted set scored by its expiry; taking one removes expired
members and adds ours only if fewer than ``limit`` remain, atomically (Lua). A worker
that dies holding a slot loses it when it expires, so limits never leak for long.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager

import redis
from django.conf import settings

_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
  redis.call('EXPIRE', KEYS[1], ARGV[5])
  return 1
end
return 0
"""


def _client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5)


class NoSlot(Exception):
    """The limit is reached; try this next hop again shortly."""


@contextmanager
def outbound_slots(limits: list[tuple[str, int | None]], *, ttl: float) -> Iterator[None]:
    """Hold one slot in each ``(key, limit)`` (None: unlimited) for the block, or raise NoSlot."""
    client = _client()
    token = secrets.token_hex(8)
    held: list[str] = []
    try:
        for key, limit in limits:
            if limit is None:
                continue
            now = time.time()
            name = f"mailadmin:slots:{key}"
            if not client.eval(_ACQUIRE, 1, name, now, now + ttl, limit, token, int(ttl) + 60):
                raise NoSlot(f"{key} is at its limit of {limit} connections")
            held.append(name)
        yield
    finally:
        for name in held:
            client.zrem(name, token)
        client.close()
