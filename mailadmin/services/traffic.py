"""Per-server, per-minute counters for the dashboard's charts."""

from __future__ import annotations

from datetime import datetime

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from mailadmin.models import TrafficCounter

FIELDS = ("accepted", "delivered", "deferred", "bounced")


def traffic_add(server_name: str, *, when: datetime | None = None, **counts: int) -> None:
    """Add to this minute's counters (accepted, delivered, deferred, bounced)."""
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
            TrafficCounter.objects.create(server_name=server_name, minute=minute, **counts)
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
