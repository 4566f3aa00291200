"""Django validators over the one grammar in ``smtpworker.core.grammar``.

Model fields carry these, so ``full_clean()``, ModelForms and DRF serializers all refuse
bad input with the same message. A validator only checks; normalising to canonical text
is done by ``canonical_*`` helpers that services call before saving.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import PurePosixPath
from typing import Any

from django.core.exceptions import ValidationError

from smtpworker.core import grammar
from smtpworker.core.tlsinfo import TlsConfigError, check_ca_certificates


def _check(parse: Callable[[str], Any], value: str) -> None:
    if value == "":
        return
    try:
        parse(value)
    except grammar.GrammarError as exc:
        raise ValidationError(str(exc), code="invalid") from exc


# Named module-level functions (not closures) so migrations can reference them.
def domain(value: str) -> None:
    _check(grammar.parse_domain, value)


def domain_or_wildcard(value: str) -> None:
    _check(lambda v: grammar.parse_domain(v, allow_wildcard=True), value)


def smart_host(value: str) -> None:
    _check(grammar.parse_smart_host, value)


def access_entry(value: str) -> None:
    _check(grammar.parse_access_entry, value)


def binding(value: str) -> None:
    _check(grammar.parse_binding, value)


def mailbox(value: str) -> None:
    _check(grammar.parse_forward_path, value)


def pem_certificates(value: str) -> None:
    """CA certificates (PEM) that verified outbound TLS will trust; empty is allowed."""
    if not value.strip():
        return
    try:
        check_ca_certificates(value)
    except TlsConfigError as exc:
        raise ValidationError(exc.message, code="invalid") from exc


def proxy_protocol_errors(
    bindings: Sequence[grammar.Binding], trusted: Sequence[grammar.AccessEntry]
) -> Iterator[tuple[str, int, str]]:
    """The PROXY protocol rules that span a server's bindings and its trusted proxies, as
    ``(field, index, message)`` with ``field`` "bindings" or "proxy_entries".

    A trusted proxy is an IP address or network, never a name (it is recognised before
    anything is read, by its address alone). A binding that takes the PROXY protocol
    needs at least one trusted proxy: it refuses every other sender, so without one it
    would refuse everyone.
    """
    for index, entry in enumerate(trusted):
        if entry.kind == "domain":
            message = (
                f"{entry}: give a trusted proxy by IP address or network "
                "(10.0.0.5, 10.0.0.0/24), not by name."
            )
            yield "proxy_entries", index, message
    if trusted:
        return
    for index, item in enumerate(bindings):
        if item.proxy:
            message = (
                f"{item} takes the PROXY protocol but no trusted proxy is listed: list the "
                "load balancer's addresses under trusted proxies, or remove 'proxy'."
            )
            yield "bindings", index, message


_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}$")
_NODE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_USER_RE = re.compile(r"^[^\s:\x00-\x1f\x7f]{1,254}$")


def server_name(value: str) -> None:
    if not _NAME_RE.match(value) or value != value.strip():
        raise ValidationError(
            "Use letters, digits, spaces, '.', '_' or '-', starting with a letter or digit "
            "(at most 64 characters).",
            code="invalid",
        )


def node(value: str) -> None:
    if value and not _NODE_RE.match(value):
        raise ValidationError(
            "A node name is letters, digits, '.', '_' or '-' (empty means every node).",
            code="invalid",
        )


def smtp_username(value: str) -> None:
    if not _USER_RE.match(value):
        raise ValidationError(
            "A user name has no spaces, colons or control characters (at most 254).",
            code="invalid",
        )


def home_directory(value: str) -> None:
    if value and not PurePosixPath(value).is_absolute():
        raise ValidationError("Give an absolute path, such as /srv/mailroot/corp.", code="invalid")


def retry_minutes(value: Any) -> None:
    message = (
        "Give the first, second and third retry intervals and the interval for every "
        "later retry, in minutes: four whole numbers from 1 to 10080, like [15, 30, 60, 240]."
    )
    if not isinstance(value, list) or len(value) != 4:
        raise ValidationError(message, code="invalid")
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int) or not 1 <= item <= 10080:
            raise ValidationError(message, code="invalid")


def dns_servers(value: Any) -> None:
    if not isinstance(value, list):
        raise ValidationError("Give a list of DNS server addresses.", code="invalid")
    for item in value:
        if not isinstance(item, str):
            raise ValidationError("Each DNS server is text such as 10.0.0.53 or 127.0.0.1:5353.")
        try:
            grammar.parse_dns_server(item)
        except grammar.GrammarError as exc:
            raise ValidationError(str(exc), code="invalid") from exc


W3C_FIELDS = frozenset(
    "date time c-ip cs-username s-sitename s-computername s-ip s-port cs-method cs-uri-stem "
    "cs-uri-query sc-status sc-win32-status sc-bytes cs-bytes time-taken cs-version cs-host "
    "cs(User-Agent) cs(Cookie) cs(Referer)".split()
)


def log_fields(value: Any) -> None:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValidationError("Give a list of W3C extended log field names.", code="invalid")
    unknown = sorted(set(value) - W3C_FIELDS)
    if unknown:
        raise ValidationError(
            f"Unknown W3C field(s): {', '.join(unknown)}. Known: {', '.join(sorted(W3C_FIELDS))}.",
            code="invalid",
        )


def canonical_domain(value: str, *, allow_wildcard: bool = False) -> str:
    return grammar.parse_domain(value, allow_wildcard=allow_wildcard) if value else ""


def canonical_smart_host(value: str) -> str:
    return str(grammar.parse_smart_host(value)) if value else ""
