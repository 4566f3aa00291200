"""Send one SMTP transaction to one host, synchronously, with smtplib (Celery tasks call it).

A :class:`Connection` is one session with one :class:`~smtpworker.outbound.routing.Target`: it
greets (EHLO, or HELO where a remote domain asks for it), upgrades with STARTTLS at the
outbound security's TLS level (opportunistic, required, verified), authenticates when the
outbound security says so (inside TLS only, unless clear text is allowed for the hop), and
then carries any number of transactions. :meth:`Connection.send`
never raises for what the network or the server does: every recipient gets a
:class:`RecipientResult` whose code says delivered (2xx), retry (4xx) or bounce (5xx).
``smtpworker.outbound.pool`` keeps sessions open for the next message to the same host.

Timeouts: every socket operation is bounded by the connection's ``timeout``.
"""

from __future__ import annotations

import base64
import binascii
import functools
import logging
import re
import smtplib
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, replace

from smtpworker.core.config import OutboundSecurity
from smtpworker.core.contract import OutboundAuth, OutboundTls
from smtpworker.core.credentials import b64
from smtpworker.outbound.routing import Target
from smtpworker.sasl.client import MECHANISMS, Mechanism

__all__ = [
    "Connection",
    "RecipientResult",
    "SessionError",
    "TransactionResult",
    "tls_context",
    "to_wire",
]

log = logging.getLogger(__name__)

_LINE_END = re.compile(rb"\r\n|\r|\n")
_UNSAFE_IN_ADDRESS = re.compile(r"[\r\n\0<>]")
_MAX_SASL_ROUNDS = 5


@dataclass(frozen=True, slots=True)
class RecipientResult:
    """One recipient's outcome: the RCPT reply if it was refused there, else the reply to
    the end of DATA (or a synthesized 4xx when the session failed). ``reply`` is the
    server's text without the code, on one line."""

    recipient: str
    code: int
    reply: str

    @property
    def delivered(self) -> bool:
        return 200 <= self.code < 300

    @property
    def permanent(self) -> bool:
        return self.code >= 500


@dataclass(frozen=True, slots=True)
class TransactionResult:
    """The outcome per recipient, in the order given. ``connect_error`` is set when the
    session failed (no connection, time-out, dropped connection, TLS or AUTH failure):
    then every recipient not already refused at RCPT has a 4xx result with that text,
    and the caller may try the next host. ``unreachable`` says the session could not even
    be opened (connection, greeting, TLS or AUTH failed), so another transaction to the
    host now would fail the same way; a session lost during a transaction is not that.
    ``host`` reads ``name[address]:port``."""

    host: str
    results: tuple[RecipientResult, ...]
    connect_error: str | None = None
    unreachable: bool = False


class SessionError(Exception):
    """The session failed; always temporary. ``reply`` starts with an enhanced code."""

    def __init__(self, reply: str, code: int = 421) -> None:
        super().__init__(reply)
        self.reply = reply
        self.code = code


class _TlsFailed(SessionError):
    """The TLS handshake failed; in opportunistic mode the session is retried in clear.
    ``detail`` says why, without the enhanced code and host."""

    def __init__(self, reply: str, detail: str) -> None:
        super().__init__(reply)
        self.detail = detail


class _StaleSession(Exception):
    """A reused session failed its RSET: the server had closed it. Nothing of the
    transaction was taken, so it may go again on a new session."""


def to_wire(data: bytes) -> bytes:
    """``data`` as sent after DATA: CRLF line ends (a bare CR or LF becomes CRLF, so none
    reaches the wire), lines starting with "." doubled (RFC 5321 4.5.2), ending with
    CRLF "." CRLF."""
    crlf = data.count(b"\r\n")
    if data.count(b"\r") == crlf == data.count(b"\n"):
        text = data  # every line end is already CRLF (what the SMTP worker spools)
    else:
        text = _LINE_END.sub(b"\r\n", data)
    if text and not text.endswith(b"\r\n"):
        text += b"\r\n"
    # Every line now ends in CRLF, so a line starts at the very beginning or after one:
    # bytes.replace does what a multi-line regex would, at a tenth of its cost.
    if text.startswith(b"."):
        text = b"." + text
    return text.replace(b"\r\n.", b"\r\n..") + b".\r\n"


