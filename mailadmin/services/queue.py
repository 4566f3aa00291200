"""The queue's record: taking spooled messages in, claiming them, operator actions.

The spool (written by the SMTP worker) holds each message; :func:`message_ingest` records
it once (idempotent on the queue id) with one row per recipient. A delivery run first
claims the message with a lease (:func:`message_claim`), so two tasks never deliver the
same message at once and a worker that dies mid-run gives the message back when its
lease runs out.
"""

from __future__ import annotations

import email.parser
import email.policy
import logging
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from mailadmin.models import (
    OPEN_STATES,
    ConfigSnapshot,
    Message,
    MessageState,
    QueueControl,
    Recipient,
    RecipientState,
    VirtualServer,
)
from mailadmin.services.traffic import traffic_add
from mailadmin.snapshot import server_config
from smtpworker.config import ServerConfig
from smtpworker.routing import route
from smtpworker.spool import Envelope, MessageNotFound, Spool

log = logging.getLogger(__name__)


def delivery_minutes(count: float) -> timedelta:
    """IIS's schedule is in minutes; tests shorten the minute (MAILADMIN_DELIVERY_MINUTE)."""
    return timedelta(seconds=count * settings.MAILADMIN_DELIVERY_MINUTE)


def server_home(server_name: str) -> Path:
    """A server's home directory: as configured, else <mailroot>/<name> (as the worker)."""
    cfg = current_config(server_name)
    if cfg is not None and cfg.home_directory:
        return Path(cfg.home_directory)
    return Path(settings.MAILADMIN_MAILROOT) / server_name


def spool_for(server_name: str) -> Spool:
    return Spool(server_home(server_name) / "Queue")


# Built configs by (server, version, digest): a delivery run needs its server's config
# several times (routing, home directory, reports) and the version changes on every
# configuration commit; the digest guards against a version number reused by a reset
# database (tests).
_CONFIGS: dict[tuple[str, int, str], ServerConfig | None] = {}


def current_config(server_name: str) -> ServerConfig | None:
    """The server's configuration as the workers run it now (None: no such server)."""
    latest = ConfigSnapshot.objects.order_by("-id").values_list("id", "digest").first()
    key = (server_name, *(latest or (0, "")))
    if key not in _CONFIGS:
        if len(_CONFIGS) > 1000:
            _CONFIGS.clear()
        server = (
            VirtualServer.objects.filter(name=server_name)
            .prefetch_related("bindings", "access_entries", "domains")
            .first()
        )
        _CONFIGS[key] = server_config(server) if server else None
    return _CONFIGS[key]


def _subject(data: bytes) -> str:
    parser = email.parser.BytesHeaderParser(policy=email.policy.default)
    try:
        return str(parser.parsebytes(data).get("Subject", ""))[:255]
    except Exception:  # noqa: BLE001 - a broken header must not stop the queue
        return ""


def message_ingest(
    *, server_name: str, queue_id: str, node: str = "", is_report: bool = False
) -> Message | None:
    """Record a spooled message once, as held in ``node``'s spool; returns it, or None if
    the spool has no such id."""
    existing = Message.objects.filter(queue_id=queue_id).first()
    if existing is not None:
        return existing
    try:
        envelope, data = spool_for(server_name).load(queue_id)
    except MessageNotFound:
        return None
    cfg = current_config(server_name)
    try:
        with transaction.atomic():
            message = _create(envelope, data, cfg, node, is_report)
    except IntegrityError:  # another task recorded it first
        return Message.objects.filter(queue_id=queue_id).first()
    if not is_report:
        traffic_add(server_name, accepted=1)
    return message


