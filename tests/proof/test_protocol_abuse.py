"""Suite 2: SMTP protocol abuse over real sockets.

Every case checks three things: the server answers with the right code and an enhanced
status code (RFC 2034; greetings excepted), it does not crash (the node keeps serving a
normal client afterwards, and nothing is logged as an error), and there is no partial
delivery (the spool holds only complete messages that were meant to be accepted).
"""

from __future__ import annotations

import base64
import json
import logging
import select
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from smtpworker.core.config import ServerConfig
from smtpworker.inbound.authbrake import AuthBrake
from smtpworker.tests.factories import tls_identity, tls_with, user
from smtpworker.tests.harness import LiveNode
from tests.proof.conftest import (
    LOCAL_DOMAIN,
    Wire,
    internet_relay,
    send_message,
    serve,
    spool_of,
    spooled,
)

NAME = "InternetRelay"
RCPT = f"b@{LOCAL_DOMAIN}"
BODY = b"Subject: abuse\r\n\r\nbody\r\n"


@pytest.fixture(autouse=True)
def _no_errors_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """No case may make the server log an error or a traceback."""
    caplog.set_level(logging.INFO)
    yield
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, [r.getMessage() for r in bad]


def start(live: LiveNode, cfg: ServerConfig | None = None, **kw: Any) -> tuple[str, int]:
    return serve(live, cfg or internet_relay(), **kw)


def healthy(live: LiveNode, address: tuple[str, int], *, spooled_before: int = 0) -> None:
    """The node still serves a normal client, and nothing else reached the spool."""
    queue_id = send_message(address)
    assert len(spool_of(live, NAME).ids()) == spooled_before + 1
    envelope, data = spool_of(live, NAME).load(queue_id)
    assert envelope.recipients == (RCPT,) and data.endswith(b"Hello.\r\n")
    assert not list((spool_of(live, NAME).directory / "tmp").iterdir()), "partial spool files"


def in_transaction(wire: Wire, *, utf8: bool = False) -> None:
    wire.hello()
    assert wire.command("MAIL FROM:<a@sender.test>" + (" SMTPUTF8" if utf8 else "")).code == 250
    assert wire.command(f"RCPT TO:<{RCPT}>").code == 250


# --- Line lengths ---------------------------------------------------------------------------


def test_command_lines_past_512_octets(live: LiveNode) -> None:
    address = start(live, internet_relay(auth={"basic": True}))
    with Wire(address) as wire:
        wire.hello()
        for line in (
            b"NOOP " + b"x" * 600,
            b"RCPT TO:<" + b"a" * 520 + b"@bogus2>",
            b"MAIL FROM:<a@sender.test> " + b"X" * 1100,  # past MAIL's 1,048 with parameters
            b"NOOP " + b"y" * 200_000,  # past the stream buffer limit too
        ):
            reply = wire.command(line)
            assert (reply.code, reply.text) == (500, "5.5.2 Line too long"), line[:20]
        # Exactly 512 octets with CRLF is still a command.
        assert wire.command(b"NOOP " + b"z" * 505).code == 250
        # A line past the limit inside an AUTH exchange (found by test_fuzz: it was a 451).
        for mechanism in ("PLAIN", "LOGIN"):
            assert wire.command(f"AUTH {mechanism}").code == 334
            reply = wire.command(b"A" * 5000)
            assert (reply.code, reply.enhanced) == (500, "5.5.6"), reply
        assert wire.command("MAIL FROM:<a@sender.test> SIZE=100").code == 250
    healthy(live, address)


def test_text_lines_past_1000_octets(live: LiveNode) -> None:
    address = start(live)
    with Wire(address) as wire:
        in_transaction(wire)
        assert wire.command("DATA").code == 354
        wire.send(b"Subject: long\r\n\r\n" + b"x" * 999 + b"\r\n.\r\n")
        reply = wire.reply()
        assert reply.code == 500 and reply.enhanced == "5.5.2", reply
        # The session goes on, and a line of exactly 1,000 octets (998 + CRLF) is fine.
        assert wire.command("MAIL FROM:<a@sender.test>").code == 250
        assert wire.command(f"RCPT TO:<{RCPT}>").code == 250
        assert wire.command("DATA").code == 354
        wire.send(b"Subject: long\r\n\r\n" + b"x" * 998 + b"\r\n.\r\n")
        assert wire.reply().code == 250
    assert len(spool_of(live, NAME).ids()) == 1
    healthy(live, address, spooled_before=1)


