"""The shape of the configuration document, mapped onto model fields.

One table per object: a document key maps to a model field name, a nested table (a
section such as ``authentication``), or a ``@name`` handled by the services (bindings,
access lists, the default domain). The API serializers are generated from these tables and
service errors are reported at the paths they give, so the API, the config document and
the console speak one vocabulary. ``mailadmin.snapshot`` copies the plain leaves into the
worker's configuration by the same keys, and ``tests/test_layout_reach.py`` checks that
every leaf reaches the worker, the document, the API schema and the console.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Union

Layout = dict[str, Union[str, "Layout"]]

# How a server reaches remote hosts; a remote domain may override it (DOMAIN_LAYOUT).
OUTBOUND_SECURITY_LAYOUT: Layout = {
    "tls": "outbound_tls",
    "tls_ca": "outbound_tls_ca",
    "auth": {
        "method": "outbound_auth_method",
        "username": "outbound_username",
        "password": "outbound_password",
        "allow_cleartext": "outbound_cleartext_auth",
    },
}

SERVER_LAYOUT: Layout = {
    "name": "name",
    "description": "description",
    "state": "state",
    "node": "node",
    "bindings": "@bindings",
    # Addresses allowed to send PROXY protocol headers to the bindings marked "proxy".
    "trusted_proxies": "@proxy_entries",
    "fqdn": "fqdn",
    "default_domain": "@default_domain",
    "home_directory": "home_directory",
    "connection_limit": "connection_limit",
    "client_connection_limit": "client_connection_limit",
    "connection_timeout": "connection_timeout",
    "logging": {
        "enabled": "logging_enabled",
        "period": "logging_period",
        "fields": "logging_fields",
    },
    "authentication": {
        "anonymous": "auth_anonymous",
        "basic": "auth_basic",
        "basic_requires_tls": "auth_basic_requires_tls",
        "basic_default_domain": "auth_basic_default_domain",
        "integrated": "auth_integrated",
        "cram_md5": "auth_cram_md5",
        "brake": {
            "enabled": "auth_brake_enabled",
            "failures_before_delay": "auth_failures_before_delay",
            "block_after_failures": "auth_block_after_failures",
            "window_minutes": "auth_failure_window_minutes",
            "block_minutes": "auth_block_minutes",
        },
    },
    "tls": {
        "certificate": "tls_certificate",
        "private_key": "tls_private_key",
        "require": "tls_require",
    },
    "connection_control": {"mode": "connection_mode", "list": "@connection_entries"},
    "relay": {
        "mode": "relay_mode",
        "list": "@relay_entries",
        "allow_authenticated": "relay_allow_authenticated",
    },
    "messages": {
        "max_message_size_kb": "max_message_size_kb",
        "max_session_size_kb": "max_session_size_kb",
        "max_messages_per_connection": "max_messages_per_connection",
        "max_recipients_per_message": "max_recipients_per_message",
        "ndr_copy_to": "ndr_copy_to",
        "badmail_directory": "badmail_directory",
    },
    "delivery": {
        "retry_minutes": "retry_minutes",
        "delay_notification_minutes": "delay_notification_minutes",
        "expiration_minutes": "expiration_minutes",
        "local_delay_notification_minutes": "local_delay_notification_minutes",
        "local_expiration_minutes": "local_expiration_minutes",
        "max_hop_count": "max_hop_count",
        "masquerade_domain": "masquerade_domain",
        "smart_host": "smart_host",
        "attempt_direct_first": "attempt_direct_first",
        "reverse_dns_lookup": "reverse_dns_lookup",
        "dns_servers": "dns_servers",
        "outbound": {
            "port": "outbound_port",
            "connection_limit": "outbound_connection_limit",
            "per_domain_limit": "outbound_per_domain_limit",
            "timeout": "outbound_timeout",
            **OUTBOUND_SECURITY_LAYOUT,
        },
    },
}

DOMAIN_LAYOUT: Layout = {
    "name": "name",
    "type": "kind",
    "default": "is_default",
    "relay_allowed": "relay_allowed",
    "smart_host": "smart_host",
    "forward_all_to_smart_host": "forward_all_to_smart_host",
    "use_helo": "use_helo",
    "outbound": OUTBOUND_SECURITY_LAYOUT,
}

# Written, never read back: exports and API responses leave them out.
SECRET_FIELDS = frozenset({"tls_private_key", "outbound_password"})


def walk(layout: Layout, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], str]]:
    """Yield ``(document path, target)`` for every leaf of a layout."""
    for key, target in layout.items():
        if isinstance(target, dict):
            yield from walk(target, prefix + (key,))
        else:
            yield prefix + (key,), target


def field_paths(layout: Layout) -> dict[str, tuple[str, ...]]:
    """Model field (or ``@name`` without the ``@``) -> its document path."""
    return {target.lstrip("@"): path for path, target in walk(layout)}


SERVER_FIELD_PATHS = field_paths(SERVER_LAYOUT)
DOMAIN_FIELD_PATHS = field_paths(DOMAIN_LAYOUT)
