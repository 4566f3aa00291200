"""Configuration versions: lock, publish to the database, push to Redis.

Every configuration-changing service runs inside :func:`config_transaction`, which takes
the configuration lock and, when the block succeeds, calls :func:`config_publish`. A change
that leaves the snapshot identical (same hash) creates no new version.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
from django.conf import settings
from django.db import transaction

from mailadmin.models import ConfigLock, ConfigSnapshot
from mailadmin.snapshot import site_config
from smtpworker.config import to_data

log = logging.getLogger(__name__)

REDIS_BODY_KEY = "mailadmin:config:body"
REDIS_CHANNEL = "mailadmin:config"


@contextmanager
def config_transaction(*, author: str, reason: str) -> Iterator[None]:
    """Run a configuration change atomically and publish it if it changed anything."""
    with transaction.atomic():
        ConfigLock.objects.get_or_create(id=1)
        ConfigLock.objects.select_for_update().get(id=1)
        yield
        config_publish(author=author, reason=reason)


def canonical_body() -> tuple[dict[str, Any], str]:
    """The current configuration as JSON-ready data (version 0) and its SHA-256."""
    data = to_data(site_config(version=0))
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return data, hashlib.sha256(text.encode()).hexdigest()


def config_publish(*, author: str = "", reason: str = "") -> ConfigSnapshot:
    """Record the current configuration as a new version unless it is unchanged.

    Returns the snapshot now in force. Must run inside a transaction holding the
    configuration lock; the Redis push happens only after that transaction commits.
    """
    data, digest = canonical_body()
    latest = ConfigSnapshot.objects.order_by("-id").first()
    if latest is not None and latest.digest == digest:
        return latest
    snapshot = ConfigSnapshot.objects.create(
        body=data, digest=digest, author=author[:150], reason=reason[:200]
    )
    transaction.on_commit(lambda: _announce(snapshot))
    return snapshot


def _announce(snapshot: ConfigSnapshot) -> None:
    from mailadmin.services.control import control_reload

    push_to_redis(snapshot)
    control_reload(snapshot.pk)


def current_version() -> int:
    latest = ConfigSnapshot.objects.order_by("-id").only("id").first()
    return latest.pk if latest else 0


def published_body(snapshot: ConfigSnapshot) -> str:
    body = dict(snapshot.body)
    body["version"] = snapshot.pk
    return json.dumps(body, sort_keys=True, separators=(",", ":"))


def push_to_redis(snapshot: ConfigSnapshot) -> bool:
    """Write the body and announce the version; Redis being down is logged, not raised.

    The database row is the record: workers poll, and the beat task re-pushes the latest
    version, so a push lost here only delays the change.
    """
    try:
        client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2)
        with client.pipeline() as pipe:
            pipe.set(REDIS_BODY_KEY, published_body(snapshot))
            pipe.publish(REDIS_CHANNEL, str(snapshot.pk))
            pipe.execute()
        client.close()
    except redis.RedisError as exc:
        log.warning("config v%s not pushed to Redis (%s); workers will poll", snapshot.pk, exc)
        return False
    return True


def config_republish() -> int:
    """Push the latest version again unless Redis already holds it; return that version."""
    snapshot = ConfigSnapshot.objects.order_by("-id").first()
    if snapshot is None:
        with config_transaction(author="system", reason="initial configuration"):
            pass
        snapshot = ConfigSnapshot.objects.order_by("-id").first()
        assert snapshot is not None
    try:
        client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2)
        held = client.get(REDIS_BODY_KEY)
        client.close()
    except redis.RedisError as exc:
        log.warning("cannot reach Redis to re-publish config: %s", exc)
        return snapshot.pk
    if held is None or json.loads(held).get("version") != snapshot.pk:
        push_to_redis(snapshot)
    return snapshot.pk
