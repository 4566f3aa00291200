"""Configuration objects for worker tests, with IIS defaults, built without Django."""

from __future__ import annotations

import ipaddress
import random
import socket
import struct
from dataclasses import replace
from pathlib import Path
from typing import Any

import trustme

from smtpworker.core import credentials
from smtpworker.core.config import (
    SCHEMA,
    AccessPolicy,
    AuthConfig,
    DeliveryConfig,
    DomainConfig,
    LoggingConfig,
    MessageLimits,
    OutboundConfig,
    OutboundSecurity,
    RelayPolicy,
    ServerConfig,
    SiteConfig,
    TlsConfig,
    UserConfig,
)
from smtpworker.core.configmac import body_key, sign
from smtpworker.core.contract import encryption_key_setting
from smtpworker.core.grammar import parse_access_entry, parse_binding
from smtpworker.core.secretbox import SecretBox
from smtpworker.inbound.proxyproto import V2_SIGNATURE

BOX = SecretBox("test encryption key")
NO_SECURITY = OutboundSecurity(
    tls="opportunistic", auth_method="anonymous", username="", password=""
)


def free_port(host: str = "127.0.0.1") -> int:
    """A port that is free now, chosen below the kernel's ephemeral range.

    Port 0 would hand out an ephemeral port, which any client connection on the machine
    (a load test, a worker) may take before the server under test binds it.
    """
    low, _high = _ephemeral_range()
    for _ in range(200):
        port = random.randrange(10_000, max(low, 10_001))
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port found below the ephemeral range")


def _ephemeral_range() -> tuple[int, int]:
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        low, high = text.split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def local(name: str, default: bool = False) -> DomainConfig:
    return DomainConfig(name, "local", default, False, "", False, False, NO_SECURITY)


def remote(name: str, relay: bool = True, smart_host: str = "") -> DomainConfig:
    return DomainConfig(
        name, "remote", False, relay, smart_host, bool(smart_host), False, NO_SECURITY
    )


def server(name: str = "Test", *bindings: str, **overrides: Any) -> ServerConfig:
    """A server with IIS 6 defaults; ``auth=dict(...)``, ``relay=dict(...)`` and the like
    change single fields of a section."""
    base = ServerConfig(
        id=1,
        name=name,
        state="started",
        node="",
        bindings=tuple(parse_binding(b) for b in bindings),
        fqdn=f"{name.lower()}.example.test",
        home_directory="",
        connection_limit=None,
        connection_timeout=600,
        logging=LoggingConfig(enabled=False, period="daily", fields=("date", "time", "c-ip")),
        auth=AuthConfig(True, False, False, "", False, False),
        tls=TlsConfig("", "", False),
        connection=AccessPolicy("all_except_list", ()),
        relay=RelayPolicy("only_list", (), True),
        messages=MessageLimits(2048 * 1024, 10240 * 1024, 20, 100, "", ""),
        delivery=DeliveryConfig(
            (15, 30, 60, 240),
            720,
            2880,
            720,
            2880,
            15,
            "",
            "",
            False,
            False,
            (),
            OutboundConfig(25, 1000, 100, 600, NO_SECURITY),
        ),
        domains=(local(f"{name.lower()}.test", default=True),),
    )
    sections = {"auth", "tls", "messages", "delivery", "logging", "auth_brake"}
    for key in list(overrides):
        if key in sections and isinstance(overrides[key], dict):
            overrides[key] = replace(getattr(base, key), **overrides[key])
        elif key in ("connection", "relay") and isinstance(overrides[key], dict):
            spec = dict(overrides[key])
            spec["entries"] = tuple(parse_access_entry(e) for e in spec.get("entries", ()))
            overrides[key] = replace(getattr(base, key), **spec)
    return replace(base, **overrides)


def tls_identity(hostname: str) -> tuple[str, str, trustme.CA]:
    """A certificate chain and its private key for ``hostname`` (PEM text), and the CA that
    issued them (``ca.configure_trust(context)`` for a client)."""
    ca = trustme.CA()
    cert = ca.issue_cert(hostname)
    chain = "".join(blob.bytes().decode() for blob in cert.cert_chain_pems)
    return chain, cert.private_key_pem.bytes().decode(), ca


def tls_with(identity: tuple[str, str, trustme.CA], **fields: Any) -> dict[str, Any]:
    """The ``tls=`` override of :func:`server` that serves ``identity``, its key sealed as
    the configuration carries it; ``fields`` change others (``require=True``)."""
    chain, key, _ca = identity
    return {"certificate": chain, "private_key": BOX.seal(key), **fields}


def user(username: str, password: str, *servers: str, cram: bool = False) -> UserConfig:
    return UserConfig(
        username=username,
        active=True,
        password_hash=credentials.hash_password(password, iterations=1000),
        scram_sha256=credentials.make_scram_verifier(password, iterations=4096).to_text(),
        cram_md5_context=BOX.seal(credentials.make_cram_md5_context(password)) if cram else "",
        servers=tuple(servers),
    )


def site(
    *servers: ServerConfig, users: tuple[UserConfig, ...] = (), version: int = 1
) -> SiteConfig:
    return SiteConfig(schema=SCHEMA, version=version, servers=servers, users=users)


def published(body: str) -> bytes:
    """``body`` (a :func:`~smtpworker.core.config.dump_site` text) as the web side publishes it:
    signed with the key the worker processes this one starts will read from the
    environment (``MAILADMIN_ENCRYPTION_KEY``, else ``SECRET_KEY``, each also as ``*_FILE``)."""
    _name, key = encryption_key_setting()
    return sign(body_key(key), body.encode())


# --- PROXY protocol headers, as a load balancer sends them ---------------------------------


def v2(command: int, family: int, block: bytes, *, version: int = 2) -> bytes:
    """A v2 header as a proxy sends it: signature, version/command, family, length, block."""
    return (
        V2_SIGNATURE
        + bytes([version << 4 | command, family])
        + struct.pack("!H", len(block))
        + block
    )


def tcp4(src: str, dst: str, sport: int, dport: int) -> bytes:
    """A v2 TCP-over-IPv4 address block."""
    return (
        ipaddress.IPv4Address(src).packed
        + ipaddress.IPv4Address(dst).packed
        + struct.pack("!HH", sport, dport)
    )


def tcp6(src: str, dst: str, sport: int, dport: int) -> bytes:
    """A v2 TCP-over-IPv6 address block."""
    return (
        ipaddress.IPv6Address(src).packed
        + ipaddress.IPv6Address(dst).packed
        + struct.pack("!HH", sport, dport)
    )


def tlv(kind: int, value: bytes) -> bytes:
    """A v2 type-length-value entry."""
    return bytes([kind]) + struct.pack("!H", len(value)) + value
