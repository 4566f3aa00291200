"""Message tracking: find messages and tell what happened to each, from arrival on.

``GET /api/v1/tracking/?q=&since=&until=`` searches by queue id, sender, recipient or
subject (``q``) and by arrival time, newest first, and lists for each message every event
the queue recorded:

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

Reports carry no database link to their message; a report is matched by what it must
share with it: the same virtual server, the original sender as its recipient, a subject
``Delayed: ...`` or ``Undeliverable: ...``, and an arrival within seconds of the moment
the original recorded the notice (``delay_notified_at``) or its end (``finished_at``).
Where none matches, the event still shows, without a report queue id.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Q, QuerySet
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, serializers, viewsets
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from mailadmin.api.queue_views import NewestFirst
from mailadmin.api.schema import ApiSchema
from mailadmin.models import Attempt, Message, MessageState, Recipient, RecipientState

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


class TrackingEventSerializer(serializers.Serializer):
    at = serializers.DateTimeField()
    event = serializers.ChoiceField(choices=EVENTS)
    detail = serializers.CharField()
    host = serializers.CharField(help_text="the client (received) or the remote host")
    code = serializers.IntegerField(allow_null=True, help_text="SMTP reply code")


class TrackedMessageSerializer(serializers.Serializer):
    queue_id = serializers.CharField()
    server_name = serializers.CharField()
    sender = serializers.CharField()
    recipients = serializers.ListField(child=serializers.CharField())
    subject = serializers.CharField()
    state = serializers.ChoiceField(choices=MessageState.choices)
    received_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)
    is_report = serializers.BooleanField()
    events = TrackingEventSerializer(many=True)


def _event(
    at: datetime | None, event: str, detail: str, host: str = "", code: int | None = None
) -> dict[str, Any]:
    return {"at": at, "event": event, "detail": detail, "host": host, "code": code}


def find_report(message: Message, kind: str) -> Message | None:
    """The delay notice (``kind="delay"``) or NDR (``"failure"``) sent for ``message``."""
    if not message.sender or message.is_report:
        return None
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
        reply = f"{attempt.code} {attempt.reply}" if attempt.code else attempt.reply
        to = attempt.recipients
        where = f" via {attempt.next_hop}" if attempt.next_hop else ""
        events.append(
            _event(attempt.at, "attempt", f"{to}{where}: {reply}", attempt.host, attempt.code)
        )
        code = attempt.code or 0
        if 200 <= code < 300:
            outcome = "delivered"
        elif code >= 500:
            outcome = "bounced"
            tried.update(a.strip().lower() for a in to.split(","))
        else:
            outcome = "deferred"
        events.append(_event(attempt.at, outcome, f"{to}: {reply}", attempt.host, attempt.code))
    for recipient in recipients:
        # Failures that no attempt shows: expiry in the queue, or no route at all.
        if recipient.state == RecipientState.FAILED and recipient.address.lower() not in tried:
            events.append(
                _event(
                    recipient.done_at,
                    "bounced",
                    f"{recipient.address}: {recipient.last_reply}",
                    recipient.last_host,
                    recipient.last_code,
                )
            )
    if message.delay_notified_at is not None:
        report = find_report(message, "delay")
        detail = f"to <{message.sender}>" + (f", queued as {report.queue_id}" if report else "")
        events.append(_event(message.delay_notified_at, "delay notice", detail))
    if message.state in (MessageState.BOUNCED, MessageState.DELETED):
        report = find_report(message, "failure")
        if report is not None:
            events.append(
                _event(
                    report.received_at,
                    "ndr",
                    f"to <{message.sender}>, queued as {report.queue_id}",
                )
            )
    if message.state == MessageState.DELETED:
        events.append(_event(message.finished_at, "deleted", message.last_error))
    # A stable sort: an attempt stays before its outcome (same time); no time goes last.
    events.sort(key=lambda e: (e["at"] is None, e["at"] or message.received_at))
    if message.state == MessageState.RETRY and message.next_attempt_at is not None:
        deferred = [e for e in events if e["event"] == "deferred"]
        if deferred:
            deferred[-1]["detail"] += f" (next attempt at {message.next_attempt_at.isoformat()})"
    return events


def _moment(params: Any, name: str) -> datetime | None:
    text = (params.get(name) or "").strip()
    if not text:
        return None
    value = parse_datetime(text)
    if value is None:
        day = parse_date(text)
        if day is not None:
            value = datetime(day.year, day.month, day.day)
            if name == "until":
                value += timedelta(days=1)  # a whole day: until=2024-05-01 includes it
    if value is None:
        raise ValidationError({name: [f"{text!r} is not an ISO 8601 date or date-time."]})
    if timezone.is_naive(value):
        value = timezone.make_aware(value)
    return value


def tracked_messages(params: Any) -> QuerySet[Message]:
    """Messages matching ``q`` (exact queue id; sender, recipient or subject containing
    it), received between ``since`` and ``until``."""
    qs = Message.objects.all()
    q = (params.get("q") or "").strip()
    if q:
        by_recipient = Recipient.objects.filter(address__icontains=q).values("message_id")
        qs = qs.filter(
            Q(queue_id=q.upper())
            | Q(sender__icontains=q)
            | Q(subject__icontains=q)
            | Q(id__in=by_recipient)
        )
    since, until = _moment(params, "since"), _moment(params, "until")
    if since is not None:
        qs = qs.filter(received_at__gte=since)
    if until is not None:
        qs = qs.filter(received_at__lt=until)
    return qs.prefetch_related("recipients", "attempt_log")


def _rows(messages: Iterable[Message]) -> list[dict[str, Any]]:
    return [
        {
            "queue_id": m.queue_id,
            "server_name": m.server_name,
            "sender": m.sender,
            "recipients": [r.address for r in m.recipients.all()],
            "subject": m.subject,
            "state": m.state,
            "received_at": m.received_at,
            "finished_at": m.finished_at,
            "is_report": m.is_report,
            "events": message_events(m),
        }
        for m in messages
    ]


@extend_schema(tags=["queue"])
class TrackingViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    """Message tracking: every event of a message, from arrival to its last attempt."""

    schema = ApiSchema()
    pagination_class = NewestFirst
    filter_backends: list[Any] = []
    serializer_class = TrackedMessageSerializer

    def get_queryset(self) -> QuerySet[Message]:
        return tracked_messages(self.request.query_params)

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "q",
                str,
                description="a queue id (exact), or part of a sender, recipient or subject",
            ),
            OpenApiParameter(
                "since", str, description="received at or after (ISO 8601 date or date-time)"
            ),
            OpenApiParameter("until", str, description="received before (a date: up to its end)"),
        ],
    )
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Messages matching the search, newest first, each with its events."""
        queryset = self.get_queryset()
        page = self.paginate_queryset(queryset)
        messages = page if page is not None else list(queryset)
        data = TrackedMessageSerializer(_rows(messages), many=True).data
        if page is not None:
            return self.get_paginated_response(data)
        return Response(data)
