"""The machine node (its virtual servers), the Dashboard, and the live state feed."""

from __future__ import annotations

import time
from collections import Counter
from datetime import timedelta
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils import timezone

from mailadmin.console.base import STATE_LABELS, console_view, render_console, server_states
from mailadmin.models import OPEN_STATES, MessageState, VirtualServer
from mailadmin.selectors import queues
from mailadmin.selectors.nodes import worker_statuses
from mailadmin.services.config.versions import current_version

CERTIFICATE_WARNING_DAYS = 30
TRAFFIC = (
    ("accepted", "Accepted"),
    ("delivered", "Delivered"),
    ("deferred", "Deferred"),
    ("bounced", "Bounced"),
)
AGE_BUCKETS = (
    ("lt_1h", "Under 1 hour"),
    ("h1_6", "1 to 6 hours"),
    ("h6_24", "6 to 24 hours"),
    ("gt_1d", "Over 1 day"),
)
SHAPE_ROWS = 10


@console_view
def home(request: HttpRequest) -> HttpResponse:
    """The local computer's node: its SMTP virtual servers, as IIS Manager lists them."""
    statuses = worker_statuses()
    states = {s["id"]: s for s in server_states(statuses)}
    servers = VirtualServer.objects.prefetch_related("bindings", "domains").order_by("name")
    rows = [{"server": s, "state": states[s.pk]} for s in servers]
    context = {"rows": rows, "worker_statuses": statuses, "tree_servers": list(states.values())}
    return render_console(request, "mailadmin/machine.html", context, node="machine")


@console_view
def state_feed(request: HttpRequest) -> JsonResponse:
    """Every server's state for the tree's icons and the toolbar, polled every 2 s."""
    return JsonResponse({"version": current_version(), "servers": server_states()})


def throughput(rows: list[dict[str, Any]], *, span: str) -> dict[str, Any]:
    """One chart: the series for the script, totals and a sentence for screen readers,
    and the buckets that saw traffic for the table under the chart."""
    reasons = sorted({reason for row in rows for reason in row["rejected"]})
    totals = [(name, label, sum(row[name] for row in rows)) for name, label in TRAFFIC]
    rejected = [(r, sum(row["rejected"].get(r, 0) for row in rows)) for r in reasons]
    said = ", ".join(f"{n} {label.lower()}" for _name, label, n in totals)
    said += f", {sum(n for _r, n in rejected)} rejected"
    if rejected:
        said += " (" + ", ".join(f"{r} {n}" for r, n in rejected) + ")"
    table = [
        {**row, "rejected_total": sum(row["rejected"].values())}
        for row in rows
        if any(row[name] for name, _ in TRAFFIC) or row["rejected"]
    ]
    series = {name: [row[name] for row in rows] for name, _ in TRAFFIC}
    return {
        "series": {
            "t": [int(row["start"].timestamp()) for row in rows],
            **series,
            "rejected": {r: [row["rejected"].get(r, 0) for row in rows] for r in reasons},
        },
        "totals": totals,
        "rejected": rejected,
        "rejected_total": sum(n for _r, n in rejected),
        "summary": f"{span}: {said}.",
        "rows": table,
    }


def message_counts() -> dict[str, Any]:
    counts = queues.state_counts()
    tiles = [(s.value, s.label, counts.get(s.value, 0)) for s in MessageState]
    return {
        "open": [t for t in tiles if t[0] in OPEN_STATES],
        "finished": [t for t in tiles if t[0] not in OPEN_STATES],
        "in_queue": sum(counts.get(s, 0) for s in OPEN_STATES),
    }


def shape() -> dict[str, Any]:
    """Messages per next hop by age, the biggest queues first, as proportional bars."""
    rows = [{**r, "total": sum(r[k] for k, _ in AGE_BUCKETS)} for r in queues.queue_shape()]
    rows.sort(key=lambda r: (-r["total"], str(r["next_hop"])))
    biggest = max((r["total"] for r in rows), default=0) or 1
    for row in rows:
        # (key, label, count, width %, left edge %): SVG rectangles, as the page's
        # Content-Security-Policy allows no style attributes.
        row["segments"], left = [], 0.0
        for key, label in AGE_BUCKETS:
            width = 100 * row[key] / biggest
            row["segments"].append((key, label, row[key], f"{width:.2f}", f"{left:.2f}"))
            left += width
    return {"rows": rows[:SHAPE_ROWS], "more": max(0, len(rows) - SHAPE_ROWS)}


def traffic_charts() -> dict[str, Any]:
    now = timezone.now()
    hour = queues.traffic(server=None, since=now - timedelta(hours=1), bucket_minutes=1)
    day = queues.traffic(server=None, since=now - timedelta(days=1), bucket_minutes=60)
    return {
        "hour": throughput(hour, span="Last hour"),
        "day": throughput(day, span="Last 24 hours"),
    }


def dashboard_data() -> dict[str, Any]:
    statuses = worker_statuses()
    states = server_states(statuses)
    counts = Counter(s["state"] for s in states)
    latest = current_version()
    now = time.time()
    workers = [
        {
            "node": s.get("node", "?"),
            "applied_version": s.get("applied_version", 0),
            # Not "<": a node running another database's higher number is out of step too.
            "behind": int(s.get("applied_version") or 0) != latest,
            "heartbeat_age": max(0, round(now - float(s.get("heartbeat", 0)))),
            "stale": s["stale"],
            "config_error": s.get("config_error", ""),
            "servers": len(s.get("servers", {})),
            "sessions": len(s.get("sessions", [])),
        }
        for s in statuses
    ]
    soon = timezone.now() + timedelta(days=CERTIFICATE_WARNING_DAYS)
    certificates = [
        {"server": server, "days": (server.tls_not_after - timezone.now()).days}
        for server in VirtualServer.objects.filter(tls_not_after__lte=soon).order_by(
            "tls_not_after"
        )
        if server.tls_not_after is not None
    ]
    charts = traffic_charts()
    return {
        "counts": [(key, label, counts.get(key, 0)) for key, label in STATE_LABELS.items()],
        "total": len(states),
        "workers": workers,
        "latest_version": latest,
        "certificates": certificates,
        "warning_days": CERTIFICATE_WARNING_DAYS,
        "tree_servers": states,
        "worker_statuses": statuses,
        "message_counts": message_counts(),
        "traffic": charts,
        "chart_series": {span: chart["series"] for span, chart in charts.items()},
        "shape": shape(),
        "age_buckets": AGE_BUCKETS,
    }


@console_view
def dashboard(request: HttpRequest) -> HttpResponse:
    data = dashboard_data()
    if request.GET.get("fragment"):
        return render(request, "mailadmin/dashboard/_panels.html", data)
    return render_console(request, "mailadmin/dashboard/page.html", data, node="dashboard")