# --- Size and recipient limits --------------------------------------------------------------


def test_a_message_past_the_size_limit_with_and_without_size(live: LiveNode) -> None:
    address = start(live, internet_relay(messages={"max_message_size": 10_000}))
    with Wire(address) as wire:
        wire.hello()
        reply = wire.command("MAIL FROM:<a@sender.test> SIZE=10001")
        assert (reply.code, reply.enhanced) == (552, "5.3.4"), reply
        assert wire.command("MAIL FROM:<a@sender.test> SIZE=10000").code == 250
        assert wire.command(f"RCPT TO:<{RCPT}>").code == 250
        assert wire.command("DATA").code == 354
        # The declared size lied: the message is far bigger. The server counts and drops.
        wire.send(b"Subject: big\r\n\r\n" + (b"y" * 98 + b"\r\n") * 20_000 + b".\r\n")
        reply = wire.reply()
        assert (reply.code, reply.enhanced) == (552, "5.3.4"), reply
        in_session_without_size = wire.command("MAIL FROM:<a@sender.test>")
        assert in_session_without_size.code == 250
        assert wire.command(f"RCPT TO:<{RCPT}>").code == 250
        assert wire.command("DATA").code == 354
        wire.send(b"Subject: big\r\n\r\n" + b"z" * 900 + b"\r\n" + (b"z" * 900 + b"\r\n") * 12)
        wire.send(b".\r\n")
        reply = wire.reply()
        assert (reply.code, reply.enhanced) == (552, "5.3.4"), reply
        assert wire.command("NOOP").code == 250
    assert spool_of(live, NAME).ids() == []
    healthy(live, address)


def test_too_many_recipients(live: LiveNode) -> None:
    address = start(live, internet_relay(messages={"max_recipients_per_message": 3}))
    with Wire(address) as wire:
        wire.hello()
        wire.command("MAIL FROM:<a@sender.test>")
        for n in range(3):
            assert wire.command(f"RCPT TO:<r{n}@{LOCAL_DOMAIN}>").code == 250
        for n in range(3, 6):
            reply = wire.command(f"RCPT TO:<r{n}@{LOCAL_DOMAIN}>")
            assert (reply.code, reply.text) == (452, "4.5.3 Too many recipients")
        assert wire.command("DATA").code == 354
        wire.send(BODY + b".\r\n")
        assert wire.reply().code == 250
    ((envelope, _data),) = spooled(live, NAME)
    assert envelope.recipients == tuple(f"r{n}@{LOCAL_DOMAIN}" for n in range(3))
    healthy(live, address, spooled_before=1)


# --- Command order, unknown commands, pipelining --------------------------------------------


def test_bad_command_order(live: LiveNode) -> None:
    address = start(live)
    with Wire(address) as wire:
        wire.greeting()
        expected = [
            ("MAIL FROM:<a@sender.test>", 503, "5.5.1"),
            ("AUTH PLAIN", 503, "5.5.1"),
            ("EHLO", 501, "5.5.4"),
            ("EHLO client.test", 250, ""),
            ("RCPT TO:<b@bogus2>", 503, "5.5.1"),
            ("DATA", 503, "5.5.1"),
            ("MAIL FROM:<a@sender.test>", 250, "2.1.0"),
            ("MAIL FROM:<a@sender.test>", 503, "5.5.1"),
            ("AUTH PLAIN", 503, "5.5.1"),
            ("DATA", 554, "5.5.1"),
            ("RCPT TO:<victim@evil.test>", 550, "5.7.1"),
            ("DATA", 554, "5.5.1"),
            ("RSET now", 501, "5.5.4"),
            ("STARTTLS", 502, "5.5.1"),
            ("RCPT TO:<b@bogus2>", 250, "2.1.5"),
            ("DATA please", 501, "5.5.4"),
            ("RSET", 250, "2.0.0"),
            ("RCPT TO:<b@bogus2>", 503, "5.5.1"),
            ("EXPN staff", 502, "5.5.1"),
            ("VRFY b", 252, "2.5.0"),
        ]
        for line, code, enhanced in expected:
            reply = wire.command(line)
            assert reply.code == code and reply.enhanced == enhanced, (line, str(reply))
    assert spool_of(live, NAME).ids() == []
    healthy(live, address)


