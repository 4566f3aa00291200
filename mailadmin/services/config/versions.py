"""Configuration versions: lock, publish to the database, push to Redis.

Every configuration-changing service runs inside :func:`config_transaction`, which takes
the configuration lock and, when the block succeeds, calls :func:`config_publish`. Every
committed change is a new version, a description-only change included (the record digest
covers every configuration row); a block that changed nothing creates none.

The body published to Redis names this database (:func:`site_identity`) and carries the
hash of its runtime part, so a worker never takes another database's "version N" for
this one's; and it is signed (``smtpworker.core.configmac``), so writing the Redis key without
the encryption key configures nothing.
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
from django.db import models, transaction

from mailadmin.models import (
    AccessEntry,
    Binding,
    ConfigLock,
    ConfigSnapshot,
    Domain,
    SiteIdentity,
    SmtpUser,
    VirtualServer,
)
from mailadmin.snapshot import site_config
from smtpworker.core import configmac, contract
from smtpworker.core.config import to_data

log = logging.getLogger(__name__)


# Every row an administrator configures, and whether its id is part of its identity: child
# rows (bindings, list entries, domains) are rewritten on save with new ids, so only their
# content counts. Timestamps a save touches without changing anything are left out.
_RECORD_MODELS: tuple[tuple[type[models.Model], bool], ...] = (
    (VirtualServer, True),
    (Binding, False),
    (AccessEntry, False),
    (Domain, False),
    (SmtpUser, True),
)
_NOT_RECORDED = frozenset({"id", "created", "updated"})


class VersionConflict(Exception):
    """The configuration is no longer at the version an edit was based on (If-Match)."""

    def __init__(self, expected: tuple[int, ...], current: int) -> None:
        self.expected, self.current = expected, current
        wanted = ", ".join(f"v{v}" for v in expected) or "a version given as a weak tag"
        super().__init__(
            f"The configuration is at v{current}, not {wanted}: someone changed it since "
            "you read it. Read it again (GET /api/v1/config/), reapply your edit, and send "
            "it with the new ETag in If-Match."
        )


@contextmanager
def config_transaction(*, author: str, reason: str) -> Iterator[None]:
    """Run a configuration change atomically and publish it if it changed anything."""
    with transaction.atomic():
        ConfigLock.objects.get_or_create(id=1)
        ConfigLock.objects.select_for_update().get(id=1)
        yield
        config_publish(author=author, reason=reason)


def check_version(expected: tuple[int, ...] | None) -> None:
    """Raise VersionConflict unless the version in force is one of ``expected``
    (None: the edit is unconditional). Atomic with the edit only under the config lock."""
    if expected is None:
        return
    current = current_version()
    if current not in expected:
        raise VersionConflict(expected, current)


def site_identity() -> str:
    """This database's identity: made once (migration 0006, or here after a flush) and
    kept for the life of the database; a restored backup brings its own back."""
    identity, _created = SiteIdentity.objects.get_or_create(id=1)
    return str(identity.uuid)


def canonical_body() -> tuple[dict[str, Any], str]:
    """The current configuration as JSON-ready data (version 0) and its SHA-256."""
    data = to_data(site_config(version=0))
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return data, hashlib.sha256(text.encode()).hexdigest()


def record_digest(runtime_digest: str) -> str:
    """SHA-256 over the runtime digest and every configuration row, descriptions
    included: it changes exactly when a commit changed some configuration."""
    hasher = hashlib.sha256(runtime_digest.encode())
    for model, keep_id in _RECORD_MODELS:
        names = [
            f.attname
            for f in model._meta.concrete_fields
            if f.name not in _NOT_RECORDED or (keep_id and f.name == "id")
        ]
        rows = sorted(
            json.dumps(row, sort_keys=True, default=str)
            for row in model._default_manager.values(*names)
        )
        hasher.update(f"\n{model._meta.label}\n".encode() + "\n".join(rows).encode())
    pairs = sorted(SmtpUser.servers.through.objects.values_list("smtpuser_id", "virtualserver_id"))
    hasher.update(f"\nuser servers {pairs}".encode())
    return hasher.hexdigest()


def config_publish(*, author: str = "", reason: str = "") -> ConfigSnapshot:
    """Record the current configuration as a new version unless nothing changed.

    Any change to a configuration row is a new version, even one the workers need not
    reload for (a description); the runtime digest tells them. Returns the snapshot now
    in force. Must run inside a transaction holding the configuration lock; the Redis
    push happens only after that transaction commits.
    """
    data, digest = canonical_body()
    record = record_digest(digest)
    latest = ConfigSnapshot.objects.order_by("-id").first()
    if latest is not None and latest.digest == digest and latest.record_digest == record:
        return latest
    snapshot = ConfigSnapshot.objects.create(
        body=data, digest=digest, record_digest=record, author=author[:150], reason=reason[:200]
    )
    transaction.on_commit(_announce)
    return snapshot


def _announce() -> None:
    from mailadmin.services.config.control import control_reload

    # The latest, not the one this commit made: of two commits racing to Redis, a late
    # push of the older one would otherwise leave it there until the next republish.
    snapshot = ConfigSnapshot.objects.order_by("-id").first()
    if snapshot is not None:
        push_to_redis(snapshot)
        control_reload(snapshot.pk)


def current_version() -> int:
    latest = ConfigSnapshot.objects.order_by("-id").only("id").first()
    return latest.pk if latest else 0


def published_body(snapshot: ConfigSnapshot) -> str:
    """The body as a worker loads it: the runtime part, its version, this site's
    identity and the runtime digest, as canonical JSON."""
    body = dict(snapshot.body)
    body.update(version=snapshot.pk, site=site_identity(), digest=snapshot.digest)
    return json.dumps(body, sort_keys=True, separators=(",", ":"))


def signed_body(snapshot: ConfigSnapshot) -> bytes:
    """:func:`published_body` signed with the key derived from the encryption key: the
    exact bytes written to Redis (the same snapshot always gives the same bytes)."""
    key = configmac.body_key(settings.MAILADMIN_ENCRYPTION_KEY)
    return configmac.sign(key, published_body(snapshot).encode())


def push_to_redis(snapshot: ConfigSnapshot) -> bool:
    """Write the body and announce the version; Redis being down is logged, not raised.

    The database row is the record: workers poll, and the beat task re-pushes the latest
    version, so a push lost here only delays the change.
    """
    try:
        client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2)
        with client.pipeline() as pipe:
            pipe.set(contract.CONFIG_BODY_KEY, signed_body(snapshot))
            pipe.publish(contract.CONFIG_CHANNEL, str(snapshot.pk))
            pipe.execute()
        client.close()
    except redis.RedisError as exc:
        log.warning("config v%s not pushed to Redis (%s); workers will poll", snapshot.pk, exc)
        return False
    return True


def config_republish() -> int:
    """Make Redis hold this database's latest body, signed; return its version.

    Anything else in Redis is replaced: nothing, an older or newer version, another
    database's body (a reinstall, a second checkout, a restored backup), or a body not
    signed with this site's key. Runs at the start of every web and beat process and
    from beat every few seconds.
    """
    snapshot = ConfigSnapshot.objects.order_by("-id").first()
    if snapshot is None:
        with config_transaction(author="system", reason="initial configuration"):
            pass
        snapshot = ConfigSnapshot.objects.order_by("-id").first()
        assert snapshot is not None
    try:
        client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2)
        held = client.get(contract.CONFIG_BODY_KEY)
        client.close()
    except redis.RedisError as exc:
        log.warning("cannot reach Redis to re-publish config: %s", exc)
        return snapshot.pk
    if held != signed_body(snapshot):
        if held is not None:
            log.warning("Redis held %s; publishing v%s of this site", _describe(held), snapshot.pk)
        push_to_redis(snapshot)
    return snapshot.pk


def _describe(held: bytes) -> str:
    """What a foreign body in Redis is, for the log (never trusted for anything else)."""
    try:
        body = configmac.verify(configmac.body_key(settings.MAILADMIN_ENCRYPTION_KEY), held)
        data = json.loads(body)
        return f"v{data.get('version')} of site {data.get('site')}"
    except (configmac.ConfigAuthError, ValueError, AttributeError):
        return "a body not signed with this site's key"


def config_republish_at_start() -> None:
    """:func:`config_republish` for a starting process: a database or Redis not reachable
    yet is logged, never fatal (the beat task and the next commit publish later)."""
    try:
        version = config_republish()
    except Exception as exc:  # noqa: BLE001 - serving goes on; beat publishes within seconds
        # DatabaseError (not migrated yet), RedisError, an empty key, or a process that may
        # not touch the database at all (pytest-django blocks it while importing tests).
        log.warning("configuration not published at start: %s", exc)
        return
    log.info("configuration v%s published at start", version)
