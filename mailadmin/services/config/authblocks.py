"""Lift a block of the AUTH brake (``smtpworker.inbound.authbrake``) before it ends by itself.

Blocks live in Redis, not in the configuration: lifting one makes no configuration
version, and every process of every node sees it at the client's next AUTH.
"""

from __future__ import annotations

import logging

import redis
from django.conf import settings

from mailadmin.exceptions import ConfigError
from mailadmin.models import VirtualServer
from smtpworker.inbound import authbrake

log = logging.getLogger(__name__)


class BrakeUnavailable(Exception):
    """Redis, where the blocks are kept, did not answer."""


def auth_unblock(*, server: VirtualServer, address: str, author: str) -> str:
    """Lift the block of the client ``address`` belongs to (an IPv4 address, or any
    address or the /64 of an IPv6 client) and forget its failures; return the client.

    Lifting a client that is not blocked is not an error: the outcome is the same.
    Raises ConfigError at ``address`` for text that is not an IP address, and
    BrakeUnavailable when Redis does not answer.
    """
    text = address.strip() if isinstance(address, str) else ""
    try:
        authbrake.client_key(text.removesuffix("/64"))
    except ValueError:
        raise ConfigError.at(
            ("address",), "Give the client's IP address (or its IPv6 /64), as listed."
        ) from None
    try:
        client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2)
        try:
            key = authbrake.unblock(client, server.name, text)
        finally:
            client.close()
    except redis.RedisError as exc:
        raise BrakeUnavailable(str(exc)) from exc
    log.info("%s lifted the AUTH block of %s on %s", author, key, server.name)
    return key
