"""What every console page shares: access rules, the tree, the state of each server.

Pages are the MMC's right pane; the left pane (the tree) and the toolbar come from
``console_context``. Anonymous users go to the login page; users in neither group get 403;
operators read, and a POST from them is refused with 403 before any view code runs.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from functools import wraps
from typing import Any
from urllib.parse import urlsplit

from django import forms
from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from rest_framework.exceptions import NotFound
from rest_framework.request import Request

from mailadmin.access import can_read, can_write
from mailadmin.console.forms import describe
from mailadmin.models import Message, VirtualServer
from mailadmin.paging import NewestFirst
from mailadmin.selectors.nodes import server_runtime, worker_statuses
from mailadmin.services.config.versions import current_version
from smtpworker.core.contract import WorkerStatus

View = Callable[..., HttpResponse]

STATE_LABELS = {
    "started": "Started",
    "stopped": "Stopped",
    "paused": "Paused",
    "error": "Error",
}


def console_view(view: View) -> View:
    """Login required; readers may GET, only writers may POST."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not can_read(request.user):
            raise PermissionDenied("Your account is in neither the administrators nor operators.")
        if request.method not in ("GET", "HEAD", "OPTIONS") and not can_write(request.user):
            raise PermissionDenied("Operators may look but not change anything.")
        return view(request, *args, **kwargs)

    return login_required(wrapper)


def author(request: HttpRequest) -> str:
    """Who a change is recorded under in the configuration history (and the audit log)."""
    return f"console:{request.user.get_username()}"


def machine_name() -> str:
    return str(getattr(settings, "MAILADMIN_HOSTNAME", "") or socket.gethostname())


def server_state(server: VirtualServer, statuses: list[WorkerStatus]) -> dict[str, Any]:
    """The state to show: what the administrator asked for, or "error" when a node could
    not apply it (a binding taken by another program), with the nodes' own words."""
    runtime = server_runtime(server.name, statuses)
    state = server.state
    detail = ""
    if runtime["status"] == "error":
        state, detail = "error", runtime["error"]
    elif runtime["status"] == "unknown" and server.state != "stopped":
        detail = "No live worker node reports this server."
    elif runtime["status"] == "listening":
        nodes = ", ".join(str(n["node"]) for n in runtime["nodes"] if n["listening"])
        detail = f"Listening on {nodes}." if server.state == "started" else ""
    return {
        "id": server.pk,
        "name": server.name,
        "state": state,
        "requested": server.state,
        "label": STATE_LABELS[state],
        "detail": detail,
    }


def server_states(statuses: list[WorkerStatus] | None = None) -> list[dict[str, Any]]:
    statuses = worker_statuses() if statuses is None else statuses
    servers = VirtualServer.objects.order_by("name")
    return [server_state(s, statuses) for s in servers]


def render_console(
    request: HttpRequest,
    template: str,
    context: dict[str, Any] | None = None,
    *,
    node: str,
    server: VirtualServer | None = None,
    status: int = 200,
) -> HttpResponse:
    """Render a right-pane page inside the console frame; ``node`` selects the tree item."""
    context = dict(context or {})
    context.setdefault("tree_servers", server_states(context.get("worker_statuses")))
    context.update(
        {
            "node": node,
            "server": server,
            "machine": machine_name(),
            "can_write": can_write(request.user),
            "version": current_version(),
        }
    )
    for value in context.values():
        for form in value if isinstance(value, list) else [value]:
            if isinstance(form, forms.Form):
                describe(form)
            elif isinstance(form, dict) and isinstance(form.get("form"), forms.Form):
                describe(form["form"])
    if server is not None:
        context["selected_state"] = next(
            (s for s in context["tree_servers"] if s["id"] == server.pk), None
        )
    return render(request, template, context, status=status)


def newest_first_page(
    request: HttpRequest, queryset: QuerySet[Message], gone: str
) -> tuple[list[Message], str | None, str | None]:
    """One page of messages, newest first, by the API's cursor paging (``mailadmin.paging``,
    fast at any depth), and the links to the older and newer pages; a stale cursor is a 404
    saying ``gone``."""
    paginator = NewestFirst()
    try:
        page = paginator.paginate_queryset(queryset, Request(request)) or []
    except NotFound as exc:
        raise Http404(gone) from exc
    return page, _relative(paginator.get_next_link()), _relative(paginator.get_previous_link())


def _relative(url: str | None) -> str | None:
    if not url:
        return None
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}" if parts.query else parts.path
