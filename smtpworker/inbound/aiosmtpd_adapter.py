"""The one module that knows aiosmtpd's insides (and the asyncio stream internals it uses).

An SMTP session keeps aiosmtpd's ``SMTP`` for what it does well: the asyncio protocol
(``connection_made``, ``connection_lost``, ``eof_received``), the idle time-out, writing
replies, and the STARTTLS switch of transports. It answers every command itself
(``smtpworker.inbound.handler``), so it never runs aiosmtpd's command loop, commands,
hooks or AUTH, and does not call ``SMTP.__init__``: that builds hook and AUTH tables by
introspection (``inspect.getmembers``, ``dir``) on every connection, ~75 us, about a
fifth of the accept path. :class:`SessionBase` sets instead the attributes the
constructor would, and gives the handler public names for the private ones it needs.

Everything here is specific to the aiosmtpd pinned in requirements.txt
(:data:`PINNED_VERSION`): :data:`ATTRIBUTES`, :data:`INHERITED`, :data:`HOOKS`,
:data:`READER_BUFFER`, :data:`SESSION_FIELDS` and :data:`AIOSMTPD_TLS_READY` name every
private attribute and method relied on (and the one reply text rewritten), and
``smtpworker/tests/test_aiosmtpd_adapter.py`` checks each against the installed aiosmtpd,
so an upgrade that renames or drops one fails that test, not a rarely run path in
production. Nothing else in ``smtpworker`` imports aiosmtpd (an import-linter contract).
"""

from __future__ import annotations

import asyncio
import ssl
from asyncio.sslproto import SSLProtocol
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session, TLSSetupException

__all__ = [
    "AIOSMTPD_TLS_READY",
    "ATTRIBUTES",
    "HOOKS",
    "INHERITED",
    "PINNED_VERSION",
    "READER_BUFFER",
    "SESSION_FIELDS",
    "TLS_READY",
    "SessionBase",
    "TlsSetupFailed",
]

PINNED_VERSION = "1.4.6"
"""The aiosmtpd this adapter was written against; requirements.txt pins the same."""

TlsSetupFailed = TLSSetupException
"""Raised by :meth:`SessionBase.start_tls` when the handshake fails (its ``__cause__``
says why)."""

ATTRIBUTES: dict[str, type | tuple[type, ...]] = {
    # Read by the inherited methods below: the protocol, time-out, push and STARTTLS.
    "loop": asyncio.AbstractEventLoop,
    "enable_SMTPUTF8": bool,
    "tls_context": (ssl.SSLContext, type(None)),
    "_timeout_duration": (int, float),
    "_timeout_handle": (asyncio.TimerHandle, type(None)),
    "_tls_handshake_okay": bool,
    "_tls_protocol": (SSLProtocol, type(None)),  # set by STARTTLS
    "_original_transport": (asyncio.BaseTransport, type(None)),
    "session": (Session, type(None)),  # set by connection_made
    "envelope": (Envelope, type(None)),
    "transport": (asyncio.BaseTransport, type(None)),
    "_handler_coroutine": (asyncio.Task, type(None)),
    "_handle_hooks": dict,
    # Read only by aiosmtpd's own command loop, commands and AUTH, which never run here;
    # set as the constructor would, so a path this list missed finds them, not a crash.
    "__ident__": str,
    "event_handler": object,
    "data_size_limit": (int, type(None)),
    "_decode_data": bool,
    "hostname": str,
    "require_starttls": (bool, type(None)),
    "_auth_require_tls": bool,
    "_auth_required": bool,
    "_enforce_call_limit": bool,
    "_proxy_timeout": (int, float, type(None)),
    "_authenticator": object,
    "_auth_callback": object,
    "_ehlo_hook_ver": (str, type(None)),
    "_auth_methods": dict,
    "_smtp_methods": dict,
}
"""Every instance attribute ``SMTP.__init__`` sets that :class:`SessionBase` sets in its
place, with the kinds of value aiosmtpd keeps in it."""

INHERITED: dict[str, tuple[bool, tuple[str, ...]]] = {
    # name: (is a coroutine function, parameter names)
    "connection_made": (False, ("self", "transport")),
    "connection_lost": (False, ("self", "error")),
    "eof_received": (False, ("self",)),
    "push": (True, ("self", "status")),
    "smtp_STARTTLS": (True, ("self", "arg")),
    "_reset_timeout": (False, ("self", "duration")),
    "_cb_client_connected": (False, ("self", "reader", "writer")),
    "_create_session": (False, ("self",)),
    "_set_rset_state": (False, ("self",)),
    "_set_post_data_state": (False, ("self",)),
    "_create_envelope": (False, ("self",)),
}
"""aiosmtpd's methods a session runs (called here or by aiosmtpd's own code)."""

