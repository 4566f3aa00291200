"""Queues: the queues by next hop, the messages in them, a message's detail and history.

Reads come from ``mailadmin.selectors.queues``; every action is one service of
``mailadmin.services.delivery.actions``, the same the API calls. The message list pages by
cursor in the API's order (newest first), so it costs the same on page 1 as on page 2,000
and never counts the whole queue. Deleting, silently or with an NDR, asks for confirmation first.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme

from mailadmin.access import can_write
from mailadmin.console.base import author, console_view, newest_first_page, render_console
from mailadmin.console.forms import OPEN, MessageFilter
from mailadmin.console.servers import back
from mailadmin.models import OPEN_STATES, Message, MessageState, VirtualServer
from mailadmin.paging import NewestFirst
from mailadmin.selectors import queues
from mailadmin.services.delivery import actions

MAX_BULK = 10_000  # as the API's bulk action
CONFIRM_SHOWN = 20

# action -> (button, what happened to the messages)
ACTIONS = {
    "retry": ("Retry now", "will be tried again now"),
    "suspend": ("Suspend", "suspended"),
    "resume": ("Resume", "resumed"),
    "delete": ("Delete", "deleted"),
    "delete_ndr": ("Delete with NDR", "deleted, and their senders told"),
}
DESTRUCTIVE = ("delete", "delete_ndr")


def short_age(when: datetime | None, now: datetime | None = None) -> str:
    """'42 s', '7 min', '3 h 12 min', '2 d 4 h': an age that fits a table cell."""
    if when is None:
        return "—"
    seconds = max(0, int(((now or timezone.now()) - when).total_seconds()))
    if seconds < 60:
        return f"{seconds} s"
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86400
    if hours == 0:
        return f"{minutes} min"
    if days == 0:
        return f"{hours} h {minutes % 60} min" if minutes % 60 else f"{hours} h"
    return f"{days} d {hours % 24} h" if hours % 24 else f"{days} d"


def next_in(message: Message, now: datetime) -> str:
    when = message.next_attempt_at
    if when is None or message.state not in (MessageState.QUEUED, MessageState.RETRY):
        return ""
    return "due now" if when <= now else f"in {short_age(now, when)}"


def _safe(request: HttpRequest, url: str, default: str) -> str:
    if url and url_has_allowed_host_and_scheme(url, allowed_hosts={request.get_host()}):
        return url
    return default


def _without(request: HttpRequest, *names: str) -> str:
    query = request.GET.copy()
    for name in names:
        query.pop(name, None)
    return query.urlencode()


# --- queues by next hop ------------------------------------------------------------------


def _queue_rows() -> list[dict[str, Any]]:
    now = timezone.now()
    return [
        {**q, "age": short_age(q["oldest"], now), "last_age": short_age(q["last_attempt"], now)}
        for q in queues.queue_list()
    ]


@console_view
def queue_list(request: HttpRequest) -> HttpResponse:
    """The Queues node: one row per next hop with its state, size, age and last error."""
    context = {"queues": _queue_rows(), "can_write": can_write(request.user)}
    if request.GET.get("fragment"):
        return render(request, "mailadmin/queues/_queue_rows.html", context)
    return render_console(request, "mailadmin/queues/list.html", context, node="queues")


@console_view
def queue_action(request: HttpRequest) -> HttpResponse:
    """Retry now, Suspend or Resume one queue (a next hop), as the API's queue actions."""
    if request.method != "POST":
        return redirect("console:queues")
    hop, action = request.POST.get("next_hop", "").strip(), request.POST.get("action", "")
    if not hop or action not in ("retry", "suspend", "resume"):
        messages.error(request, "Choose a queue and an action.")
        return back(request, reverse("console:queues"))
    if action == "suspend":
        actions.queue_suspend(next_hop=hop)
        text = f"The queue {hop} is suspended: nothing is sent to it until it is resumed."
    else:
        service = actions.queue_resume if action == "resume" else actions.queue_retry
        changed = service(next_hop=hop)
        verb = "resumed" if action == "resume" else "retried now"
        text = f"The queue {hop} is {verb} ({changed} message{'s' if changed != 1 else ''})."
    messages.success(request, text)
    return back(request, reverse("console:queues"))


# --- messages ----------------------------------------------------------------------------


def _page(request: HttpRequest, params: dict[str, str]) -> tuple[list[Message], Any, Any]:
    """One page of messages, newest first, and the links to the older and newer pages."""
    queryset = queues.messages_filtered(params).prefetch_related("recipients")
    return newest_first_page(request, queryset, "That page of messages no longer exists.")


