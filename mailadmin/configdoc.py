"""The configuration document: the whole configuration as one JSON (or YAML) document.

``document_export()`` writes it (secrets left out). ``document_import()`` replaces the
whole configuration with a document, atomically: every error is collected with its path
(``servers[1].bindings[0]``) and, if there is any, nothing changes. Objects absent from
the document are removed; fields absent from an object take the IIS defaults; secrets
absent keep their stored values, so re-importing an export yields the same version.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import yaml
from django.db import models, transaction
from rest_framework import serializers

from mailadmin.docschema import (
    DocumentDomainSerializer,
    DocumentSerializer,
    DocumentServerSerializer,
    DocumentUserSerializer,
)
from mailadmin.exceptions import ConfigError, FieldError, flatten_drf_errors
from mailadmin.layout import DOMAIN_LAYOUT, SECRET_FIELDS, SERVER_LAYOUT, Layout, walk
from mailadmin.models import Domain, SmtpUser, VirtualServer
from mailadmin.services.config.domains import domain_apply
from mailadmin.services.config.servers import (
    DEFAULT_BINDING,
    RUNNING_STATES,
    conflict_message,
    lenient_list,
    server_apply,
    server_cross_errors,
)
from mailadmin.services.config.users import user_apply
from mailadmin.services.config.versions import check_version, config_transaction, current_version
from smtpworker.core import grammar


@dataclass(frozen=True, slots=True)
class ImportResult:
    version: int
    changed: bool


def parse_text(text: str | bytes) -> Any:
    """Parse a JSON or YAML document (JSON is YAML, so one parser serves both)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError.at((), f"The document is neither JSON nor YAML: {exc}") from exc


def document_export() -> dict[str, Any]:
    servers = VirtualServer.objects.prefetch_related("bindings", "access_entries", "domains")
    out_servers = []
    for server in servers.order_by("name"):
        data = DocumentServerSerializer(server).data
        data["domains"] = DocumentDomainSerializer(server.domains.all(), many=True).data
        out_servers.append(data)
    users = SmtpUser.objects.prefetch_related("servers").order_by("username")
    out_users = [
        {
            "username": u.username,
            "active": u.is_active,
            "allow_cram_md5": u.allow_cram_md5,
            "servers": sorted(s.name for s in u.servers.all()),
        }
        for u in users
    ]
    return {"servers": _plain(out_servers), "users": out_users}


def _plain(value: Any) -> Any:
    # ReturnDict/OrderedDict -> dict and drop the read-only "*_set" flags, which are
    # facts about the stored state, not configuration.
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if not k.endswith("_set")}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def document_import(
    raw: Any, *, author: str, if_match: tuple[int, ...] | None = None
) -> ImportResult:
    """Replace the whole configuration with ``raw``; raise ConfigError listing every error.

    ``if_match``: the versions the edit was based on (HTTP If-Match); if another is in
    force, raise VersionConflict and change nothing (checked again under the lock).
    """
    check_version(if_match)
    if not isinstance(raw, dict):
        raise ConfigError.at((), "The document must be an object with servers and users.")
    serializer = DocumentSerializer(data=raw)
    if serializer.is_valid():
        doc, errors = serializer.validated_data, []
    else:
        # Go on with the objects that are valid by themselves, so one answer lists every
        # error: the cross-object checks and the services' own rules included.
        doc, errors = _valid_parts(raw), list(flatten_drf_errors(serializer.errors))
    before = current_version()
    with config_transaction(author=author, reason="import configuration document"):
        check_version(if_match)
        errors.extend(_document_errors(doc))
        if not any(e.path[:1] == ("servers",) and "name" in e.path for e in errors):
            errors.extend(_apply_document(doc))
        if errors:
            # In document order, so the answer reads top to bottom like the document.
            raise ConfigError(sorted(errors, key=lambda e: _path_key(e.path)))  # rolls back
    after = current_version()
    return ImportResult(version=after, changed=after != before)


def _path_key(path: tuple[str | int, ...]) -> tuple[tuple[int, int, str], ...]:
    return tuple((0, p, "") if isinstance(p, int) else (1, 0, p) for p in path)


