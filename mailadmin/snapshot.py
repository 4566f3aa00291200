"""ORM rows -> ``smtpworker.core.config`` objects: the only bridge from the database to policy.

The worker, the console's relay tester and the tests all run on what this module builds,
so what the console previews cannot drift from what the worker enforces.

Plain settings are copied by the layout (``mailadmin.layout``, which also generates the
API serializers): a field of a config object takes the model field that the layout names
under the same key of the matching section, so a new scalar setting reaches the worker
with a layout line and a config field and no line here. What is not a plain copy (rows
of other tables, sections, keys named differently, changes of unit) is written out
below. ``mailadmin/tests/test_layout_reach.py`` proves that every layout leaf arrives.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from django.db import models

from mailadmin.layout import DOMAIN_LAYOUT, OUTBOUND_SECURITY_LAYOUT, SERVER_LAYOUT, Layout
from mailadmin.models import AccessList, Domain, SmtpUser, VirtualServer
from smtpworker.core import config as wc
from smtpworker.core.grammar import AccessEntry, parse_access_entry

T = TypeVar("T")


def _section(*keys: str, layout: Layout = SERVER_LAYOUT) -> Layout:
    for key in keys:
        section = layout[key]
        assert isinstance(section, dict), f"{key!r} is a leaf of the layout, not a section"
        layout = section
    return layout


def _build(
    cls: type[T],
    obj: models.Model,
    layout: Layout,
    keys: Mapping[str, tuple[str, ...]] | None = None,
    **given: Any,
) -> T:
    """A config object: each field not ``given`` is a copy of the model field that
    ``layout`` names under the field's name, or under the path ``keys`` gives for it (a
    list becomes a tuple).

    A field with no model field there (missing, a section, or an ``@name`` that the
    services handle) raises TypeError: build it and pass it in ``given``.
    """
    values = dict(given)
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        if field.name in values:
            continue
        target: Layout | str | None = layout
        for key in (keys or {}).get(field.name, (field.name,)):
            target = target.get(key) if isinstance(target, dict) else None
        if not isinstance(target, str) or target.startswith("@"):
            raise TypeError(
                f"{cls.__name__}.{field.name}: no model field at that key of the layout; "
                "build it in mailadmin.snapshot"
            )
        value = getattr(obj, target)
        values[field.name] = tuple(value) if isinstance(value, list) else value
    return cls(**values)


def _kb(value: int | None) -> int | None:
    return None if value is None else value * 1024


# The worker's OutboundSecurity is flat; the document nests the AUTH settings.
_SECURITY_KEYS = {
    "auth_method": ("auth", "method"),
    "username": ("auth", "username"),
    "password": ("auth", "password"),
    "cleartext_auth": ("auth", "allow_cleartext"),
}


def _security(obj: VirtualServer | Domain) -> wc.OutboundSecurity:
    return _build(wc.OutboundSecurity, obj, OUTBOUND_SECURITY_LAYOUT, _SECURITY_KEYS)


def domain_config(domain: Domain) -> wc.DomainConfig:
    return _build(
        wc.DomainConfig,
        domain,
        DOMAIN_LAYOUT,
        {"kind": ("type",)},
        security=_security(domain),
    )


def server_config(server: VirtualServer) -> wc.ServerConfig:
    """Build one server's frozen config; expects bindings, entries and domains prefetched."""
    entries = list(server.access_entries.all())

    def listed(kind: str) -> tuple[AccessEntry, ...]:
        return tuple(parse_access_entry(e.value) for e in entries if e.list == kind)

    delivery = _section("delivery")
    return _build(
        wc.ServerConfig,
        server,
        SERVER_LAYOUT,
        id=server.pk,
        bindings=tuple(b.as_grammar() for b in server.bindings.all()),
        logging=_build(wc.LoggingConfig, server, _section("logging")),
        auth=_build(wc.AuthConfig, server, _section("authentication")),
        tls=_build(wc.TlsConfig, server, _section("tls")),
        connection=_build(
            wc.AccessPolicy,
            server,
            _section("connection_control"),
            entries=listed(AccessList.CONNECTION),
        ),
        relay=_build(wc.RelayPolicy, server, _section("relay"), entries=listed(AccessList.RELAY)),
        messages=_build(
            wc.MessageLimits,
            server,
            _section("messages"),
            max_message_size=_kb(server.max_message_size_kb),
            max_session_size=_kb(server.max_session_size_kb),
        ),
        delivery=_build(
            wc.DeliveryConfig,
            server,
            delivery,
            outbound=_build(
                wc.OutboundConfig,
                server,
                _section("outbound", layout=delivery),
                security=_security(server),
            ),
        ),
        domains=tuple(domain_config(d) for d in server.domains.all()),
        trusted_proxies=listed(AccessList.PROXY),
        auth_brake=_build(
            wc.AuthBrakeConfig,
            server,
            _section("authentication", "brake"),
            window_seconds=server.auth_failure_window_minutes * 60,
            block_seconds=server.auth_block_minutes * 60,
        ),
    )


def user_config(user: SmtpUser) -> wc.UserConfig:
    return wc.UserConfig(
        username=user.username,
        active=user.is_active,
        password_hash=user.password_hash,
        scram_sha256=user.scram_sha256,
        cram_md5_context=user.cram_md5_context if user.allow_cram_md5 else "",
        servers=tuple(sorted(s.name for s in user.servers.all())),
    )


def servers_queryset() -> Iterable[VirtualServer]:
    return VirtualServer.objects.order_by("name").prefetch_related(
        "bindings", "access_entries", "domains"
    )


def site_config(version: int = 0) -> wc.SiteConfig:
    """The whole configuration as it stands in the database now."""
    users = SmtpUser.objects.order_by("username").prefetch_related("servers")
    return wc.SiteConfig(
        schema=wc.SCHEMA,
        version=version,
        servers=tuple(server_config(s) for s in servers_queryset()),
        users=tuple(user_config(u) for u in users),
    )