def test_unknown_commands_and_the_bogus_command_cut_off(live: LiveNode) -> None:
    address = start(live)
    with Wire(address) as wire:
        wire.hello()
        for line in ("FOO", "MAIL2 FROM:<a@b.test>", "GET / HTTP/1.1", "1234", "X-EXPS"):
            reply = wire.command(line)
            assert (reply.code, reply.text) == (500, "5.5.2 Command unrecognized"), line
        assert wire.command("NOOP").code == 250  # good commands do not wipe the count
        for n in range(4):
            assert wire.command(f"BOGUS{n}").code == 500
        last = wire.command("BOGUS")  # the tenth
        assert (last.code, last.enhanced) == (421, "4.7.0"), last
        assert wire.closed()
    # The count is per session: a new connection starts again.
    with Wire(address) as wire:
        wire.hello()
        assert all(wire.command(f"BOGUS{n}").code == 500 for n in range(9))
        assert wire.command("NOOP").code == 250
    healthy(live, address)


def test_pipelined_transactions_get_their_replies_in_order(live: LiveNode) -> None:
    address = start(live)
    with Wire(address) as wire:
        wire.greeting()
        wire.send(
            b"EHLO c.test\r\nMAIL FROM:<a@sender.test>\r\nRCPT TO:<one@bogus2>\r\n"
            b"RCPT TO:<x@evil.test>\r\nRCPT TO:<two@example.com>\r\nDATA\r\n"
        )
        codes = [wire.reply().code for _ in range(6)]
        assert codes == [250, 250, 250, 550, 250, 354]
        # The end of one message, a whole second transaction and QUIT in one write.
        wire.send(
            b"Subject: first\r\n\r\n1\r\n.\r\nMAIL FROM:<a@sender.test>\r\n"
            b"RCPT TO:<three@bogus2>\r\nDATA\r\n"
        )
        assert [wire.reply().code for _ in range(4)] == [250, 250, 250, 354]
        wire.send(b"Subject: second\r\n\r\n2\r\n.\r\nNOOP\r\nQUIT\r\n")
        assert [wire.reply().code for _ in range(3)] == [250, 250, 221]
    recipients = sorted(env.recipients for env, _ in spooled(live, NAME))
    assert recipients == [("one@bogus2", "two@example.com"), ("three@bogus2",)]
    healthy(live, address, spooled_before=2)


# --- Bytes that do not belong in commands ---------------------------------------------------


def test_nul_and_control_bytes_in_commands(live: LiveNode) -> None:
    address = start(live)
    with Wire(address) as wire:
        wire.hello()
        for line in (
            b"NOOP\x00",
            b"MAIL FROM:<a\x00@sender.test>",
            b"RCPT\x00TO:<b@bogus2>",
            b"EHLO a\x1b[31m.test",
            b"NOOP\x7f",
            b"MAIL FROM:<a@sender.test>\rRCPT TO:<v@evil.test>",
        ):
            reply = wire.command(line)
            assert (reply.code, reply.enhanced) == (500, "5.5.2"), (line, str(reply))
        # None of them opened a transaction.
        assert wire.command("RCPT TO:<b@bogus2>").code == 503
    healthy(live, address)