HOOKS: dict[str, tuple[bool, tuple[str, ...]]] = {
    "_handle_client": (True, ("self",)),  # started by connection_made
    "_timeout_cb": (False, ("self",)),  # scheduled by _reset_timeout
}
"""aiosmtpd's methods that its inherited code calls and :class:`SessionBase` replaces."""

READER_BUFFER = "_buffer"
"""asyncio.StreamReader's private buffer (a bytearray): :meth:`SessionBase.unread`
puts bytes back in front of it, as aiosmtpd's own connection_made clears it."""

AIOSMTPD_TLS_READY = "220 Ready to start TLS"
"""What aiosmtpd's STARTTLS answers; :meth:`SessionBase.push` sends :data:`TLS_READY`."""
TLS_READY = "220 2.0.0 Ready to start TLS"

SESSION_FIELDS = ("peer", "ssl", "host_name", "extended_smtp", "authenticated")
"""The attributes of aiosmtpd's ``Session`` (the ``session`` attribute) a session uses."""


class SessionBase(SMTP):
    """aiosmtpd's ``SMTP`` without its constructor, command loop or hooks.

    A subclass implements :meth:`serve` (the whole session, from the greeting on) and
    :meth:`timed_out` (the idle time-out), and may override :meth:`replying` to see each
    reply before it is written. It reads the client through :attr:`reader`, and uses
    :meth:`reset_timeout`, :meth:`start_tls`, :meth:`unread` and :attr:`tls_active`
    instead of aiosmtpd's private names.
    """

    def __init__(
        self,
        *,
        hostname: str,
        ident: str,
        tls_context: ssl.SSLContext | None,
        data_size_limit: int | None,
        timeout: float,
    ) -> None:
        asyncio.StreamReaderProtocol.__init__(
            self,
            asyncio.StreamReader(limit=self.line_length_limit),
            client_connected_cb=self._cb_client_connected,
        )
        self.__ident__ = ident
        self.loop = asyncio.get_running_loop()
        self.event_handler = _NoHooks()
        self.data_size_limit = data_size_limit
        self.enable_SMTPUTF8 = True
        self._decode_data = False
        self.hostname = hostname
        self.tls_context = tls_context
        self.require_starttls = False
        self._timeout_duration = timeout
        self._timeout_handle = None
        self._tls_handshake_okay = True
        self._tls_protocol = None
        self._original_transport = None
        self.session = None
        self.envelope = None
        self.transport = None
        self._handler_coroutine = None
        self._auth_require_tls = False
        self._auth_required = False
        self._enforce_call_limit = False
        self._proxy_timeout = None
        self._authenticator = None
        self._auth_callback = None
        self._ehlo_hook_ver = None
        self._auth_methods = {}
        self._handle_hooks = {}
        self._smtp_methods = {}

    # --- what a session implements ----------------------------------------------------

    async def serve(self) -> None:
        """The session, once connected: greet, then read and answer commands."""
        raise NotImplementedError

    def timed_out(self) -> None:
        """The idle time-out (:meth:`reset_timeout`) ran out."""
        raise NotImplementedError

    def replying(self, status: str | bytes) -> None:
        """Called with each reply just before it is written."""

    # --- aiosmtpd's hooks, routed to the above ------------------------------------------

    async def _handle_client(self) -> None:
        await self.serve()

    def _timeout_cb(self) -> None:
        self.timed_out()

    async def push(self, status: Any) -> None:  # str or bytes, as aiosmtpd's
        """Write one reply: its lines joined by CRLF, without the final CRLF."""
        if isinstance(status, str) and status.startswith(AIOSMTPD_TLS_READY):
            status = TLS_READY  # with its enhanced status code (RFC 2034)
        self.replying(status)
        await super().push(status)

    # --- aiosmtpd's and asyncio's private state, by public names ---------------------------

    @property
    def reader(self) -> asyncio.StreamReader:
        """The client's bytes (set by asyncio when the connection is made)."""
        return self._reader

    def close_writer(self) -> None:
        self._writer.close()

    @property
    def tls_active(self) -> bool:
        """Whether STARTTLS has switched this session to TLS."""
        return self._tls_protocol is not None

    @property
    def timeout_duration(self) -> float:
        """The idle time-out, in seconds."""
        return float(self._timeout_duration)

    def reset_timeout(self, duration: float | None = None) -> None:
        """Restart the idle time-out: ``duration`` seconds, else the session's own."""
        self._reset_timeout(duration)

    def unread(self, data: bytes) -> None:
        """Put ``data`` back in front of what the client sent and is not read yet."""
        buffer: bytearray = getattr(self._reader, READER_BUFFER)
        buffer[0:0] = data

    async def start_tls(self) -> None:
        """Answer 220 and switch the transport to TLS (aiosmtpd's STARTTLS, which the
        caller has checked is allowed); raises :data:`TlsSetupFailed`."""
        await super().smtp_STARTTLS("")


class _NoHooks:
    """aiosmtpd wants a handler object; every command is handled by the session itself."""