def _valid_parts(raw: dict[str, Any]) -> dict[str, Any]:
    """The document with each object validated on its own: a valid one as its serializer
    gives it, an invalid one as what the cross-object checks can read of it, marked
    ``INVALID`` so that it is checked but never applied. Positions are kept, so paths stay
    right."""

    servers = [
        _valid_or_lenient(DocumentServerSerializer, s, _lenient_server)
        for s in _items(raw.get("servers"))
    ]
    users = [
        _valid_or_lenient(DocumentUserSerializer, u, _lenient_user)
        for u in _items(raw.get("users"))
    ]
    return {"servers": servers, "users": users}


INVALID = "__invalid__"


def _valid_or_lenient(
    serializer_class: type[serializers.Serializer],
    item: Any,
    lenient: Callable[[dict[str, Any]], dict[str, Any]],
) -> dict[str, Any]:
    if not isinstance(item, dict):
        return {INVALID: True}
    serializer = serializer_class(data=item)
    if serializer.is_valid():
        return dict(serializer.validated_data)
    return {**lenient(item), INVALID: True, "raw": item}


def _items(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _lenient_server(item: dict[str, Any]) -> dict[str, Any]:
    domains = _items(item.get("domains"))
    return {
        "name": _text(item.get("name")),
        "state": item.get("state", "started"),
        "default_domain": _text(item.get("default_domain")),
        "bindings": lenient_list(grammar.parse_binding, item.get("bindings")) or [],
        "domains": [
            {"name": _text(d.get("name")), "is_default": d.get("default") is True}
            if isinstance(d, dict)
            else {"name": None}
            for d in domains
        ],
    }


def _lenient_user(item: dict[str, Any]) -> dict[str, Any]:
    names = _items(item.get("servers"))
    return {
        "username": _text(item.get("username")),
        "servers": [n if isinstance(n, str) else None for n in names],
    }


def _document_errors(doc: dict[str, Any]) -> Iterator[FieldError]:
    servers = doc.get("servers", [])
    yield from _duplicates(servers, lambda s: s.get("name"), "servers", "name", "server name")
    names = {s.get("name") for s in servers} - {None}
    for i, server in enumerate(servers):
        domains = server.get("domains", [])
        yield from _duplicates(
            domains,
            lambda d: (d.get("name") or "").lower() or None,
            f"servers.{i}.domains",
            "name",
            "domain",
        )
        yield from _default_domain_errors(i, server)
        if server.get(INVALID) and isinstance(server.get("raw"), dict):
            # A valid server's own rules are checked when it is applied; an invalid one
            # never is, so its PROXY rule is checked here (other servers are peers below).
            for error in server_cross_errors(server=None, raw=server["raw"], peers=[]):
                yield FieldError(("servers", i, *error.path), error.message)
    yield from _binding_conflicts(servers)
    users = doc.get("users", [])
    yield from _duplicates(users, lambda u: u.get("username"), "users", "username", "user name")
    for i, user in enumerate(users):
        for j, name in enumerate(user.get("servers", [])):
            if name is not None and name not in names:
                yield FieldError(
                    ("users", i, "servers", j), f"No server named '{name}' in the document."
                )


def _binding_conflicts(servers: list[dict[str, Any]]) -> Iterator[FieldError]:
    """The document replaces every server, so its running servers are checked against
    each other only (each against those before it, in document order). A binding that
    did not parse is skipped: the serializer reported it."""
    taken: list[tuple[grammar.Binding, str, str]] = []
    for index, server in enumerate(servers):
        state = server.get("state", "started")
        if state not in RUNNING_STATES or server.get("name") is None:
            continue
        bindings = server.get("bindings") or [DEFAULT_BINDING]
        for position, binding in enumerate(bindings):
            if not isinstance(binding, grammar.Binding):
                continue
            clash = next((t for t in taken if grammar.bindings_conflict(binding, t[0])), None)
            if clash:
                yield FieldError(
                    ("servers", index, "bindings", position),
                    conflict_message(binding, *clash),
                )
        taken.extend((b, server["name"], state) for b in bindings if isinstance(b, grammar.Binding))


def _duplicates(
    items: list[Any], key: Callable[[Any], str | None], where: str, field: str, what: str
) -> Iterator[FieldError]:
    counts = Counter(key(item) for item in items)
    prefix: tuple[str | int, ...] = tuple(int(p) if p.isdigit() else p for p in where.split("."))
    for index, item in enumerate(items):
        if key(item) is not None and counts[key(item)] > 1:
            yield FieldError(
                prefix + (index, field), f"The {what} '{key(item)}' appears more than once."
            )


def _default_domain_errors(index: int, server: dict[str, Any]) -> Iterator[FieldError]:
    defaults = [d["name"] for d in server.get("domains", []) if d.get("is_default") and d["name"]]
    named = server.get("default_domain")
    if len(defaults) > 1:
        yield FieldError(("servers", index, "domains"), "Only one domain can be the default.")
    elif defaults and named and defaults[0] != named:
        yield FieldError(
            ("servers", index, "default_domain"),
            f"default_domain is {named} but the domain marked default is {defaults[0]}.",
        )
    elif not defaults and not named:
        yield FieldError(("servers", index, "default_domain"), "Give the server's default domain.")


def _with_defaults(
    model: type[models.Model], layout: Layout, data: dict[str, Any], keep_secrets: bool
) -> dict[str, Any]:
    """Fields absent from a document object take the model default (IIS's); secrets
    absent keep what is stored."""
    full = dict(data)
    for _path, target in walk(layout):
        if target.startswith("@") or target in full:
            continue
        if target in SECRET_FIELDS:
            if not keep_secrets:
                full[target] = ""
            continue
        field = model._meta.get_field(target)
        assert isinstance(field, models.Field)
        full[target] = field.get_default()
    return full


def _apply_document(doc: dict[str, Any]) -> list[FieldError]:
    """Write the document; return the errors met on the way (the caller rolls back)."""
    servers = doc.get("servers", [])
    VirtualServer.objects.exclude(name__in=[s.get("name") for s in servers]).delete()
    errors: list[FieldError] = []
    for index, data in enumerate(servers):
        if data.get(INVALID):
            continue
        try:
            with transaction.atomic():
                _apply_server(data)
        except ConfigError as exc:
            errors.extend(exc.prefixed(("servers", index)).errors)
    users = doc.get("users", [])
    SmtpUser.objects.exclude(username__in=[u.get("username") for u in users]).delete()
    for index, data in enumerate(users):
        if data.get(INVALID):
            continue
        try:
            with transaction.atomic():
                _apply_user(data)
        except ConfigError as exc:
            errors.extend(exc.prefixed(("users", index)).errors)
    return errors


def _apply_server(data: dict[str, Any]) -> VirtualServer:
    data = dict(data)
    domains = data.pop("domains", [])
    server = VirtualServer.objects.filter(name=data["name"]).first() or VirtualServer()
    full = _with_defaults(VirtualServer, SERVER_LAYOUT, data, keep_secrets=server.pk is not None)
    full.setdefault("connection_entries", [])
    full.setdefault("relay_entries", [])
    full.setdefault("proxy_entries", [])
    full["bindings"] = full.get("bindings") or [DEFAULT_BINDING]
    if not full.get("default_domain"):
        full["default_domain"] = next(d["name"] for d in domains if d.get("is_default"))
    server_apply(server, full)
    _apply_domains(server, domains)
    return server


def _apply_domains(server: VirtualServer, domains: list[dict[str, Any]]) -> None:
    names = [d["name"].lower().rstrip(".") for d in domains if not d.get("is_default")]
    server.domains.filter(is_default=False).exclude(name__in=names).delete()
    errors: list[FieldError] = []
    for index, data in enumerate(domains):
        if data.get("is_default"):
            continue  # the default domain was set through default_domain
        existing = server.domains.filter(name=data["name"].lower().rstrip(".")).first()
        domain = existing or Domain(server=server)
        full = _with_defaults(Domain, DOMAIN_LAYOUT, data, keep_secrets=existing is not None)
        try:
            with transaction.atomic():
                domain_apply(domain, full)
        except ConfigError as exc:
            errors.extend(exc.prefixed(("domains", index)).errors)
    if errors:
        raise ConfigError(errors)


def _apply_user(data: dict[str, Any]) -> None:
    data = dict(data)
    names = data.pop("servers", [])
    user = SmtpUser.objects.filter(username=data["username"]).first() or SmtpUser()
    if user.pk is None and not data.get("password"):
        raise ConfigError.at(("password",), "A new user needs a password.")
    data.setdefault("is_active", True)
    data.setdefault("allow_cram_md5", False)
    data["servers"] = list(VirtualServer.objects.filter(name__in=names))
    user_apply(user, data)
