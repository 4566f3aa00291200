"""A server's blocked logons: the clients the AUTH brake blocks now, with Unblock."""

from __future__ import annotations

from datetime import UTC, datetime

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect

from mailadmin.console.base import author, console_view, render_console
from mailadmin.exceptions import ConfigError
from mailadmin.models import VirtualServer
from mailadmin.selectors.nodes import auth_blocks
from mailadmin.services.config import authblocks as services


@console_view
def block_list(request: HttpRequest, pk: int) -> HttpResponse:
    server = get_object_or_404(VirtualServer, pk=pk)
    blocks = auth_blocks(server.name)
    for block in blocks or []:
        block["until_utc"] = datetime.fromtimestamp(block["until"], UTC)
    context = {"blocks": blocks}
    return render_console(
        request, "mailadmin/authblocks/list.html", context, node="auth-blocks", server=server
    )


@console_view
def block_lift(request: HttpRequest, pk: int) -> HttpResponse:
    """POST ``address``: lift that client's block (administrators only, by console_view)."""
    server = get_object_or_404(VirtualServer, pk=pk)
    if request.method != "POST":
        return redirect("console:auth-blocks", pk=pk)
    try:
        client = services.auth_unblock(
            server=server, address=request.POST.get("address", ""), author=author(request)
        )
    except ConfigError as exc:
        messages.error(request, " ".join(e.message for e in exc.errors))
    except services.BrakeUnavailable:
        messages.error(request, "Redis, where the blocks are kept, does not answer; try again.")
    else:
        messages.success(request, f"{client} may log on to {server.name} again.")
    return redirect("console:auth-blocks", pk=server.pk)
