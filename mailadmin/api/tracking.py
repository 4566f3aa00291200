"""Message tracking over the API: find messages and tell what happened to each.

``GET /api/v1/tracking/?q=&since=&until=`` searches by queue id, sender, recipient or
subject (``q``) and by arrival time, newest first, and lists for each message every event
the queue recorded. The search and the events are ``mailadmin.tracking``'s, which the
console's Message Tracking pages use too; the events are listed there.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, serializers, viewsets
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from mailadmin.api.schema import ApiSchema
from mailadmin.models import Message, MessageState
from mailadmin.paging import NewestFirst
from mailadmin.tracking import EVENTS, message_events, parse_moment, tracked_messages


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


def _moment(params: Any, name: str) -> datetime | None:
    try:
        return parse_moment(params.get(name) or "", end_of_day=name == "until")
    except ValueError as exc:
        raise ValidationError({name: [str(exc)]}) from exc


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
        params = self.request.query_params
        found = tracked_messages(
            q=params.get("q") or "", since=_moment(params, "since"), until=_moment(params, "until")
        )
        return found.prefetch_related("recipients", "attempt_log")

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
