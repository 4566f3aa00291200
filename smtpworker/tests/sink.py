"""A real SMTP server on loopback that records what it receives and misbehaves on demand.

It stands in for smart hosts and MX hosts in delivery tests (unit and end to end)::

    with Sink() as sink:                     # 127.0.0.1 at a pre-picked free port
        ...deliver to sink.address / sink.port / sink.smart_host ("[127.0.0.1]:<port>")...
        [message] = sink.wait_for(1)         # polls against a deadline
        assert message.recipients == ("b@example.test",)

Behaviour, changeable while it runs:

- ``mode``: ``"accept"``; ``"421"``, ``"451"``, ``"550"`` (answer that code at ``stage``,
  one of ``"connect"`` (the greeting), ``"mail"``, ``"rcpt"``, ``"data"`` (after the
  message, the default); a 421 also closes the connection); ``"refuse"`` (stop
  listening: connections are refused; any other mode listens again on the same port);
  ``"stall"`` (accept the connection, never send the greeting); ``"drop_mid_data"``
  (close the connection after the first line of message data).
- ``rcpt_replies``: ``{"user@example.test": "550 5.1.1 No such user"}``, per recipient.
- ``tls=True``: offer STARTTLS with a certificate from a private trustme CA;
  :meth:`client_context` trusts it. ``auth=("user", "password")``: require AUTH with
  those credentials, offering ``auth_mechanisms`` (PLAIN, LOGIN, CRAM-MD5, SCRAM-SHA-256).

Every accepted message is a :class:`Received` in ``messages``, with the envelope, the
data as it arrived (dot-unstuffed), the client's port (one port = one TCP connection),
its HELO/EHLO name, TLS and AUTH user. ``connections`` lists each peer that said
HELO/EHLO (once per TCP connection).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import ssl
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, LoginPassword, Session
from aiosmtpd.smtp import auth_mechanism as _auth_mechanism

from smtpworker.core import credentials
from smtpworker.sasl.scram import ScramError, ScramServer
from smtpworker.tests.factories import free_port

MODES = ("accept", "421", "451", "550", "refuse", "stall", "drop_mid_data")
STAGES = ("connect", "mail", "rcpt", "data")
MECHANISMS = ("PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-256")
_REPLIES = {
    "421": "421 4.3.2 Sink is told to close the connection",
    "451": "451 4.3.0 Sink is told to defer",
    "550": "550 5.7.1 Sink is told to refuse",
}


@dataclass(frozen=True)
class Received:
    sender: str  # "" for the null sender
    recipients: tuple[str, ...]
    data: bytes
    peer: tuple[str, int]
    helo_name: str
    esmtp: bool  # True after EHLO, False after HELO
    tls: bool
    auth_user: str | None
    mail_options: tuple[str, ...]


class Sink:
    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        hostname: str = "sink.test",
        tls: bool = False,
        auth: tuple[str, str] | None = None,
        auth_mechanisms: Sequence[str] = ("PLAIN", "LOGIN"),
        smtputf8: bool = True,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.hostname = hostname
        self.stage = "data"
        self.rcpt_replies: dict[str, str] = {}
        self.messages: list[Received] = []
        self.connections: list[tuple[str, int]] = []
        self.auth = auth
        self.auth_mechanisms = tuple(m.upper() for m in auth_mechanisms)
        self.smtputf8 = smtputf8
        # Seconds each accepted message is held before its 250, and the most messages
        # held at once: with a delay, ``peak`` shows how many connections delivered
        # concurrently (what outbound connection limits bound).
        self.data_delay = 0.0
        self.peak = 0
        self._holding = 0
        self.ca = trustme.CA() if tls else None
        self._tls_context = self._server_context() if self.ca is not None else None
        self._mode = "accept"
        self._cond = threading.Condition()
        self._controller: _Controller | None = None
        self._protocols: weakref.WeakSet[SMTP] = weakref.WeakSet()

    # --- life cycle ---------------------------------------------------------------------

    @property
    def address(self) -> str:
        return self.host

    @property
    def smart_host(self) -> str:
        """The sink as a literal smart host with its port, e.g. "[127.0.0.1]:2525"."""
        return f"[{self.host}]:{self.port}"

    def start(self) -> Sink:
        if self._mode != "refuse":
            self._listen()
        return self

    def stop(self) -> None:
        self._unlisten()

    def __enter__(self) -> Sink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        before, self._mode = self._mode, value
        if value == "refuse" and before != "refuse":
            self._unlisten()
        elif before == "refuse" and value != "refuse":
            self._listen()

    def reset(self) -> None:
        """Forget what was received; back to accepting everything at the data stage."""
        with self._cond:
            self.messages.clear()
            self.connections.clear()
        self.rcpt_replies.clear()
        self.peak = 0
        self.stage = "data"
        self.mode = "accept"

    def wait_for(self, count: int, timeout: float = 5.0) -> list[Received]:
        """Wait until at least ``count`` messages arrived; AssertionError after ``timeout``."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.messages) >= count, timeout):
                raise AssertionError(
                    f"sink got {len(self.messages)} message(s), expected {count}, within {timeout}s"
                )
            return list(self.messages)

    def client_context(self) -> ssl.SSLContext:
        """A client TLS context that trusts the sink's certificate (for 127.0.0.1,
        localhost, sink.test and *.test names)."""
        if self.ca is None:
            raise RuntimeError("the sink was started without tls=True")
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context

    def ca_pem(self) -> str:
        """The sink's private CA certificate, PEM: what an administrator would upload."""
        if self.ca is None:
            raise RuntimeError("the sink was started without tls=True")
        return self.ca.cert_pem.bytes().decode("ascii")

    def _server_context(self) -> ssl.SSLContext:
        assert self.ca is not None
        leaf = self.ca.issue_cert(self.host, "localhost", self.hostname, "*.test", "*.example.test")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        leaf.configure_cert(context)
        return context

    def _listen(self) -> None:
        if self._controller is not None:
            return
        excluded = [m for m in MECHANISMS if m not in self.auth_mechanisms or not self.auth]
        controller = _Controller(
            _Handler(self),
            sink=self,
            hostname=self.host,
            port=self.port,
            server_hostname=self.hostname,
            tls_context=self._tls_context,
            authenticator=self._authenticate,
            auth_require_tls=False,
            auth_exclude_mechanism=excluded,
            enable_SMTPUTF8=self.smtputf8,
        )
        controller.start()
        self._controller = controller

    def _unlisten(self) -> None:
        controller, self._controller = self._controller, None
        if controller is None:
            return
        # Close client connections inside the loop first: stopping the loop with live
        # transports leaves them to the garbage collector, which warns.
        closing = asyncio.run_coroutine_threadsafe(self._close_all(), controller.loop)
        closing.result(5)
        controller.stop()

    async def _close_all(self) -> None:
        for protocol in list(self._protocols):
            if protocol.transport is not None:
                protocol.transport.close()
            # After STARTTLS the socket is the original transport under the TLS one; an
            # unfinished TLS close would leave it open.
            original = getattr(protocol, "_original_transport", None)
            if original is not None:
                original.close()
        for _ in range(10):  # let connection_lost run for each
            await asyncio.sleep(0)

    # --- recording, called from the server thread ---------------------------------------

    def _record(self, session: Session, envelope: Envelope) -> None:
        content = envelope.content
        assert isinstance(content, bytes)
        sender = envelope.mail_from or ""
        login = session.auth_data.login if isinstance(session.auth_data, LoginPassword) else None
        message = Received(
            sender="" if sender == "<>" else sender,
            recipients=tuple(envelope.rcpt_tos),
            data=content,
            peer=_peer(session),
            helo_name=session.host_name or "",
            esmtp=bool(session.extended_smtp),
            tls=session.ssl is not None,
            auth_user=login.decode() if login is not None else None,
            mail_options=tuple(envelope.mail_options),
        )
        with self._cond:
            self.messages.append(message)
            self._cond.notify_all()

    def _record_connection(self, peer: tuple[str, int]) -> None:
        with self._cond:
            self.connections.append(peer)

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        assert isinstance(data, LoginPassword)
        ok = self.auth is not None and (data.login, data.password) == (
            self.auth[0].encode(),
            self.auth[1].encode(),
        )
        # handled=False: aiosmtpd then answers 535 itself (its default, True, answers nothing).
        return AuthResult(success=ok, handled=False, auth_data=data)

    def reply_for(self, stage: str) -> str | None:
        """The scripted reply at ``stage``, or None to go on normally."""
        if self._mode in _REPLIES and self.stage == stage:
            return _REPLIES[self._mode]
        return None