def tls_context(security: OutboundSecurity) -> ssl.SSLContext:
    """The client context for ``security``'s TLS level. ``opportunistic`` and ``required``
    encrypt without checking the certificate, as IIS does and as RFC 7435 advises (smart
    hosts are often named by address and carry private certificates); ``verified`` checks
    the chain against ``security.tls_ca`` (PEM; the system's CAs when empty) and the host
    name. Raises ssl.SSLError when ``tls_ca`` holds no usable certificate."""
    if security.tls == OutboundTls.VERIFIED:
        return _verified_context(security.tls_ca)
    return _unverified_context()


@functools.cache
def _unverified_context() -> ssl.SSLContext:
    # One shared context: building one loads OpenSSL state.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


@functools.lru_cache(maxsize=64)
def _verified_context(ca_pem: str) -> ssl.SSLContext:
    if ca_pem.strip():
        context = ssl.create_default_context(cadata=ca_pem)
    else:
        context = ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context  # check_hostname and CERT_REQUIRED are the defaults


def _check_server_name(name: str) -> None:
    """Raise ValueError for a name the ssl module would refuse. It refuses it only once the
    socket is inside an SSLSocket that nobody then holds (an unclosed socket), so ask first:
    an MX host from DNS may have a label IDNA cannot encode (63 escaped octets)."""
    if not name or name.startswith("."):
        raise ValueError("an empty name or one with a leading dot")
    name.encode("idna")  # UnicodeError, a ValueError, for a label over 63 characters


class _Client(smtplib.SMTP):
    def wrap_tls(self, context: ssl.SSLContext, server_hostname: str) -> None:
        """The socket half of STARTTLS, after the 220. smtplib's own starttls() would
        name the peer by the address dialled, not by its host name (SNI, verification).
        A failure closes the socket: nothing more may go over it in clear."""
        assert self.sock is not None
        try:
            _check_server_name(server_hostname)
            self.sock = context.wrap_socket(self.sock, server_hostname=server_hostname)
        except BaseException:
            self.close()
            raise
        self.file = None
        # RFC 3207 4.2: forget everything the server said before TLS.
        self.helo_resp = self.ehlo_resp = None
        self.esmtp_features = {}
        self.does_esmtp = False