def test_8bit_bytes_in_commands(live: LiveNode) -> None:
    address = start(live)
    with Wire(address) as wire:
        wire.hello()
        for line, code, enhanced in (
            (b"MAIL FROM:<\xc3\xa9@sender.test>", 501, "5.1.7"),  # UTF-8, but no SMTPUTF8
            (b"MAIL FROM:<\xe9@sender.test> SMTPUTF8", 500, "5.5.2"),  # not UTF-8 at all
            (b"\xff\xfe\xfd", 500, "5.5.2"),
            (b"NO\xc3\x96P", 500, "5.5.2"),
            (b"EHLO \xff\xfe.test", 500, "5.5.2"),
            (b"HELO caf\xe9.test", 500, "5.5.2"),
        ):
            reply = wire.command(line)
            assert (reply.code, reply.enhanced) == (code, enhanced), (line, str(reply))
        wire.command("MAIL FROM:<a@sender.test>")
        reply = wire.command(b"RCPT TO:<\xff@bogus2>")
        assert (reply.code, reply.enhanced) == (500, "5.5.2"), reply
    # What the node reports about its sessions stays valid UTF-8 JSON for the console.
    with Wire(address) as wire:
        wire.hello("still-here.test")
        status = live.run(_status(live))
        json.dumps(status, ensure_ascii=False).encode("utf-8")
        assert [s["helo"] for s in status["sessions"]] == ["still-here.test"]
    healthy(live, address)


async def _status(live: LiveNode) -> dict[str, Any]:
    return live.node.status()


def test_smtputf8_addresses(live: LiveNode) -> None:
    address = start(live)
    with Wire(address) as wire:
        wire.hello()
        reply = wire.command("MAIL FROM:<j\u00f6rg@sender.test>")
        assert (reply.code, reply.enhanced) == (501, "5.1.7"), reply
        assert wire.command("MAIL FROM:<a@sender.test>").code == 250
        reply = wire.command("RCPT TO:<j\u00f6rg@bogus2>")
        assert (reply.code, reply.enhanced) == (501, "5.1.3"), reply
        assert wire.command("RSET").code == 250
        assert wire.command("MAIL FROM:<j\u00f6rg@s\u00e9nder.test> SMTPUTF8").code == 250
        assert wire.command("RCPT TO:<\u00e5sa@bogus2>").code == 250
        assert wire.command("RCPT TO:<\u00e5sa@b\u00fccher.example.com>").code == 550
        assert wire.command("DATA").code == 354
        wire.send("Subject: h\u00e9\r\n\r\nk\u00f6\r\n.\r\n".encode())
        assert wire.reply().code == 250
    with Wire(address) as wire:
        wire.greeting()
        wire.command("HELO old.test")
        reply = wire.command("MAIL FROM:<a@sender.test> SMTPUTF8")
        assert (reply.code, reply.enhanced) == (555, "5.5.4"), reply
    ((envelope, data),) = spooled(live, NAME)
    assert envelope.smtputf8 and envelope.body_8bit
    assert envelope.sender == "j\u00f6rg@xn--snder-bsa.test"
    assert envelope.recipients == ("\u00e5sa@bogus2",)
    assert b"with UTF8ESMTP" in data
    healthy(live, address, spooled_before=1)


# --- End of data: smuggling -----------------------------------------------------------------

SMUGGLED = b"MAIL FROM:<evil@evil.test>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\nsmuggled\r\n"


@pytest.mark.parametrize(
    "fake_end",
    [
        b"\n.\n",
        b"\r\n.\n",
        b"\n.\r\n",
        b"\r.\r",
        b"\r\n.\r",
        b"\r.\r\n",
        b"\n..\n",
        b"\r\n\x00.\r\n",
    ],
    ids=["lf.lf", "crlf.lf", "lf.crlf", "cr.cr", "crlf.cr", "cr.crlf", "lf..lf", "crlf-nul.crlf"],
)
def test_end_of_data_variants_do_not_smuggle_a_second_message(
    live: LiveNode, fake_end: bytes
) -> None:
    address = start(live)
    with Wire(address) as wire:
        in_transaction(wire)
        assert wire.command("DATA").code == 354
        wire.send(b"Subject: s\r\n\r\nbody" + fake_end + SMUGGLED)
        # Not the end: the server is still reading the message.
        wire.sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            wire.sock.recv(100)
        wire.sock.settimeout(10)
        wire.send(b"\r\n.\r\n")
        reply = wire.reply()
        assert reply.code == 250, reply
        assert wire.command("QUIT").code == 221
    ((envelope, data),) = spooled(live, NAME)
    assert envelope.recipients == (RCPT,) and envelope.sender == "a@sender.test"
    assert b"MAIL FROM:<evil@evil.test>" in data
    # Stored with CRLF only: relaying it dot-stuffs every line, so no downstream server
    # can see an end of data where we did not.
    lines = data.split(b"\r\n")
    assert b"\n" not in b"".join(lines) and b"\r" not in b"".join(lines)
    healthy(live, address, spooled_before=1)


