"""The configuration snapshot the SMTP worker runs on: frozen dataclasses, no ORM.

``mailadmin.snapshot`` builds a :class:`SiteConfig` from database rows; the body is
canonical JSON (:func:`dump_site`) published under a version number. A worker parses it
back with :func:`load_site`, which validates every field and refuses an unknown schema,
so a half-understood configuration is never swapped in.

Secrets (TLS private keys, outbound passwords, CRAM-MD5 contexts) travel sealed by
``smtpworker.core.secretbox``; the worker opens them with the shared encryption key.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from smtpworker.core.contract import (
    DomainKind,
    ListMode,
    OutboundAuth,
    OutboundTls,
    ServerState,
)
from smtpworker.core.grammar import (
    AccessEntry,
    Binding,
    GrammarError,
    domain_matches,
    parse_access_entry,
    parse_binding,
)

SCHEMA = 1

# The values a field may take (plain strings: they read back from JSON as such).
LIST_MODES = tuple(m.value for m in ListMode)
SERVER_STATES = tuple(s.value for s in ServerState)
AUTH_METHODS = tuple(m.value for m in OutboundAuth)
TLS_LEVELS = tuple(t.value for t in OutboundTls)
DOMAIN_KINDS = tuple(k.value for k in DomainKind)


class ConfigFormatError(ValueError):
    """The snapshot body is not a valid configuration of a schema this worker knows."""


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    enabled: bool
    period: str
    fields: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AuthConfig:
    anonymous: bool
    basic: bool
    basic_requires_tls: bool
    basic_default_domain: str
    integrated: bool
    cram_md5: bool


@dataclass(frozen=True, slots=True)
class AuthBrakeConfig:
    """The brake on password guessing, per server and client (``smtpworker.inbound.authbrake``).

    After ``failures_before_delay`` failed AUTH within ``window_seconds`` each further
    failure is answered more slowly; ``block_after_failures`` failures within the window
    answer every AUTH from that client with 454 for ``block_seconds``. Mail that needs no
    AUTH is never refused by it.
    """

    enabled: bool = True
    failures_before_delay: int = 3
    block_after_failures: int = 10
    window_seconds: int = 900
    block_seconds: int = 900


@dataclass(frozen=True, slots=True)
class TlsConfig:
    certificate: str
    private_key: str  # sealed
    require: bool

    @property
    def enabled(self) -> bool:
        return bool(self.certificate and self.private_key)


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    """Connection control: ``all_except_list`` grants everyone but the entries."""

    mode: str
    entries: tuple[AccessEntry, ...]


@dataclass(frozen=True, slots=True)
class RelayPolicy:
    """Relay restrictions: ``only_list`` lets only the entries relay (the IIS default)."""

    mode: str
    entries: tuple[AccessEntry, ...]
    allow_authenticated: bool


@dataclass(frozen=True, slots=True)
class MessageLimits:
    """Sizes in bytes; ``None`` means no limit (the IIS check box cleared)."""

    max_message_size: int | None
    max_session_size: int | None
    max_messages_per_connection: int | None
    max_recipients_per_message: int | None
    ndr_copy_to: str
    badmail_directory: str


@dataclass(frozen=True, slots=True)
class OutboundSecurity:
    """How to talk to a next hop, like Postfix's ``smtp_tls_security_level``.

    ``tls``: ``opportunistic`` (STARTTLS when offered, any certificate; clear text when it
    is not offered or fails), ``required`` (STARTTLS or no delivery; any certificate), or
    ``verified`` (STARTTLS with a certificate that chains to ``tls_ca``, PEM, or to the
    system's CAs when that is empty, and names the host). AUTH is sent only inside TLS
    unless ``cleartext_auth`` allows it without.
    """

    tls: str
    auth_method: str
    username: str
    password: str  # sealed
    # Last and defaulted: bodies published before they existed still load.
    tls_ca: str = ""
    cleartext_auth: bool = False

    @property
    def tls_required(self) -> bool:
        return self.tls != OutboundTls.OPPORTUNISTIC


@dataclass(frozen=True, slots=True)
class OutboundConfig:
    port: int
    connection_limit: int | None
    per_domain_limit: int | None
    timeout: int
    security: OutboundSecurity


@dataclass(frozen=True, slots=True)
class DeliveryConfig:
    retry_minutes: tuple[int, ...]
    delay_notification_minutes: int
    expiration_minutes: int
    local_delay_notification_minutes: int
    local_expiration_minutes: int
    max_hop_count: int
    masquerade_domain: str
    smart_host: str
    attempt_direct_first: bool
    reverse_dns_lookup: bool
    dns_servers: tuple[str, ...]
    outbound: OutboundConfig


@dataclass(frozen=True, slots=True)
class DomainConfig:
    name: str
    kind: str
    default: bool
    relay_allowed: bool
    smart_host: str
    forward_all_to_smart_host: bool
    use_helo: bool
    security: OutboundSecurity


@dataclass(frozen=True, slots=True)
class ServerConfig:
    id: int
    name: str
    state: str
    node: str
    bindings: tuple[Binding, ...]
    fqdn: str
    home_directory: str
    connection_limit: int | None
    connection_timeout: int
    logging: LoggingConfig
    auth: AuthConfig
    tls: TlsConfig
    connection: AccessPolicy
    relay: RelayPolicy
    messages: MessageLimits
    delivery: DeliveryConfig
    domains: tuple[DomainConfig, ...]
    # Who may send a PROXY protocol header to this server's PROXY bindings (IPs and
    # networks only). Last and defaulted: bodies published before it existed still load.
    trusted_proxies: tuple[AccessEntry, ...] = ()
    # Concurrent sessions one client (an IPv4 address, an IPv6 /64) may hold open on this
    # server, like Postfix's smtpd_client_connection_count_limit; None is unlimited.
    client_connection_limit: int | None = 50
    auth_brake: AuthBrakeConfig = AuthBrakeConfig()

    @property
    def default_domain(self) -> str:
        for domain in self.domains:
            if domain.default:
                return domain.name
        return ""


def domain_entry(domains: Iterable[DomainConfig], domain: str) -> DomainConfig | None:
    """The domain entry that decides for mail to ``domain``, or None when none matches.

    The one rule shared by the relay policy and routing (so a recipient is never accepted
    under one entry and routed under another): a local domain of that exact name; else a
    remote domain of that exact name; else the most specific remote wildcard that matches
    (``*.a.example.com`` before ``*.example.com``; of two equal ones, the first listed).
    Names are compared case-insensitively and without a trailing dot. A local entry is only
    ever an exact name: the console refuses wildcards for local domains.
    """
    name = _lookup_name(domain)
    best: DomainConfig | None = None
    best_rank = -1
    for entry in domains:
        pattern = _lookup_name(entry.name)
        if pattern == name:
            rank = _LOCAL_EXACT if entry.kind == DomainKind.LOCAL else _REMOTE_EXACT
        elif (
            entry.kind == DomainKind.REMOTE
            and pattern.startswith("*.")
            and domain_matches(pattern, name)
        ):
            # Every matching wildcard is a suffix of the name: the longer, the more labels.
            rank = len(pattern)
        else:
            continue
        if rank > best_rank:
            best, best_rank = entry, rank
    return best


# Above any wildcard's length (a name has at most 253 octets).
_REMOTE_EXACT = 1000
_LOCAL_EXACT = 1001


def _lookup_name(name: str) -> str:
    return name.strip().lower().removesuffix(".")


@dataclass(frozen=True, slots=True)
class UserConfig:
    username: str
    active: bool
    password_hash: str
    scram_sha256: str
    cram_md5_context: str  # sealed; empty unless the user may use CRAM-MD5
    servers: tuple[str, ...]  # server names; empty means every server

    def may_use(self, server_name: str) -> bool:
        return self.active and (not self.servers or server_name in self.servers)


@dataclass(frozen=True, slots=True)
class SiteConfig:
    schema: int
    version: int
    servers: tuple[ServerConfig, ...]
    users: tuple[UserConfig, ...]
    # Which database published this body (a random id made once per database) and the
    # SHA-256 of its runtime part (the body with version, site and digest left out). A
    # worker applies any body whose site or digest differs from what it runs: a version
    # number alone is no identity (a reinstall or a restored backup reuses numbers).
    site: str = ""
    digest: str = ""

    def server(self, name: str) -> ServerConfig | None:
        for server in self.servers:
            if server.name == name:
                return server
        return None


_CHOICES: dict[tuple[type, str], tuple[str, ...]] = {
    (ServerConfig, "state"): SERVER_STATES,
    (AccessPolicy, "mode"): LIST_MODES,
    (RelayPolicy, "mode"): LIST_MODES,
    (OutboundSecurity, "auth_method"): AUTH_METHODS,
    (OutboundSecurity, "tls"): TLS_LEVELS,
    (DomainConfig, "kind"): DOMAIN_KINDS,
}


def to_data(value: Any) -> Any:
    """Turn a config object tree into JSON-ready data (tuples to lists, grammar to text)."""
    if isinstance(value, Binding | AccessEntry):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        # A field added after the schema was published (it has a default) is written only
        # when set, so a configuration that does not use it keeps its text and hash.
        return {
            f.name: to_data(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if f.default is dataclasses.MISSING or getattr(value, f.name) != f.default
        }
    if isinstance(value, tuple | list):
        return [to_data(item) for item in value]
    return value


def dump_site(site: SiteConfig) -> str:
    """Canonical JSON: the same configuration always gives the same text (and hash)."""
    return json.dumps(to_data(site), sort_keys=True, separators=(",", ":"))


def load_site(body: str | bytes | dict[str, Any]) -> SiteConfig:
    """Parse and fully validate a snapshot body; raise ConfigFormatError on any problem."""
    try:
        data = json.loads(body) if isinstance(body, str | bytes) else body
    except ValueError as exc:
        raise ConfigFormatError(f"snapshot is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigFormatError("snapshot is not a JSON object")
    if data.get("schema") != SCHEMA:
        raise ConfigFormatError(
            f"snapshot schema {data.get('schema')!r} is not supported (this worker knows {SCHEMA})"
        )
    return _decode(SiteConfig, data, "site")


T = TypeVar("T")


def _decode(cls: type[T], data: Any, path: str) -> T:
    if not isinstance(data, dict):
        raise ConfigFormatError(f"{path}: expected an object")
    if cls is OutboundSecurity and type(data.get("tls")) is bool:
        # A body written when outbound TLS was a check box: "required" kept its meaning.
        level = OutboundTls.REQUIRED if data["tls"] else OutboundTls.OPPORTUNISTIC
        data = {**data, "tls": level.value}
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    # A field with a default was added after the schema was first published; a body
    # written before it (a node's last good file) leaves it out and gets the default.
    missing = [f.name for f in fields if f.name not in data and f.default is dataclasses.MISSING]
    if missing:
        raise ConfigFormatError(f"{path}: missing {', '.join(missing)}")
    names = [f.name for f in fields if f.name in data]
    values = {n: _decode_value(hints[n], data[n], f"{path}.{n}") for n in names}
    for name, choices in ((n, c) for (k, n), c in _CHOICES.items() if k is cls):
        if values[name] not in choices:
            raise ConfigFormatError(f"{path}.{name}: {values[name]!r} is not one of {choices}")
    if cls is ServerConfig:  # the grammar of access entries allows names; proxies are IPs
        for index, entry in enumerate(values.get("trusted_proxies", ())):
            if entry.kind == "domain":
                raise ConfigFormatError(f"{path}.trusted_proxies[{index}]: {entry} is a name")
    return cls(**values)


def _decode_value(hint: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(hint)
    if origin is types.UnionType:
        if value is None:
            return None
        (inner,) = [a for a in typing.get_args(hint) if a is not type(None)]
        return _decode_value(inner, value, path)
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigFormatError(f"{path}: expected a list")
        (inner, _ellipsis) = typing.get_args(hint)
        return tuple(_decode_value(inner, v, f"{path}[{i}]") for i, v in enumerate(value))
    if hint in (Binding, AccessEntry):
        parse = parse_binding if hint is Binding else parse_access_entry
        if not isinstance(value, str):
            raise ConfigFormatError(f"{path}: expected text")
        try:
            return parse(value)
        except GrammarError as exc:
            raise ConfigFormatError(f"{path}: {exc}") from exc
    if dataclasses.is_dataclass(hint):
        return _decode(hint, value, path)  # type: ignore[arg-type]
    # bool is a subclass of int: refuse true where a number is expected and vice versa.
    if type(value) is not hint:
        raise ConfigFormatError(f"{path}: expected {hint.__name__}, got {type(value).__name__}")
    return value