def _peer(session: Session) -> tuple[str, int]:
    peer: Any = session.peer  # aiosmtpd types it as str; it is the socket's peername
    host, port = peer[:2]  # IPv6 peers carry flow info and scope id too
    return str(host), int(port)


class _Controller(Controller):
    def __init__(self, handler: Any, *, sink: Sink, **kwargs: Any) -> None:
        self.sink = sink
        super().__init__(handler, **kwargs)

    def factory(self) -> SMTP:
        protocol = _SinkSMTP(self.handler, sink=self.sink, **self.SMTP_kwargs)
        self.sink._protocols.add(protocol)
        return protocol


class _SinkSMTP(SMTP):
    def __init__(self, handler: Any, *, sink: Sink, **kwargs: Any) -> None:
        self.sink = sink
        self._hello_seen = False
        super().__init__(handler, **kwargs)

    async def _handle_client(self) -> None:
        if self.sink.mode == "stall":
            await asyncio.Event().wait()  # cancelled when the client goes away or on stop
        reply = self.sink.reply_for("connect")
        if reply is not None:
            await self.push(reply)
            self._close_soon()
            return
        await super()._handle_client()

    async def smtp_EHLO(self, hostname: str) -> None:
        self._note_hello()
        await super().smtp_EHLO(hostname)

    async def smtp_HELO(self, hostname: str) -> None:
        self._note_hello()
        await super().smtp_HELO(hostname)

    def _note_hello(self) -> None:
        if not self._hello_seen and self.session is not None:
            self._hello_seen = True
            self.sink._record_connection(_peer(self.session))

    async def smtp_DATA(self, arg: str) -> None:
        if self.sink.mode != "drop_mid_data" or self.envelope is None or not self.envelope.rcpt_tos:
            await super().smtp_DATA(arg)
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        await self._reader.readline()
        assert isinstance(self.transport, asyncio.Transport)
        assert self._handler_coroutine is not None
        self.transport.abort()
        # End this session now: the rest of the data, still buffered, is not commands.
        self._handler_coroutine.cancel()
        await asyncio.sleep(0)

    def _close_soon(self) -> None:
        # After the reply is written: close() flushes the buffer first.
        transport = self.transport
        if transport is not None:
            self.loop.call_soon(transport.close)


