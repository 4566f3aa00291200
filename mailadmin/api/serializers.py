"""DRF serializers of the REST API.

A server's and a domain's fields are the configuration document's (``mailadmin.docschema``,
generated from the layout in ``mailadmin.layout``); these serializers add what only the API
shows (ids, the runtime state) and the API's other shapes. They parse and check single
fields; cross-row rules and writes are the services' job.
"""

from __future__ import annotations

from typing import Any, get_args

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from mailadmin.docschema import DomainFields, ServerFields, model_field
from mailadmin.models import SmtpUser, VirtualServer
from mailadmin.selectors.nodes import (
    RuntimeSummary,
    ServerRuntime,
    server_runtime,
    worker_statuses,
)


class NameRelatedField(serializers.SlugRelatedField):
    """A related object given by name. A NUL byte is refused before the lookup, as DRF's
    CharField refuses it: PostgreSQL cannot even compare such a text (a 500, not a 400)."""

    default_error_messages = {"null_characters": "Null characters are not allowed."}

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, str) and "\x00" in data:
            self.fail("null_characters")
        return super().to_internal_value(data)


class NodeRuntimeSerializer(serializers.Serializer):
    node = serializers.CharField()
    applied_version = serializers.IntegerField()
    listening = serializers.BooleanField()
    bindings = serializers.ListField(child=serializers.CharField())
    error = serializers.CharField()
    sessions = serializers.IntegerField()


class RuntimeSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=list(get_args(RuntimeSummary)))
    error = serializers.CharField()
    nodes = NodeRuntimeSerializer(many=True)


class SessionSerializer(serializers.Serializer):
    """One SMTP client connected to a worker node (IIS's Current Sessions)."""

    id = serializers.CharField(help_text="node:session, as terminate/ wants it")
    node = serializers.CharField()
    server = serializers.CharField()
    client_ip = serializers.CharField()
    client_port = serializers.IntegerField()
    since = serializers.FloatField(help_text="Unix time the client connected")
    helo = serializers.CharField()
    user = serializers.CharField(allow_null=True)
    tls = serializers.BooleanField()
    messages = serializers.IntegerField()
    bytes = serializers.IntegerField()


class WorkerSerializer(serializers.Serializer):
    """A worker node's last report."""

    node = serializers.CharField()
    applied_version = serializers.IntegerField()
    latest_version = serializers.IntegerField()
    behind = serializers.BooleanField()
    heartbeat = serializers.FloatField()
    stale = serializers.BooleanField()
    config_error = serializers.CharField()
    servers = serializers.DictField()


class ServerSerializer(ServerFields):  # type: ignore[misc]
    """A virtual server with its bindings, access lists and default domain."""

    id = serializers.IntegerField(read_only=True)
    tls_not_after = serializers.DateTimeField(
        read_only=True, allow_null=True, help_text="Expiry of the uploaded certificate."
    )
    runtime = serializers.SerializerMethodField(
        help_text="What the worker nodes run: status listening, stopped, error or unknown "
        "(no live node serves it), the error of a failed binding, and per-node detail."
    )

    @extend_schema_field(RuntimeSerializer)
    def get_runtime(self, obj: VirtualServer) -> ServerRuntime:
        statuses = self.context.get("worker_statuses")
        if statuses is None:
            statuses = self.context["worker_statuses"] = worker_statuses()
        return server_runtime(obj.name, statuses)


class DomainSerializer(DomainFields):  # type: ignore[misc]
    """A local (default or alias) or remote domain of one server."""

    id = serializers.IntegerField(read_only=True)
    server = serializers.PrimaryKeyRelatedField(queryset=VirtualServer.objects.all())


class UserSerializer(serializers.Serializer):
    """An SMTP account. The password is write-only and stored only as verifiers."""

    id = serializers.IntegerField(read_only=True)
    username = model_field(SmtpUser, "username", "username")
    password = serializers.CharField(
        write_only=True,
        required=False,
        trim_whitespace=False,
        min_length=1,
        help_text="Write-only. Stored as a salted hash and a SCRAM-SHA-256 verifier.",
    )
    active = model_field(SmtpUser, "active", "is_active")
    allow_cram_md5 = model_field(SmtpUser, "allow_cram_md5", "allow_cram_md5")
    servers = NameRelatedField(
        many=True,
        slug_field="name",
        queryset=VirtualServer.objects.all(),
        required=False,
        help_text="Server names this user may authenticate to; empty means every server.",
    )
    cram_md5_ready = serializers.SerializerMethodField()
    password_changed = serializers.DateTimeField(read_only=True)

    def get_cram_md5_ready(self, obj: SmtpUser) -> bool:
        return bool(obj.cram_md5_context)


class TokenRequestSerializer(serializers.Serializer):
    username = serializers.CharField()
    password = serializers.CharField(trim_whitespace=False)


class TokenSerializer(serializers.Serializer):
    token = serializers.CharField()


class RelayCheckSerializer(serializers.Serializer):
    client_ip = serializers.CharField(help_text="the connecting client's IP address")
    authenticated_user = serializers.CharField(required=False, allow_blank=True, default="")
    tls = serializers.BooleanField(required=False, default=False)
    sender = serializers.CharField(required=False, allow_blank=True, default="")
    recipient = serializers.CharField()


class DecisionSerializer(serializers.Serializer):
    code = serializers.IntegerField()
    enhanced = serializers.CharField()
    text = serializers.CharField()
    rule = serializers.CharField()
    reply = serializers.CharField()


class RelayCheckResultSerializer(serializers.Serializer):
    accepted = serializers.BooleanField()
    decided_by = serializers.CharField()
    steps = DecisionSerializer(many=True)
    notes = serializers.ListField(child=serializers.CharField())


class AuthBlockSerializer(serializers.Serializer):
    """A client the AUTH brake blocks on a server: its logons are answered 454 until then."""

    client = serializers.CharField(help_text="an IPv4 address, or an IPv6 /64")
    until = serializers.FloatField(help_text="Unix time the block ends")
    seconds_left = serializers.IntegerField()


class UnblockSerializer(serializers.Serializer):
    address = serializers.CharField(
        max_length=64, help_text="the client as listed, or any IPv6 address of its /64"
    )


class UnblockResultSerializer(serializers.Serializer):
    client = serializers.CharField(help_text="the client whose block was lifted (if any)")