# --- TLS ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate() -> tuple[str, str, trustme.CA]:
    return tls_identity("relay.example.test")


def tls_relay(certificate: tuple[str, str, trustme.CA], **kw: Any) -> ServerConfig:
    return internet_relay(tls=tls_with(certificate, **kw.pop("tls", {})), **kw)


def tls_wrap(wire: Wire, certificate: tuple[str, str, trustme.CA]) -> ssl.SSLSocket:
    context = ssl.create_default_context()
    certificate[2].configure_trust(context)
    return context.wrap_socket(wire.sock, server_hostname="relay.example.test")


def tls_reply(sock: ssl.SSLSocket) -> tuple[int, str]:
    data = b""
    while not data.endswith(b"\r\n") or data.splitlines()[-1][3:4] == b"-":
        chunk = sock.recv(4096)
        if not chunk:
            raise EOFError(data)
        data += chunk
    last = data.decode().splitlines()[-1]
    return int(last[:3]), last[4:]


def test_commands_pipelined_with_starttls_are_discarded(
    live: LiveNode, certificate: tuple[str, str, trustme.CA]
) -> None:
    address = start(live, tls_relay(certificate))
    with Wire(address) as wire:
        wire.hello()
        # The injection: plaintext commands in the same packet as STARTTLS (CVE-2011-0411).
        wire.send(b"STARTTLS\r\nRSET\r\nMAIL FROM:<evil@evil.test>\r\nRCPT TO:<victim@bogus2>\r\n")
        reply = wire.reply()
        assert (reply.code, reply.text) == (220, "2.0.0 Ready to start TLS")
        sock = tls_wrap(wire, certificate)
        sock.sendall(b"EHLO c.test\r\n")
        code, text = tls_reply(sock)
        assert code == 250 and text.startswith("SIZE") is False, text  # EHLO's, not RSET's
        sock.sendall(b"RCPT TO:<victim@bogus2>\r\n")
        assert tls_reply(sock) == (503, "5.5.1 Need MAIL command first")
        sock.sendall(b"MAIL FROM:<a@sender.test>\r\nRCPT TO:<b@bogus2>\r\nDATA\r\n")
        assert [tls_reply(sock)[0] for _ in range(3)] == [250, 250, 354]
        sock.sendall(BODY + b".\r\nQUIT\r\n")
        assert tls_reply(sock)[0] == 250
        sock.close()
    ((envelope, data),) = spooled(live, NAME)
    assert envelope.sender == "a@sender.test" and envelope.recipients == ("b@bogus2",)
    assert b"with ESMTPS id" in data
    healthy(live, address, spooled_before=1)


def test_auth_before_tls_where_tls_is_required(
    live: LiveNode, certificate: tuple[str, str, trustme.CA]
) -> None:
    cfg = tls_relay(certificate, tls={"require": True}, auth={"basic": True, "integrated": True})
    address = start(live, cfg, users=(user("alice", "s3cret"),))
    plain = base64.b64encode(b"\x00alice\x00s3cret").decode()
    with Wire(address) as wire:
        ehlo = wire.hello()
        assert not any(line.startswith("AUTH") for line in ehlo.lines)
        for line in (f"AUTH PLAIN {plain}", "AUTH LOGIN", "AUTH SCRAM-SHA-256", "AUTH CRAM-MD5"):
            reply = wire.command(line)
            assert (reply.code, reply.text) == (530, "5.7.0 Must issue a STARTTLS command first")
        reply = wire.command("MAIL FROM:<alice@sender.test>")
        assert (reply.code, reply.enhanced) == (530, "5.7.0")
    assert live.node.counters[NAME].get("auth_failures", 0) == 0  # no password was checked
    # basic_requires_tls alone: PLAIN and LOGIN wait for TLS, SCRAM does not.
    cfg = tls_relay(certificate, auth={"basic": True, "basic_requires_tls": True})
    address = start(live, cfg, users=(user("alice", "s3cret"),))
    with Wire(address) as wire:
        wire.hello()
        reply = wire.command(f"AUTH PLAIN {plain}")
        assert (reply.code, reply.enhanced) == (530, "5.7.0"), reply
        reply = wire.command("AUTH LOGIN")
        assert (reply.code, reply.enhanced) == (530, "5.7.0"), reply


