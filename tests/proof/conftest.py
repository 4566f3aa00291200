"""Shared pieces of the proof suites: a live SMTP node, a raw SMTP client, Django users.

The SMTP suites talk to a real :class:`~smtpworker.tests.harness.LiveNode` (the worker's
own ``Node`` on an event-loop thread) over loopback sockets, with a client that sends
exactly the bytes a test gives it, so malformed input reaches the server as written.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User

# Fixtures of the web side's tests, shared here (admin_user is this suite's own, below).
from mailadmin.tests.conftest import api, mailroot, stack, test_redis  # noqa: F401
from mailadmin.tests.factories import console_user
from smtpworker.core.config import ServerConfig, UserConfig
from smtpworker.core.spool import Envelope, Spool
from smtpworker.tests.conftest import redis_url  # noqa: F401 (a fixture, shared here)
from smtpworker.tests.factories import free_port, local, remote, server, site
from smtpworker.tests.harness import LiveNode

LONG_ENV = "MAILADMIN_PROOF_LONG"

# The typical site's Internet relay: anonymous mail only for its own domains.
LOCAL_DOMAIN = "bogus2"
REMOTE_DOMAIN = "example.com"
ALLOWED_DOMAINS = frozenset({LOCAL_DOMAIN, REMOTE_DOMAIN})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Suites marked ``long`` run only under ``bin/proof`` (which sets MAILADMIN_PROOF_LONG)."""
    if os.environ.get(LONG_ENV) == "1":
        return
    skip = pytest.mark.skip(reason=f"long proof suite: run by `make proof` ({LONG_ENV}=1)")
    for item in items:
        if item.get_closest_marker("long") is not None:
            item.add_marker(skip)


# --- SMTP -----------------------------------------------------------------------------------


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveNode]:
    node = LiveNode(tmp_path)
    yield node
    node.close()


def serve(live: LiveNode, cfg: ServerConfig, users: tuple[UserConfig, ...] = ()) -> tuple[str, int]:
    """Apply a one-server site to the node; return the server's (host, port)."""
    version = (live.node.site.version + 1) if live.node.site else 1
    live.apply(site(cfg, users=users, version=version))
    binding = cfg.bindings[0]
    return binding.host or "127.0.0.1", binding.port


def spool_of(live: LiveNode, name: str) -> Spool:
    return Spool(live.node.home(live.node.contexts[name].cfg) / "Queue")


def spooled(live: LiveNode, name: str) -> list[tuple[Envelope, bytes]]:
    spool = spool_of(live, name)
    return [spool.load(queue_id) for queue_id in spool.ids()]


def internet_relay(**overrides: Any) -> ServerConfig:
    """The Internet relay of the typical site on a free loopback port: a local default
    domain, example.com as a remote domain with relay allowed, nobody on the relay list."""
    fields: dict[str, Any] = {
        "domains": (
            local(LOCAL_DOMAIN, default=True),
            remote(REMOTE_DOMAIN, relay=True, smart_host="[127.0.0.1]:2526"),
        ),
        "relay": {"mode": "only_list", "entries": (), "allow_authenticated": False},
    }
    fields.update(overrides)
    return server("InternetRelay", f"127.0.0.1:{free_port()}", **fields)


@dataclass(frozen=True)
class Reply:
    code: int
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        return self.lines[-1]

    @property
    def enhanced(self) -> str:
        """The RFC 3463 code of the last line ("" when there is none)."""
        first = self.text.split(" ", 1)[0]
        parts = first.split(".")
        ok = len(parts) == 3 and all(p.isdigit() for p in parts)
        return first if ok else ""

    def __str__(self) -> str:
        return "\n".join(f"{self.code} {line}" for line in self.lines)


class Wire:
    """A raw SMTP client: sends bytes as given, reads replies line by line."""

    def __init__(self, address: tuple[str, int], *, timeout: float = 10) -> None:
        self.sock = socket.create_connection(address, timeout=timeout)
        self.file = self.sock.makefile("rb")

    def __enter__(self) -> Wire:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def send(self, data: bytes | str) -> None:
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def reply(self) -> Reply:
        """The next (possibly multi-line) reply; EOFError if the server closed first."""
        lines: list[str] = []
        while True:
            raw = self.file.readline()
            if not raw:
                raise EOFError(f"connection closed after {lines!r}")
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if len(line) < 4 or not line[:3].isdigit() or line[3] not in " -":
                raise AssertionError(f"not an SMTP reply line: {line!r}")
            lines.append(line[4:])
            if line[3] == " ":
                return Reply(int(line[:3]), tuple(lines))

    def command(self, line: bytes | str) -> Reply:
        raw = line.encode() if isinstance(line, str) else line
        self.send(raw + b"\r\n")
        return self.reply()

    def greeting(self) -> Reply:
        return self.reply()

    def hello(self, name: str = "client.test") -> Reply:
        greeting = self.greeting()
        assert greeting.code == 220, greeting
        reply = self.command(f"EHLO {name}")
        assert reply.code == 250, reply
        return reply

    def closed(self, timeout: float = 5.0) -> bool:
        """Whether the server closes the connection within ``timeout`` (anything it still
        sends first is read and dropped)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                if not self.sock.recv(65536):
                    return True
            except TimeoutError:
                return False
            except ConnectionResetError:
                return True
        return False


def send_message(
    address: tuple[str, int],
    *,
    sender: str = "a@sender.test",
    recipients: tuple[str, ...] = (f"b@{LOCAL_DOMAIN}",),
    body: bytes = b"Subject: hello\r\n\r\nHello.\r\n",
) -> str:
    """A normal, well-behaved client's transaction; returns the queue id."""
    with Wire(address) as wire:
        wire.hello()
        assert wire.command(f"MAIL FROM:<{sender}>").code == 250
        for recipient in recipients:
            reply = wire.command(f"RCPT TO:<{recipient}>")
            assert reply.code == 250, reply
        assert wire.command("DATA").code == 354
        wire.send(body + b".\r\n")
        reply = wire.reply()
        assert reply.code == 250, reply
        assert wire.command("QUIT").code == 221
    return reply.text.removeprefix("2.0.0 Queued as ")


# --- Django ---------------------------------------------------------------------------------


@pytest.fixture
def fast_hashing(settings: Any) -> None:
    # Real PBKDF2/SCRAM for SMTP users, with fewer rounds so creating accounts stays quick;
    # console users' passwords are not what these suites test.
    settings.MAILADMIN_PASSWORD_ITERATIONS = 1000
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def admin_user(db: None, fast_hashing: None) -> User:
    return User.objects.create_superuser("root", "root@example.test", "root-password")


@pytest.fixture
def operator_user(db: None, fast_hashing: None) -> User:
    return console_user("watcher", "operators")
