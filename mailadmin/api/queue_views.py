"""Queue API: queues by next hop, messages with filters and actions, traffic counters."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.db.models import QuerySet
from django.shortcuts import get_object_or_404
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import mixins, serializers, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from mailadmin.api.parsers import PARSERS
from mailadmin.api.schema import ApiSchema
from mailadmin.models import Message
from mailadmin.paging import NewestFirst
from mailadmin.selectors import queues
from mailadmin.services.delivery import actions

ACTIONS = actions.MESSAGE_ACTIONS
# A hundred years: any age filter past it is a typo (and timedelta would overflow).
MAX_AGE_MINUTES = 100 * 366 * 24 * 60


class RecipientSerializer(serializers.Serializer):
    address = serializers.CharField()
    domain = serializers.CharField()
    next_hop = serializers.CharField()
    state = serializers.CharField()
    attempts = serializers.IntegerField()
    last_code = serializers.IntegerField(allow_null=True)
    last_reply = serializers.CharField()
    last_host = serializers.CharField()
    done_at = serializers.DateTimeField(allow_null=True)


class AttemptSerializer(serializers.Serializer):
    at = serializers.DateTimeField()
    next_hop = serializers.CharField()
    host = serializers.CharField()
    recipients = serializers.CharField()
    code = serializers.IntegerField(allow_null=True)
    reply = serializers.CharField()


class MessageSerializer(serializers.ModelSerializer):
    recipients: serializers.Field = serializers.SlugRelatedField(
        many=True, read_only=True, slug_field="address"
    )

    class Meta:
        model = Message
        fields = [
            "queue_id",
            "server_name",
            "sender",
            "recipients",
            "subject",
            "size",
            "client_ip",
            "auth_user",
            "received_at",
            "state",
            "next_attempt_at",
            "attempts",
            "last_error",
            "finished_at",
            "is_report",
        ]


class MessageDetailSerializer(MessageSerializer):
    recipients = RecipientSerializer(many=True, read_only=True)
    attempt_log = AttemptSerializer(many=True, read_only=True)
    headers = serializers.SerializerMethodField()

    class Meta(MessageSerializer.Meta):
        fields = [*MessageSerializer.Meta.fields, "attempt_log", "headers", "delay_notified_at"]

    def get_headers(self, obj: Message) -> list[list[str]]:
        return [[name, value] for name, value in queues.message_headers(obj)]


class QueueSerializer(serializers.Serializer):
    next_hop = serializers.CharField()
    state = serializers.ChoiceField(choices=["active", "ready", "retry", "suspended"])
    messages = serializers.IntegerField()
    oldest = serializers.DateTimeField(allow_null=True)
    last_attempt = serializers.DateTimeField(allow_null=True)
    last_error = serializers.CharField()


class BulkSerializer(serializers.Serializer):
    action = serializers.ChoiceField(choices=ACTIONS)
    queue_ids = serializers.ListField(
        child=serializers.CharField(max_length=32), min_length=1, max_length=10_000
    )


class MessageFilterSerializer(serializers.Serializer):
    """The list's query parameters, checked before they reach the selector (a bad number
    is a 400 with the field's error, not a 500)."""

    server = serializers.CharField(required=False, allow_blank=True)
    queue = serializers.CharField(required=False, allow_blank=True, help_text="next hop")
    state = serializers.CharField(
        required=False, allow_blank=True, help_text="comma-separated states"
    )
    sender = serializers.CharField(required=False, allow_blank=True)
    recipient = serializers.CharField(required=False, allow_blank=True)
    subject = serializers.CharField(required=False, allow_blank=True)
    older_than_minutes = serializers.FloatField(
        required=False, min_value=0, max_value=MAX_AGE_MINUTES
    )
    newer_than_minutes = serializers.FloatField(
        required=False, min_value=0, max_value=MAX_AGE_MINUTES
    )

    def params(self) -> dict[str, str]:
        """The validated filters as ``mailadmin.selectors.queues.messages_filtered`` takes them."""
        return {key: str(value) for key, value in self.validated_data.items() if value != ""}


_Done = inline_serializer("QueueActionResult", {"changed": serializers.IntegerField()})


def _author(request: Request) -> str:
    return f"api:{request.user.get_username()}"


