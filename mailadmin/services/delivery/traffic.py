"""Per-server, per-minute counters for the dashboard's charts."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import datetime

import redis
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from mailadmin.models import TrafficCounter
from mailadmin.selectors.nodes import worker_statuses
from smtpworker.core.contract import NodeStatus

FIELDS = ("accepted", "delivered", "deferred", "bounced")


def traffic_add(server_name: str, *, when: datetime | None = None, **counts: int) -> None:
    """Add to this minute's counters (accepted, delivered, deferred, bounced)."""
    traffic_add_counts(server_name, counts, when=when)


def traffic_add_counts(
    server_name: str, counts: Mapping[str, int], *, when: datetime | None = None
) -> None:
    """:func:`traffic_add` with the counts in a mapping (a delivery run's tally): one
    UPDATE, or an INSERT for the minute's first."""
    unknown = set(counts) - set(FIELDS)
    if unknown:
        raise ValueError(f"unknown counters {sorted(unknown)}")
    if not any(counts.values()):
        return
    minute = (when or timezone.now()).replace(second=0, microsecond=0)
    updates = {name: F(name) + value for name, value in counts.items() if value}
    if TrafficCounter.objects.filter(server_name=server_name, minute=minute).update(**updates):
        return
    try:
        with transaction.atomic():
            TrafficCounter.objects.create(server_name=server_name, minute=minute, **dict(counts))
    except IntegrityError:  # created meanwhile by another worker
        TrafficCounter.objects.filter(server_name=server_name, minute=minute).update(**updates)


def traffic_add_rejected(
    server_name: str, reason: str, count: int, *, when: datetime | None = None
) -> None:
    minute = (when or timezone.now()).replace(second=0, microsecond=0)
    with transaction.atomic():
        row, _ = TrafficCounter.objects.select_for_update().get_or_create(
            server_name=server_name, minute=minute
        )
        row.rejected[reason] = int(row.rejected.get(reason, 0)) + count
        row.save(update_fields=["rejected"])


# Worker counters (cumulative per process) -> the dashboard's "rejected by reason".
REASONS = (
    ("rejected_rcpt_550_5.7.1", "relay denied"),
    ("rejected_rcpt_501", "bad address"),
    ("rejected_rcpt_452", "too many recipients"),
    ("rejected_connect_554", "connection denied"),
    ("rejected_connect_421", "connection limit"),
    ("rejected_size", "message too big"),
    ("rejected_data_5.3.4", "message too big"),
    ("rejected_data_5.4.6", "too many hops"),
    ("auth_failures", "authentication failed"),
    # The AUTH brake: a blocked client's AUTH, or too many checks in progress (454).
    ("auth_braked", "authentication blocked"),
    ("auth_busy", "authentication busy"),
    # PROXY protocol bindings: a sender that is not a trusted proxy, or a bad header.
    ("rejected_proxy_untrusted", "untrusted proxy"),
    ("rejected_proxy_header", "bad PROXY header"),
)


def rejection_reason(counter: str) -> str | None:
    for prefix, reason in REASONS:
        if counter.startswith(prefix):
            return reason
    return "other" if counter.startswith("rejected_") else None


def traffic_collect(
    statuses: Iterable[NodeStatus], previous: dict[str, dict[str, int]]
) -> dict[str, dict[str, int]]:
    """Add what each worker rejected since ``previous`` (its last counters, by node and
    server) to this minute; returns the counters to remember for next time. A worker that
    restarted (counters went down) counts from zero."""
    remembered: dict[str, dict[str, int]] = {}
    for status in statuses:
        node = str(status.get("node"))
        servers = status.get("servers")
        if not isinstance(servers, dict):
            continue
        for server_name, server in servers.items():
            counters = dict(server.get("counters", {})) if isinstance(server, dict) else {}
            key = f"{node}/{status.get('pid')}/{server_name}"
            before = previous.get(key, {})
            remembered[key] = counters
            for counter, value in counters.items():
                reason = rejection_reason(counter)
                delta = int(value) - int(before.get(counter, 0))
                if reason and delta > 0:
                    traffic_add_rejected(server_name, reason, delta)
    return remembered


# The workers' counters as last collected, by node, process and server.
_LAST_KEY = "mailadmin:traffic:last"


def traffic_collect_from_nodes() -> int:
    """:func:`traffic_collect` from what the live SMTP worker nodes report now, against
    the counters remembered in Redis from the last time; returns how many (node, process,
    server) counter sets it remembers. Redis errors propagate (the beat runs it again)."""
    client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2)
    try:
        previous = json.loads(client.get(_LAST_KEY) or b"{}")
        remembered = traffic_collect([s for s in worker_statuses() if not s["stale"]], previous)
        client.set(_LAST_KEY, json.dumps(remembered))
    finally:
        client.close()
    return len(remembered)
