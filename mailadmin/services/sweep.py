"""The periodic sweep: nothing depends on a Celery task message surviving.

It finds (1) spooled messages the database does not know (the SMTP worker's hand-off
was lost), (2) messages due for a retry, and (3) messages whose delivery run died (their
lease ran out), and enqueues a relay task for each, on the delivery queue of the node
that spooled it. (1) reads a spool directory, which only the node that wrote it can do:
:func:`spool_nodes` names the nodes to ask, and each runs :func:`spool_orphans` itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

from django.db.models import Q
from django.utils import timezone

from mailadmin.models import Message, MessageState, VirtualServer
from mailadmin.models.queue import OPEN_STATES
from mailadmin.services.queue import message_ingest, spool_for
from smtpworker.spool import Spool

BATCH = 2000
HANDOFF_GRACE = timedelta(seconds=30)

Enqueue = Callable[[str, str, str], None]  # (server name, queue id, node)


def sweep(*, enqueue: Enqueue) -> dict[str, int]:
    """Enqueue every recorded message that is due, or whose delivery run died."""
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
        .values_list("server_name", "queue_id", "node")[:BATCH]
    )
    count = 0
    for server_name, queue_id, node in due:
        enqueue(server_name, queue_id, node)
        count += 1
    return {"due": count}


def spool_nodes(statuses: Iterable[dict[str, Any]], this_node: str) -> list[str]:
    """The nodes whose spools need a look: every SMTP worker node that reports (a process
    of a multi-process node counts as its node), every node with open messages, and this
    one. Sorted, without repeats."""
    nodes = {this_node}
    for status in statuses:
        process = status.get("process")
        node = process.get("node") if isinstance(process, dict) else status.get("node")
        if isinstance(node, str) and node:
            nodes.add(node)
    nodes.update(
        Message.objects.filter(state__in=OPEN_STATES)
        .exclude(node="")
        .values_list("node", flat=True)
        .distinct()
    )
    return sorted(nodes)


def spool_orphans(*, node: str, enqueue: Enqueue) -> int:
    """Record and enqueue the spool files of ``node``'s servers that the database does not
    know, as spooled by ``node``. Run it on the node that owns the spools.

    Only servers assigned to ``node`` (or to every node) are looked at: nodes on one
    machine may share a mail root, and another node's files are that node's to hand off.
    A file younger than HANDOFF_GRACE is skipped, as its hand-off is still in flight.
    """
    found = 0
    cutoff = time.time() - HANDOFF_GRACE.total_seconds()
    servers = VirtualServer.objects.filter(Q(node=node) | Q(node=""))
    for name in servers.values_list("name", flat=True):
        spool = spool_for(name)
        ids = spool.ids()
        known: set[str] = set()
        for start in range(0, len(ids), 1000):
            chunk = ids[start : start + 1000]
            known.update(
                Message.objects.filter(queue_id__in=chunk).values_list("queue_id", flat=True)
            )
        for queue_id in ids:
            if queue_id in known or _younger(spool, queue_id, cutoff):
                continue
            if message_ingest(server_name=name, queue_id=queue_id, node=node) is not None:
                enqueue(name, queue_id, node)
                found += 1
    return found


def _younger(spool: Spool, queue_id: str, cutoff: float) -> bool:
    try:
        return spool.message_path(queue_id).stat().st_mtime > cutoff
    except FileNotFoundError:  # delivered and removed meanwhile
        return True
