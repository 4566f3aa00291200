"""A server's Current Sessions: the connected clients, refreshed live, with Terminate."""

from __future__ import annotations

import time
from typing import Any

from django.contrib import messages
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render

from mailadmin.access import can_write
from mailadmin.console.base import author, console_view, render_console
from mailadmin.console.servers import wants_json
from mailadmin.exceptions import ConfigError
from mailadmin.models import VirtualServer
from mailadmin.selectors.nodes import sessions_list, worker_statuses
from mailadmin.services.config import control
from smtpworker.core.contract import WorkerStatus


def _rows(server: VirtualServer, statuses: list[WorkerStatus]) -> list[dict[str, Any]]:
    now = time.time()
    return [
        {**s, "connected_for": max(0, int(now - float(s.get("since", now))))}
        for s in sessions_list(statuses)
        if s.get("server") == server.name
    ]


@console_view
def session_list(request: HttpRequest, pk: int) -> HttpResponse:
    server = get_object_or_404(VirtualServer, pk=pk)
    statuses = worker_statuses()
    context = {"sessions": _rows(server, statuses), "worker_statuses": statuses}
    if request.GET.get("fragment"):
        return render(
            request,
            "mailadmin/sessions/_rows.html",
            {**context, "server": server, "can_write": can_write(request.user)},
        )
    return render_console(
        request, "mailadmin/sessions/list.html", context, node="sessions", server=server
    )


@console_view
def session_terminate(request: HttpRequest, pk: int) -> HttpResponse:
    server = get_object_or_404(VirtualServer, pk=pk)
    if request.method != "POST":
        return redirect("console:sessions", pk=pk)
    session_id = request.POST.get("session_id", "")
    try:
        done = control.session_terminate(session_id=session_id, author=author(request))
    except ConfigError as exc:
        done, text = False, " ".join(e.message for e in exc.errors)
    else:
        text = "Disconnected." if done else "That session had already ended."
    if wants_json(request):
        return JsonResponse({"terminated": done, "message": text})
    (messages.success if done else messages.info)(request, text)
    return redirect("console:sessions", pk=server.pk)
