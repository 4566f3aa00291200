"""DRF serializers, generated from the document layout in ``mailadmin.layout``.

They parse and check single fields (through the model fields' validators, which use the
``smtpworker.core.grammar``); cross-row rules and writes are the services' job. Secrets are
write-only; a read-only ``*_set`` flag tells whether one is stored.
"""

from __future__ import annotations

from typing import Any

from django.db import models
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from mailadmin.layout import DOMAIN_LAYOUT, SECRET_FIELDS, SERVER_LAYOUT, Layout
from mailadmin.models import AccessList, Domain, OutboundTls, SmtpUser, VirtualServer
from mailadmin.selectors import server_runtime, worker_statuses
from smtpworker.core import grammar


class GrammarListField(serializers.ListField):
    """A list of texts parsed by one grammar function; reports errors per item."""

    def __init__(self, parse: Any, **kwargs: Any) -> None:
        self.parse = parse
        kwargs.setdefault("child", serializers.CharField())
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> list[Any]:
        texts = super().to_internal_value(data)
        parsed, errors = [], {}
        for index, text in enumerate(texts):
            try:
                parsed.append(self.parse(text))
            except grammar.GrammarError as exc:
                errors[index] = [str(exc)]
        if errors:
            raise serializers.ValidationError(errors)  # type: ignore[arg-type]
        return parsed


class BindingsField(GrammarListField):
    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("min_length", 1)
        kwargs.setdefault(
            "help_text",
            'ip:port identities, e.g. "127.0.0.2:25", "[::1]:25", "*:25"; '
            '"10.0.0.5:25 proxy" takes the PROXY protocol (v1 or v2) from trusted_proxies.',
        )
        super().__init__(grammar.parse_binding, source="*", **kwargs)

    def get_attribute(self, instance: VirtualServer) -> Any:
        return instance

    def to_representation(self, value: Any) -> list[str]:
        return [str(b) for b in value.bindings.all()] if value.pk else []

    def to_internal_value(self, data: Any) -> dict[str, Any]:  # type: ignore[override]
        return {"bindings": super().to_internal_value(data)}


class AccessListField(GrammarListField):
    def __init__(self, kind: str, parse: Any = grammar.parse_access_entry, **kwargs: Any) -> None:
        self.kind = kind
        kwargs.setdefault("help_text", "IP addresses, CIDR networks and domain names.")
        super().__init__(parse, source="*", **kwargs)

    def get_attribute(self, instance: VirtualServer) -> Any:
        return instance

    def to_representation(self, value: Any) -> list[str]:
        if not value.pk:
            return []
        return [e.value for e in value.access_entries.all() if e.list == self.kind]

    def to_internal_value(self, data: Any) -> dict[str, Any]:  # type: ignore[override]
        return {f"{self.kind}_entries": super().to_internal_value(data)}


@extend_schema_field({"type": "string", "example": "corp.example.net"})
class DefaultDomainField(serializers.Field):
    """The server's default local domain (IIS's "Default" entry under Domains)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(source="*", **kwargs)

    def to_representation(self, value: VirtualServer) -> str:
        if not value.pk:
            return ""
        return next((d.name for d in value.domains.all() if d.is_default), "")

    def to_internal_value(self, data: Any) -> dict[str, str]:
        if not isinstance(data, str):
            raise serializers.ValidationError("Give a domain name.")
        try:
            return {"default_domain": grammar.parse_domain(data)}
        except grammar.GrammarError as exc:
            raise serializers.ValidationError(str(exc)) from exc


class NameRelatedField(serializers.SlugRelatedField):
    """A related object given by name. A NUL byte is refused before the lookup, as DRF's
    CharField refuses it: PostgreSQL cannot even compare such a text (a 500, not a 400)."""

    default_error_messages = {"null_characters": "Null characters are not allowed."}

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, str) and "\x00" in data:
            self.fail("null_characters")
        return super().to_internal_value(data)


@extend_schema_field({"type": "boolean"})
class SecretSetField(serializers.ReadOnlyField):
    def to_representation(self, value: Any) -> bool:
        return bool(value)


class TlsLevelField(serializers.ChoiceField):
    """The outbound TLS level. A document written when it was a check box says true or
    false: true meant STARTTLS required with any certificate ("required"), false "use it
    when offered" ("opportunistic"), so a restored backup keeps its meaning."""

    def to_internal_value(self, data: Any) -> Any:
        if data is True or data is False:
            return "required" if data else "opportunistic"
        return super().to_internal_value(data)