# --- Password guessing ----------------------------------------------------------------------


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[LiveNode]:
    node = LiveNode(tmp_path, brake=AuthBrake(delay=0.25, max_delay=0.5, refusal_delay=0.01))
    yield node
    node.close()


def test_password_guessing_is_throttled_then_braked(guarded: LiveNode) -> None:
    live = guarded
    cfg = internet_relay(
        auth={"basic": True},
        auth_brake={"failures_before_delay": 2, "block_after_failures": 6, "block_seconds": 60},
    )
    address = start(live, cfg, users=(user("alice", "s3cret"),))
    right = "AUTH PLAIN " + base64.b64encode(b"\x00alice\x00s3cret").decode()
    took: list[float] = []
    with Wire(address) as wire:
        wire.hello()
        for n in range(6):
            guess = base64.b64encode(f"\x00alice\x00guess{n}".encode()).decode()
            began = time.monotonic()
            reply = wire.command(f"AUTH PLAIN {guess}")
            took.append(time.monotonic() - began)
            assert (reply.code, reply.text) == (535, "5.7.8 Authentication credentials invalid")
        reply = wire.command(right)
        assert (reply.code, reply.enhanced) == (454, "4.7.0"), reply
        assert wire.command("NOOP").code == 250  # the session goes on
    assert max(took[:2]) < 0.2  # two free guesses
    assert took[2] >= 0.24 and took[3] >= 0.49 and took[4] >= 0.49  # then slower and slower
    # The address stays braked for AUTH, even with the right password, but is served ...
    with Wire(address) as wire:
        wire.hello()  # greeted with 220
        reply = wire.command(right)
        assert (reply.code, reply.enhanced) == (454, "4.7.0"), reply
    # ... while other clients are served as before.
    other = socket.create_connection(address, timeout=5, source_address=("127.0.0.2", 0))
    assert other.recv(200).startswith(b"220 ")
    other.sendall(b"EHLO other.test\r\nAUTH PLAIN " + base64.b64encode(b"\x00alice\x00s3cret"))
    other.sendall(b"\r\n")
    reply = b""
    while b"\r\n235 " not in reply:
        chunk = other.recv(4096)
        assert chunk, reply
        reply += chunk
    other.close()


# --- Clients that go away or stay too long --------------------------------------------------


@pytest.mark.parametrize("how", ["close", "reset"])
def test_a_client_that_disconnects_mid_data(live: LiveNode, how: str) -> None:
    address = start(live)
    wire = Wire(address)
    in_transaction(wire)
    assert wire.command("DATA").code == 354
    wire.send(b"Subject: cut\r\n\r\n" + b"half a message\r\n" * 1000)
    if how == "reset":
        wire.sock.setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
        )
    wire.close()
    deadline = time.monotonic() + 5
    while len(live.node.sessions) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(live.node.sessions) == 0
    assert spool_of(live, NAME).ids() == []
    healthy(live, address)


def vm_rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


