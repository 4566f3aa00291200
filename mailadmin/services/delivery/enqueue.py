"""Sending relay tasks: by name, in batches, to the node's delivery queue, once a minute.

Every relay task of the delivery side goes out from here: the sweep's, the operator's
(retry, resume; fired from ``transaction.on_commit``, so a task never runs before the
change that made its messages due is visible), and the one that follows a spooled
report. Tasks are sent by name (``smtpworker.core.contract``), as the SMTP worker's
hand-off sends them, so no service imports ``mailadmin.tasks``.

A queue id that got a relay task within the last minute gets no second one (a Redis key
per id): the sweep runs every few seconds and must not pile tasks onto one still waiting
in the broker. The task forgets its ids as it starts (:func:`relays_forget`).
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Callable, Iterable

import redis
from django.conf import settings
from django.db import transaction

from mailadmin.celery import app
from mailadmin.models import Message, MessageState
from smtpworker.core.contract import RELAY_BATCH_TASK, delivery_queue

log = logging.getLogger(__name__)

SWEEP_SPOOL_TASK = "mailadmin.sweep_spool"
# Ids per relay task: few enough that a batch to a slow next hop ends well within its lease.
TASK_BATCH = 50
_ENQUEUED_SECONDS = 60

Enqueue = Callable[[str, list[str], str], None]  # (server name, queue ids, node)

_redis_clients: dict[tuple[int, str], redis.Redis] = {}


def _redis() -> redis.Redis:
    key = (os.getpid(), settings.REDIS_URL)  # a forked process opens its own
    client = _redis_clients.get(key)
    if client is None:
        client = _redis_clients[key] = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2)
    return client


def _not_enqueued(queue_ids: list[str]) -> list[str]:
    """Those of the ids with no relay task sent in the last minute, now marked as sent."""
    try:
        pipe = _redis().pipeline(transaction=False)
        for queue_id in queue_ids:
            pipe.set(f"mailadmin:enqueued:{queue_id}", 1, nx=True, ex=_ENQUEUED_SECONDS)
        fresh = pipe.execute()
    except redis.RedisError:
        return queue_ids  # Redis down: the send below will fail too and the sweep retries
    return [q for q, new in zip(queue_ids, fresh, strict=True) if new]


def relays_forget(queue_ids: Iterable[str]) -> None:
    """A relay task for these ids is running: from now on a new one may be sent. (A
    message it defers soon, its next hop at a connection limit, must not wait out the
    minute.)"""
    try:
        _redis().delete(*(f"mailadmin:enqueued:{queue_id}" for queue_id in queue_ids))
    except redis.RedisError:
        pass  # the key expires by itself


def relays_enqueue(server_name: str, queue_ids: list[str], node: str = "") -> None:
    """Send the ids without a relay task in the last minute to ``node``'s delivery queue,
    as one batch task. Never raises: a task that cannot be sent is the sweep's to re-send."""
    fresh = _not_enqueued(queue_ids)
    if not fresh:
        return
    try:
        app.send_task(RELAY_BATCH_TASK, (server_name, fresh, node), queue=delivery_queue(node))
    except Exception as exc:  # noqa: BLE001 - the sweep re-issues them
        log.warning("cannot enqueue %d message(s) (%s...): %s", len(fresh), fresh[0], exc)


def relays_enqueue_in_batches(
    groups: dict[tuple[str, str], list[str]], enqueue: Enqueue = relays_enqueue
) -> None:
    """Enqueue each (server, node)'s ids in tasks of at most TASK_BATCH."""
    for (server_name, node), ids in groups.items():
        for start in range(0, len(ids), TASK_BATCH):
            enqueue(server_name, ids[start : start + TASK_BATCH], node)


def messages_enqueue(*, queue_ids: Iterable[str]) -> None:
    """Send relay tasks for those of these recorded messages that are due now (queued):
    one batch task per server and node, as the sweep sends them. Call it from
    ``transaction.on_commit`` (:func:`messages_enqueue_on_commit`)."""
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    due = Message.objects.filter(queue_id__in=list(queue_ids), state=MessageState.QUEUED)
    for server_name, queue_id, node in due.order_by().values_list(
        "server_name", "queue_id", "node"
    ):
        groups[(server_name, node)].append(queue_id)
    relays_enqueue_in_batches(groups)


def messages_enqueue_on_commit(*, queue_ids: Iterable[str]) -> None:
    """:func:`messages_enqueue` once the caller's transaction commits (at once without one)."""
    ids = list(queue_ids)
    if ids:
        transaction.on_commit(lambda: messages_enqueue(queue_ids=ids))


def spool_sweeps_enqueue(nodes: Iterable[str]) -> int:
    """Ask each node, on its own delivery queue (where its disk is), to look for spool
    files the database does not know; returns how many were asked."""
    count = 0
    for node in nodes:
        app.send_task(SWEEP_SPOOL_TASK, (node,), queue=delivery_queue(node), expires=60)
        count += 1
    return count
