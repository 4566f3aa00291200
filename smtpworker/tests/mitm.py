"""A man in the middle on loopback: a real TCP proxy between an SMTP client and a server.

It stands where an attacker on the path would, and records every byte each side sent as
the wire carried it (after STARTTLS that is ciphertext)::

    with Sink(tls=True) as sink, Mitm(sink.address, sink.port, mode="strip_starttls") as mitm:
        ...deliver to mitm.address / mitm.port...
        assert b"secret" not in mitm.client_bytes()

Modes:

- ``relay``: pass every byte both ways unchanged (a passive eavesdropper; the server's
  own certificate is what the client sees, so a sink with a certificate for another name
  or from a private CA is "a wrong certificate").
- ``strip_starttls``: overwrite the STARTTLS capability in the server's replies with
  :data:`STRIPPED` (the classic downgrade, length kept), so the client believes the server
  offers no TLS.
- ``break_tls``: answer the client's STARTTLS with ``220`` itself, then send bytes that
  are not TLS and hang up: the client's handshake fails.
"""

from __future__ import annotations

import asyncio
import re
import threading
from typing import Any

MODES = ("relay", "strip_starttls", "break_tls")
_STARTTLS = re.compile(rb"starttls", re.IGNORECASE)
# What STARTTLS-stripping middleboxes put in its place: eight octets, so lengths and
# line counts of the EHLO reply stay as they were and the client notices nothing.
STRIPPED = b"X" * len(b"STARTTLS")


class Mitm:
    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        host: str = "127.0.0.1",
        mode: str = "relay",
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.upstream = (upstream_host, upstream_port)
        self.address = host
        self.port = 0  # known once started
        self.mode = mode
        self.connections = 0
        self._client = bytearray()
        self._server = bytearray()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server_obj: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def smart_host(self) -> str:
        return f"[{self.address}]:{self.port}"

    def client_bytes(self) -> bytes:
        """Everything the client sent, over every connection, as the wire carried it."""
        with self._lock:
            return bytes(self._client)

    def server_bytes(self) -> bytes:
        """Everything passed to the client (after any tampering), as the wire carried it."""
        with self._lock:
            return bytes(self._server)

    # --- life cycle ---------------------------------------------------------------------

    def start(self) -> Mitm:
        loop = self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=loop.run_forever, name="mitm", daemon=True)
        self._thread.start()
        started = asyncio.run_coroutine_threadsafe(self._listen(), loop)
        started.result(5)
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._close(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
        self._loop = self._thread = None

    def __enter__(self) -> Mitm:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _listen(self) -> None:
        server = await asyncio.start_server(self._accept, self.address, 0)
        self.port = server.sockets[0].getsockname()[1]
        self._server_obj = server

    async def _close(self) -> None:
        if self._server_obj is not None:
            self._server_obj.close()
            await self._server_obj.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # --- one connection -----------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            self._tasks.discard(task)
            return
        try:
            upward = asyncio.ensure_future(self._from_client(reader, up_writer, writer))
            downward = asyncio.ensure_future(self._from_server(up_reader, writer))
            await asyncio.wait([upward, downward], return_when=asyncio.FIRST_COMPLETED)
            for pump in (upward, downward):
                pump.cancel()
            await asyncio.gather(upward, downward, return_exceptions=True)
        except asyncio.CancelledError:
            pass  # stop(): asyncio's stream callback would log a cancelled handler as an error
        finally:
            for side in (writer, up_writer):
                side.close()
            self._tasks.discard(task)

    async def _from_client(
        self,
        reader: asyncio.StreamReader,
        upstream: asyncio.StreamWriter,
        client: asyncio.StreamWriter,
    ) -> None:
        while chunk := await reader.read(65536):
            with self._lock:
                self._client += chunk
            if self.mode == "break_tls" and chunk.strip().upper() == b"STARTTLS":
                await self._break_handshake(reader, client)
                return
            upstream.write(chunk)
            await upstream.drain()

    async def _break_handshake(
        self, reader: asyncio.StreamReader, client: asyncio.StreamWriter
    ) -> None:
        await self._to_client(client, b"220 2.0.0 Ready to start TLS\r\n")
        hello = await reader.read(65536)  # the ClientHello
        with self._lock:
            self._client += hello
        await self._to_client(client, b"this is not TLS\r\n" * 4)

    async def _from_server(
        self, reader: asyncio.StreamReader, client: asyncio.StreamWriter
    ) -> None:
        while True:
            if self.mode == "strip_starttls":
                # Line by line, so the word is never split between two reads.
                chunk = await reader.readline()
                chunk = _STARTTLS.sub(STRIPPED, chunk)
            else:
                chunk = await reader.read(65536)
            if not chunk:
                return
            await self._to_client(client, chunk)

    async def _to_client(self, client: asyncio.StreamWriter, data: bytes) -> None:
        with self._lock:
            self._server += data
        client.write(data)
        await client.drain()
