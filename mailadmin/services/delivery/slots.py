"""Outbound connection limits held across every delivery worker (Redis semaphores).

A slot is a member of a sorted set scored by its expiry; taking slots removes expired
members and adds ours only if fewer than the limit remain, atomically (Lua). A worker
that dies holding a slot loses it when it expires, so limits never leak for long.

Both limits of a delivery (total per server, per next hop) are taken in one script call
and given back in another, on one Redis client per process: a slot costs two round
trips, not a TCP connection and four commands.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
from django.conf import settings

# KEYS: the sets; ARGV: now, expiry, token, key TTL, then one limit per key. Either every
# slot is taken or none: returns 0 when all were taken, else the 1-based index of the
# first set at its limit.
_ACQUIRE = """
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', ARGV[1])
  if redis.call('ZCARD', key) >= tonumber(ARGV[4 + i]) then
    return i
  end
end
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, ARGV[2], ARGV[3])
  redis.call('EXPIRE', key, ARGV[4])
end
return 0
"""

_RELEASE = """
for _, key in ipairs(KEYS) do
  redis.call('ZREM', key, ARGV[1])
end
return 0
"""

_lock = threading.Lock()
# (pid, URL) -> (client, acquire script, release script). Keyed by pid: a forked Celery
# pool process must not share its parent's sockets.
_clients: dict[tuple[int, str], tuple[redis.Redis, Any, Any]] = {}


def _scripts() -> tuple[Any, Any]:
    key = (os.getpid(), settings.REDIS_URL)
    with _lock:
        entry = _clients.get(key)
        if entry is None:
            client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5)
            # register_script sends EVALSHA and loads the script only when Redis lacks it
            # (a restarted or flushed Redis included).
            entry = (client, client.register_script(_ACQUIRE), client.register_script(_RELEASE))
            _clients[key] = entry
    return entry[1], entry[2]


class NoSlot(Exception):
    """The limit is reached; try this next hop again shortly."""


@contextmanager
def outbound_slots(limits: list[tuple[str, int | None]], *, ttl: float) -> Iterator[None]:
    """Hold one slot in each ``(key, limit)`` (None: unlimited) for the block, or raise
    NoSlot (then none is held). Redis errors propagate: the caller's run gives its
    messages back for a later retry."""
    limited = [(f"mailadmin:slots:{key}", key, limit) for key, limit in limits if limit is not None]
    if not limited:
        yield
        return
    acquire, release = _scripts()
    names = [name for name, _, _ in limited]
    token = secrets.token_hex(8)
    now = time.time()
    full = int(
        acquire(keys=names, args=[now, now + ttl, token, int(ttl) + 60, *(n for *_, n in limited)])
    )
    if full:
        _, key, limit = limited[full - 1]
        raise NoSlot(f"{key} is at its limit of {limit} connections")
    try:
        yield
    finally:
        release(keys=names, args=[token])