class Connection:
    """One SMTP session with one target, reusable for several transactions; not
    thread-safe (the pool, ``smtpworker.outbound.pool``, hands it to one user at a time).

    ``security.tls`` is the level: ``opportunistic`` uses STARTTLS when offered and goes
    on in clear when it is not offered, refused or its handshake fails (a new session,
    without TLS); ``required`` fails the session (temporarily) unless TLS is set up, with
    any certificate; ``verified`` also needs a certificate that :func:`tls_context`
    accepts for ``target.verify_name``. Nothing goes in clear after a failed handshake at
    a required level. ``security.auth_method`` "basic" uses PLAIN or LOGIN, "integrated"
    SCRAM-SHA-256 or CRAM-MD5; ``password`` is the opened (plain) secret. AUTH runs only
    inside TLS unless ``security.cleartext_auth`` allows it without; otherwise a session
    without TLS fails temporarily before any AUTH byte is sent, saying why. A server that
    offers no suitable mechanism, or refuses the credentials, fails the session
    temporarily too: a wrong password must not bounce mail.
    """

    def __init__(
        self,
        target: Target,
        *,
        helo_name: str,
        use_helo: bool,
        security: OutboundSecurity,
        password: str,
        timeout: float,
    ) -> None:
        if not helo_name:
            # smtplib would say "EHLO " with nothing, or look the name up in DNS.
            raise ValueError("helo_name is required (the server's FQDN)")
        self.target = target
        self.helo_name = helo_name
        self.use_helo = use_helo
        self.security = security
        self.timeout = timeout
        self.tls = False
        self.authenticated = False
        self.transactions = 0  # on the current TCP session
        self._password = password
        self._smtp: _Client | None = None
        self._closing = False  # the server said 421: do not reuse
        self._stage = "connecting"
        self._clear_reason = ""  # why the session runs without TLS, for AUTH's refusal

    def __repr__(self) -> str:
        return f"Connection({self.peer}, open={self._smtp is not None})"

    @property
    def peer(self) -> str:
        return f"{self.target.host}[{self.target.address}]:{self.target.port}"

    @property
    def usable(self) -> bool:
        """Open, and the server has not announced it is closing."""
        return self._smtp is not None and not self._closing

    def open(self) -> None:
        """Connect, greet, STARTTLS, AUTH; a no-op when open. Raises SessionError, after
        which the connection is closed."""
        if self._smtp is not None:
            return
        try:
            self._open(try_tls=True)
        except _TlsFailed as exc:
            if self.security.tls_required:
                raise
            why = f"the TLS handshake failed: {exc.detail}"
            if self._needs_auth and not self.security.cleartext_auth:
                raise self._cleartext_refusal(why) from exc
            # Opportunistic TLS: plain delivery beats none (RFC 7435), as Postfix does.
            log.info("%s; retrying without TLS", exc.reply)
            self._open(try_tls=False, clear_reason=why)

    @property
    def _needs_auth(self) -> bool:
        return self.security.auth_method != OutboundAuth.ANONYMOUS

    def _open(self, *, try_tls: bool, clear_reason: str = "") -> None:
        self._stage, self._closing = "connecting", False
        self.tls = self.authenticated = False
        self.transactions = 0
        self._clear_reason = clear_reason
        smtp = self._smtp = _Client(local_hostname=self.helo_name, timeout=self.timeout)
        try:
            code, reply = smtp.connect(self.target.address, self.target.port)
            if code != 220:
                raise self._refused("greeting", code, reply)
            self._hello(smtp)
            if try_tls:
                self._starttls(smtp)
            if self._needs_auth:
                self._authenticate(smtp)
        except SessionError:
            self._drop()
            raise
        except (OSError, smtplib.SMTPException) as exc:
            self._drop()
            raise self._lost(exc) from exc

    def _hello(self, smtp: _Client) -> None:
        self._stage = "greeting with HELO" if self.use_helo else "greeting with EHLO"
        if self.use_helo:
            code, reply = smtp.helo(self.helo_name)
        else:
            code, reply = smtp.ehlo(self.helo_name)
            if 500 <= code < 600:  # RFC 5321 4.1.4: a server may know only HELO
                code, reply = smtp.helo(self.helo_name)
        if code != 250:
            raise self._refused("HELO/EHLO", code, reply)

    def _starttls(self, smtp: _Client) -> None:
        """STARTTLS at the security's level; returns without TLS only when opportunistic
        (``_clear_reason`` then says why). Raises _TlsFailed when the handshake fails."""
        required = self.security.tls_required
        if not smtp.has_extn("starttls"):
            if self.use_helo:
                why = f"HELO (not EHLO) is set for {self.peer}, so STARTTLS cannot be used"
                self._clear_reason = "HELO (not EHLO) is set, so STARTTLS cannot be used"
            else:
                why = f"{self.peer} does not offer STARTTLS"
                self._clear_reason = "STARTTLS not offered"
            if required:
                raise SessionError(f"4.7.4 TLS is required, but {why}")
            return
        try:
            context = tls_context(self.security)
        except ssl.SSLError as exc:  # the stored CA bundle is unusable: never go in clear
            why = f"4.7.5 The CA certificates for {self.peer} are unusable: {exc}"
            raise SessionError(why) from exc
        self._stage = "starting TLS"
        code, reply = smtp.docmd("STARTTLS")
        if code != 220:
            if required:
                raise SessionError(f"4.7.4 {self.peer} refused STARTTLS: {code} {_text(reply)}")
            self._clear_reason = f"STARTTLS failed: {code} {_text(reply)}"
            return  # RFC 3207: the session goes on in clear (but AUTH only if allowed)
        try:
            smtp.wrap_tls(context, self.target.verify_name)
        except (ssl.SSLError, ssl.CertificateError, OSError) as exc:
            detail = _tls_error(exc)
            level = "verified " if self.security.tls == OutboundTls.VERIFIED else ""
            failure = f"4.7.5 {level}TLS handshake with {self.peer} failed: {detail}"
            raise _TlsFailed(failure, detail) from exc
        except ValueError as exc:  # after SSLError: a CertificateError is a ValueError too
            # The ssl module refuses a name IDNA cannot encode (an MX host from DNS with a
            # label of 63 escaped octets): no certificate can match it, so the handshake is
            # failed like any other, never a crash that leaves the message retried for ever.
            detail = f"{self.target.verify_name!r} cannot be a TLS server name ({exc})"
            raise _TlsFailed(f"4.7.5 TLS with {self.peer} failed: {detail}", detail) from exc
        self.tls = True
        self._hello(smtp)

    def _authenticate(self, smtp: _Client) -> None:
        if not self.tls and not self.security.cleartext_auth:
            raise self._cleartext_refusal(self._clear_reason or "no TLS")
        method = self.security.auth_method
        wanted = (
            ("PLAIN", "LOGIN") if method == OutboundAuth.BASIC else ("SCRAM-SHA-256", "CRAM-MD5")
        )
        offered = smtp.esmtp_features.get("auth", "").upper().split() if smtp.does_esmtp else []
        mechanism = next((m for m in wanted if m in offered), None)
        if mechanism is None:
            raise SessionError(
                f"4.7.0 {self.peer} offers no {' or '.join(wanted)} for {method} "
                f"authentication (it offers: {' '.join(offered) or 'no AUTH'})"
            )
        self._stage = f"authenticating with {mechanism}"
        try:
            client = MECHANISMS[mechanism](self.security.username, self._password)
        except ValueError as exc:  # SASLprep refused the name or password (RFC 4013)
            raise SessionError(
                f"4.7.0 AUTH {mechanism} with {self.peer}: the stored credentials cannot be "
                f"sent ({exc})"
            ) from exc
        code, reply = self._sasl(smtp, mechanism, client)
        if code != 235 or not client.complete():
            raise SessionError(
                f"4.7.0 {self.peer} refused AUTH {mechanism} as {self.security.username!r}: "
                f"{code} {reply}"
            )
        self.authenticated = True

    def _sasl(self, smtp: _Client, mechanism: str, client: Mechanism) -> tuple[int, str]:
        initial = client.start()
        arg = mechanism if initial is None else f"{mechanism} {b64(initial) or '='}"
        code, reply = smtp.docmd("AUTH", arg)
        for _round in range(_MAX_SASL_ROUNDS):
            if code != 334:
                return code, _text(reply)
            try:
                answer = client.step(base64.b64decode(reply, validate=True))
            except (ValueError, binascii.Error) as exc:
                smtp.docmd("*")  # RFC 4954 4: cancel the exchange
                raise SessionError(f"4.7.0 AUTH {mechanism} with {self.peer}: {exc}") from exc
            code, reply = smtp.docmd(b64(answer))
        smtp.docmd("*")
        raise SessionError(f"4.7.0 AUTH {mechanism} with {self.peer} does not end")

    def send(
        self, sender: str, recipients: Sequence[str], data: bytes, *, smtputf8: bool = False
    ) -> TransactionResult:
        """One transaction: MAIL, RCPT for each recipient, DATA if any was accepted.

        Opens the session if needed; on a reused session sends RSET first, and reopens it
        once if the server had closed it meanwhile. With a server that offers PIPELINING
        (RFC 2920), RSET, MAIL, the RCPTs and DATA go as one command group, so a message
        costs two round trips instead of four or more. ``data`` is normalised by
        :func:`to_wire`. BODY=8BITMIME is declared for 8-bit data when offered;
        SMTPUTF8 when an address is non-ASCII or ``smtputf8`` is set, and offered. A
        non-ASCII address to a server without SMTPUTF8 is refused with 553 5.6.7.
        Never raises for network or SMTP failures.
        """
        if not recipients:
            return TransactionResult(self.peer, ())
        verdicts: list[RecipientResult | None] = [None] * len(recipients)
        try:
            self._ready()
            try:
                self._transaction(sender, recipients, data, smtputf8, verdicts)
            except _StaleSession:  # nothing of the transaction was taken: start afresh
                self._drop()
                self.open()
                verdicts[:] = [None] * len(recipients)
                self._transaction(sender, recipients, data, smtputf8, verdicts)
        except SessionError as exc:  # the session could not be (re)opened
            failed = self._failed(recipients, [None] * len(recipients), exc)
            return replace(failed, unreachable=True)
        except (OSError, smtplib.SMTPException) as exc:
            error = self._lost(exc)
            self._drop()
            return self._failed(recipients, verdicts, error)
        if self._closing:
            self._drop()  # after a 421 the server hangs up; RFC 5321 3.8: so do we
        return TransactionResult(self.peer, tuple(v for v in verdicts if v is not None))

    def _ready(self) -> None:
        if self._smtp is None:
            self.open()
            return
        if self.transactions == 0 or self._smtp.has_extn("pipelining"):
            return  # nothing to reset, or the RSET goes with the next command group
        try:
            code, _reply = self._smtp.docmd("RSET")
        except (OSError, smtplib.SMTPException):
            code = 0
        if code != 250:  # an idle session the server dropped: start afresh
            self._drop()
            self.open()

    def _transaction(
        self,
        sender: str,
        recipients: Sequence[str],
        data: bytes,
        smtputf8: bool,
        verdicts: list[RecipientResult | None],
    ) -> None:
        smtp = self._smtp
        assert smtp is not None
        payload = to_wire(data)
        options, problem = self._mail_options(smtp, sender, recipients, payload, smtputf8)
        if problem is None and _UNSAFE_IN_ADDRESS.search(sender):
            problem = (553, "5.1.7 The sender address has characters SMTP cannot carry")
        if problem is not None:
            verdicts[:] = [RecipientResult(r, *problem) for r in recipients]
            return
        if smtp.has_extn("pipelining"):
            self._pipelined(smtp, f"FROM:<{sender}>{options}", recipients, payload, verdicts)
            return
        self.transactions += 1
        self._stage = "sending MAIL FROM"
        code, reply = smtp.docmd("MAIL", f"FROM:<{sender}>{options}")
        if code != 250:
            self._closing = code == 421
            verdicts[:] = [RecipientResult(r, code, _text(reply)) for r in recipients]
            return
        accepted = self._recipients(smtp, recipients, verdicts)
        if not accepted:
            return
        self._stage = "sending DATA"
        code, reply = smtp.docmd("DATA")
        self._data(smtp, code, reply, recipients, accepted, payload, verdicts)

    def _pipelined(
        self,
        smtp: _Client,
        mail: str,
        recipients: Sequence[str],
        payload: bytes,
        verdicts: list[RecipientResult | None],
    ) -> None:
        """RFC 2920: [RSET,] MAIL, every RCPT and DATA in one write, then the replies in
        order; the message follows a 354 if any recipient was accepted. A failed RSET
        (the reused session was closed by the server) raises _StaleSession."""
        reset = self.transactions > 0
        self.transactions += 1
        sent = [i for i, r in enumerate(recipients) if not _UNSAFE_IN_ADDRESS.search(r)]
        for index in set(range(len(recipients))) - set(sent):
            verdicts[index] = _unsendable(recipients[index])
        if not sent:
            return
        group = ["RSET\r\n"] if reset else []
        group += [f"MAIL {mail}\r\n", *(f"RCPT TO:<{recipients[i]}>\r\n" for i in sent)]
        group.append("DATA\r\n")
        if reset:
            self._stage = "resetting the session"
            try:
                smtp.send("".join(group))
                code, _reply = smtp.getreply()
            except (OSError, smtplib.SMTPException) as exc:
                raise _StaleSession() from exc
            if code != 250:
                raise _StaleSession()
        else:
            self._stage = "sending MAIL FROM"
            smtp.send("".join(group))
        self._pipelined_replies(smtp, recipients, sent, payload, verdicts)

    def _pipelined_replies(
        self,
        smtp: _Client,
        recipients: Sequence[str],
        sent: list[int],
        payload: bytes,
        verdicts: list[RecipientResult | None],
    ) -> None:
        self._stage = "waiting for the reply to MAIL FROM"
        code, reply = smtp.getreply()
        mail_failed = code != 250
        if mail_failed:  # every recipient gets the MAIL reply, as in lockstep
            for index in sent:
                verdicts[index] = RecipientResult(recipients[index], code, _text(reply))
        if code == 421:
            self._closing = True  # the server goes away: read no further
            return
        accepted: list[int] = []
        self._stage = "waiting for the replies to RCPT TO"
        for position, index in enumerate(sent):
            code, reply = smtp.getreply()
            if not mail_failed:
                verdicts[index] = RecipientResult(recipients[index], code, _text(reply))
            if 200 <= code < 300 and not mail_failed:
                accepted.append(index)
            elif code == 421:  # the server is going away: the rest wait for next time
                self._closing = True
                for rest in sent[position + 1 :]:
                    verdicts[rest] = RecipientResult(recipients[rest], code, _text(reply))
                return
        self._stage = "waiting for the reply to DATA"
        code, reply = smtp.getreply()
        if code == 354 and not accepted:  # RFC 2920 3.1: DATA taken, no recipient: end it
            self._stage = "ending an empty message"
            smtp.send(b".\r\n")
            smtp.getreply()
            return
        self._data(smtp, code, reply, recipients, accepted, payload, verdicts)

    def _data(
        self,
        smtp: _Client,
        code: int,
        reply: bytes,
        recipients: Sequence[str],
        accepted: list[int],
        payload: bytes,
        verdicts: list[RecipientResult | None],
    ) -> None:
        """After DATA's reply: the message follows a 354, and its reply (or DATA's
        refusal) is every accepted recipient's outcome."""
        if code == 354:
            self._stage = "sending the message"
            smtp.send(payload)
            self._stage = "waiting for the reply to the message"
            code, reply = smtp.getreply()
        self._closing = code == 421
        for index in accepted:
            verdicts[index] = RecipientResult(recipients[index], code, _text(reply))

    def _recipients(
        self, smtp: _Client, recipients: Sequence[str], verdicts: list[RecipientResult | None]
    ) -> list[int]:
        accepted: list[int] = []
        self._stage = "sending RCPT TO"
        for index, recipient in enumerate(recipients):
            if _UNSAFE_IN_ADDRESS.search(recipient):
                verdicts[index] = _unsendable(recipient)
                continue
            code, reply = smtp.docmd("RCPT", f"TO:<{recipient}>")
            verdicts[index] = RecipientResult(recipient, code, _text(reply))
            if 200 <= code < 300:
                accepted.append(index)
            elif code == 421:  # the server is going away: the rest wait for next time
                self._closing = True
                for rest in range(index + 1, len(recipients)):
                    verdicts[rest] = RecipientResult(recipients[rest], code, _text(reply))
                return []
        return accepted

    def _mail_options(
        self,
        smtp: _Client,
        sender: str,
        recipients: Sequence[str],
        payload: bytes,
        smtputf8: bool,
    ) -> tuple[str, tuple[int, str] | None]:
        """MAIL FROM parameters, or a permanent problem that stops the transaction."""
        international = not sender.isascii() or not all(r.isascii() for r in recipients)
        if international and not smtp.has_extn("smtputf8"):
            return "", (553, f"5.6.7 SMTPUTF8 is required, but was not offered by {self.peer}")
        smtp.command_encoding = "utf-8" if international else "ascii"
        options = []
        if smtp.has_extn("size"):
            options.append(f" SIZE={len(payload)}")
        if not payload.isascii() and smtp.has_extn("8bitmime"):
            # Without 8BITMIME, 8-bit data goes as is, as Postfix and IIS send it.
            options.append(" BODY=8BITMIME")
        if (international or smtputf8) and smtp.has_extn("smtputf8"):
            options.append(" SMTPUTF8")
        return "".join(options), None

    def close(self) -> None:
        """QUIT politely and close; safe to call twice."""
        smtp, self._smtp = self._smtp, None
        if smtp is None:
            return
        try:
            smtp.quit()
        except (OSError, smtplib.SMTPException):
            pass
        finally:
            smtp.close()

    def _drop(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            smtp.close()

    def _failed(
        self,
        recipients: Sequence[str],
        verdicts: list[RecipientResult | None],
        error: SessionError,
    ) -> TransactionResult:
        # A refusal at RCPT stands; everyone else waits for the next attempt.
        results = tuple(
            v if v is not None and v.code >= 400 else RecipientResult(r, error.code, error.reply)
            for r, v in zip(recipients, verdicts, strict=True)
        )
        return TransactionResult(self.peer, results, connect_error=error.reply)

    def _cleartext_refusal(self, why: str) -> SessionError:
        # X.7.10 "Encryption needed" (RFC 5248); temporary: the hop may offer TLS later.
        return SessionError(
            f"4.7.10 refusing to send credentials in clear text to {self.peer}: {why}"
        )

    def _refused(self, stage: str, code: int, reply: bytes) -> SessionError:
        # A 5xx here says nothing about the recipients; like Postfix, try elsewhere/later.
        text = f"{self.peer} refused the session at {stage}: {code} {_text(reply)}"
        return SessionError(f"4.4.2 {text}", code if 400 <= code < 500 else 421)

    def _lost(self, exc: BaseException) -> SessionError:
        cause = exc.__cause__ or exc.__context__
        timed_out = isinstance(exc, TimeoutError) or isinstance(cause, TimeoutError)
        if self._stage == "connecting" and isinstance(exc, smtplib.SMTPServerDisconnected):
            self._stage = "waiting for the greeting"  # connect() also reads the greeting
        if self._stage == "connecting":
            what = "timed out" if timed_out else str(exc)
            return SessionError(f"4.4.1 Cannot connect to {self.peer}: {what}")
        if timed_out:
            return SessionError(f"4.4.2 {self.peer} timed out while {self._stage}")
        return SessionError(f"4.4.2 Lost connection with {self.peer} while {self._stage}: {exc}")


def _tls_error(exc: BaseException) -> str:
    """A handshake error in one line: OpenSSL's reason and verification message."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    return _text(str(exc)) or type(exc).__name__


def _unsendable(recipient: str) -> RecipientResult:
    return RecipientResult(recipient, 553, "5.1.3 The address has characters SMTP cannot carry")


def _text(reply: bytes | str) -> str:
    if isinstance(reply, bytes):
        reply = reply.decode("utf-8", "replace")
    return " ".join(line.strip() for line in reply.splitlines())
