"""The configuration document's schema: DRF fields generated from ``mailadmin.layout``.

A server and a domain have one shape wherever they are written as data: in the document
(``mailadmin.configdoc``'s export and import) and in the REST API's ``/servers/`` and
``/domains/`` (``mailadmin.api.serializers`` extends ``ServerFields`` and ``DomainFields``
with ids and runtime state). Both build on this module, so the document service does not
depend on the API, and a field added to the layout appears in both.

The fields parse and check single values (through the model fields' validators, which use
``smtpworker.core.grammar``); cross-row rules and writes are the services' job. Secrets
are write-only; a read-only ``*_set`` flag tells whether one is stored.
"""

from __future__ import annotations

from typing import Any

from django.db import models
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from mailadmin import validators
from mailadmin.layout import DOMAIN_LAYOUT, SECRET_FIELDS, SERVER_LAYOUT, Layout
from mailadmin.models import AccessList, Domain, OutboundTls, SmtpUser, VirtualServer
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


# The document: its servers (each with its domains) and its users; configdoc's export and
# import read and write these.


class DocumentDomainSerializer(DomainFields):  # type: ignore[valid-type,misc]
    pass


class DocumentServerSerializer(ServerFields):  # type: ignore[valid-type,misc]
    # Uniqueness is checked across the document, not against the rows it replaces.
    name = serializers.CharField(max_length=64, validators=[validators.server_name])
    domains = DocumentDomainSerializer(many=True, required=False)


class DocumentUserSerializer(serializers.Serializer):
    username = serializers.CharField(max_length=254)
    password = serializers.CharField(required=False, trim_whitespace=False, write_only=True)
    active = model_field(SmtpUser, "active", "is_active")
    allow_cram_md5 = model_field(SmtpUser, "allow_cram_md5", "allow_cram_md5")
    servers = serializers.ListField(child=serializers.CharField(), required=False)


class DocumentSerializer(serializers.Serializer):
    servers = DocumentServerSerializer(many=True, required=False)
    users = DocumentUserSerializer(many=True, required=False)
