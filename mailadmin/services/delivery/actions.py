"""The operator's actions on messages and queues: one service each, for the API and the console.

Exchange's queue actions on top of IIS: retry now, suspend, resume, delete silently,
delete with an NDR, for messages; retry, suspend and resume for a queue (a next hop).
The REST API and the console's Queues pages call these and nothing else, so the two
cannot drift apart. An action that makes messages due (retry, resume) also sends their
relay tasks, once its transaction commits, so they are tried now rather than at the next
sweep. A message being delivered right now (its lease running) is never deleted under
its run; it is counted as not changed.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from mailadmin.models import OPEN_STATES, Message, MessageState, QueueControl, RecipientState
from mailadmin.selectors.config import current_config
from mailadmin.services.delivery.enqueue import messages_enqueue_on_commit
from mailadmin.services.delivery.queue import spool_for
from mailadmin.services.delivery.reports import message_finish, report_create

# What an operator may retry or suspend: waiting in the queue, not being delivered.
WAITING = (MessageState.QUEUED, MessageState.RETRY)
MESSAGE_ACTIONS = ("retry", "suspend", "resume", "delete", "delete_ndr")


def messages_act(*, action: str, queue_ids: list[str], author: str) -> int:
    """Run one of MESSAGE_ACTIONS on the messages; returns how many it changed.
    ``author`` (``api:<user>``, ``console:<user>``) is recorded on a deletion."""
    if action == "retry":
        return messages_retry(queue_ids=queue_ids)
    if action == "suspend":
        return messages_suspend(queue_ids=queue_ids)
    if action == "resume":
        return messages_resume(queue_ids=queue_ids)
    if action == "delete":
        return messages_delete(queue_ids=queue_ids, author=author)
    if action == "delete_ndr":
        return messages_delete_with_ndr(queue_ids=queue_ids, author=author)
    raise ValueError(f"unknown message action {action!r}")


def messages_retry(*, queue_ids: Iterable[str]) -> int:
    """Make waiting messages due now and send their relay tasks (suspended ones stay
    suspended)."""
    ids = list(queue_ids)
    with transaction.atomic():
        changed = Message.objects.filter(queue_id__in=ids, state__in=WAITING).update(
            state=MessageState.QUEUED, next_attempt_at=None
        )
        messages_enqueue_on_commit(queue_ids=ids)
    return changed


def messages_suspend(*, queue_ids: Iterable[str]) -> int:
    """Hold waiting messages: no delivery until resumed."""
    return Message.objects.filter(queue_id__in=list(queue_ids), state__in=WAITING).update(
        state=MessageState.SUSPENDED
    )


def messages_resume(*, queue_ids: Iterable[str]) -> int:
    """Release suspended messages, due now, and send their relay tasks."""
    ids = list(queue_ids)
    with transaction.atomic():
        changed = Message.objects.filter(queue_id__in=ids, state=MessageState.SUSPENDED).update(
            state=MessageState.QUEUED, next_attempt_at=None
        )
        messages_enqueue_on_commit(queue_ids=ids)
    return changed


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


def messages_delete_with_ndr(*, queue_ids: Iterable[str], author: str) -> int:
    """Delete messages and tell their senders, as Exchange's "Delete (with NDR)" does."""
    count = 0
    now = timezone.now()
    for message in Message.objects.filter(queue_id__in=list(queue_ids), state__in=OPEN_STATES):
        claimed = (
            Message.objects.filter(pk=message.pk, state__in=OPEN_STATES)
            .exclude(state=MessageState.ACTIVE, lease_until__gt=now)
            .update(state=MessageState.ACTIVE, lease_until=now + timedelta(minutes=5))
        )
        if not claimed:
            continue  # being delivered right now, or finished meanwhile
        pending = list(message.recipients.filter(state=RecipientState.PENDING))
        for recipient in pending:
            recipient.state, recipient.done_at = RecipientState.DELETED, now
            recipient.last_code = 550
            recipient.last_reply = f"5.3.0 Deleted from the queue by the administrator ({author})"
            recipient.save(update_fields=["state", "done_at", "last_code", "last_reply"])
        cfg = current_config(message.server_name)
        try:
            _envelope, data = spool_for(message.server_name).load(message.queue_id)
        except Exception:  # noqa: BLE001 - no spool file: nothing to quote, still delete
            data = b""
        if cfg is not None and data and pending and not message.is_report:
            report_create(message, cfg, data, pending, kind="failure", now=now)
        message_finish(message, MessageState.DELETED, f"deleted with NDR by {author}")
        count += 1
    return count


def queue_retry(*, next_hop: str) -> int:
    """Retry now every waiting message with a recipient pending at this next hop."""
    ids = Message.objects.filter(
        recipients__next_hop=next_hop,
        recipients__state=RecipientState.PENDING,
        state__in=WAITING,
    ).values_list("queue_id", flat=True)
    return messages_retry(queue_ids=list(ids.distinct()))


def queue_suspend(*, next_hop: str) -> QueueControl:
    """Stop delivering to this next hop until it is resumed (its messages stay queued)."""
    control, _ = QueueControl.objects.update_or_create(
        next_hop=next_hop, defaults={"suspended": True}
    )
    return control


def queue_resume(*, next_hop: str) -> int:
    """Deliver to this next hop again: its waiting messages are retried now
    (:func:`queue_retry`); returns how many."""
    with transaction.atomic():
        QueueControl.objects.update_or_create(next_hop=next_hop, defaults={"suspended": False})
        return queue_retry(next_hop=next_hop)
