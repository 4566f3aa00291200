"""A virtual server's node: its overview, Start / Stop / Pause, and Delete."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme

from mailadmin.console.base import author, console_view, render_console, server_state
from mailadmin.exceptions import ConfigError
from mailadmin.models import ServerState, VirtualServer
from mailadmin.selectors.nodes import worker_statuses
from mailadmin.services.config import servers as server_services

ACTIONS = {"start": ServerState.STARTED, "stop": ServerState.STOPPED, "pause": ServerState.PAUSED}
DONE = {"start": "started", "stop": "stopped", "pause": "paused"}


def wants_json(request: HttpRequest) -> bool:
    return "application/json" in request.headers.get("Accept", "")


def back(request: HttpRequest, default: str) -> HttpResponse:
    target = request.POST.get("next") or default
    if not url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}):
        target = default
    return redirect(target)


def _server(pk: int) -> VirtualServer:
    queryset = VirtualServer.objects.prefetch_related("bindings", "access_entries", "domains")
    return get_object_or_404(queryset, pk=pk)


@console_view
def overview(request: HttpRequest, pk: int) -> HttpResponse:
    server = _server(pk)
    statuses = worker_statuses()
    context = {
        "state": server_state(server, statuses),
        "worker_statuses": statuses,
        "default_domain": next((d.name for d in server.domains.all() if d.is_default), ""),
        "domain_count": len(server.domains.all()),
        "relay_entries": [e.value for e in server.access_entries.all() if e.list == "relay"],
    }
    return render_console(
        request, "mailadmin/server/overview.html", context, node="server", server=server
    )


@console_view
def set_state(request: HttpRequest, pk: int, action: str) -> HttpResponse:
    """Start, stop or pause; the answer is JSON for the console's script, else a redirect."""
    server = _server(pk)
    if request.method != "POST" or action not in ACTIONS:
        return redirect("console:server", pk=pk)
    try:
        server = server_services.server_set_state(
            server=server, state=ACTIONS[action], author=author(request)
        )
    except ConfigError as exc:
        text = " ".join(e.message for e in exc.errors)
        if wants_json(request):
            return JsonResponse({"ok": False, "error": text}, status=409)
        messages.error(request, f"{server.name} could not be {DONE[action]}: {text}")
        return back(request, server_url(server))
    if wants_json(request):
        return JsonResponse({"ok": True, "server": server_state(server, worker_statuses())})
    messages.success(request, f"{server.name} is {DONE[action]}.")
    return back(request, server_url(server))


def server_url(server: VirtualServer) -> str:
    return reverse("console:server", args=[server.pk])


@console_view
def delete(request: HttpRequest, pk: int) -> HttpResponse:
    server = _server(pk)
    if request.method == "POST":
        server_services.server_delete(server=server, author=author(request))
        messages.success(request, f"Deleted the virtual server {server.name}.")
        return redirect("console:home")
    return render_console(
        request,
        "mailadmin/confirm.html",
        {
            "title": f"Delete {server.name}?",
            "message": f"The virtual server {server.name}, its domains and its settings will be "
            "deleted. Open sessions are closed. Messages in its queue stay on disk.",
            "confirm": "Delete",
            "cancel_url": server_url(server),
        },
        node="server",
        server=server,
    )
