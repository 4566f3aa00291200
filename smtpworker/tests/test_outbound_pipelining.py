"""Outbound SMTP to a server that offers PIPELINING (RFC 2920), on loopback.

The server here answers a command group only once it has read the whole group (up to
DATA), as a server may: a client that waited for each reply before sending the next
command would stall against it. So every delivery below also shows that RSET, MAIL,
RCPT and DATA travelled together. (The aiosmtpd sink of test_outbound offers no
PIPELINING: it covers the one-command-at-a-time path.)
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from smtpworker.outbound.client import Connection, TransactionResult
from smtpworker.outbound.routing import Target
from smtpworker.tests.factories import NO_SECURITY, free_port

HELO = "relay.example.test"
MESSAGE = b"Subject: hi\r\n\r\nHello.\r\n"


@dataclass
class Script:
    """What the server answers, and what it saw."""

    mail: str = "250 2.1.0 OK"
    rcpt: dict[str, str] = field(default_factory=dict)  # address -> reply (default 250)
    data: str = "354 go ahead"
    close_after_messages: int = 0  # hang up after this many messages (0: never)
    groups: list[list[str]] = field(default_factory=list)  # command groups as read
    messages: list[bytes] = field(default_factory=list)
    connections: int = 0


class PipeliningServer:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.port = free_port("127.0.0.1")
        self.listener = socket.create_server(("127.0.0.1", self.port))
        self.listener.settimeout(0.05)  # so that close() is noticed
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.closed.set()
        self.thread.join(5)
        self.listener.close()

    def _serve(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            conn.settimeout(5)
            self.script.connections += 1
            with conn:
                self._session(conn.makefile("rwb", buffering=0), conn)

    def _session(self, stream: socket.SocketIO, conn: socket.socket) -> None:
        stream.write(b"220 pipelining.test ESMTP\r\n")
        lines = self._lines(conn)
        for _line in lines:  # EHLO, alone
            stream.write(b"250-pipelining.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
            break
        group: list[str] = []
        for line in lines:
            group.append(line)
            if line.upper() == "QUIT":  # smtplib says "quit"
                stream.write(b"221 bye\r\n")
                return
            if line != "DATA":
                continue
            self.script.groups.append(group)
            if not self._answer(stream, conn, group):
                return
            group = []

    def _answer(self, stream: socket.SocketIO, conn: socket.socket, group: list[str]) -> bool:
        replies, mail_ok, accepted = [], False, 0
        for command in group:
            if command == "RSET":
                replies.append("250 2.0.0 reset")
            elif command.startswith("MAIL"):
                replies.append(self.script.mail)
                mail_ok = self.script.mail.startswith("250")
            elif command.startswith("RCPT"):
                reply = self.script.rcpt.get(command[9:-1], "250 2.1.5 OK")
                replies.append(reply if mail_ok else "503 5.5.1 MAIL first")
                accepted += mail_ok and reply.startswith("250")
            elif command == "DATA":
                replies.append(self.script.data if accepted else "554 5.5.1 No recipients")
        stream.write("".join(f"{r}\r\n" for r in replies).encode())
        if not (accepted and self.script.data.startswith("354")):
            return True
        self.script.messages.append(self._data(conn))
        stream.write(b"250 2.0.0 queued\r\n")
        return len(self.script.messages) != self.script.close_after_messages

    def _lines(self, conn: socket.socket) -> Iterator[str]:
        self._buffer = b""
        while True:
            while b"\r\n" not in self._buffer:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                self._buffer += chunk
            line, self._buffer = self._buffer.split(b"\r\n", 1)
            yield line.decode()

    def _data(self, conn: socket.socket) -> bytes:
        while b"\r\n.\r\n" not in self._buffer:
            chunk = conn.recv(65536)
            if not chunk:
                break
            self._buffer += chunk
        data, _, self._buffer = self._buffer.partition(b"\r\n.\r\n")
        return data + b"\r\n"


@pytest.fixture
def server() -> Iterator[PipeliningServer]:
    running = PipeliningServer(Script())
    yield running
    running.close()


def connect(server: PipeliningServer) -> Connection:
    return Connection(
        Target("pipelining.test", "127.0.0.1", server.port, 0),
        helo_name=HELO,
        use_helo=False,
        security=NO_SECURITY,
        password="",
        timeout=3.0,
    )


def codes(result: TransactionResult) -> list[int]:
    return [r.code for r in result.results]


def test_the_envelope_goes_as_one_command_group(server: PipeliningServer) -> None:
    script = server.script
    conn = connect(server)
    try:
        first = conn.send("a@example.org", ["b@example.test", "c@example.test"], MESSAGE)
        second = conn.send("a@example.org", ["d@example.test"], MESSAGE)
    finally:
        conn.close()
    assert codes(first) == [250, 250] and codes(second) == [250]
    assert first.connect_error is None and second.connect_error is None
    assert script.groups == [
        ["MAIL FROM:<a@example.org>", "RCPT TO:<b@example.test>"]
        + ["RCPT TO:<c@example.test>", "DATA"],
        ["RSET", "MAIL FROM:<a@example.org>", "RCPT TO:<d@example.test>", "DATA"],
    ]
    assert script.messages == [MESSAGE] * 2 and script.connections == 1


def test_refused_recipients_and_an_empty_data(server: PipeliningServer) -> None:
    script = server.script
    script.rcpt = {"gone@example.test": "550 5.1.1 No such user"}
    script.data = "354 go ahead"
    conn = connect(server)
    try:
        some = conn.send("a@example.org", ["gone@example.test", "here@example.test"], MESSAGE)
        none = conn.send("a@example.org", ["gone@example.test"], MESSAGE)
        after = conn.send("a@example.org", ["here@example.test"], MESSAGE)
    finally:
        conn.close()
    assert codes(some) == [550, 250] and some.results[0].reply == "5.1.1 No such user"
    assert codes(none) == [550]
    assert codes(after) == [250]  # the session went on after the refused transaction
    assert len(script.messages) == 2 and script.connections == 1


def test_a_refused_sender_answers_for_every_recipient(server: PipeliningServer) -> None:
    script = server.script
    script.mail = "451 4.3.0 Try later"
    conn = connect(server)
    try:
        result = conn.send("a@example.org", ["b@example.test", "c@example.test"], MESSAGE)
        script.mail = "250 2.1.0 OK"
        again = conn.send("a@example.org", ["b@example.test"], MESSAGE)
    finally:
        conn.close()
    assert [(r.code, r.reply) for r in result.results] == [(451, "4.3.0 Try later")] * 2
    assert codes(again) == [250] and script.connections == 1


def test_a_421_at_mail_closes_the_session(server: PipeliningServer) -> None:
    script = server.script
    script.mail = "421 4.3.2 Going away"
    conn = connect(server)
    try:
        result = conn.send("a@example.org", ["b@example.test"], MESSAGE)
        assert not conn.usable
    finally:
        conn.close()
    assert codes(result) == [421] and result.connect_error is None


def test_a_session_the_server_closed_is_reopened_for_the_next_message(
    server: PipeliningServer,
) -> None:
    script = server.script
    script.close_after_messages = 1  # hangs up after its first message, unannounced
    conn = connect(server)
    try:
        first = conn.send("a@example.org", ["b@example.test"], MESSAGE)
        second = conn.send("a@example.org", ["c@example.test"], MESSAGE)
    finally:
        conn.close()
    assert codes(first) == [250] and codes(second) == [250]
    assert second.connect_error is None and not second.unreachable
    assert script.connections == 2 and len(script.messages) == 2