@extend_schema(tags=["queue"])
class MessageViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Queued and finished messages, newest first; actions one by one or in bulk."""

    schema = ApiSchema()
    parser_classes = PARSERS

    lookup_field = "queue_id"
    pagination_class = NewestFirst
    filter_backends: list[Any] = []

    def get_serializer_class(self) -> type[serializers.Serializer]:
        return MessageDetailSerializer if self.action == "retrieve" else MessageSerializer

    def get_queryset(self) -> QuerySet[Message]:
        if self.action == "retrieve":
            return Message.objects.prefetch_related("recipients", "attempt_log")
        filters = MessageFilterSerializer(data=self.request.query_params.dict())
        filters.is_valid(raise_exception=True)
        return queues.messages_filtered(filters.params()).prefetch_related("recipients")

    @extend_schema(parameters=[MessageFilterSerializer])
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().list(request, *args, **kwargs)

    def _one(self, request: Request, queue_id: str, name: str) -> Response:
        get_object_or_404(Message, queue_id=queue_id)
        changed = actions.messages_act(action=name, queue_ids=[queue_id], author=_author(request))
        return Response({"changed": changed})

    @extend_schema(request=None, responses=_Done)
    @action(detail=True, methods=["post"])
    def retry(self, request: Request, queue_id: str) -> Response:
        """Try now, whatever the retry schedule says."""
        return self._one(request, queue_id, "retry")

    @extend_schema(request=None, responses=_Done)
    @action(detail=True, methods=["post"])
    def suspend(self, request: Request, queue_id: str) -> Response:
        """Hold the message: no delivery until resumed."""
        return self._one(request, queue_id, "suspend")

    @extend_schema(request=None, responses=_Done)
    @action(detail=True, methods=["post"])
    def resume(self, request: Request, queue_id: str) -> Response:
        """Release a suspended message and try it now."""
        return self._one(request, queue_id, "resume")

    # Not named delete(): DRF would take a method of that name as the HTTP DELETE handler
    # of every route of this viewset (DELETE /messages/<id>/ deleted the message, and
    # DELETE /messages/bulk/ was a 500).
    @extend_schema(request=None, responses=_Done)
    @action(detail=True, methods=["post"], url_path="delete", url_name="delete")
    def delete_silently(self, request: Request, queue_id: str) -> Response:
        """Delete silently (no NDR)."""
        return self._one(request, queue_id, "delete")

    @extend_schema(request=None, responses=_Done)
    @action(detail=True, methods=["post"], url_path="delete-ndr")
    def delete_ndr(self, request: Request, queue_id: str) -> Response:
        """Delete and send the sender a non-delivery report."""
        return self._one(request, queue_id, "delete_ndr")

    @extend_schema(request=BulkSerializer, responses=_Done)
    @action(detail=False, methods=["post"])
    def bulk(self, request: Request) -> Response:
        """One action on many messages."""
        serializer = BulkSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        changed = actions.messages_act(
            action=data["action"], queue_ids=data["queue_ids"], author=_author(request)
        )
        return Response({"changed": changed})


@extend_schema(tags=["queue"])
class QueueViewSet(viewsets.ViewSet):
    """Queues by next hop (domain or smart host), with state and actions."""

    schema = ApiSchema()

    lookup_value_regex = "[^/]+"

    @extend_schema(responses=QueueSerializer(many=True))
    def list(self, request: Request) -> Response:
        return Response(QueueSerializer(queues.queue_list(), many=True).data)

    def _hop(self, pk: str | None) -> str:
        return (pk or "").strip()

    @extend_schema(
        request=None,
        responses=_Done,
        parameters=[OpenApiParameter("id", str, OpenApiParameter.PATH, description="next hop")],
    )
    @action(detail=True, methods=["post"])
    def retry(self, request: Request, pk: str | None = None) -> Response:
        """Retry every message of this queue now."""
        return Response({"changed": actions.queue_retry(next_hop=self._hop(pk))})

    @extend_schema(
        request=None,
        responses=_Done,
        parameters=[OpenApiParameter("id", str, OpenApiParameter.PATH, description="next hop")],
    )
    @action(detail=True, methods=["post"])
    def suspend(self, request: Request, pk: str | None = None) -> Response:
        """Stop delivering to this next hop until resumed."""
        actions.queue_suspend(next_hop=self._hop(pk))
        return Response({"changed": 1})

    @extend_schema(
        request=None,
        responses=_Done,
        parameters=[OpenApiParameter("id", str, OpenApiParameter.PATH, description="next hop")],
    )
    @action(detail=True, methods=["post"])
    def resume(self, request: Request, pk: str | None = None) -> Response:
        """Deliver to this next hop again: its waiting messages are tried now."""
        return Response({"changed": actions.queue_resume(next_hop=self._hop(pk))})


class TrafficSerializer(serializers.Serializer):
    start = serializers.DateTimeField()
    accepted = serializers.IntegerField()
    delivered = serializers.IntegerField()
    deferred = serializers.IntegerField()
    bounced = serializers.IntegerField()
    rejected = serializers.DictField(child=serializers.IntegerField())


@extend_schema(tags=["queue"])
class TrafficViewSet(viewsets.ViewSet):
    """Accepted, delivered, deferred, bounced and rejected (by reason) over time."""

    schema = ApiSchema()

    @extend_schema(
        parameters=[
            OpenApiParameter("server", str),
            OpenApiParameter("range", str, enum=["hour", "day"]),
        ],
        responses=TrafficSerializer(many=True),
    )
    def list(self, request: Request) -> Response:
        day = request.query_params.get("range") == "day"
        since = timezone.now() - (timedelta(days=1) if day else timedelta(hours=1))
        rows = queues.traffic(
            server=request.query_params.get("server"), since=since, bucket_minutes=60 if day else 1
        )
        return Response(TrafficSerializer(rows, many=True).data)
