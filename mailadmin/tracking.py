"""Message tracking: find messages and tell what happened to each, from arrival on.

One selector and one history, for both callers: ``GET /api/v1/tracking/``
(``mailadmin.api.tracking``) and the console's Message Tracking pages
(``mailadmin.console.tracking``). The events of a message:

========================  ====================================================================
``received``              the SMTP worker spooled it (``host``: the client's address)
``attempt``               one try of some recipients at one host (``host``, ``code``, reply)
``delivered``             those recipients took it (2xx)
``deferred``              a temporary failure (4xx, refused or dropped connection): retried
``bounced``               a permanent failure (5xx), or the message expired in the queue
``delay notice``          the sender was told the message is late
``ndr``                   the non-delivery report sent to the sender (``detail``: its queue id)
``deleted``               an operator deleted it (or its spool file vanished)
========================  ====================================================================

Each event is a dict with ``at``, ``event``, ``detail``, ``host`` and ``code`` (what the
API shows). Some carry more, for pages that lay them out rather than print a line: an
``attempt`` has ``recipients``, ``next_hop``, ``reply`` and ``outcome`` (the word of the
event that follows it), and the event it told has ``of_attempt``; a ``bounced`` that no
attempt told (expiry, no route) has ``recipients`` and ``reply``; a ``delay notice`` and
an ``ndr`` have ``report`` (the report's queue id, or ``""``).

Reports carry no database link to their message; a report is matched by what it must
share with it: the same virtual server, the original sender as its recipient, a subject
``Delayed: ...`` or ``Undeliverable: ...``, and an arrival within seconds of the moment
the original recorded the notice (``delay_notified_at``) or its end (``finished_at``).
Where none matches, the event still shows, without a report queue id.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from django.db.models import Q, QuerySet
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from mailadmin.models import Attempt, Message, MessageState, Recipient, RecipientState
from mailadmin.services.delivery.reports import report_queue_id

EVENTS = (
    "received",
    "attempt",
    "delivered",
    "deferred",
    "bounced",
    "delay notice",
    "ndr",
    "deleted",
)
# A report is spooled while its message's run is concluding: within seconds of the
# moment recorded on the message. The margin covers a slow spool write and the database.
REPORT_WINDOW = timedelta(minutes=2)


def parse_moment(text: str, *, end_of_day: bool = False) -> datetime | None:
    """An aware time from an ISO 8601 date-time or date; ``None`` for blank text.

    A date alone is the start of that day, or with ``end_of_day`` the start of the next
    (an upper bound ``until=2024-05-01`` includes that whole day). A time without an
    offset is in the current time zone. Anything else, including dates that do not exist
    and times out of range (``until`` 9999-12-31), raises ``ValueError`` with a message
    fit to show.
    """
    text = text.strip()
    if not text:
        return None
    problem = f"{text!r} is not an ISO 8601 date or date-time."
    value: datetime | None
    try:
        # The date first: parse_datetime takes a bare date too (as midnight).
        day = parse_date(text)
        if day is not None:
            start = datetime(day.year, day.month, day.day)
            value = start + timedelta(days=1) if end_of_day else start
        else:
            value = parse_datetime(text)
        if value is None:
            raise ValueError(problem)
        if timezone.is_naive(value):
            value = timezone.make_aware(value)
        value.astimezone(UTC)  # what the database will store it as: in range?
    except ValueError as exc:
        raise ValueError(problem) from exc
    except OverflowError as exc:
        raise ValueError(f"{text!r} is out of range.") from exc
    return value


def tracked_messages(
    *,
    q: str = "",
    queue_id: str = "",
    server: str = "",
    sender: str = "",
    recipient: str = "",
    subject: str = "",
    since: datetime | None = None,
    until: datetime | None = None,
) -> QuerySet[Message]:
    """Messages matching every criterion given (blank ones are not applied).

    ``q`` matches a queue id exactly, or any part of the sender, a recipient or the
    subject; ``queue_id`` and ``server`` match exactly (any case for the queue id);
    ``sender``, ``recipient`` and ``subject`` match any part, in any case. The time is the
    arrival: ``since`` inclusive, ``until`` exclusive. Recipients are matched through a
    subquery, not a join, so no message comes twice and no DISTINCT gets in the way of
    cursor paging. Nothing is prefetched; the order is the model's, newest first.
    """
    qs = Message.objects.all()
    q = q.strip()
    if q:
        qs = qs.filter(
            Q(queue_id=q.upper())
            | Q(sender__icontains=q)
            | Q(subject__icontains=q)
            | Q(id__in=_to(q))
        )
    if queue_id.strip():
        qs = qs.filter(queue_id=queue_id.strip().upper())
    if server:
        qs = qs.filter(server_name=server)
    if sender.strip():
        qs = qs.filter(sender__icontains=sender.strip())
    if recipient.strip():
        qs = qs.filter(id__in=_to(recipient.strip()))
    if subject.strip():
        qs = qs.filter(subject__icontains=subject.strip())
    if since is not None:
        qs = qs.filter(received_at__gte=since)
    if until is not None:
        qs = qs.filter(received_at__lt=until)
    return qs


def _to(part: str) -> QuerySet[Recipient, Any]:
    return Recipient.objects.filter(address__icontains=part).values("message_id")


def _event(
    at: datetime | None, event: str, detail: str, host: str = "", code: int | None = None
) -> dict[str, Any]:
    return {"at": at, "event": event, "detail": detail, "host": host, "code": code}


def find_report(message: Message, kind: str) -> Message | None:
    """The delay notice (``kind="delay"``) or NDR (``"failure"``) sent for ``message``."""
    if not message.sender or message.is_report:
        return None
    derived = Message.objects.filter(queue_id=report_queue_id(message, kind), is_report=True)
    found = derived.only("queue_id", "received_at", "subject").first()
    if found is not None:
        return found
    # Reports made before their ids were derived from the message's: by subject and time.
    if kind == "delay":
        moment, prefix = message.delay_notified_at, "Delayed:"
        low, high = moment and moment - timedelta(seconds=5), moment and moment + REPORT_WINDOW
    else:
        moment, prefix = message.finished_at, "Undeliverable:"
        low, high = moment and moment - REPORT_WINDOW, moment and moment + timedelta(seconds=5)
    if moment is None or low is None or high is None:
        return None
    candidates = Message.objects.filter(
        is_report=True,
        server_name=message.server_name,
        subject__startswith=prefix,
        received_at__gte=max(low, message.received_at),
        received_at__lte=high,
        recipients__address__iexact=message.sender,
    ).only("queue_id", "received_at", "subject")
    wanted = f"{prefix} {message.subject or '(no subject)'}"[:255]
    best = sorted(
        candidates,
        # The same subject first, then the nearest in time.
        key=lambda r: (r.subject != wanted, abs((r.received_at - moment).total_seconds())),
    )
    return best[0] if best else None


def _attempt_events(attempt: Attempt, tried: set[str]) -> list[dict[str, Any]]:
    """An attempt and what it told; adds the recipients it failed for good to ``tried``."""
    reply = f"{attempt.code} {attempt.reply}" if attempt.code else attempt.reply
    to = attempt.recipients
    where = f" via {attempt.next_hop}" if attempt.next_hop else ""
    code = attempt.code or 0
    if 200 <= code < 300:
        outcome = "delivered"
    elif code >= 500:
        outcome = "bounced"
        tried.update(a.strip().lower() for a in to.split(","))
    else:
        outcome = "deferred"
    tried_event = _event(attempt.at, "attempt", f"{to}{where}: {reply}", attempt.host, attempt.code)
    tried_event.update(
        recipients=to, next_hop=attempt.next_hop, reply=attempt.reply, outcome=outcome
    )
    told = _event(attempt.at, outcome, f"{to}: {reply}", attempt.host, attempt.code)
    told["of_attempt"] = True
    return [tried_event, told]


def message_events(message: Message) -> list[dict[str, Any]]:
    """Every recorded event of one message, oldest first (recipients and attempts must be
    prefetched, or they are read here)."""
    recipients: list[Recipient] = list(message.recipients.all())
    attempts: list[Attempt] = list(message.attempt_log.all())
    received = f"from <{message.sender}>"
    if message.auth_user:
        received += f" (authenticated as {message.auth_user})"
    received += f" for {', '.join(r.address for r in recipients) or 'no recipients'}"
    received += f", {message.size} bytes"
    events = [_event(message.received_at, "received", received, message.client_ip)]
    tried: set[str] = set()  # recipients whose failure an attempt already told
    for attempt in attempts:
        events.extend(_attempt_events(attempt, tried))
    for recipient in recipients:
        # Failures that no attempt shows: expiry in the queue, or no route at all.
        if recipient.state == RecipientState.FAILED and recipient.address.lower() not in tried:
            failed = _event(
                recipient.done_at,
                "bounced",
                f"{recipient.address}: {recipient.last_reply}",
                recipient.last_host,
                recipient.last_code,
            )
            failed.update(recipients=recipient.address, reply=recipient.last_reply)
            events.append(failed)
    if message.delay_notified_at is not None:
        report = find_report(message, "delay")
        detail = f"to <{message.sender}>" + (f", queued as {report.queue_id}" if report else "")
        notice = _event(message.delay_notified_at, "delay notice", detail)
        notice["report"] = report.queue_id if report else ""
        events.append(notice)
    if message.state in (MessageState.BOUNCED, MessageState.DELETED):
        report = find_report(message, "failure")
        if report is not None:
            ndr = _event(
                report.received_at, "ndr", f"to <{message.sender}>, queued as {report.queue_id}"
            )
            ndr["report"] = report.queue_id
            events.append(ndr)
    if message.state == MessageState.DELETED:
        events.append(_event(message.finished_at, "deleted", message.last_error))
    # A stable sort: an attempt stays before its outcome (same time); no time goes last.
    events.sort(key=lambda e: (e["at"] is None, e["at"] or message.received_at))
    if message.state == MessageState.RETRY and message.next_attempt_at is not None:
        deferred = [e for e in events if e["event"] == "deferred"]
        if deferred:
            deferred[-1]["detail"] += f" (next attempt at {message.next_attempt_at.isoformat()})"
    return events
