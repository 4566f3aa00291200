"""PROXY bindings over real loopback sockets: the client a trusted proxy names is the peer
for connection control, the connection limit, relay, sessions, the W3C log and the
envelope; anyone else, and any bad header, gets a closed connection and no greeting."""

from __future__ import annotations

import smtplib
import socket
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from smtpworker.core.config import ServerConfig
from smtpworker.core.grammar import Binding, parse_access_entry
from smtpworker.core.spool import Spool
from smtpworker.tests.factories import free_port, server, site, tcp4, v2
from smtpworker.tests.harness import LiveNode

MESSAGE = b"From: a@sender.test\r\nTo: b@elsewhere.test\r\nSubject: hi\r\n\r\nHello.\r\n"
PROXY_PORT = 40000  # the client port the headers claim


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveNode]:
    node = LiveNode(tmp_path)
    yield node
    node.close()


def edge(port: int, *, plain_port: int | None = None, **overrides: Any) -> ServerConfig:
    """A server whose binding on 127.0.0.1:port takes PROXY headers from 127.0.0.1 only;
    10.1.2.3 (and nobody else) may relay."""
    bindings = [f"127.0.0.1:{port} proxy"] + ([f"127.0.0.1:{plain_port}"] if plain_port else [])
    overrides.setdefault("relay", {"mode": "only_list", "entries": ("10.1.2.3",)})
    cfg = server(
        "Edge",
        *bindings,
        logging={"enabled": True, "fields": ("c-ip", "cs-method", "sc-status")},
        **overrides,
    )
    return replace(cfg, trusted_proxies=(parse_access_entry("127.0.0.1"),))


def header(kind: str, client: str, port: int) -> bytes:
    if kind == "v1":
        return f"PROXY TCP4 {client} 127.0.0.1 {PROXY_PORT} {port}\r\n".encode()
    return v2(0x1, 0x11, tcp4(client, "127.0.0.1", PROXY_PORT, port))


class ProxiedSMTP(smtplib.SMTP):
    """smtplib, speaking through a make-believe load balancer: its connection starts with
    ``preamble`` and comes from ``source``."""

    def __init__(self, preamble: bytes, source: str = "127.0.0.1") -> None:
        self.preamble, self.source = preamble, source
        super().__init__(timeout=10)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        sock = socket.create_connection((host, port), timeout, source_address=(self.source, 0))
        sock.sendall(self.preamble)
        return sock


def proxied(preamble: bytes, port: int, source: str = "127.0.0.1") -> ProxiedSMTP:
    client = ProxiedSMTP(preamble, source)
    code, text = client.connect("127.0.0.1", port)
    if code != 220:
        client.close()
        pytest.fail(f"no greeting: {code} {text!r}")
    return client


def raw(preamble: bytes, port: int, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), 5, source_address=(source, 0))
    if preamble:
        sock.sendall(preamble)
    return sock


def answer(sock: socket.socket) -> bytes:
    """What the server says before it closes: b"" for a silent close (a reset counts)."""
    received = b""
    try:
        while chunk := sock.recv(4096):
            received += chunk
    except ConnectionResetError:
        pass
    finally:
        sock.close()
    return received


def counter(live: LiveNode, name: str, expected: int) -> None:
    deadline = time.monotonic() + 5
    while live.node.counters.get("Edge", {}).get(name, 0) < expected:
        assert time.monotonic() < deadline, live.node.counters
        time.sleep(0.01)
    assert live.node.counters["Edge"][name] == expected


async def _flush(live: LiveNode) -> None:
    for log in live.node._logs.values():
        log.flush()


@pytest.mark.parametrize("kind", ["v1", "v2"])
def test_the_named_client_relays_and_is_seen_everywhere(live: LiveNode, kind: str) -> None:
    port = free_port()
    cfg = edge(port)
    live.apply(site(cfg))
    with proxied(header(kind, "10.1.2.3", port), port) as client:
        code, text = client.ehlo("client.test")
        assert code == 250 and text.startswith(b"edge.example.test Hello [10.1.2.3]")
        (session,) = live.node.sessions
        assert (session.client_ip, session.client_port) == ("10.1.2.3", PROXY_PORT)
        assert live.node.status()["sessions"][0]["client_ip"] == "10.1.2.3"
        client.mail("a@sender.test")
        assert client.rcpt("b@elsewhere.test")[0] == 250
        code, text = client.data(MESSAGE)
        assert code == 250, text
    # The same proxy speaking for another client: that client may not relay.
    with proxied(header(kind, "10.1.2.4", port), port) as client:
        client.ehlo("client.test")
        client.mail("a@sender.test")
        assert client.rcpt("b@elsewhere.test") == (
            550,
            b"5.7.1 Unable to relay for b@elsewhere.test",
        )
    spool = Spool(live.node.home(cfg) / "Queue")
    (queue_id,) = spool.ids()
    envelope, data = spool.load(queue_id)
    assert envelope.client_ip == "10.1.2.3"
    assert b"from client.test ([10.1.2.3])" in data
    live.run(_flush(live))
    (log_file,) = (live.node.home(cfg) / "LogFiles").glob("ex*.log")
    lines = [line for line in log_file.read_text().splitlines() if not line.startswith("#")]
    assert lines[:4] == [
        "10.1.2.3 EHLO 250",
        "10.1.2.3 MAIL 250",
        "10.1.2.3 RCPT 250",
        "10.1.2.3 DATA 250",
    ]
    assert "10.1.2.4 RCPT 550" in lines
    assert not any(line.startswith("127.0.0.1") for line in lines)


