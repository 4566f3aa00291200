"""Recording what the network sent, so that one bad row never holds another.

Values are made storable before they reach the ORM (:mod:`mailadmin.storable`); this module
is the net beneath that. A batch of new messages is inserted in one transaction; when that
fails, each message is inserted in its own (a savepoint inside a caller's transaction), so
the others are recorded and delivered. A message that still cannot be recorded goes to its
server's Badmail/ (``.BAD`` and a ``.BDR`` reason, with a log line), is recorded as a
deleted message whose last error says so (tracking finds it), and leaves the spool, so the
spool sweep does not batch it with new mail again. Nothing is dropped silently.

A failure of the database itself (connection lost, locked) is no reason to give a message
up: those errors propagate and the run is tried again later. So does a database that
refuses even the plain record of a message given up: the message then stays in the spool.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

from django.db import DatabaseError, IntegrityError, InterfaceError, OperationalError, transaction
from django.db.models import Model
from django.utils import timezone

from mailadmin.models import Attempt, Message, MessageState, Recipient
from mailadmin.services.delivery import reports
from mailadmin.storable import fit
from smtpworker.core.spool import Spool

log = logging.getLogger("mailadmin.services.delivery.runs")

# The database is away or busy: not the row's fault; let the run fail and be retried.
TRANSIENT = (OperationalError, InterfaceError)
# The row's fault: a value or constraint the database refuses, or a value its driver cannot
# even encode (UnicodeEncodeError is a ValueError).
REFUSED = (DatabaseError, ValueError)

Item = TypeVar("Item")


def describe(exc: BaseException) -> str:
    """An exception as one line for a reason: its class and its first line."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def insert_each(
    items: Sequence[Item], insert: Callable[[Item], None]
) -> tuple[list[Item], list[tuple[Item, BaseException]]]:
    """Run ``insert`` on each item in its own transaction (a savepoint inside the caller's);
    returns the items inserted and those refused with why. Transient errors propagate."""
    done: list[Item] = []
    refused: list[tuple[Item, BaseException]] = []
    for item in items:
        try:
            with transaction.atomic():
                insert(item)
        except TRANSIENT:
            raise
        except REFUSED as exc:
            refused.append((item, exc))
        else:
            done.append(item)
    return done, refused


def attempts_insert(rows: Sequence[Attempt]) -> None:
    """``bulk_create`` a run's attempt log rows at once, else one at a time; a row the
    database refuses is left out with a log line (a log row: nothing depends on it)."""
    try:
        with transaction.atomic():
            Attempt.objects.bulk_create(rows)
        return
    except TRANSIENT:
        raise
    except REFUSED as exc:
        log.warning("%d attempt log rows failed at once (%s)", len(rows), describe(exc))
    _done, refused = insert_each(rows, _save_new)
    for row, error in refused:
        log.error("%s: an attempt log row not recorded: %s", row.message.queue_id, describe(error))


def _save_new(row: Model) -> None:
    row.pk = None
    row._state.adding = True
    row.save(force_insert=True)


def messages_record(
    rows: Sequence[tuple[Message, list[Recipient]]],
) -> tuple[list[int], list[str], list[tuple[int, str]]]:
    """Insert each message with its recipients: the batch in one transaction, else one
    message at a time. Returns the indexes recorded, the queue ids another run recorded
    meanwhile (to claim the ordinary way) and the indexes refused with the reason."""
    try:
        with transaction.atomic():
            Message.objects.bulk_create([message for message, _ in rows])
            Recipient.objects.bulk_create([r for _, recipients in rows for r in recipients])
        return list(range(len(rows))), [], []
    except TRANSIENT:
        raise
    except REFUSED as exc:
        if len(rows) > 1:
            log.warning(
                "a batch of %d new messages failed (%s): one at a time", len(rows), describe(exc)
            )
    done, refused = insert_each(range(len(rows)), lambda i: _insert_message(*rows[i]))
    raced, failed = [], []
    for index, error in refused:
        queue_id = rows[index][0].queue_id
        if isinstance(error, IntegrityError) and Message.objects.filter(queue_id=queue_id).exists():
            raced.append(queue_id)  # another run recorded it first
        else:
            failed.append((index, describe(error)))
    return done, raced, failed


def _insert_message(message: Message, recipients: list[Recipient]) -> None:
    # A failed batch may have left ids from its rolled-back inserts on these objects.
    _save_new(message)
    for recipient in recipients:
        recipient.pk, recipient.message = None, message
    Recipient.objects.bulk_create(recipients)


def message_give_up(spool: Spool, message: Message, data: bytes, reason: str) -> bool:
    """Give up a spooled message that cannot be recorded: Badmail/ with ``reason``, a
    deleted message on record that says so, out of the spool. False (and a log line) when
    that cannot be done either: the message then stays in the spool for a later run."""
    reason = f"the message cannot be recorded in the queue: {reason}"
    stub = Message(
        queue_id=message.queue_id,
        server_id=message.server_id,
        server_name=message.server_name,
        node=message.node,
        received_at=message.received_at,
        size=message.size,
        client_ip=message.client_ip,
        is_report=message.is_report,
        state=MessageState.DELETED,
        finished_at=timezone.now(),
        last_error=fit(Message, "last_error", f"moved to Badmail: {reason}"),
    )
    try:
        # The plain record goes in first and is undone if Badmail/ cannot be written: a
        # database that refuses even this one is not the message's fault.
        with transaction.atomic():
            stub.save(force_insert=True)
            reports.badmail_write(message, data, reason)
    except TRANSIENT:
        raise
    except (*REFUSED, OSError) as exc:
        log.error(
            "%s: %s; cannot move it to Badmail either: %s", message.queue_id, reason, describe(exc)
        )
        return False
    spool.remove(message.queue_id)
    return True
