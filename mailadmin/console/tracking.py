"""Message Tracking: search the record of every message, then read one message's history.

The search and the history are ``mailadmin.tracking``'s, the same the API's
``/api/v1/tracking/`` answers with. The search is a GET form, so a search can be
bookmarked or passed on; the results page by cursor in the API's order (newest first),
with no COUNT and no OFFSET, so a page deep in a big table costs what the first does. The
history merges each delivery attempt with what it told (delivered, deferred, failed) into
one step, and ends with where the message is now.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404
from django.urls import reverse
from django.utils import timezone

from mailadmin.console.base import console_view, newest_first_page, render_console
from mailadmin.console.forms import TrackingSearch
from mailadmin.console.queues import short_age
from mailadmin.models import OPEN_STATES, Message, MessageState, RecipientState
from mailadmin.paging import NewestFirst
from mailadmin.tracking import message_events, tracked_messages

CRITERIA = ("queue_id", "sender", "recipient", "subject", "server", "since", "until")
# Outcome of an attempt -> what the history calls it.
OUTCOMES = {"delivered": "Delivered", "deferred": "Deferred", "bounced": "Failed"}
# What a step may show, for the events that do not carry it.
STEP_KEYS = {"recipients": "", "next_hop": "", "reply": "", "report": "", "number": 0}
WAITING = {
    MessageState.QUEUED: "Ready: waiting for a delivery run.",
    MessageState.ACTIVE: "Active: being delivered now.",
    MessageState.RETRY: "Retry: waiting for the next attempt.",
    MessageState.SUSPENDED: "Suspended: held by an operator until resumed.",
}


def search_query(params: Any) -> str:
    """The criteria given in ``params``, as a query string: the search carried from the
    results to a message's history and back (unchecked: the search page checks them)."""
    given = {name: str(params.get(name) or "") for name in CRITERIA}
    return urlencode({k: v for k, v in given.items() if v.strip()})


def _page(request: HttpRequest, form: TrackingSearch) -> tuple[list[Message], Any, Any]:
    """One page of the matches, newest first, and the links to the older and newer pages."""
    queryset = tracked_messages(**form.criteria()).prefetch_related("recipients")
    return newest_first_page(request, queryset, "That page of results no longer exists.")


@console_view
def search(request: HttpRequest) -> HttpResponse:
    """The Message Tracking node: the search form and a page of messages that match it.

    Without criteria it lists every message, newest first. A criterion that cannot be
    read is shown beside its field with a 400, and nothing is searched.
    """
    form = TrackingSearch(request.GET)
    context: dict[str, Any] = {"form": form, "page_size": NewestFirst.page_size}
    if not form.is_valid():
        return render_console(
            request, "mailadmin/tracking/search.html", context, node="tracking", status=400
        )
    page, older, newer = _page(request, form)
    query = search_query(request.GET)
    context.update(
        rows=[{"m": m, "to": [r.address for r in m.recipients.all()]} for m in page],
        searched=bool(query),
        query=query,
        older=older,
        newer=newer,
        first_page=f"{request.path}?{query}" if query else request.path,
    )
    return render_console(request, "mailadmin/tracking/search.html", context, node="tracking")


def _steps(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The history as the page lays it out: an attempt and what it told are one step
    (``kind`` is then the outcome); attempts are numbered."""
    steps, number = [], 0
    for event in events:
        if event.get("of_attempt"):
            continue
        step = {**STEP_KEYS, **event, "kind": event["event"].replace(" ", "-")}
        if event["event"] == "attempt":
            number += 1
            step.update(kind=event["outcome"], outcome=OUTCOMES[event["outcome"]], number=number)
        steps.append(step)
    return steps


def _outcome(message: Message, steps: list[dict[str, Any]]) -> str:
    """The end of the story of a message that has left the queue, in a sentence or two."""
    if message.state == MessageState.DELIVERED:
        return "Delivered to every recipient."
    told = "The sender was sent a non-delivery report."
    if not any(s["event"] == "ndr" for s in steps):
        told = (
            "No report was sent: this message is itself a report."
            if message.is_report
            else "No report was sent: the sender is empty (<>)."
            if not message.sender
            else "No non-delivery report was sent."
        )
    if message.state == MessageState.DELETED:
        return f"Left the queue: {message.last_error or 'deleted'}. {told}"
    recipients = list(message.recipients.all())
    failed = sum(1 for r in recipients if r.state == RecipientState.FAILED)
    plural = "s" if len(recipients) != 1 else ""
    return f"Not delivered to {failed} of {len(recipients)} recipient{plural}. {told}"


def _waiting(message: Message, now: datetime) -> str:
    """Where a message still in the queue stands ("" once it has left)."""
    if message.state not in OPEN_STATES:
        return ""
    text = WAITING[MessageState(message.state)]
    when = message.next_attempt_at
    if when is not None and message.state in (MessageState.QUEUED, MessageState.RETRY):
        text += " Next attempt " + ("due now." if when <= now else f"in {short_age(now, when)}.")
    return text


@console_view
def timeline(request: HttpRequest, queue_id: str) -> HttpResponse:
    """One message's history: arrival, every delivery attempt, notices and reports, and
    its end (delivered, NDR sent, deleted) or where it waits in the queue now."""
    message = get_object_or_404(
        Message.objects.prefetch_related("recipients", "attempt_log"), queue_id=queue_id.upper()
    )
    events = message_events(message)
    query = search_query(request.GET)
    now = timezone.now()
    steps = _steps(events)
    waiting = _waiting(message, now)
    context = {
        "m": message,
        "steps": steps,
        "outcome": waiting or _outcome(message, steps),
        "waiting": waiting,
        "query": query,
        "results": reverse("console:tracking") + (f"?{query}" if query else ""),
    }
    return render_console(request, "mailadmin/tracking/message.html", context, node="tracking")