def tls_level_field(model: type[models.Model], key: str, name: str) -> serializers.Field:
    return TlsLevelField(
        choices=OutboundTls.choices,
        source=name,
        required=False,
        help_text="opportunistic (TLS when offered), required (TLS, any certificate) or "
        "verified (TLS with a trusted certificate naming the host; tls_ca or the system's "
        "CAs). true and false, from older documents, mean required and opportunistic.",
    )


# Model fields whose DRF field is not the one ModelSerializer would build.
FIELD_BUILDERS = {"outbound_tls": tls_level_field}


def model_field(model: type[models.Model], key: str, name: str) -> serializers.Field:
    """The DRF field ModelSerializer would build for ``model.name``, exposed as ``key``."""
    builder: serializers.ModelSerializer = serializers.ModelSerializer()
    model_field = model._meta.get_field(name)
    assert isinstance(model_field, models.Field)
    field_class, kwargs = builder.build_standard_field(name, model_field)
    if key != name:
        kwargs["source"] = name
    return field_class(**kwargs)


SPECIAL_FIELDS = {
    "@bindings": lambda: BindingsField(required=False),
    "@connection_entries": lambda: AccessListField(AccessList.CONNECTION, required=False),
    "@relay_entries": lambda: AccessListField(AccessList.RELAY, required=False),
    "@proxy_entries": lambda: AccessListField(
        AccessList.PROXY,
        grammar.parse_trusted_proxy,
        required=False,
        help_text="IP addresses and CIDR networks of the load balancers that may send "
        "PROXY protocol headers to the bindings marked proxy; others are refused.",
    ),
    "@default_domain": lambda: DefaultDomainField(required=False),
}


def layout_fields(model: type[models.Model], layout: Layout, prefix: str) -> dict[str, Any]:
    """Declared fields for one level of a layout; sections become nested serializers."""
    fields: dict[str, Any] = {}
    for key, target in layout.items():
        if isinstance(target, dict):
            name = prefix + "".join(part.capitalize() for part in key.split("_"))
            section = type(name, (serializers.Serializer,), layout_fields(model, target, name))
            fields[key] = section(source="*", required=False)
        elif target.startswith("@"):
            fields[key] = SPECIAL_FIELDS[target]()
        elif target in SECRET_FIELDS:
            fields[key] = serializers.CharField(
                source=target,
                write_only=True,
                required=False,
                allow_blank=True,
                trim_whitespace=False,
                help_text="Write-only; never shown back.",
            )
            fields[f"{key}_set"] = SecretSetField(source=target, help_text="Whether one is stored.")
        else:
            build = FIELD_BUILDERS.get(target, model_field)
            fields[key] = build(model, key, target)
    return fields


ServerFields = type(
    "ServerFields", (serializers.Serializer,), layout_fields(VirtualServer, SERVER_LAYOUT, "Server")
)
DomainFields = type(
    "DomainFields", (serializers.Serializer,), layout_fields(Domain, DOMAIN_LAYOUT, "Domain")
)


class NodeRuntimeSerializer(serializers.Serializer):
    node = serializers.CharField()
    applied_version = serializers.IntegerField()
    listening = serializers.BooleanField()
    bindings = serializers.ListField(child=serializers.CharField())
    error = serializers.CharField()
    sessions = serializers.IntegerField()


class RuntimeSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=["listening", "stopped", "error", "unknown"])
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


class ServerSerializer(ServerFields):  # type: ignore[valid-type,misc]
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
    def get_runtime(self, obj: VirtualServer) -> dict[str, Any]:
        statuses = self.context.get("worker_statuses")
        if statuses is None:
            statuses = self.context["worker_statuses"] = worker_statuses()
        return server_runtime(obj.name, statuses)


class DomainSerializer(DomainFields):  # type: ignore[valid-type,misc]
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