def test_a_thousand_idle_connections(live: LiveNode) -> None:
    """The connection limit holds, the time-out closes idle sessions, memory stays bounded.

    LiveNode runs in this process, so the test's own RSS is the node's (plus the client
    sockets, which are counted against it too)."""
    limit, timeout = 50, 3
    address = start(live, internet_relay(connection_limit=limit, connection_timeout=timeout))
    before = vm_rss_kb()
    began = time.monotonic()
    idle: list[socket.socket] = []
    refused = 0
    for _batch in range(20):  # 1,000 connections, 50 at a time
        batch = [socket.create_connection(address, timeout=10) for _ in range(50)]
        for sock in batch:
            greeting = sock.recv(200)
            if greeting.startswith(b"220 "):
                idle.append(sock)
            else:
                assert greeting.startswith(b"421 ") and b"Too many connections" in greeting
                assert sock.recv(200) == b""  # and closed
                refused += 1
                sock.close()
    opened = time.monotonic() - began
    assert opened < timeout, f"opening took {opened:.1f}s, longer than the time-out"
    assert len(idle) == limit and refused == 1000 - limit
    assert len(live.node.sessions) == limit
    growth_mb = (vm_rss_kb() - before) / 1024
    assert growth_mb < 100, f"RSS grew by {growth_mb:.0f} MB"
    # Each idle session is told why and closed after the time-out.
    for sock in idle:
        sock.settimeout(timeout + 5)
        assert sock.recv(200).startswith(b"421 4.4.2 ")
        assert sock.recv(200) == b""
        sock.close()
    deadline = time.monotonic() + 5
    while len(live.node.sessions) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(live.node.sessions) == 0
    healthy(live, address)


def dribble(sock: socket.socket, data: bytes, *, interval: float, give_up: float) -> float:
    """Send one byte per ``interval`` seconds until the server answers or closes; return
    how long that took. The answer must be the time-out's 421."""
    began = time.monotonic()
    for byte in data:
        try:
            sock.sendall(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            return time.monotonic() - began
        ready, _, _ = select.select([sock], [], [], interval)
        if ready:
            took = time.monotonic() - began
            answer = sock.recv(4096)
            assert answer == b"" or answer.startswith(b"421 4.4.2 "), answer
            return took
        if time.monotonic() - began > give_up:
            break
    raise AssertionError(f"still connected after {give_up}s of dribbling")


def test_a_slow_client_dribbling_a_command(live: LiveNode) -> None:
    address = start(live, internet_relay(connection_timeout=2))
    with Wire(address) as wire:
        wire.greeting()
        took = dribble(wire.sock, b"EHLO dribbling.example.test\r\n", interval=1, give_up=8)
    assert 1.5 < took < 3, took  # the idle time-out: a partial line does not restart it
    healthy(live, address)


def test_a_slow_client_dribbling_data_meets_a_deadline(live: LiveNode) -> None:
    """IIS's time-out is idle-based: one byte a second would hold DATA open for ever. The
    server also sets DATA a deadline: the time-out plus one second per 500 bytes received
    (Postfix's smtpd_min_data_rate)."""
    address = start(live, internet_relay(connection_timeout=2))
    with Wire(address) as wire:
        in_transaction(wire)
        assert wire.command("DATA").code == 354
        began = time.monotonic()
        took = dribble(wire.sock, b"Subject: slow\r\n\r\n" + b"x" * 100, interval=1, give_up=8)
    assert 1.5 < took < 3.5, took
    assert time.monotonic() - began < 5
    assert spool_of(live, NAME).ids() == []
    healthy(live, address)


def test_a_client_streaming_past_the_size_limit_is_cut_off(live: LiveNode) -> None:
    """Past the size limit the server keeps nothing, but it must not read for ever either."""
    cfg = internet_relay(connection_timeout=2, messages={"max_message_size": 1000})
    address = start(live, cfg)
    with Wire(address) as wire:
        in_transaction(wire)
        assert wire.command("DATA").code == 354
        began = time.monotonic()
        closed_after = None
        while time.monotonic() - began < 10:
            try:
                wire.send(b"y" * 998 + b"\r\n")
            except (BrokenPipeError, ConnectionResetError):
                closed_after = time.monotonic() - began
                break
            time.sleep(0.05)
        assert closed_after is not None, "the server read a 10 s flood past its size limit"
        assert closed_after < 6
    assert spool_of(live, NAME).ids() == []
    healthy(live, address)
