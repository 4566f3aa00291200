"""The end of a delivery run: finish, retry later, warn of delay, bounce with an NDR.

NDRs and delay notices are ordinary messages from the null sender, spooled on the same
virtual server and delivered like any other. A null-sender message is never answered
with an NDR; an NDR that cannot be delivered goes to Badmail/ with a reason file.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from mailadmin.models import Message, MessageState, Recipient, RecipientState
from mailadmin.services.delivery.enqueue import relays_enqueue
from mailadmin.services.delivery.queue import (
    delivery_minutes,
    message_ingest,
    server_directories,
    spool_for,
)
from mailadmin.storable import fit
from smtpworker.core import safefile
from smtpworker.core.config import ServerConfig
from smtpworker.core.spool import Envelope, MessageNotFound, Spool, SpoolError, new_queue_id
from smtpworker.outbound import dsn

log = logging.getLogger(__name__)


def message_conclude(
    message: Message,
    cfg: ServerConfig,
    data: bytes,
    recipients: list[Recipient],
    *,
    busy: bool,
    counts: Counter[str],
) -> str:
    """Decide the message's state after a run; returns delivered/bounced/retry.

    ``recipients`` are all of the message's recipients as the run left them (the rows are
    up to date: nothing is read again). What the run amounts to for the dashboard
    (delivered, bounced, deferred) is added to ``counts``, for the caller to write once.
    """
    now = timezone.now()
    pending = [r for r in recipients if r.state == RecipientState.PENDING]
    if pending and _expired(message, cfg, pending, now):
        _expire(pending, now)
        pending = []
    if not pending:
        return _complete(message, cfg, data, recipients, now, counts)
    if _delay_due(message, cfg, pending, now):
        report_create(message, cfg, data, pending, kind="delay", now=now)
        message.delay_notified_at = now
    if busy:
        wait = timedelta(seconds=5)  # outbound limits: try again soon, not an attempt
    else:
        message.attempts += 1
        counts["deferred"] += 1
        wait = delivery_minutes(_retry_minutes(cfg, message.attempts))
    message.state = MessageState.RETRY
    message.next_attempt_at = now + wait
    message.lease_until = None
    message.save(
        update_fields=[
            "state",
            "next_attempt_at",
            "lease_until",
            "attempts",
            "delay_notified_at",
            "last_error",
        ]
    )
    return "retry"


def _retry_minutes(cfg: ServerConfig, attempt: int) -> float:
    """First, second and third retry intervals, then the subsequent one for every retry."""
    schedule = cfg.delivery.retry_minutes
    return float(schedule[min(attempt, len(schedule)) - 1])


def _is_local(pending: list[Recipient]) -> bool:
    return all(r.hop_kind == "local" for r in pending)


def _expired(message: Message, cfg: ServerConfig, pending: list[Recipient], now: datetime) -> bool:
    minutes = (
        cfg.delivery.local_expiration_minutes
        if _is_local(pending)
        else cfg.delivery.expiration_minutes
    )
    return now - message.received_at >= delivery_minutes(minutes)


def _delay_due(
    message: Message, cfg: ServerConfig, pending: list[Recipient], now: datetime
) -> bool:
    if message.delay_notified_at is not None:
        return False
    minutes = (
        cfg.delivery.local_delay_notification_minutes
        if _is_local(pending)
        else cfg.delivery.delay_notification_minutes
    )
    return now - message.received_at >= delivery_minutes(minutes)


def _expire(pending: list[Recipient], now: datetime) -> None:
    for recipient in pending:
        last = recipient.last_reply or "no attempt succeeded"
        recipient.state, recipient.done_at = RecipientState.FAILED, now
        recipient.last_reply = f"4.4.7 Message expired in the queue; last error: {last}"[:2000]
        recipient.save(update_fields=["state", "done_at", "last_reply"])


def _complete(
    message: Message,
    cfg: ServerConfig,
    data: bytes,
    recipients: list[Recipient],
    now: datetime,
    counts: Counter[str],
) -> str:
    failed = [r for r in recipients if r.state == RecipientState.FAILED]
    if failed:
        if message.is_report:
            reason = "the delivery report could not be delivered: " + failed[0].last_reply
            if not _report_to_badmail(message, data, reason):
                return "retry"
        else:
            report_create(message, cfg, data, failed, kind="failure", now=now)
        message_finish(message, MessageState.BOUNCED, failed[0].last_reply)
        counts["bounced"] += 1
        return "bounced"
    message_finish(message, MessageState.DELIVERED, "")
    counts["delivered"] += 1
    return "delivered"


def _report_to_badmail(message: Message, data: bytes, reason: str) -> bool:
    """:func:`badmail_write`; False if Badmail/ cannot take it (a link, a full disk): then the
    report stays queued with the reason and is tried again in 15 minutes, never finished
    without its copy, and the rest of the run goes on."""
    try:
        badmail_write(message, data, reason)
    except OSError as exc:
        why = f"cannot write to Badmail: {exc}"
        log.error("%s: %s: %s", message.server_name, message.queue_id, why)
        Message.objects.filter(pk=message.pk).update(
            state=MessageState.RETRY,
            lease_until=None,
            last_error=fit(Message, "last_error", why),
            next_attempt_at=timezone.now() + delivery_minutes(15),
        )
        return False
    return True


def message_finish(message: Message, state: str, reason: str) -> None:
    """Record the end and remove the spool files once that is committed."""
    with transaction.atomic():
        Message.objects.filter(pk=message.pk).update(
            state=state,
            finished_at=timezone.now(),
            lease_until=None,
            last_error=fit(Message, "last_error", reason[:2000]),
        )
        message.state, message.lease_until = state, None
        server_name, queue_id = message.server_name, message.queue_id
        transaction.on_commit(lambda: spool_for(server_name).remove(queue_id))


def report_create(
    message: Message,
    cfg: ServerConfig,
    data: bytes,
    recipients: list[Recipient],
    *,
    kind: str,
    now: datetime,
) -> str | None:
    """Spool a failure (NDR) or delay report to the sender; None when none is due."""
    if not dsn.should_notify(message.sender, data):
        return None
    host = cfg.fqdn or settings.MAILADMIN_HOSTNAME
    expiry = message.received_at + delivery_minutes(cfg.delivery.expiration_minutes)
    statuses = [
        dsn.RecipientStatus(
            recipient=r.address,
            action="failed" if kind == "failure" else "delayed",
            status=dsn.parse_reply(_report_code(r.last_code, kind), r.last_reply),
            remote_mta=r.last_host or None,
            diagnostic=(f"{r.last_code} {r.last_reply}" if r.last_code else r.last_reply) or None,
            last_attempt=r.done_at or now,
            will_retry_until=expiry if kind == "delay" else None,
        )
        for r in recipients
    ]
    report = dsn.build_report(
        original=data,
        envelope_sender=message.sender,
        reporting_mta=host,
        postmaster=f"postmaster@{cfg.default_domain or host}",
        recipients=statuses,
        arrival=message.received_at,
        now=now,
        queue_id=message.queue_id,
        kind="failure" if kind == "failure" else "delay",
    )
    to = [message.sender]
    if kind == "failure" and cfg.messages.ndr_copy_to:
        to.append(cfg.messages.ndr_copy_to)
    return report_inject(message.server_name, to, report, queue_id=report_queue_id(message, kind))


def report_queue_id(message: Message, kind: str) -> str:
    """The queue id of ``message``'s delay notice or NDR: its own id and D or N.

    Derived, not drawn, so that a delivery run cut short after spooling a report and
    before recording its outcome spools and sends the same report, not a second one,
    when it runs again. (Queue ids are up to 64 of [0-9A-Z]; ours are 24.)
    """
    return f"{message.queue_id}{'N' if kind == 'failure' else 'D'}"


def _report_code(code: int | None, kind: str) -> int:
    """A 4xx/5xx code for the report; an odd or missing one becomes the generic class."""
    if code is not None and 400 <= code < 600 and not (kind == "delay" and code >= 500):
        return code
    return 500 if kind == "failure" else 400


def report_inject(
    server_name: str, recipients: list[str], data: bytes, *, queue_id: str | None = None
) -> str | None:
    """Spool a report from the null sender and queue it; None if the spool refused.

    With a ``queue_id`` already spooled or recorded (an earlier run of the same delivery
    made this report), nothing new is spooled: the report is recorded and queued once.
    """
    queue_id = queue_id or new_queue_id()
    if Message.objects.filter(queue_id=queue_id).exists():
        return queue_id
    spool = spool_for(server_name)
    envelope = Envelope(
        queue_id=queue_id,
        server=server_name,
        sender="",
        recipients=tuple(dict.fromkeys(recipients)),
        received_at=time.time(),
        client_ip="127.0.0.1",
        client_helo="localhost",
        auth_user=None,
        size=len(data),
        smtputf8=not all(r.isascii() for r in recipients),
        body_8bit=not data.isascii(),
    )
    try:
        spool.store(envelope, data)
    except SpoolError as exc:
        if not _spooled_before(spool, envelope, data):
            log.error("%s: cannot spool a delivery report: %s", server_name, exc)
            return None
    # Spooled here, so delivered by this node's workers.
    node = settings.MAILADMIN_NODE
    message_ingest(server_name=server_name, queue_id=queue_id, node=node, is_report=True)
    transaction.on_commit(lambda: relays_enqueue(server_name, [queue_id], node))
    return queue_id


def _spooled_before(spool: Spool, envelope: Envelope, data: bytes) -> bool:
    """After ``store`` refused the report: True if a run cut short spooled it already (to be
    recorded now), or it could be spooled again. A store killed between linking the data
    and the envelope (the commit) leaves the data alone under the report's id; this run
    holds the lease of the message the id derives from, so no other store of it runs, and
    that leftover is removed and the report stored again."""
    queue_id = envelope.queue_id
    try:
        spool.envelope(queue_id)
        return True  # committed by a run that was cut short before recording it
    except MessageNotFound:
        pass
    except ValueError:
        return False  # a damaged envelope under the id: leave it for an operator
    if not spool.message_path(queue_id).exists():
        return False  # refused for another reason (the disk): nothing of ours is there
    log.warning(
        "%s: %s: removing an uncommitted report left by a run cut short", envelope.server, queue_id
    )
    spool.remove(queue_id)
    try:
        spool.store(envelope, data)
    except SpoolError:
        return False
    return True


def badmail_write(message: Message, data: bytes, reason: str) -> None:
    """IIS's Badmail: the message as .BAD and why as .BDR (``<queue id>.BAD``, or with
    random bits added if that name is taken), never through a link or over another file."""
    # The server's badmail_directory if it names one, as Pickup/ does.
    with safefile.directory(server_directories(message.server_name).badmail) as dir_fd:
        bad = safefile.write_unique(dir_fd, message.queue_id, ".BAD", data, reuse_identical=True)
        why = (reason.replace("\n", " ") + "\n").encode()
        safefile.write_replace(dir_fd, bad[: -len(".BAD")] + ".BDR", why)
    log.warning("%s: %s moved to Badmail: %s", message.server_name, message.queue_id, reason)