def _create(
    envelope: Envelope, data: bytes, cfg: ServerConfig | None, node: str, is_report: bool
) -> Message:
    message = Message.objects.create(
        queue_id=envelope.queue_id,
        server=VirtualServer.objects.filter(name=envelope.server).first(),
        server_name=envelope.server,
        sender=envelope.sender,
        subject=_subject(data),
        size=envelope.size,
        client_ip=envelope.client_ip,
        auth_user=envelope.auth_user or "",
        node=node,
        received_at=datetime.fromtimestamp(envelope.received_at, tz=UTC),
        state=MessageState.QUEUED,
        is_report=is_report,
    )
    rows = []
    for address in dict.fromkeys(envelope.recipients):
        domain = address.rpartition("@")[2].lower()
        hop = route(cfg, domain) if cfg else None
        rows.append(
            Recipient(
                message=message,
                address=address,
                domain=domain,
                next_hop=hop.name if hop else domain,
                hop_kind=hop.kind if hop else "mx",
            )
        )
    Recipient.objects.bulk_create(rows)
    return message


def message_claim(queue_id: str, *, now: datetime | None = None) -> Message | None:
    """Take the message for one delivery run if it is due and nobody holds it."""
    now = now or timezone.now()
    lease = now + timedelta(seconds=settings.MAILADMIN_DELIVERY_LEASE_SECONDS)
    waiting = Q(state__in=[MessageState.QUEUED, MessageState.RETRY]) & (
        Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now)
    )
    abandoned = Q(state=MessageState.ACTIVE, lease_until__lt=now)
    claimed = (
        Message.objects.filter(queue_id=queue_id)
        .filter(waiting | abandoned)
        .update(state=MessageState.ACTIVE, lease_until=lease)
    )
    return Message.objects.get(queue_id=queue_id) if claimed else None


def suspended_hops() -> set[str]:
    return set(QueueControl.objects.filter(suspended=True).values_list("next_hop", flat=True))


# --- operator actions --------------------------------------------------------------------


def messages_retry(*, queue_ids: Iterable[str]) -> int:
    """Make messages due now (suspended ones stay suspended)."""
    return Message.objects.filter(
        queue_id__in=list(queue_ids), state__in=[MessageState.QUEUED, MessageState.RETRY]
    ).update(state=MessageState.QUEUED, next_attempt_at=None)


def messages_suspend(*, queue_ids: Iterable[str]) -> int:
    return Message.objects.filter(
        queue_id__in=list(queue_ids), state__in=[MessageState.QUEUED, MessageState.RETRY]
    ).update(state=MessageState.SUSPENDED)


def messages_resume(*, queue_ids: Iterable[str]) -> int:
    return Message.objects.filter(
        queue_id__in=list(queue_ids), state=MessageState.SUSPENDED
    ).update(state=MessageState.QUEUED, next_attempt_at=None)


def messages_delete(*, queue_ids: Iterable[str], author: str) -> int:
    """Delete silently: the messages leave the queue and their spool files go."""
    count = 0
    for message in Message.objects.filter(queue_id__in=list(queue_ids), state__in=OPEN_STATES):
        if _finish_deleted(message, reason=f"deleted by {author}"):
            count += 1
    return count


def _finish_deleted(message: Message, *, reason: str) -> bool:
    with transaction.atomic():
        updated = (
            Message.objects.filter(pk=message.pk, state__in=OPEN_STATES)
            .exclude(state=MessageState.ACTIVE, lease_until__gt=timezone.now())
            .update(state=MessageState.DELETED, finished_at=timezone.now(), last_error=reason)
        )
        if not updated:
            return False  # being delivered right now, or already finished
        message.recipients.filter(state=RecipientState.PENDING).update(
            state=RecipientState.DELETED, done_at=timezone.now()
        )
        server_name, queue_id = message.server_name, message.queue_id
        transaction.on_commit(lambda: spool_for(server_name).remove(queue_id))
    return True


def queue_set_suspended(*, next_hop: str, suspended: bool) -> QueueControl:
    control, _ = QueueControl.objects.update_or_create(
        next_hop=next_hop, defaults={"suspended": suspended}
    )
    return control


def queue_retry(*, next_hop: str) -> int:
    ids = Message.objects.filter(
        recipients__next_hop=next_hop,
        recipients__state=RecipientState.PENDING,
        state__in=[MessageState.QUEUED, MessageState.RETRY],
    ).values_list("queue_id", flat=True)
    return messages_retry(queue_ids=list(ids))
