"""The queue's record: taking spooled messages in, claiming them.

The spool (written by the SMTP worker) holds each message; :func:`message_ingest` records
it once (idempotent on the queue id) with one row per recipient; a delivery run records
the new messages of its batch itself, already claimed. A delivery run holds each message
with a lease (:func:`messages_claim`), so two tasks never deliver the same message at
once and a worker that dies mid-run gives the message back when its lease runs out.
The operator's actions on messages and queues are :mod:`.actions`.
"""

from __future__ import annotations

import email.parser
import email.policy
import logging
import secrets
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError, transaction
from django.db.models import Q

from mailadmin.models import Message, MessageState, Recipient
from mailadmin.selectors.config import current_config, current_server
from mailadmin.services.delivery.traffic import traffic_add
from mailadmin.storable import exact, fit_row
from smtpworker.core.config import ServerConfig
from smtpworker.core.mailroot import ServerLayout, server_layout
from smtpworker.core.spool import Envelope, MessageNotFound, Spool
from smtpworker.outbound.routing import route

log = logging.getLogger(__name__)


def delivery_minutes(count: float) -> timedelta:
    """IIS's schedule is in minutes; tests shorten the minute (MAILADMIN_DELIVERY_MINUTE)."""
    return timedelta(seconds=count * settings.MAILADMIN_DELIVERY_MINUTE)


def server_directories(server_name: str, cfg: ServerConfig | None = None) -> ServerLayout:
    """A server's mail directories under MAILADMIN_MAILROOT, as the worker has them
    (:mod:`smtpworker.core.mailroot`). ``cfg`` is its configuration when the caller holds
    it already (else it is read)."""
    cfg = cfg or current_config(server_name)
    return server_layout(settings.MAILADMIN_MAILROOT, server_name, cfg)


def spool_for(server_name: str) -> Spool:
    return Spool(server_directories(server_name).queue)


def _subject(data: bytes) -> str:
    parser = email.parser.BytesHeaderParser(policy=email.policy.default)
    # Only the header section: the parser would otherwise split the whole body into lines.
    end = data.find(b"\r\n\r\n")
    bare = data.find(b"\n\n", 0, len(data) if end < 0 else end)
    end = bare if bare >= 0 else end
    headers = data if end < 0 else data[: end + 2]
    try:
        return str(parser.parsebytes(headers).get("Subject", ""))
    except Exception:  # noqa: BLE001 - a broken header must not stop the queue
        return ""


def _by_queue_id(queue_id: str) -> Message | None:
    # order_by(): the model's default ordering would only slow a unique lookup down.
    found = Message.objects.filter(queue_id=queue_id).order_by()[:1]
    return found[0] if found else None


def message_ingest(
    *, server_name: str, queue_id: str, node: str = "", is_report: bool = False
) -> Message | None:
    """Record a spooled message once, as held in ``node``'s spool, waiting for its
    delivery run; returns it, or None if the spool has no such id or the database refuses
    it (a delivery run of it then moves it to Badmail: mailadmin.services.delivery.intake)."""
    existing = _by_queue_id(queue_id)
    if existing is not None:
        return existing
    try:
        envelope, data = spool_for(server_name).load(queue_id)
    except MessageNotFound:
        return None
    cfg, server_id = current_server(server_name)
    message = message_record(envelope, data, cfg, server_id, node=node, is_report=is_report)
    try:
        with transaction.atomic():
            message.save(force_insert=True)
            Recipient.objects.bulk_create(message_recipients(message, envelope, cfg))
    except (OperationalError, InterfaceError):
        raise  # the database is away, not the message's fault
    except (DatabaseError, ValueError) as exc:  # IntegrityError: recorded by another task
        recorded = _by_queue_id(queue_id)
        if recorded is None:
            log.error("%s: %s cannot be recorded: %s", server_name, queue_id, exc)
        return recorded
    if not is_report:
        traffic_add(server_name, accepted=1)
    return message


def message_record(
    envelope: Envelope,
    data: bytes,
    cfg: ServerConfig | None,
    server_id: int | None,
    *,
    node: str,
    is_report: bool = False,
    lease_until: datetime | None = None,
) -> Message:
    """An unsaved Message for a spooled message: queued, or with ``lease_until`` already
    claimed (active) by the delivery run that records it. Every text taken from the
    network (sender, Subject, client, user) is made storable (:mod:`mailadmin.storable`)."""
    message = Message(
        queue_id=envelope.queue_id,
        server_id=server_id,
        server_name=envelope.server,
        sender=envelope.sender,
        subject=_subject(data),
        size=envelope.size,
        client_ip=envelope.client_ip,
        auth_user=envelope.auth_user or "",
        node=node,
        received_at=datetime.fromtimestamp(envelope.received_at, tz=UTC),
        state=MessageState.QUEUED if lease_until is None else MessageState.ACTIVE,
        lease_until=lease_until,
        is_report=is_report,
    )
    return fit_row(message)


def message_recipients(
    message: Message, envelope: Envelope, cfg: ServerConfig | None
) -> list[Recipient]:
    """Unsaved Recipient rows of ``message``, one per distinct address, routed by ``cfg``
    (without a configuration: by MX, to be routed again once the server exists).

    Raises :class:`~mailadmin.storable.Unstorable` for an address no column stores as it
    is: the row is where the message goes, so it is never changed to fit."""
    rows = []
    for address in dict.fromkeys(envelope.recipients):
        exact(Recipient, "address", address)
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
    return [fit_row(row) for row in rows]


def delivery_lease(now: datetime) -> datetime:
    """The end of a new delivery run's lease. It doubles as the run's claim token (see
    :func:`messages_claim`), hence the random microseconds: two runs starting at the same
    instant still hold different leases."""
    jitter = timedelta(microseconds=secrets.randbelow(1_000_000))
    return now + timedelta(seconds=settings.MAILADMIN_DELIVERY_LEASE_SECONDS) + jitter


def messages_claim(queue_ids: list[str], *, lease: datetime, now: datetime) -> list[Message]:
    """Take for one delivery run those of the messages that are due and that nobody holds
    (their lease ran out); returns them, now active until ``lease``.

    One UPDATE claims them all; the run then reads back the rows carrying its own lease,
    which no other run can hold (see :func:`delivery_lease`)."""
    waiting = Q(state__in=[MessageState.QUEUED, MessageState.RETRY]) & (
        Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now)
    )
    abandoned = Q(state=MessageState.ACTIVE, lease_until__lt=now)
    claimed = (
        Message.objects.filter(queue_id__in=queue_ids)
        .filter(waiting | abandoned)
        .update(state=MessageState.ACTIVE, lease_until=lease)
    )
    if not claimed:
        return []
    return list(
        Message.objects.filter(
            queue_id__in=queue_ids, state=MessageState.ACTIVE, lease_until=lease
        ).order_by()
    )
