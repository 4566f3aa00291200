"""Writes to virtual servers: create, update, delete, start/stop/pause.

``data`` is what a serializer or form validated, keyed by model field name, plus
``bindings`` (grammar Binding objects), ``connection_entries`` / ``relay_entries`` /
``proxy_entries`` (grammar AccessEntry objects) and ``default_domain``. Secrets arrive in
plain text and are sealed here. Every write runs in ``config_transaction`` and raises
``ConfigError`` with document paths when refused, leaving nothing changed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import transaction

from mailadmin.exceptions import ConfigError, FieldError, from_django_validation_error
from mailadmin.layout import SECRET_FIELDS, SERVER_FIELD_PATHS
from mailadmin.models import (
    AccessEntry,
    AccessList,
    Binding,
    Domain,
    DomainKind,
    ServerState,
    VirtualServer,
)
from mailadmin.services.config.secrets import secret_open, secret_replace
from mailadmin.services.config.versions import config_transaction
from mailadmin.validators import canonical_domain, canonical_smart_host, proxy_protocol_errors
from smtpworker.core import grammar
from smtpworker.core.secretbox import SecretBoxError
from smtpworker.core.tlsinfo import TlsConfigError, inspect_certificate

RELATED_KEYS = (
    "bindings",
    "connection_entries",
    "relay_entries",
    "proxy_entries",
    "default_domain",
)
RUNNING_STATES = (ServerState.STARTED, ServerState.PAUSED)
DEFAULT_BINDING = grammar.Binding(None, 25)  # IIS: (All Unassigned), port 25

T = TypeVar("T")
Peer = tuple[str, str, Sequence[grammar.Binding]]  # name, state, bindings of a running server


def server_create(*, data: dict[str, Any], author: str) -> VirtualServer:
    """Create a server with IIS defaults for everything ``data`` leaves out."""
    if not data.get("default_domain"):
        raise ConfigError.at(("default_domain",), "Give the server's default domain.")
    data.setdefault("bindings", [DEFAULT_BINDING])
    with config_transaction(author=author, reason=f"create server {data.get('name', '')}"):
        server = VirtualServer()
        server_apply(server, data)
        server_check_conflicts(server)
    return server


def server_update(*, server: VirtualServer, data: dict[str, Any], author: str) -> VirtualServer:
    """Change the fields present in ``data``; the others keep their values."""
    with config_transaction(author=author, reason=f"update server {server.name}"):
        server = VirtualServer.objects.select_for_update().get(pk=server.pk)
        server_apply(server, data)
        server_check_conflicts(server)
    return server


class _DryRun(Exception):
    pass


def server_check(*, server: VirtualServer, data: dict[str, Any]) -> list[FieldError]:
    """The errors ``server_update(server=server, data=data)`` would raise; nothing is
    written and no version is made, whatever the outcome."""
    try:
        with transaction.atomic():
            locked = VirtualServer.objects.select_for_update().get(pk=server.pk)
            server_apply(locked, data)
            server_check_conflicts(locked)
            raise _DryRun
    except _DryRun:
        return []
    except ConfigError as exc:
        return exc.errors


def server_delete(*, server: VirtualServer, author: str) -> None:
    with config_transaction(author=author, reason=f"delete server {server.name}"):
        server.delete()


def server_set_state(*, server: VirtualServer, state: str, author: str) -> VirtualServer:
    """Start, stop or pause; starting (or pausing) checks that its bindings are free."""
    return server_update(server=server, data={"state": state}, author=author)


def server_apply(server: VirtualServer, data: dict[str, Any]) -> None:
    """Validate and save ``data`` onto ``server`` (no lock, no publish: callers do that)."""
    data = dict(data)
    related = {key: data.pop(key) for key in RELATED_KEYS if key in data}
    tls_changed = bool({"tls_certificate", "tls_private_key"} & data.keys())
    for field, value in data.items():
        if field in SECRET_FIELDS:
            value = secret_replace(getattr(server, field), value or "")
        setattr(server, field, value)
    _canonicalise(server)
    errors = _tls_errors(server, check_pair=tls_changed)
    errors.extend(_proxy_errors(server, related))
    try:
        server.full_clean()
    except DjangoValidationError as exc:
        errors.extend(from_django_validation_error(exc, SERVER_FIELD_PATHS).errors)
    if errors:
        raise ConfigError(errors)
    server.save()
    if "bindings" in related:
        _replace_bindings(server, related["bindings"])
    for key, kind in (
        ("connection_entries", AccessList.CONNECTION),
        ("relay_entries", AccessList.RELAY),
        ("proxy_entries", AccessList.PROXY),
    ):
        if key in related:
            _replace_entries(server, kind, related[key])
    if "default_domain" in related:
        server_set_default_domain(server, related["default_domain"])


def _canonicalise(server: VirtualServer) -> None:
    # Store one spelling so that comparisons, exports and hashes are stable; values that
    # fail to parse are left as typed for full_clean() to report.
    try:
        server.fqdn = canonical_domain(server.fqdn)
        server.masquerade_domain = canonical_domain(server.masquerade_domain)
        server.auth_basic_default_domain = canonical_domain(server.auth_basic_default_domain)
        server.smart_host = canonical_smart_host(server.smart_host)
    except grammar.GrammarError:
        pass


def _tls_errors(server: VirtualServer, *, check_pair: bool) -> list[FieldError]:
    errors: list[FieldError] = []
    cert, sealed_key = server.tls_certificate.strip(), server.tls_private_key
    if not cert and not sealed_key:
        server.tls_not_after = None
    elif not cert:
        errors.append(FieldError(("tls", "certificate"), "Upload the certificate for this key."))
    elif not sealed_key:
        errors.append(
            FieldError(("tls", "private_key"), "Upload the private key of this certificate.")
        )
    elif check_pair:
        try:
            info = inspect_certificate(cert, secret_open(sealed_key))
            server.tls_not_after = info.not_after
        except (TlsConfigError, SecretBoxError) as exc:
            errors.append(FieldError(("tls", "certificate"), str(exc)))
    has_cert = bool(cert and sealed_key)
    if server.tls_require and not has_cert:
        errors.append(FieldError(("tls", "require"), "Requiring TLS needs a certificate and key."))
    if server.auth_basic_requires_tls and not has_cert:
        errors.append(
            FieldError(
                ("authentication", "basic_requires_tls"),
                "Basic authentication under TLS only needs a certificate and key.",
            )
        )
    return errors


def _proxy_errors(server: VirtualServer, related: dict[str, Any]) -> list[FieldError]:
    """PROXY rules on the server as it will be: what ``related`` changes over what is stored."""
    stored = server.pk is not None
    bindings = related.get("bindings")
    if bindings is None:
        bindings = [b.as_grammar() for b in server.bindings.all()] if stored else []
    trusted = related.get("proxy_entries")
    if trusted is None:
        rows = server.access_entries.all() if stored else []
        trusted = [grammar.parse_access_entry(e.value) for e in rows if e.list == AccessList.PROXY]
    return [
        FieldError(SERVER_FIELD_PATHS[field] + (index,), message)
        for field, index, message in proxy_protocol_errors(bindings, trusted)
    ]


def _replace_bindings(server: VirtualServer, bindings: Sequence[grammar.Binding]) -> None:
    if not bindings:
        raise ConfigError.at(("bindings",), "A server needs at least one IP address and port.")
    for index, binding in enumerate(bindings):
        for earlier in bindings[:index]:
            if grammar.bindings_conflict(binding, earlier):
                raise ConfigError.at(
                    ("bindings", index), f"{binding} overlaps {earlier}, listed before it."
                )
    server.bindings.all().delete()
    Binding.objects.bulk_create(
        Binding(server=server, host=b.host or "", port=b.port, proxy_protocol=b.proxy)
        for b in bindings
    )


def _replace_entries(
    server: VirtualServer, kind: str, entries: Sequence[grammar.AccessEntry]
) -> None:
    texts = list(dict.fromkeys(str(e) for e in entries))  # drop repeats, keep order
    server.access_entries.filter(list=kind).delete()
    AccessEntry.objects.bulk_create(
        AccessEntry(server=server, list=kind, value=text) for text in texts
    )


def server_set_default_domain(server: VirtualServer, name: str) -> None:
    """Make ``name`` the default local domain, renaming the current default.

    IIS always has exactly one default domain; renaming it is how the typical corporate
    relay gets a dummy default domain (so nothing is delivered locally).
    """
    try:
        name = grammar.parse_domain(name)
    except grammar.GrammarError as exc:
        raise ConfigError.at(("default_domain",), str(exc)) from exc
    current = server.domains.filter(is_default=True).first()
    clash = server.domains.filter(name=name).exclude(is_default=True).first()
    if clash is not None and clash.kind == DomainKind.REMOTE:
        raise ConfigError.at(
            ("default_domain",), f"{name} is a remote domain of this server; it cannot be local."
        )
    if clash is not None:
        clash.delete()  # an alias promoted to default
    if current is None:
        Domain.objects.create(server=server, name=name, kind=DomainKind.LOCAL, is_default=True)
    elif current.name != name:
        current.name = name
        current.save(update_fields=["name"])


def server_check_conflicts(server: VirtualServer) -> None:
    """Refuse if this running server shares an ip:port with another running server."""
    if server.state not in RUNNING_STATES:
        return
    others = (
        VirtualServer.objects.filter(state__in=RUNNING_STATES)
        .exclude(pk=server.pk)
        .prefetch_related("bindings")
    )
    errors = binding_conflicts(server, list(others))
    if errors:
        raise ConfigError(errors)


def binding_conflicts(server: VirtualServer, others: Sequence[VirtualServer]) -> list[FieldError]:
    """Errors for each binding of ``server`` that another running server already uses."""
    errors = []
    taken = [(grammar.Binding(b.host or None, b.port), o) for o in others for b in o.bindings.all()]
    for index, row in enumerate(server.bindings.all()):
        mine = grammar.Binding(row.host or None, row.port)
        for theirs, other in taken:
            if grammar.bindings_conflict(mine, theirs):
                message = conflict_message(mine, theirs, other.name, other.state)
                errors.append(FieldError(("bindings", index), message))
                break
    return errors


def conflict_message(mine: grammar.Binding, theirs: grammar.Binding, name: str, state: str) -> str:
    return (
        f"{mine} conflicts with {theirs} of the {state} server '{name}': two running servers "
        "cannot share an IP address and port, and (All Unassigned) covers every address "
        "on its port."
    )


def lenient_list(parse: Callable[[str], T], raw: Any) -> list[T | None] | None:
    """Each text of a raw list parsed where it parses, ``None`` where it does not (the
    field's own validation reports that item), positions kept; ``None`` if ``raw`` is not
    a list of texts at all."""
    if not isinstance(raw, list):
        return None
    parsed: list[T | None] = []
    for item in raw:
        try:
            parsed.append(parse(item) if isinstance(item, str) else None)
        except grammar.GrammarError:
            parsed.append(None)
    return parsed


def running_peers(exclude: VirtualServer | None = None) -> list[Peer]:
    """Every stored running server but ``exclude``, for :func:`server_cross_errors`."""
    others = VirtualServer.objects.filter(state__in=RUNNING_STATES).prefetch_related("bindings")
    if exclude is not None and exclude.pk is not None:
        others = others.exclude(pk=exclude.pk)
    return [(o.name, o.state, [b.as_grammar() for b in o.bindings.all()]) for o in others]


def server_cross_errors(
    *, server: VirtualServer | None, raw: Mapping[str, Any], peers: Sequence[Peer]
) -> list[FieldError]:
    """The rules that span objects (an ip:port another running server holds, PROXY
    bindings without a trusted proxy), checked on input that failed field validation.

    ``raw`` is the server as the document or API gave it (``bindings``,
    ``trusted_proxies``, ``state``); what it leaves out is read from ``server`` as stored.
    Items that do not parse are skipped (their own field reports them) and paths keep
    their positions, so one answer lists these errors beside the field errors.
    """
    state = raw.get("state")
    if state not in ServerState.values:
        state = server.state if server is not None and server.pk else ServerState.STARTED
    stored = server if server is not None and server.pk is not None else None
    # Given but not a list: its field reports that; nothing of it can be checked.
    bindings = lenient_list(grammar.parse_binding, raw.get("bindings", _ABSENT)) or []
    if "bindings" not in raw:
        rows = stored.bindings.all() if stored else []
        bindings = [b.as_grammar() for b in rows] or [DEFAULT_BINDING]
    trusted = lenient_list(grammar.parse_access_entry, raw.get("trusted_proxies", _ABSENT))
    if "trusted_proxies" not in raw:
        entries = stored.access_entries.filter(list=AccessList.PROXY) if stored else []
        trusted = [grammar.parse_access_entry(e.value) for e in entries]
    elif trusted is None:
        return _binding_errors(bindings, state, peers)  # no PROXY verdict on a broken list
    errors = _binding_errors(bindings, state, peers)
    if not trusted:  # an unparsable trusted proxy still counts as one listed
        present = [(i, b) for i, b in enumerate(bindings) if b is not None]
        for _field, position, message in proxy_protocol_errors([b for _, b in present], []):
            errors.append(FieldError(("bindings", present[position][0]), message))
    return errors


_ABSENT = object()


def _binding_errors(
    bindings: Sequence[grammar.Binding | None], state: str, peers: Sequence[Peer]
) -> list[FieldError]:
    """Each parsed binding of a running server that a peer already holds."""
    if state not in RUNNING_STATES:
        return []
    errors = []
    taken = [(b, name, peer_state) for name, peer_state, bs in peers for b in bs]
    for index, binding in enumerate(bindings):
        if binding is None:
            continue
        clash = next((t for t in taken if grammar.bindings_conflict(binding, t[0])), None)
        if clash is not None:
            errors.append(FieldError(("bindings", index), conflict_message(binding, *clash)))
    return errors
