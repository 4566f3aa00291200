"""Fixtures the worker's tests share (plain helpers are in factories.py). No Django here."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import redis


@pytest.fixture
def redis_url() -> Iterator[str]:
    """Database 12 of the test Redis (REDIS_URL, started by `make test`), empty, as a URL."""
    base = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0").rsplit("/", 1)[0]
    url = f"{base}/12"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()
