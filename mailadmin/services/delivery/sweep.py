"""The periodic sweep: nothing depends on a Celery task message surviving.

It finds (1) spooled messages the database does not know (the SMTP worker's hand-off
was lost), (2) messages due for a retry, and (3) messages whose delivery run died (their
lease ran out), and enqueues relay tasks for them, a batch of ids each, on the delivery
queue of the node that spooled them. (1) reads a spool directory, which only the node
that wrote it can do: :func:`spool_nodes` names the nodes to ask, and each runs
:func:`spool_sweep` itself. :func:`sweep_run` is what the beat's sweep task does.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterable
from datetime import timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from mailadmin.models import Message, MessageState, VirtualServer
from mailadmin.models.queue import FINAL_STATES, OPEN_STATES
from mailadmin.selectors.nodes import worker_statuses
from mailadmin.services.delivery.enqueue import (
    Enqueue,
    relays_enqueue,
    relays_enqueue_in_batches,
    spool_sweeps_enqueue,
)
from mailadmin.services.delivery.queue import spool_for
from smtpworker.core.contract import NodeStatus

log = logging.getLogger(__name__)

BATCH = 2000
# A new message's relay task is normally on its way (the SMTP worker's hand-off, or the
# task that spooled a report). Only one still unrecorded or unrun after this long counts
# as lost; until then, a second task would only be a duplicate in the broker's queue.
HANDOFF_GRACE = timedelta(seconds=30)


def sweep_run(*, spools: bool = False) -> dict[str, int]:
    """Re-issue what is due or abandoned (:func:`messages_sweep`); with ``spools``, also
    ask every node to look for unrecorded spool files (:func:`spool_sweep`, each on its
    own delivery queue, where its disk is)."""
    result = messages_sweep()
    if spools:
        nodes = spool_nodes(worker_statuses(), settings.MAILADMIN_NODE)
        result["spool_nodes"] = spool_sweeps_enqueue(nodes)
    return result


def messages_sweep(*, enqueue: Enqueue = relays_enqueue) -> dict[str, int]:
    """Enqueue every recorded message that is due, or whose delivery run died, in
    batches per server and node."""
    now = timezone.now()
    due = (
        Message.objects.filter(
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
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    for server_name, queue_id, node in due:
        groups[(server_name, node)].append(queue_id)
    relays_enqueue_in_batches(groups, enqueue)
    return {"due": sum(len(ids) for ids in groups.values())}


def spool_nodes(statuses: Iterable[NodeStatus], this_node: str) -> list[str]:
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


def spool_sweep_local(*, node: str) -> int:
    """:func:`spool_sweep` of ``node``, asked of this process: 0 (and a warning) if this
    is another node's worker, whose disk holds other spools (a misrouted task)."""
    if node != settings.MAILADMIN_NODE:
        log.warning("spool sweep for node %s reached node %s", node, settings.MAILADMIN_NODE)
        return 0
    return spool_sweep(node=node)


def spool_sweep(*, node: str, enqueue: Enqueue = relays_enqueue, now: float | None = None) -> int:
    """Enqueue the spool files on this machine the database does not know, as spooled by
    ``node`` (their relay task records them), and delete those of finished messages. Run
    it on the node that owns the spools; returns how many orphans it enqueued.

    Only servers assigned to ``node`` (or to every node) are looked at: nodes on one
    machine may share a mail root, and another node's files are that node's to hand off.
    Files younger than HANDOFF_GRACE are left alone: their hand-off is on its way. A
    finished message's files are normally removed when it finishes; they are left over
    when a process died in between, or a power cut undid the removal (not fsync'd)."""
    cutoff = (time.time() if now is None else now) - HANDOFF_GRACE.total_seconds()
    found = 0
    servers = VirtualServer.objects.filter(Q(node=node) | Q(node=""))
    for name in servers.values_list("name", flat=True):
        spool = spool_for(name)
        ids = spool.ids()
        states: dict[str, str] = {}
        for start in range(0, len(ids), 1000):
            chunk = ids[start : start + 1000]
            states.update(
                Message.objects.filter(queue_id__in=chunk)
                .order_by()
                .values_list("queue_id", "state")
            )
        for queue_id, state in states.items():
            if state in FINAL_STATES:
                spool.remove(queue_id)
        orphans = [q for q in ids if q not in states and _spooled_at(q) < cutoff]
        relays_enqueue_in_batches({(name, node): orphans}, enqueue)
        found += len(orphans)
    return found


def _spooled_at(queue_id: str) -> float:
    """When a queue id was made (its first 14 hex digits are microseconds since the
    epoch, see smtpworker.core.spool.new_queue_id); 0 for an id of another form."""
    try:
        return int(queue_id[:14], 16) / 1_000_000
    except ValueError:
        return 0.0
