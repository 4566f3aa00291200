"""In-memory SMTP transcripts: a session of the real handler on a transport that is a buffer.

No socket: the client's bytes go straight into :class:`~smtpworker.inbound.handler.SmtpSession`
(``data_received``) and everything it writes is collected, so a test can assert every reply
of a session exactly, the way aiosmtpd's own and Zulip's transcript tests do::

    replies = live.run(transcript(live.node.contexts["Test"], b"EHLO a\\r\\nQUIT\\r\\n"))
    assert replies[-1] == "221 2.0.0 Bye"

The session runs on the loop that calls :func:`transcript`; use a
:class:`~smtpworker.tests.harness.LiveNode`'s loop and contexts, so the server's
configuration, spool and counters are the ones a socket session would get.
"""

from __future__ import annotations

import asyncio
from typing import Any

from smtpworker.inbound.handler import ServerContext, SmtpSession


class BufferTransport(asyncio.Transport):
    """A transport that records what is written and never reads from anywhere."""

    def __init__(self, peer: tuple[str, int]) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = asyncio.Event()
        self._extra = {"peername": peer, "sockname": ("127.0.0.1", 25)}

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closed.is_set()

    def close(self) -> None:
        self.closed.set()

    def abort(self) -> None:
        self.closed.set()

    def can_write_eof(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def transcript(
    context: ServerContext,
    client: bytes,
    *,
    peer: tuple[str, int] = ("127.0.0.1", 40000),
    timeout: float = 5.0,
) -> list[str]:
    """Run one session fed ``client`` (all of it at once, as a pipelining client would);
    return the server's reply lines in order, greeting first, CRLF removed.

    ``client`` should end the session (``QUIT``); if the server has not closed the
    connection within ``timeout`` seconds, the client's end of input is signalled and the
    replies so far are returned.
    """
    session = SmtpSession(context)
    transport = BufferTransport(peer)
    session.connection_made(transport)
    session.data_received(client)
    try:
        await asyncio.wait_for(transport.closed.wait(), timeout)
    except TimeoutError:
        session.eof_received()
        session.connection_lost(None)
    handler = session._handler_coroutine
    if handler is not None and not handler.done():
        handler.cancel()
        await asyncio.gather(handler, return_exceptions=True)
    return bytes(transport.written).decode("utf-8", "replace").split("\r\n")[:-1]
