"""Traffic counters: per minute, and rejections collected from the workers' counters."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from mailadmin.models import TrafficCounter
from mailadmin.services.delivery.traffic import traffic_add, traffic_collect

pytestmark = pytest.mark.django_db


def status(pid: int, **counters: int) -> Any:
    """A node's report with only what the collection reads (a partial NodeStatus)."""
    return {"node": "n1", "pid": pid, "servers": {"Relay": {"counters": counters}}}


def test_rejections_are_counted_by_reason_once() -> None:
    seen = traffic_collect([status(1, **{"rejected_rcpt_550_5.7.1": 3, "accepted": 9})], {})
    seen = traffic_collect([status(1, **{"rejected_rcpt_550_5.7.1": 5, "auth_failures": 2})], seen)
    seen = traffic_collect([status(1, **{"rejected_rcpt_550_5.7.1": 5, "auth_failures": 2})], seen)
    traffic_collect([status(2, **{"rejected_size": 1})], seen)  # a restarted worker
    row = TrafficCounter.objects.get(server_name="Relay")
    assert row.rejected == {"relay denied": 5, "authentication failed": 2, "message too big": 1}


def test_proxy_refusals_have_their_own_reasons() -> None:
    counters = {"rejected_proxy_untrusted": 2, "rejected_proxy_header": 1, "rejected_odd": 4}
    traffic_collect([status(1, **counters)], {})
    row = TrafficCounter.objects.get(server_name="Relay")
    assert row.rejected == {"untrusted proxy": 2, "bad PROXY header": 1, "other": 4}


def test_auth_brake_refusals_have_their_own_reasons() -> None:
    traffic_collect([status(1, auth_failures=10, auth_braked=7, auth_busy=3)], {})
    row = TrafficCounter.objects.get(server_name="Relay")
    assert row.rejected == {
        "authentication failed": 10,
        "authentication blocked": 7,
        "authentication busy": 3,
    }


def test_the_api_sums_per_minute_and_per_hour(api: APIClient) -> None:
    traffic_add("Relay", accepted=3, delivered=2)
    traffic_add("Relay", deferred=1)
    traffic_add("Other", accepted=10)
    hour = api.get("/api/v1/traffic/?server=Relay").json()
    assert len(hour) in (60, 61) and sum(b["accepted"] for b in hour) == 3
    assert sum(b["deferred"] for b in hour) == 1
    day = api.get("/api/v1/traffic/?range=day").json()
    assert len(day) in (24, 25) and sum(b["accepted"] for b in day) == 13
    with pytest.raises(ValueError):
        traffic_add("Relay", exploded=1)
