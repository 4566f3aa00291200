"""Celery entry points. Thin: each carries ids only and calls one service.

Celery is only the carrier: tasks are acknowledged late, idempotent, and limited well
below the broker's visibility time-out; the spool and the database are the truth, and
``sweep`` re-issues whatever is due, so a lost task delays a message but never loses it.
"""

from __future__ import annotations

import logging
import os
from collections import Counter, defaultdict
from typing import Any

import redis
from celery import shared_task
from django.conf import settings
from django.db.models import QuerySet

from mailadmin.models import Message
from mailadmin.services.config.versions import config_republish as _config_republish
from mailadmin.services.delivery import sweep as sweep_services
from mailadmin.services.delivery.runs import messages_deliver
from smtpworker.core.handoff import RELAY_BATCH_TASK, RELAY_TASK, delivery_queue

log = logging.getLogger(__name__)


@shared_task(name="mailadmin.config_republish", ignore_result=True)
def config_republish() -> int:
    """Re-push the configuration in force to Redis if Redis lost it (beat, every few s)."""
    return _config_republish()


# Both relay tasks are acknowledged late and stopped inside the delivery lease, before
# their messages could be claimed again (a run also stops starting new messages when its
# lease runs short).
_RELAY_LIMIT = max(10, settings.MAILADMIN_DELIVERY_LEASE_SECONDS - 15)
_RELAY_OPTIONS: dict[str, Any] = {
    "ignore_result": True,
    "acks_late": True,
    "time_limit": _RELAY_LIMIT,
    "soft_time_limit": _RELAY_LIMIT - 5,
}


@shared_task(name=RELAY_BATCH_TASK, **_RELAY_OPTIONS)
def relay_batch(server_name: str, queue_ids: list[str], node: str = "") -> dict[str, int]:
    """Record the new ones among spooled messages (spooled by ``node``), then deliver
    those that are due; how many ended which way."""
    _forget_enqueued(queue_ids)
    results = messages_deliver(server_name=server_name, queue_ids=queue_ids, node=node)
    return dict(Counter(results.values()))


@shared_task(name=RELAY_TASK, **_RELAY_OPTIONS)
def relay_message(server_name: str, queue_id: str, node: str = "") -> str:
    """Record a spooled message if new (spooled by ``node``), then deliver it if it is due:
    :func:`relay_batch` with one id. Nothing sends it any more; it stays for the tasks an
    earlier version left in the broker."""
    _forget_enqueued([queue_id])
    return messages_deliver(server_name=server_name, queue_ids=[queue_id], node=node)[queue_id]


@shared_task(name="mailadmin.sweep", ignore_result=True)
def sweep(spools: bool = False) -> dict[str, int]:
    """Re-issue what is due or abandoned; with ``spools``, also ask every node to look
    for unrecorded spool files (each on its own delivery queue, where its disk is)."""
    result = sweep_services.sweep(enqueue=enqueue_relays)
    if spools:
        from mailadmin.selectors import worker_statuses

        nodes = sweep_services.spool_nodes(worker_statuses(), settings.MAILADMIN_NODE)
        for node in nodes:
            sweep_spool.apply_async((node,), queue=delivery_queue(node), expires=60)
        result["spool_nodes"] = len(nodes)
    return result


@shared_task(name="mailadmin.sweep_spool", ignore_result=True)
def sweep_spool(node: str) -> int:
    """Enqueue the unrecorded spool files of ``node``, which is this worker's."""
    if node != settings.MAILADMIN_NODE:  # a misrouted task: this disk is not node's
        log.warning("spool sweep for node %s reached node %s", node, settings.MAILADMIN_NODE)
        return 0
    return sweep_services.spool_orphans(node=node, enqueue=enqueue_relays)


# Relay tasks sent in the last minute, by queue id: the sweep runs every few seconds and
# must not pile a second task onto one still waiting in the broker.
_ENQUEUED_SECONDS = 60
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


def _forget_enqueued(queue_ids: list[str]) -> None:
    # The task is running: from now on a new one may be sent. A message it defers soon
    # (its next hop at a connection limit: again in 5 s) must not wait out the key.
    try:
        _redis().delete(*(f"mailadmin:enqueued:{queue_id}" for queue_id in queue_ids))
    except redis.RedisError:
        pass  # the key expires by itself


def enqueue_relays(server_name: str, queue_ids: list[str], node: str = "") -> None:
    """Send the ids without a relay task in the last minute to ``node``'s delivery queue,
    as one batch task."""
    fresh = _not_enqueued(queue_ids)
    if not fresh:
        return
    try:
        relay_batch.apply_async((server_name, fresh, node), queue=delivery_queue(node))
    except Exception as exc:  # noqa: BLE001 - the sweep re-issues them
        log.warning("cannot enqueue %d message(s) (%s...): %s", len(fresh), fresh[0], exc)


def enqueue_messages(messages: QuerySet[Message]) -> None:
    """Send relay tasks for these recorded messages (an operator's retry, a resumed queue):
    one batch task per server and node, as the sweep sends them."""
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    for server_name, queue_id, node in messages.values_list(
        "server_name", "queue_id", "node"
    ).distinct():
        groups[(server_name, node)].append(queue_id)
    sweep_services.enqueue_in_batches(groups, enqueue_relays)


@shared_task(name="mailadmin.traffic_collect", ignore_result=True)
def traffic_collect() -> int:
    """Move the SMTP workers' rejection counters into the per-minute traffic table."""
    import json

    from mailadmin.selectors import worker_statuses
    from mailadmin.services.delivery.traffic import traffic_collect as collect

    key = "mailadmin:traffic:last"
    client = _redis()
    previous = json.loads(client.get(key) or b"{}")
    remembered = collect([s for s in worker_statuses() if not s["stale"]], previous)
    client.set(key, json.dumps(remembered))
    return len(remembered)