@pytest.mark.parametrize("kind", ["v1", "v2"])
def test_connection_control_and_the_limit_go_by_the_named_client(live: LiveNode, kind: str) -> None:
    port = free_port()
    # The proxy's own network is denied: only the clients it names are judged.
    denied = {"mode": "all_except_list", "entries": ("127.0.0.0/8", "10.6.6.6")}
    live.apply(site(edge(port, connection=denied, connection_limit=1)))
    refused = answer(raw(header(kind, "10.6.6.6", port), port))
    assert refused.startswith(b"554 edge.example.test Access denied")
    with proxied(header(kind, "10.1.2.3", port), port) as first:
        first.ehlo("a.test")
        second = answer(raw(header(kind, "10.1.2.5", port), port))
        assert second.startswith(b"421 edge.example.test Too many connections")
    # A health check (LOCAL, or v1 UNKNOWN) leaves the proxy as the peer: denied here.
    local = v2(0x0, 0x00, b"") if kind == "v2" else b"PROXY UNKNOWN\r\n"
    assert answer(raw(local, port)).startswith(b"554 edge.example.test Access denied")


def test_a_health_check_is_the_proxy_itself(live: LiveNode) -> None:
    port = free_port()
    live.apply(site(edge(port)))
    for preamble in (v2(0x0, 0x00, b""), b"PROXY UNKNOWN\r\n", v2(0x1, 0x00, b"")):
        with proxied(preamble, port) as client:
            assert client.ehlo("lb.test")[1].startswith(b"edge.example.test Hello [127.0.0.1]")
            (session,) = live.node.sessions
            assert session.client_ip == "127.0.0.1" and session.client_port != PROXY_PORT


@pytest.mark.parametrize("kind", ["v1", "v2"])
def test_an_untrusted_sender_is_closed_unanswered(live: LiveNode, kind: str) -> None:
    port = free_port()
    live.apply(site(edge(port)))
    # 127.0.0.2 is as local as 127.0.0.1, but not on the trusted list.
    assert answer(raw(header(kind, "10.1.2.3", port), port, source="127.0.0.2")) == b""
    counter(live, "rejected_proxy_untrusted", 1)
    with pytest.raises(smtplib.SMTPServerDisconnected):
        ProxiedSMTP(header(kind, "10.1.2.3", port), "127.0.0.2").connect("127.0.0.1", port)
    counter(live, "rejected_proxy_untrusted", 2)
    assert live.node.counters["Edge"].get("connections", 0) == 0
    assert not list(live.node.sessions)


@pytest.mark.parametrize(
    "preamble",
    [
        b"PROXY TCP4 10.1.2.3\r\n",
        b"PROXY TCP4 10.1.2.3 127.0.0.1 40000 25\n",
        b"PROXY TCP6 10.1.2.3 127.0.0.1 40000 25\r\n",
        b"PROXY TCP4 10.1.2.3 127.0.0.1 40000 25 " + b"x" * 100 + b"\r\n",
        b"PROXY " + b"A" * 3000,
        v2(0x1, 0x12, tcp4("10.1.2.3", "127.0.0.1", 40000, 25)),  # UDP
        v2(0x1, 0x11, tcp4("10.1.2.3", "127.0.0.1", 40000, 25)[:8]),
        b"EHLO client.test\r\n",  # plain SMTP on a PROXY binding
    ],
)
def test_a_bad_header_from_a_trusted_proxy_is_closed_unanswered(
    live: LiveNode, preamble: bytes
) -> None:
    port = free_port()
    live.apply(site(edge(port)))
    assert answer(raw(preamble, port)) == b""
    counter(live, "rejected_proxy_header", 1)
    assert live.node.counters["Edge"].get("connections", 0) == 0


def test_a_late_header_is_closed_unanswered(live: LiveNode) -> None:
    port = free_port()
    live.apply(site(edge(port, connection_timeout=1)))
    for preamble in (b"", b"PROXY TCP4 10.1"):
        started = time.monotonic()
        assert answer(raw(preamble, port)) == b""  # no 220, and no 421 either
        assert 0.9 < time.monotonic() - started < 4
    counter(live, "rejected_proxy_header", 2)


def test_proxy_is_per_binding_and_flips_without_a_new_socket(live: LiveNode) -> None:
    port, plain_port = free_port(), free_port()
    live.apply(site(edge(port, plain_port=plain_port)))
    assert live.node.status()["servers"]["Edge"]["bindings"] == [
        f"127.0.0.1:{port} proxy",
        f"127.0.0.1:{plain_port}",
    ]
    # The plain binding reads no header: one is just a bad command there.
    with proxied(b"", plain_port) as client:
        assert client.docmd("PROXY TCP4 10.1.2.3 127.0.0.1 1 25")[0] == 500
        assert client.ehlo("c.test")[1].startswith(b"edge.example.test Hello [127.0.0.1]")
    handle = live.node.listeners[Binding("127.0.0.1", port)].handle
    live.apply(site(replace(edge(port), bindings=(Binding("127.0.0.1", port),)), version=2))
    assert live.node.listeners[Binding("127.0.0.1", port)].handle is handle
    with proxied(b"", port) as client:
        assert client.ehlo("c.test")[1].startswith(b"edge.example.test Hello [127.0.0.1]")
    live.apply(site(edge(port), version=3))
    assert live.node.listeners[Binding("127.0.0.1", port)].handle is handle
    assert answer(raw(b"EHLO c.test\r\n", port)) == b""
