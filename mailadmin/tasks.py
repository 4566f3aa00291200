"""Celery entry points. Thin: each carries ids only and calls services.

Celery is only the carrier: tasks are acknowledged late, idempotent, and limited well
below the broker's visibility time-out; the spool and the database are the truth, and
the sweep re-issues whatever is due, so a lost task delays a message but never loses it.
Tasks are sent by name (``mailadmin.services.delivery.enqueue``), so nothing imports
this module but Celery's autodiscovery.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from celery import shared_task
from django.conf import settings

from mailadmin.services.config.versions import config_republish as _config_republish
from mailadmin.services.delivery import sweep as sweep_services
from mailadmin.services.delivery.enqueue import SWEEP_SPOOL_TASK, relays_forget
from mailadmin.services.delivery.runs import messages_deliver
from mailadmin.services.delivery.traffic import traffic_collect_from_nodes
from smtpworker.core.contract import RELAY_BATCH_TASK, RELAY_TASK


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
    relays_forget(queue_ids)
    results = messages_deliver(server_name=server_name, queue_ids=queue_ids, node=node)
    return dict(Counter(results.values()))


@shared_task(name=RELAY_TASK, **_RELAY_OPTIONS)
def relay_message(server_name: str, queue_id: str, node: str = "") -> str:
    """Record a spooled message if new (spooled by ``node``), then deliver it if it is due:
    :func:`relay_batch` with one id. Nothing sends it any more; it stays for the tasks an
    earlier version left in the broker."""
    relays_forget([queue_id])
    return messages_deliver(server_name=server_name, queue_ids=[queue_id], node=node)[queue_id]


@shared_task(name="mailadmin.sweep", ignore_result=True)
def sweep(spools: bool = False) -> dict[str, int]:
    """Re-issue what is due or abandoned; with ``spools``, also ask every node to look
    for unrecorded spool files."""
    return sweep_services.sweep_run(spools=spools)


@shared_task(name=SWEEP_SPOOL_TASK, ignore_result=True)
def sweep_spool(node: str) -> int:
    """Enqueue the unrecorded spool files of ``node``, which is this worker's."""
    return sweep_services.spool_sweep_local(node=node)


@shared_task(name="mailadmin.traffic_collect", ignore_result=True)
def traffic_collect() -> int:
    """Move the SMTP workers' rejection counters into the per-minute traffic table."""
    return traffic_collect_from_nodes()