def _message_row(message: Message, now: datetime) -> dict[str, Any]:
    return {
        "m": message,
        "age": short_age(message.received_at, now),
        "to": [r.address for r in message.recipients.all()],
        "next_in": next_in(message, now),
    }


def _message_context(request: HttpRequest) -> dict[str, Any]:
    form = MessageFilter(request.GET)
    params = form.params()
    page, older, newer = _page(request, params)
    now = timezone.now()
    query = _without(request, "fragment")
    return {
        "filter": form,
        "params": params,
        "open_only": params.get("state") == OPEN,
        "rows": [_message_row(m, now) for m in page],
        "older": older,
        "newer": newer,
        "first_page": _without(request, "fragment", "cursor"),
        "refresh_url": f"{request.path}?{query + '&' if query else ''}fragment=1",
        "page_size": NewestFirst.page_size,
        "can_write": can_write(request.user),
    }


@console_view
def message_list(request: HttpRequest) -> HttpResponse:
    """The messages of one queue, one server, or all of them, with the filter bar."""
    context = _message_context(request)
    if request.GET.get("fragment"):
        return render(request, "mailadmin/queues/_message_rows.html", context)
    hop, name = context["params"].get("queue"), context["params"].get("server")
    if hop:
        context["queue"] = next((q for q in _queue_rows() if q["next_hop"] == hop), None)
    server = VirtualServer.objects.filter(name=name).first() if name else None
    node = "server-queue" if server and not hop else "queues"
    return render_console(
        request, "mailadmin/queues/messages.html", context, node=node, server=server
    )


def _confirm(
    request: HttpRequest, action: str, queue_ids: list[str], next_url: str
) -> HttpResponse:
    shown = list(Message.objects.filter(queue_id__in=queue_ids[:CONFIRM_SHOWN]))
    context = {
        "action": action,
        "label": ACTIONS[action][0],
        "queue_ids": queue_ids,
        "shown": shown,
        "more": max(0, len(queue_ids) - len(shown)),
        "next_url": next_url,
    }
    return render_console(request, "mailadmin/queues/confirm.html", context, node="queues")


@console_view
def message_action(request: HttpRequest) -> HttpResponse:
    """A bulk (or single) action; both deletes show a confirmation page first."""
    listing = reverse("console:messages")
    if request.method != "POST":
        return redirect(listing)
    action = request.POST.get("action", "")
    queue_ids = list(dict.fromkeys(request.POST.getlist("queue_id")))[:MAX_BULK]
    if action not in ACTIONS or not queue_ids:
        messages.error(request, "Select one or more messages, then choose an action.")
        return back(request, listing)
    if action in DESTRUCTIVE and request.POST.get("confirm") != "yes":
        next_url = _safe(request, request.POST.get("next", ""), listing)
        return _confirm(request, action, queue_ids, next_url)
    changed = actions.messages_act(action=action, queue_ids=queue_ids, author=author(request))
    skipped = len(queue_ids) - changed
    text = f"{changed} message{'s' if changed != 1 else ''} {ACTIONS[action][1]}."
    if skipped:
        text += f" {skipped} could not be: finished, being delivered, or not in that state."
    (messages.success if changed else messages.warning)(request, text)
    return back(request, listing)


@console_view
def message_detail(request: HttpRequest, queue_id: str) -> HttpResponse:
    """Envelope, recipients with their last replies, every attempt, and the headers."""
    message = get_object_or_404(
        Message.objects.prefetch_related("recipients", "attempt_log"), queue_id=queue_id
    )
    now = timezone.now()
    context = {
        "m": message,
        "age": short_age(message.received_at, now),
        "is_open": message.state in OPEN_STATES,
        "next_in": next_in(message, now),
        "can_write": can_write(request.user),
    }
    if request.GET.get("fragment"):
        return render(request, "mailadmin/queues/_message_status.html", context)
    context["headers"] = queues.message_headers(message)  # read from the spool once
    return render_console(request, "mailadmin/queues/message.html", context, node="queues")


@console_view
def message_delete(request: HttpRequest, queue_id: str, action: str) -> HttpResponse:
    """The confirmation page for one message (the Delete buttons of its detail page)."""
    message = get_object_or_404(Message, queue_id=queue_id)
    detail = reverse("console:message", args=[message.queue_id])
    return _confirm(request, action.replace("-", "_"), [message.queue_id], detail)
