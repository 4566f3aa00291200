"""The periodic sweep: nothing depends on a Celery task message surviving.

It finds (1) spooled messages the database does not know (the SMTP worker's hand-off
was lost), (2) messages due for a retry, and (3) messages whose delivery run died (their
lease ran out), and enqueues a relay task for each.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from django.db.models import Q
from django.utils import timezone

from mailadmin.models import Message, MessageState, VirtualServer
from mailadmin.services.queue import message_ingest, spool_for

BATCH = 2000
HANDOFF_GRACE = timedelta(seconds=30)


def sweep(*, enqueue: Callable[[str, str], None], spools: bool = True) -> dict[str, int]:
    """Enqueue what is due; with ``spools`` also look for unrecorded spool files (slower:
    a directory listing per server, so the beat runs that part less often)."""
    found = _orphans(enqueue) if spools else 0
    now = timezone.now()
    due = (
        Message.objects.filter(
            # A new message's relay task is normally in flight already (the SMTP worker's
            # hand-off): only one still waiting after HANDOFF_GRACE counts as lost.
            Q(
                state=MessageState.QUEUED,
                next_attempt_at__isnull=True,
                received_at__lt=now - HANDOFF_GRACE,
            )
            | Q(state__in=[MessageState.QUEUED, MessageState.RETRY], next_attempt_at__lte=now)
            | Q(state=MessageState.RETRY, next_attempt_at__isnull=True)
            | Q(state=MessageState.ACTIVE, lease_until__lt=now)
        )
        .order_by("next_attempt_at")
        .values_list("server_name", "queue_id")[:BATCH]
    )
    count = 0
    for server_name, queue_id in due:
        enqueue(server_name, queue_id)
        count += 1
    return {"orphans": found, "due": count}


def _orphans(enqueue: Callable[[str, str], None]) -> int:
    found = 0
    for name in VirtualServer.objects.values_list("name", flat=True):
        ids = spool_for(name).ids()
        known: set[str] = set()
        for start in range(0, len(ids), 1000):
            chunk = ids[start : start + 1000]
            known.update(
                Message.objects.filter(queue_id__in=chunk).values_list("queue_id", flat=True)
            )
        for queue_id in ids:
            if queue_id in known:
                continue
            if message_ingest(server_name=name, queue_id=queue_id) is not None:
                enqueue(name, queue_id)
                found += 1
    return found
