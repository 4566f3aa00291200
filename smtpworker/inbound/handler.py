"""One SMTP session of a virtual server: aiosmtpd's protocol, our replies.

:class:`SmtpSession` subclasses aiosmtpd's ``SMTP`` for its transport, STARTTLS and
time-out machinery, through ``smtpworker.inbound.aiosmtpd_adapter`` (the one module that
knows aiosmtpd's private names), and replaces the command loop and the commands so that
every reply carries an enhanced status code (RFC 2034) and every decision comes from
``smtpworker.inbound.policy``. A session is bound to the :class:`ServerContext` in force when it
connected: a configuration change reaches new connections only (Postfix's reload rule).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import re
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from smtpworker.core.config import ServerConfig
from smtpworker.core.jsonlog import ContextAdapter
from smtpworker.core.spool import Envelope, Spool, SpoolError, new_queue_id
from smtpworker.inbound import policy, proxyproto
from smtpworker.inbound.aiosmtpd_adapter import SessionBase, TlsSetupFailed
from smtpworker.inbound.auth import Accounts
from smtpworker.inbound.authbrake import AuthBrake, client_key
from smtpworker.inbound.authpool import PoolBusy, VerifyPool
from smtpworker.inbound.data import DataReader
from smtpworker.inbound.received import received_header, smtp_protocol
from smtpworker.inbound.sessions import SessionInfo, SessionRegistry
from smtpworker.inbound.w3clog import LogRecord, W3CLog
from smtpworker.sasl.server import MECHANISMS, AuthFailed

log = logging.getLogger(__name__)

COMMAND_LIMIT = 512  # RFC 5321 4.5.3.1.4, CRLF included
MAIL_COMMAND_LIMIT = 512 + 26 + 10 + 500  # SIZE, SMTPUTF8 (RFC 1870, 6531) and AUTH=
BOGUS_LIMIT = 10
READ_CHUNK = 256 * 1024
# DATA's deadline, as Postfix's smtpd_min_data_rate: the connection time-out plus one second
# per this many bytes received.
MIN_DATA_RATE = 500
IDENT = "ESMTP mailadmin"
# RFC 5321 4.1.2 esmtp-keyword; RFC 1870 size-value (1*20DIGIT; 19 fit in an int64).
_ESMTP_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
_SIZE_VALUE = re.compile(r"[0-9]{1,19}")
AUTH_BLOCKED = "454 4.7.0 Too many failed authentication attempts, try again later"
AUTH_BUSY = "454 4.7.0 Too many authentication attempts in progress, try again later"


@dataclass(slots=True)
class ServerContext:
    """Everything a session of one server needs, fixed for the life of the session."""

    cfg: ServerConfig
    hostname: str
    accounts: Accounts
    spool: Spool
    sessions: SessionRegistry
    brake: AuthBrake
    executor: Executor | None
    # Password checks run here, never on ``executor``, which writes the spool.
    verifier: VerifyPool
    tls_context: ssl.SSLContext | None = None
    # Forward-confirmed reverse DNS names of a client address ((): none or not looked up).
    reverse_names: Callable[[str], Awaitable[tuple[str, ...]]] | None = None
    # Hand a stored message to delivery; must not raise (the spool sweep is the backstop).
    enqueue: Callable[[str, str], None] = lambda queue_id, server: None
    w3c: W3CLog | None = None
    counters: dict[str, int] = field(default_factory=dict)

    def count(self, name: str, by: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + by


class SmtpSession(SessionBase):
    """An SMTP server session whose every answer comes from the policy module."""

    def __init__(self, context: ServerContext, *, proxy: bool = False) -> None:
        """``proxy``: the connection came in on a PROXY protocol binding, so it must open
        with a header from a trusted proxy naming the real client."""
        cfg = context.cfg
        super().__init__(
            hostname=context.hostname,
            ident=IDENT,
            tls_context=context.tls_context,
            data_size_limit=cfg.messages.max_message_size,
            timeout=cfg.connection_timeout,
        )
        self.ctx = context
        self.proxy = proxy
        # Every line of this session carries its server, client, session id (and queue id).
        self.log = ContextAdapter(log, {"server": cfg.name})
        self.info: SessionInfo | None = None
        self.client: policy.Client | None = None
        self.client_key = ""  # the client's name for the AUTH brake and per-client limit
        self.user: str | None = None
        self.messages = 0
        self.session_bytes = 0
        self.sender: str | None = None  # None: no transaction; "" is the null sender
        self.recipients: list[str] = []
        self.mail_size: int | None = None
        self.smtputf8 = False
        self.body_8bit = False
        # The command being answered, for the W3C log: (verb, argument, start, bytes in).
        self._pending: tuple[str, str, float, int] | None = None

    # --- connection ------------------------------------------------------------------

    async def serve(self) -> None:
        peer = self.transport.get_extra_info("peername") if self.transport else None
        ip, port = (peer[0], peer[1]) if peer else ("0.0.0.0", 0)
        cfg = self.ctx.cfg
        if self.proxy:
            client = await self._proxied_client(ip, port)
            if client is None:
                return
            ip, port = client
        names: tuple[str, ...] = ()
        if self.ctx.reverse_names is not None and _wants_reverse_dns(cfg):
            names = await self.ctx.reverse_names(ip)
        self.client = policy.Client(ip=ip, ptr_names=names)
        try:
            self.client_key = client_key(ip)
        except ValueError:  # not an IP address (a test's or a platform's odd peer name)
            self.client_key = ip
        self.info = SessionInfo(
            server=cfg.name,
            client_ip=ip,
            client_port=port,
            client_key=self.client_key,
            close=self._terminate,
        )
        self.log = self.log.bind(client_ip=ip, session=self.info.id)
        decision = policy.check_connect(
            cfg,
            self.client,
            active_connections=self.ctx.sessions.count(cfg.name),
            client_connections=self.ctx.sessions.count(cfg.name, self.client_key),
        )
        if not decision.ok:
            self.log.debug("connection refused: %s %s", decision.code, decision.text)
            self.ctx.count(f"rejected_connect_{decision.code}")
            await self._reply_and_close(f"{decision.code} {decision.text}")
            return
        self.ctx.sessions.add(self.info)
        self.ctx.count("connections")
        try:
            await self.push(f"220 {self.hostname} {IDENT}")
            await self._command_loop()
        finally:
            self.ctx.sessions.remove(self.info)

    async def _proxied_client(self, ip: str, port: int) -> tuple[str, int] | None:
        """The client a trusted proxy names in its PROXY header, before any greeting.

        From here on the named client is the peer for everything: connection control,
        the connection limit, relay, AUTH throttling, sessions, logs and the envelope.
        A LOCAL or UNKNOWN header (the proxy's own health check) leaves the proxy as the
        peer. Returns None after closing the connection, without a word (a proxy would
        pass any reply on to its client): the sender is not a trusted proxy, or its
        header is malformed, incomplete or late.
        """
        cfg = self.ctx.cfg
        log = self.log.bind(proxy_ip=ip)
        if not proxyproto.trusted(cfg.trusted_proxies, ip):
            log.warning("PROXY binding: %s is not a trusted proxy; connection closed", ip)
            self.ctx.count("rejected_proxy_untrusted")
            self._terminate()
            return None
        timeout = min(proxyproto.HEADER_TIMEOUT, cfg.connection_timeout)
        self.reset_timeout(timeout + 1)  # the idle time-out's 421 must not come first
        try:
            header = await asyncio.wait_for(proxyproto.read_header(self.reader), timeout)
        except (proxyproto.ProxyProtocolError, TimeoutError) as exc:
            reason = str(exc) or f"no header within {timeout:g} seconds"
            log.warning("PROXY header from %s refused: %s; connection closed", ip, reason)
            self.ctx.count("rejected_proxy_header")
            self._terminate()
            return None
        self.reset_timeout()
        if header.source is None:
            return ip, port
        self.log = log
        return header.source

    def _terminate(self) -> None:
        if self.transport is not None:
            self.transport.close()

    async def _reply_and_close(self, line: str) -> None:
        try:
            await self.push(line)
        finally:
            if self.transport is not None:
                self.transport.close()

    def timed_out(self) -> None:
        # RFC 5321 4.2: say why before closing, as IIS does after its connection time-out.
        transport = self.transport
        if isinstance(transport, asyncio.WriteTransport) and not transport.is_closing():
            transport.write(f"421 4.4.2 {self.hostname} Timeout, closing connection\r\n".encode())
            transport.close()

    async def _command_loop(self) -> None:
        bogus = 0
        while self.transport is not None:
            try:
                line = await self._read_command()
                if line is None:
                    continue
                command, _, arg = line.partition(" ")
                method = (
                    getattr(self, "smtp_" + command.upper(), None) if command.isalpha() else None
                )
                if method is None:
                    bogus += 1
                    if bogus >= BOGUS_LIMIT:
                        await self._reply_and_close(
                            "421 4.7.0 Too many unrecognized commands, closing"
                        )
                        return
                    await self.push("500 5.5.2 Command unrecognized")
                    continue
                self.reset_timeout()
                if self.ctx.w3c is not None:
                    self._pending = (command.upper(), arg.strip(), time.monotonic(), len(line) + 2)
                await method(arg.strip() or None)
            except asyncio.CancelledError:
                self.close_writer()
                raise
            except ConnectionResetError:
                self.close_writer()
                raise
            except TlsSetupFailed as error:
                self.log.info(
                    "%s: TLS handshake with %s failed: %s",
                    self.ctx.cfg.name,
                    self.info and self.info.client_ip,
                    error.__cause__,
                )
                self._terminate()
                return
            except Exception as error:  # noqa: BLE001 - a session must never die silently
                await self.push(await self.handle_exception(error))

    async def _read_command(self) -> str | None:
        """One command line, or None after answering a malformed one."""
        try:
            raw = await self.reader.readuntil(b"\n")
        except asyncio.LimitOverrunError as exc:
            await self._skip_line(exc.consumed)
            await self.push("500 5.5.2 Line too long")
            return None
        except asyncio.IncompleteReadError:
            self._terminate()
            raise asyncio.CancelledError() from None
        line = raw.rstrip(b"\r\n")
        limit = MAIL_COMMAND_LIMIT if line[:4].upper() == b"MAIL" else COMMAND_LIMIT
        if len(line) + 2 > limit:
            await self.push("500 5.5.2 Line too long")
            return None
        if not line:
            await self.push("500 5.5.2 Syntax error, empty command")
            return None
        if any(b < 32 and b != 9 for b in line) or 127 in line:
            await self.push("500 5.5.2 Syntax error, control characters in command")
            return None
        try:
            # RFC 6531 allows UTF-8 in commands, nothing else: undecodable bytes kept as
            # surrogates would reach the session list, and no UTF-8 page or JSON can show them.
            return line.decode("utf-8")
        except UnicodeDecodeError:
            await self.push("500 5.5.2 Syntax error, command is not valid UTF-8")
            return None

    async def _skip_line(self, consumed: int) -> None:
        await self.reader.read(consumed)
        while True:
            try:
                await self.reader.readuntil(b"\n")
                return
            except asyncio.LimitOverrunError as exc:
                await self.reader.read(exc.consumed)

    async def handle_exception(self, error: Exception) -> str:
        self.log.exception(
            "%s: session error from %s", self.ctx.cfg.name, self.client and self.client.ip
        )
        return "451 4.3.0 Internal error, try again later"

    # --- greeting commands ------------------------------------------------------------

    @property
    def _tls(self) -> bool:
        return self.tls_active

    def _facts(self) -> policy.Client:
        assert self.client is not None
        return policy.Client(
            ip=self.client.ip,
            ptr_names=self.client.ptr_names,
            authenticated_user=self.user,
            tls=self._tls,
        )

    async def smtp_HELO(self, arg: str | None) -> None:
        await self._greet(arg, extended=False)

    async def smtp_EHLO(self, arg: str | None) -> None:
        await self._greet(arg, extended=True)

    async def _greet(self, arg: str | None, *, extended: bool) -> None:
        if not arg or " " in arg:
            await self.push(f"501 5.5.4 Syntax: {'EHLO' if extended else 'HELO'} hostname")
            return
        assert self.session is not None and self.info is not None and self.client is not None
        self._reset_transaction()
        self.session.host_name = arg
        self.session.extended_smtp = extended
        self.info.helo = arg
        first = f"250{'-' if extended else ' '}{self.hostname} Hello [{self.client.ip}]"
        if not extended:
            await self.push(first)
            return
        keywords = policy.ehlo_keywords(self.ctx.cfg, tls=self._tls)
        lines = [first] + [f"250-{k}" for k in keywords[:-1]] + [f"250 {keywords[-1]}"]
        await self.push("\r\n".join(lines))

    async def smtp_NOOP(self, arg: str | None) -> None:
        await self.push("250 2.0.0 OK")

    async def smtp_RSET(self, arg: str | None) -> None:
        if arg:
            await self.push("501 5.5.4 Syntax: RSET")
            return
        self._reset_transaction()
        await self.push("250 2.0.0 Reset state")

    async def smtp_QUIT(self, arg: str | None) -> None:
        await self._reply_and_close(
            f"221 2.0.0 {self.hostname} Service closing transmission channel"
        )

    async def smtp_VRFY(self, arg: str | None) -> None:
        await self.push("252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery")

    async def smtp_EXPN(self, arg: str | None) -> None:
        await self.push("502 5.5.1 EXPN is not available")

    async def smtp_HELP(self, arg: str | None) -> None:
        await self.push(
            "214 2.0.0 Commands: HELO EHLO STARTTLS AUTH MAIL RCPT DATA RSET NOOP QUIT VRFY"
        )

    async def smtp_STARTTLS(self, arg: str | None) -> None:
        if arg:
            await self.push("501 5.5.4 Syntax: STARTTLS")
            return
        if not self.tls_context:
            await self.push("502 5.5.1 STARTTLS is not offered here")
            return
        if self._tls:
            await self.push("503 5.5.1 TLS already active")
            return
        await self.start_tls()
        assert self.info is not None
        self.info.tls = True
        # RFC 3207 4.2: forget everything learnt before TLS, HELO and AUTH included.
        self.user = None
        self._reset_transaction()

    def replying(self, status: str | bytes) -> None:
        if self._pending is not None:
            text = status if isinstance(status, str) else status.decode("ascii", "replace")
            if not text.startswith("3"):  # 334/354 are not the command's final answer
                self._log_command(text)

    def _log_command(self, reply: str) -> None:
        """One W3C line per command, written when its final (non-3xx) reply goes out."""
        assert self._pending is not None and self.ctx.w3c is not None and self.info is not None
        verb, argument, started, received = self._pending
        self._pending = None
        sockname = self.transport.get_extra_info("sockname") if self.transport else None
        code = int(reply[:3]) if reply[:3].isdigit() else 0
        self.ctx.w3c.write(
            LogRecord(
                when=_utc_now(),
                client_ip=self.info.client_ip,
                username=self.user,
                server_name=self.ctx.cfg.name,
                computer_name=self.hostname,
                server_ip=sockname[0] if sockname else "",
                server_port=sockname[1] if sockname else 0,
                method=verb,
                argument=argument,
                status=code,
                bytes_sent=len(reply) + 2,
                bytes_received=received,
                time_taken_ms=int((time.monotonic() - started) * 1000),
                helo=self.info.helo,
            )
        )

    # --- AUTH -------------------------------------------------------------------------

    async def smtp_AUTH(self, arg: str | None) -> None:
        assert self.session is not None and self.info is not None
        if not self.session.extended_smtp:
            await self.push("503 5.5.1 Send EHLO first")
            return
        if self.sender is not None:
            await self.push("503 5.5.1 AUTH is not allowed during a mail transaction")
            return
        parts = (arg or "").split()
        if not parts or len(parts) > 2:
            await self.push("501 5.5.4 Syntax: AUTH mechanism [initial-response]")
            return
        decision = policy.check_auth(self.ctx.cfg, self._facts(), mechanism=parts[0])
        if not decision.ok:
            await self.push(decision.reply)
            return
        if await self._auth_braked():
            return
        mechanism = MECHANISMS[parts[0].upper()]
        try:
            user = await mechanism(self, parts[1] if len(parts) > 1 else None)
        except AuthFailed as failure:
            if failure.reply:
                await self.push(failure.reply)
            return
        # Again before the verdict: a block set meanwhile (by this client's other sessions,
        # on any process of the node) holds for sessions opened before it too.
        if await self._auth_braked():
            return
        if user is None:
            await self._auth_failed()
            return
        self.user = user
        self.session.authenticated = True
        self.info.user = user
        await self.push("235 2.7.0 Authentication successful")

    async def _auth_braked(self) -> bool:
        """Answer 454 and return True if this client is blocked from AUTH on this server."""
        cfg = self.ctx.cfg
        if not cfg.auth_brake.enabled:
            return False
        if not await self.ctx.brake.blocked_until(cfg.name, self.client_key):
            return False
        self.ctx.count("auth_braked")
        await asyncio.sleep(self.ctx.brake.refusal_delay)
        await self.push(AUTH_BLOCKED)
        return True

    async def _auth_failed(self) -> None:
        """Count a wrong password against the brake, then answer 535 (later and later).

        The failure that reaches the limit is still answered 535: the block shows from the
        next AUTH on. The session goes on, so mail that needs no AUTH is never refused.
        """
        self.ctx.count("auth_failures")
        cfg = self.ctx.cfg
        if cfg.auth_brake.enabled:
            wait, blocked = await self.ctx.brake.failure(cfg.name, self.client_key, cfg.auth_brake)
            if blocked:
                self.log.warning(
                    "AUTH blocked on %s for client %s after %d failures",
                    cfg.name,
                    self.client_key,
                    cfg.auth_brake.block_after_failures,
                )
            elif wait:
                await asyncio.sleep(wait)
        await self.push("535 5.7.8 Authentication credentials invalid")

    async def check_password(self, username: str, password: str) -> str | None:
        """The account name if the password is right, checked on the password pool; raises
        AuthFailed (454) when this client or the node has too many checks in progress."""
        try:
            return await self.ctx.verifier.run(
                self.client_key, self.ctx.accounts.check_password, username, password
            )
        except PoolBusy:
            self.ctx.count("auth_busy")
            await asyncio.sleep(self.ctx.brake.refusal_delay)
            raise AuthFailed(AUTH_BUSY) from None

    @property
    def accounts(self) -> Accounts:
        """This server's accounts, for the SASL mechanisms (``sasl.server.AuthSession``)."""
        return self.ctx.accounts

    async def challenge(self, challenge: bytes) -> bytes | None:
        """Send ``334 <base64 challenge>`` and return the client's decoded answer, or None
        once the exchange is over (answered here: cancelled, bad base64, line too long).

        Not aiosmtpd's challenge_auth, which reads the answer with readline(), whose
        ValueError for a line past the stream limit would end in a 451 and a traceback;
        such a line is skipped here and refused with RFC 4954's 500 5.5.6, the way
        _read_command refuses long commands.
        """
        await self.push(b"334 " + base64.b64encode(challenge))
        try:
            line = await self.reader.readuntil(b"\n")
        except asyncio.LimitOverrunError as exc:
            await self._skip_line(exc.consumed)
            await self.push("500 5.5.6 Authentication Exchange line is too long")
            return None
        except asyncio.IncompleteReadError:
            self._terminate()
            raise asyncio.CancelledError() from None
        blob = line.strip()
        if blob == b"*":
            await self.push("501 5.7.0 Auth aborted")
            return None
        try:
            return base64.b64decode(blob, validate=True)
        except binascii.Error:
            await self.push("501 5.5.2 Can't decode base64")
            return None

    async def run_blocking(self, func: Callable[..., Any], *args: Any) -> Any:
        """Run slow work (PBKDF2, fsync) off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.ctx.executor, func, *args)

    # --- the mail transaction -------------------------------------------------------------

    def _reset_transaction(self) -> None:
        self.sender = None
        self.recipients = []
        self.mail_size = None
        self.smtputf8 = False
        self.body_8bit = False

    async def smtp_MAIL(self, arg: str | None) -> None:
        assert self.session is not None
        if not self.session.host_name:
            await self.push("503 5.5.1 Send HELO or EHLO first")
            return
        if self.sender is not None:
            await self.push("503 5.5.1 Sender already specified")
            return
        parsed = _path_argument(arg, "FROM:")
        if parsed is None:
            await self.push("501 5.5.4 Syntax: MAIL FROM:<address> [parameters]")
            return
        address, params = parsed
        options = self._mail_parameters(params)
        if isinstance(options, str):
            await self.push(options)
            return
        size, smtputf8, body_8bit = options
        decision = policy.check_mail(
            self.ctx.cfg,
            self._facts(),
            sender=address,
            size=size,
            smtputf8=smtputf8,
            messages_sent=self.messages,
            session_bytes=self.session_bytes,
        )
        if decision.code == 421:
            await self._reply_and_close(decision.reply)
            return
        if not decision.ok:
            await self.push(decision.reply)
            return
        self.sender = "" if decision.mailbox is None else str(decision.mailbox)
        self.mail_size, self.smtputf8, self.body_8bit = size, smtputf8, body_8bit
        await self.push(decision.reply)

    def _mail_parameters(self, params: list[str]) -> tuple[int | None, bool, bool] | str:
        assert self.session is not None
        if params and not self.session.extended_smtp:
            return "555 5.5.4 MAIL parameters need EHLO"
        size: int | None = None
        smtputf8 = body_8bit = False
        for param in params:
            key, eq, value = param.partition("=")
            # ASCII only, before any upper(): str.isdigit() takes "²" (which int() then
            # refuses) and "ſize".upper() is "SIZE". Bad values get 501, as Postfix answers.
            if not _ESMTP_KEYWORD.fullmatch(key):
                return "501 5.5.4 Syntax error in MAIL parameters"
            key = key.upper()
            if key == "SIZE":
                if not (eq and _SIZE_VALUE.fullmatch(value)):
                    return "501 5.5.4 Bad SIZE parameter syntax"
                size = int(value)
            elif key == "BODY":
                body = value.upper() if value.isascii() else ""
                if body not in ("7BIT", "8BITMIME"):
                    return "501 5.5.4 Bad BODY parameter value"
                body_8bit = body == "8BITMIME"
            elif key == "SMTPUTF8":
                if eq:
                    return "501 5.5.4 SMTPUTF8 takes no value"
                smtputf8 = True
            elif key == "AUTH" and eq:
                pass  # RFC 4954 5: the submitter's identity; we record our own
            else:
                return f"555 5.5.4 Unsupported MAIL parameter {key}"
        return size, smtputf8, body_8bit

    async def smtp_RCPT(self, arg: str | None) -> None:
        if self.sender is None:
            await self.push("503 5.5.1 Need MAIL command first")
            return
        parsed = _path_argument(arg, "TO:")
        if parsed is None:
            await self.push("501 5.5.4 Syntax: RCPT TO:<address>")
            return
        address, params = parsed
        if params:
            await self.push(
                f"555 5.5.4 Unsupported RCPT parameter {params[0].partition('=')[0].upper()}"
            )
            return
        decision = policy.check_rcpt(
            self.ctx.cfg,
            self._facts(),
            recipient=address,
            accepted_so_far=len(self.recipients),
            smtputf8=self.smtputf8,
        )
        if decision.ok and decision.mailbox is not None:
            self.recipients.append(str(decision.mailbox))
        else:
            self.ctx.count(f"rejected_rcpt_{decision.code}_{decision.enhanced}")
        await self.push(decision.reply)

    async def smtp_DATA(self, arg: str | None) -> None:
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        if self.sender is None:
            await self.push("503 5.5.1 Need MAIL command first")
            return
        if not self.recipients:
            await self.push("554 5.5.1 No valid recipients")
            return
        await self.push("354 Start mail input; end with <CRLF>.<CRLF>")
        reader = await self._receive(DataReader(self.ctx.cfg.messages.max_message_size))
        if reader is None:
            return
        reply = await self._accept(reader)
        if self._pending is not None:
            verb, argument, started, received = self._pending
            self._pending = (verb, argument, started, received + reader.received)
        self._reset_transaction()
        await self.push(reply)

    async def _receive(self, reader: DataReader) -> DataReader | None:
        """Read DATA in large chunks; None if the connection went away first.

        The idle time-out (IIS's) restarts with every chunk, but DATA as a whole also has a
        deadline: the time-out plus one second per MIN_DATA_RATE bytes received, counted
        up to the size limit. A client that dribbles a byte a second, or streams on past
        the limit, is cut off with the time-out's 421 instead of holding the session.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_duration
        # Bytes that arrived with the DATA command line are already in the stream buffer.
        while not reader.done:
            chunk = await self.reader.read(READ_CHUNK)
            if not chunk:
                self._terminate()
                return None
            reader.feed(chunk)
            credited = (
                reader.received if reader.limit is None else min(reader.received, reader.limit)
            )
            left = deadline + credited / MIN_DATA_RATE - loop.time()
            self.reset_timeout(max(0.001, min(self.timeout_duration, left)))
        self.reset_timeout()  # storing the message must not run into DATA's deadline
        if reader.leftover:
            # Pipelined commands that followed the terminator go back to the command loop.
            self.unread(reader.leftover)
        return reader

    async def _accept(self, reader: DataReader) -> str:
        cfg = self.ctx.cfg
        if reader.too_big:
            self.ctx.count("rejected_size")
            limit = cfg.messages.max_message_size
            return f"552 5.3.4 Message size exceeds fixed maximum message size ({limit} bytes)"
        result = reader.message()
        if result.line_too_long:
            return "500 5.5.2 Line too long: at most 998 characters per line (RFC 5322)"
        decision = policy.check_data(
            cfg,
            size=len(result.content),
            received_headers=result.received_headers,
            session_bytes=self.session_bytes,
        )
        if not decision.ok:
            self.ctx.count(f"rejected_data_{decision.enhanced}")
            return decision.reply
        return await self._store(result.content, result.eight_bit)

    async def _store(self, content: bytes, eight_bit: bool) -> str:
        assert self.info is not None and self.client is not None and self.session is not None
        queue_id = new_queue_id()
        data = self._received_header(queue_id).encode("utf-8") + content
        envelope = Envelope(
            queue_id=queue_id,
            server=self.ctx.cfg.name,
            sender=self.sender or "",
            recipients=tuple(self.recipients),
            received_at=time.time(),
            client_ip=self.client.ip,
            client_helo=self.session.host_name or "",
            auth_user=self.user,
            size=len(data),
            smtputf8=self.smtputf8,
            body_8bit=self.body_8bit or eight_bit,
        )
        try:
            await self.run_blocking(self.ctx.spool.store, envelope, data)
        except SpoolError as exc:
            self.log.error("%s: cannot spool a message: %s", self.ctx.cfg.name, exc)
            return "452 4.3.1 Insufficient system storage, try again later"
        self.messages += 1
        self.session_bytes += len(content)
        self.info.messages += 1
        self.info.bytes += len(data)
        self.ctx.count("accepted")
        self.log.info(
            "accepted %s from <%s> for %d recipient(s), %d bytes",
            queue_id,
            self.sender or "",
            len(self.recipients),
            len(data),
            extra={"queue_id": queue_id, "size": len(data)},
        )
        self.ctx.enqueue(queue_id, self.ctx.cfg.name)
        return f"250 2.0.0 Queued as {queue_id}"

    def _received_header(self, queue_id: str) -> str:
        """RFC 5321 4.4 trace field, with the RFC 3848 protocol name and the AUTH user."""
        assert self.client is not None and self.session is not None
        protocol = smtp_protocol(
            extended=self.session.extended_smtp,
            smtputf8=self.smtputf8,
            tls=self._tls,
            authenticated=bool(self.user),
        )
        return received_header(
            queue_id=queue_id,
            from_name=self.session.host_name or "unknown",
            from_comment=f"[{self.client.ip}]",
            host=self.hostname,
            server=self.ctx.cfg.name,
            recipients=self.recipients,
            when=_local_now(),
            protocol=protocol,
            user=self.user,
        )


def _wants_reverse_dns(cfg: ServerConfig) -> bool:
    entries = (*cfg.connection.entries, *cfg.relay.entries)
    return cfg.delivery.reverse_dns_lookup or any(e.kind == "domain" for e in entries)


def _local_now() -> datetime:
    return datetime.now().astimezone()


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _path_argument(arg: str | None, keyword: str) -> tuple[str, list[str]] | None:
    """Split ``FROM:<path> params`` / ``TO:<path> params``; None on bad syntax.

    The path keeps its angle brackets' content as typed (quoted parts included); the
    grammar decides whether it is acceptable.
    """
    if arg is None or arg[: len(keyword)].upper() != keyword:
        return None
    rest = arg[len(keyword) :].lstrip()
    if not rest.startswith("<"):
        return None  # RFC 5321 requires the brackets
    end = _closing_bracket(rest)
    if end < 0:
        return None
    return rest[1:end], rest[end + 1 :].split()


def _closing_bracket(text: str) -> int:
    quoted = escaped = False
    for index, char in enumerate(text[1:], start=1):
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == ">" and not quoted:
            return index
    return -1


def default_hostname() -> str:
    return socket.getfqdn()