class _Handler:
    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    async def handle_MAIL(
        self, server: _SinkSMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        reply = self._scripted(server, "mail")
        if reply is not None:
            return reply
        if self.sink.auth is not None and not session.authenticated:
            # Checked here, not with aiosmtpd's auth_required, which warns unless AUTH
            # also requires TLS; the sink must take AUTH in clear too.
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: _SinkSMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        reply = self.sink.rcpt_replies.get(address.lower()) or self._scripted(server, "rcpt")
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: _SinkSMTP, session: Session, envelope: Envelope) -> str:
        reply = self._scripted(server, "data")
        if reply is not None:
            return reply
        if self.sink.data_delay:
            self.sink._holding += 1  # the loop's thread only: no lock needed
            self.sink.peak = max(self.sink.peak, self.sink._holding)
            try:
                await asyncio.sleep(self.sink.data_delay)
            finally:
                self.sink._holding -= 1
        self.sink._record(session, envelope)
        return f"250 2.0.0 Queued as {len(self.sink.messages)}"

    def _scripted(self, server: _SinkSMTP, stage: str) -> str | None:
        reply = self.sink.reply_for(stage)
        if reply is not None and reply.startswith("421"):
            server._close_soon()
        return reply

    @_auth_mechanism("CRAM-MD5")
    async def auth_CRAM_MD5(self, server: SMTP, args: list[str]) -> AuthResult:
        challenge = f"<{secrets.token_hex(8)}@{self.sink.hostname}>".encode()
        answer = await server.challenge_auth(challenge)
        if answer is MISSING or self.sink.auth is None:
            return AuthResult(success=False, handled=answer is MISSING)  # MISSING: answered
        assert isinstance(answer, bytes)
        user, _, digest = answer.decode().rpartition(" ")
        expected = hmac.new(self.sink.auth[1].encode(), challenge, hashlib.md5).hexdigest()
        ok = user == self.sink.auth[0] and hmac.compare_digest(digest, expected)
        return AuthResult(success=ok, handled=False, auth_data=LoginPassword(user.encode(), b""))

    @_auth_mechanism("SCRAM-SHA-256")
    async def auth_SCRAM_SHA_256(self, server: SMTP, args: list[str]) -> AuthResult:
        if self.sink.auth is None:
            return AuthResult(success=False, handled=False)
        user, password = self.sink.auth
        verifier = credentials.make_scram_verifier(password, iterations=4096)
        scram = ScramServer(lambda name: verifier if name == user else None, mock_key=b"sink")
        first = base64.b64decode(args[1]) if len(args) > 1 else await server.challenge_auth(b"")
        if first is MISSING:
            return AuthResult(success=False, handled=True)
        try:
            assert isinstance(first, bytes)
            final = await server.challenge_auth(scram.first(first))
            if final is MISSING:
                return AuthResult(success=False, handled=True)
            assert isinstance(final, bytes)
            server_final = scram.final(final)
        except ScramError:
            return AuthResult(success=False, handled=False)
        if await server.challenge_auth(server_final) is MISSING:
            return AuthResult(success=False, handled=True)
        return AuthResult(success=True, auth_data=LoginPassword(user.encode(), b""))
