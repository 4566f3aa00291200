"""The audit log: what each configuration version changed, in words.

Every change, from the console, the API or an imported document, goes through
``config_publish``, which stores the whole configuration as a ``ConfigSnapshot`` with its
author. Diffing consecutive bodies therefore tells who changed what and when, without a
second record that could drift. Secrets are stored sealed: a change to one is reported as
"changed", never with a value.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from mailadmin.models import ConfigSnapshot

# Snapshot keys -> the configuration document's words, so the log reads like the document.
_RENAMES = {"auth": "authentication", "connection": "connection_control", "entries": "list"}
_SECRETS = frozenset({"private_key", "password"})
# Texts too long to print in a line; their change is reported, not their value.
_LONG = frozenset({"certificate"})
_USER_VERIFIERS = ("password_hash", "scram_sha256", "cram_md5_context")
# Lists whose order means something; every other list is compared as a set.
_ORDERED = frozenset({"retry_minutes"})


@dataclass(frozen=True, slots=True)
class AuditEntry:
    version: int
    author: str
    reason: str
    created: datetime
    changes: list[str]


def snapshot_changes(before: dict[str, Any] | None, after: dict[str, Any]) -> list[str]:
    """Human-readable changes from one snapshot body to the next (``before`` None: the first)."""
    before = before or {"servers": [], "users": []}
    changes: list[str] = []
    old_servers = {s["id"]: s for s in before.get("servers", [])}
    new_servers = {s["id"]: s for s in after.get("servers", [])}
    for key, server in new_servers.items():
        old = old_servers.get(key)
        where = f"servers[{server['name']}]"
        if old is None:
            changes.append(f"{where}: created")
            continue
        changes.extend(_server_changes(where, old, server))
    for key, server in old_servers.items():
        if key not in new_servers:
            changes.append(f"servers[{server['name']}]: deleted")
    changes.extend(_user_changes(before.get("users", []), after.get("users", [])))
    return changes


def _server_changes(where: str, old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    old = dict(old)
    new = dict(new)
    old_domains = {d["name"]: d for d in old.pop("domains", [])}
    new_domains = {d["name"]: d for d in new.pop("domains", [])}
    changes = _dict_changes(where, old, new, skip={"id"})
    for name, domain in new_domains.items():
        if name not in old_domains:
            changes.append(f"{where}.domains[{name}]: added ({_domain_kind(domain)})")
        else:
            changes.extend(_dict_changes(f"{where}.domains[{name}]", old_domains[name], domain))
    for name, domain in old_domains.items():
        if name not in new_domains:
            changes.append(f"{where}.domains[{name}]: removed ({_domain_kind(domain)})")
    return changes


def _domain_kind(domain: dict[str, Any]) -> str:
    if domain.get("default"):
        return "default local domain"
    return f"{domain.get('kind', 'remote')} domain"


def _user_changes(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> list[str]:
    changes: list[str] = []
    old_users = {u["username"]: u for u in before}
    new_users = {u["username"]: u for u in after}
    for name, user in new_users.items():
        where = f"users[{name}]"
        old = old_users.get(name)
        if old is None:
            changes.append(f"{where}: created")
            continue
        if any(old.get(k) != user.get(k) for k in _USER_VERIFIERS[:2]):
            changes.append(f"{where}.password: changed")
        plain_old = {k: v for k, v in old.items() if k not in _USER_VERIFIERS}
        plain_new = {k: v for k, v in user.items() if k not in _USER_VERIFIERS}
        changes.extend(_dict_changes(where, plain_old, plain_new))
    for name in old_users:
        if name not in new_users:
            changes.append(f"users[{name}]: deleted")
    return changes


def _dict_changes(
    where: str,
    old: dict[str, Any],
    new: dict[str, Any],
    skip: frozenset[str] | set[str] = frozenset(),
) -> list[str]:
    changes: list[str] = []
    for key in sorted(set(old) | set(new)):
        if key in skip or old.get(key) == new.get(key):
            continue
        path = f"{where}.{_RENAMES.get(key, key)}"
        before, after = old.get(key), new.get(key)
        if isinstance(before, dict) and isinstance(after, dict):
            changes.extend(_dict_changes(path, before, after))
        elif key in _SECRETS or key in _LONG:
            changes.append(f"{path}: {_secret_change(before, after)}")
        elif isinstance(before, list) and isinstance(after, list) and key not in _ORDERED:
            changes.extend(_list_changes(path, before, after))
        else:
            changes.append(f"{path}: {_show(before)} → {_show(after)}")
    return changes


def _secret_change(before: Any, after: Any) -> str:
    if not before:
        return "set"
    if not after:
        return "removed"
    return "changed"


def _list_changes(path: str, before: list[Any], after: list[Any]) -> list[str]:
    added = [item for item in after if item not in before]
    removed = [item for item in before if item not in after]
    changes = [f"{path}: added {_show(item)}" for item in added]
    changes += [f"{path}: removed {_show(item)}" for item in removed]
    if not changes:
        changes.append(f"{path}: reordered ({', '.join(_show(i) for i in after)})")
    return changes


def _show(value: Any) -> str:
    if value is None:
        return "(none)"
    if value == "":
        return "(empty)"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return str(value)


def audit_entries(*, limit: int = 50, before_version: int | None = None) -> list[AuditEntry]:
    """The newest ``limit`` versions (older than ``before_version`` if given), newest first."""
    rows = ConfigSnapshot.objects.order_by("-id")
    if before_version is not None:
        rows = rows.filter(id__lt=before_version)
    page = list(rows[: limit + 1])
    entries = []
    for index, snapshot in enumerate(page[:limit]):
        # One row more than the page was read, so a missing predecessor means the first version.
        previous = page[index + 1] if index + 1 < len(page) else None
        entries.append(
            AuditEntry(
                version=snapshot.pk,
                author=snapshot.author or "system",
                reason=snapshot.reason,
                created=snapshot.created,
                changes=snapshot_changes(previous.body if previous else None, snapshot.body),
            )
        )
    return entries
