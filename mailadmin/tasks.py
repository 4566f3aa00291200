"""Celery entry points. Thin: each carries ids only and calls one service.

Celery is only the carrier: tasks are acknowledged late, idempotent, and limited well
below the broker's visibility time-out; the spool and the database are the truth, and
``sweep`` re-issues whatever is due, so a lost task delays a message but never loses it.
"""

from __future__ import annotations

import logging

import redis
from celery import shared_task
from django.conf import settings

from mailadmin.services import sweep as sweep_services
from mailadmin.services.config import config_republish as _config_republish
from mailadmin.services.delivery import message_deliver
from mailadmin.services.queue import message_ingest
from smtpworker.handoff import delivery_queue

log = logging.getLogger(__name__)

RELAY_TASK = "mailadmin.relay_message"


@shared_task(name="mailadmin.config_republish", ignore_result=True)
def config_republish() -> int:
    """Re-push the configuration in force to Redis if Redis lost it (beat, every few s)."""
    return _config_republish()


# Inside the delivery lease: Celery stops a run before its message could be claimed again.
_RELAY_LIMIT = max(10, settings.MAILADMIN_DELIVERY_LEASE_SECONDS - 15)


@shared_task(
    name=RELAY_TASK,
    ignore_result=True,
    acks_late=True,
    time_limit=_RELAY_LIMIT,
    soft_time_limit=_RELAY_LIMIT - 5,
)
def relay_message(server_name: str, queue_id: str, node: str = "") -> str:
    """Record a spooled message if new (spooled by ``node``), then deliver it if it is due."""
    _forget_enqueued(queue_id)
    if message_ingest(server_name=server_name, queue_id=queue_id, node=node) is None:
        log.warning("%s: no spooled message %s", server_name, queue_id)
        return "missing"
    return message_deliver(queue_id)


@shared_task(name="mailadmin.sweep", ignore_result=True)
def sweep(spools: bool = False) -> dict[str, int]:
    """Re-issue what is due or abandoned; with ``spools``, also ask every node to look
    for unrecorded spool files (each on its own delivery queue, where its disk is)."""
    result = sweep_services.sweep(enqueue=enqueue_relay)
    if spools:
        from mailadmin.selectors import worker_statuses

        nodes = sweep_services.spool_nodes(worker_statuses(), settings.MAILADMIN_NODE)
        for node in nodes:
            sweep_spool.apply_async((node,), queue=delivery_queue(node), expires=60)
        result["spool_nodes"] = len(nodes)
    return result


@shared_task(name="mailadmin.sweep_spool", ignore_result=True)
def sweep_spool(node: str) -> int:
    """Record and enqueue the unrecorded spool files of ``node``, which is this worker's."""
    if node != settings.MAILADMIN_NODE:  # a misrouted task: this disk is not node's
        log.warning("spool sweep for node %s reached node %s", node, settings.MAILADMIN_NODE)
        return 0
    return sweep_services.spool_orphans(node=node, enqueue=enqueue_relay)


def _forget_enqueued(queue_id: str) -> None:
    # The task is running: from now on a new one may be sent (a retry due soon, such as a
    # message that found its next hop at its connection limit, must not wait out the key).
    try:
        client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2)
        client.delete(f"mailadmin:enqueued:{queue_id}")
        client.close()
    except redis.RedisError:
        pass


def enqueue_relay(server_name: str, queue_id: str, node: str = "") -> None:
    """Send a relay task to ``node``'s delivery queue unless one was sent for this message
    in the last minute."""
    try:
        client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2)
        fresh = client.set(f"mailadmin:enqueued:{queue_id}", 1, nx=True, ex=60)
        client.close()
    except redis.RedisError:
        fresh = True  # Redis down: the send below will fail too and the sweep retries
    if not fresh:
        return
    try:
        relay_message.apply_async((server_name, queue_id, node), queue=delivery_queue(node))
    except Exception as exc:  # noqa: BLE001 - the sweep re-issues it
        log.warning("cannot enqueue %s: %s", queue_id, exc)


@shared_task(name="mailadmin.traffic_collect", ignore_result=True)
def traffic_collect() -> int:
    """Move the SMTP workers' rejection counters into the per-minute traffic table."""
    import json

    from mailadmin.selectors import worker_statuses
    from mailadmin.services.traffic import traffic_collect as collect

    key = "mailadmin:traffic:last"
    client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2)
    try:
        previous = json.loads(client.get(key) or b"{}")
        remembered = collect([s for s in worker_statuses() if not s["stale"]], previous)
        client.set(key, json.dumps(remembered))
    finally:
        client.close()
    return len(remembered)
