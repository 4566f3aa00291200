"""The machine node (its virtual servers), the Dashboard, and the live state feed."""

from __future__ import annotations

import time
from collections import Counter
from datetime import timedelta
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils import timezone

from mailadmin.models import VirtualServer
from mailadmin.selectors import worker_statuses
from mailadmin.services.config import current_version
from mailadmin.views.base import STATE_LABELS, console_view, render_console, server_states

CERTIFICATE_WARNING_DAYS = 30


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
            "behind": int(s.get("applied_version") or 0) < latest,
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
    return {
        "counts": [(key, label, counts.get(key, 0)) for key, label in STATE_LABELS.items()],
        "total": len(states),
        "workers": workers,
        "latest_version": latest,
        "certificates": certificates,
        "warning_days": CERTIFICATE_WARNING_DAYS,
        "tree_servers": states,
        "worker_statuses": statuses,
    }


@console_view
def dashboard(request: HttpRequest) -> HttpResponse:
    data = dashboard_data()
    if request.GET.get("fragment"):
        return render(request, "mailadmin/dashboard/_panels.html", data)
    return render_console(request, "mailadmin/dashboard/page.html", data, node="dashboard")
