"""The outbound connection pool: SMTP sessions kept open between delivery tasks.

Celery's delivery tasks send through :data:`POOL`, the process's pool, so a message to a
host that was just written to reuses that session (one TCP and TLS handshake, one AUTH)
instead of opening another. The pool is per process: a forked Celery child starts with an
empty one. The sessions themselves are ``smtpworker.outbound.client``'s
:class:`~smtpworker.outbound.client.Connection`.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from smtpworker.core.config import OutboundSecurity
from smtpworker.outbound.client import (
    Connection,
    RecipientResult,
    SessionError,
    TransactionResult,
)
from smtpworker.outbound.routing import Target

__all__ = ["POOL", "ConnectionPool", "PoolExhausted"]


class PoolExhausted(SessionError):
    """Every allowed connection to the host is in use and none came back in time."""


_Key = tuple[str, int, str, str, str, bool, OutboundSecurity]


class ConnectionPool:
    """Sessions kept open for reuse within one process, per (address, port, host name,
    verified name, HELO name, HELO/EHLO, security); thread-safe.

    :meth:`get` hands out an idle session for the key, most recently used first, or a new
    unopened Connection (its first send() opens it). :meth:`release` keeps a usable
    session for ``idle_timeout`` seconds and at most ``max_messages`` transactions (a
    server may cap messages per connection, IIS at 20). At most ``max_per_key`` sessions
    per key exist at once: get() waits up to ``wait`` seconds (default: the connection
    timeout) for one to come back, then raises PoolExhausted. Expired idle sessions are
    closed by the next get(), release() or prune(). Limits across processes are the
    caller's business.
    """

    def __init__(
        self,
        *,
        max_per_key: int = 4,
        idle_timeout: float = 30.0,
        max_messages: int = 20,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_per_key < 1 or max_messages < 1:
            raise ValueError("max_per_key and max_messages must be at least 1")
        self.max_per_key = max_per_key
        self.idle_timeout = idle_timeout
        self.max_messages = max_messages
        self._clock = clock
        self._cond = threading.Condition()
        self._idle: dict[_Key, list[tuple[float, Connection]]] = {}
        self._count: dict[_Key, int] = {}
        self._keys: dict[Connection, _Key] = {}  # every connection handed out, until closed
        self._closed = False

    def get(
        self,
        target: Target,
        *,
        helo_name: str,
        use_helo: bool,
        security: OutboundSecurity,
        password: str,
        timeout: float,
        wait: float | None = None,
    ) -> Connection:
        """A session for ``target``; give it back with :meth:`release`.

        The keywords are :class:`Connection`'s, passed on to a new one; all but
        ``password`` and ``timeout`` choose the idle session that may be reused.
        """
        key: _Key = (
            target.address,
            target.port,
            target.host,
            target.verify_name,
            helo_name,
            use_helo,
            security,
        )
        deadline = time.monotonic() + (timeout if wait is None else wait)
        expired: list[Connection] = []
        try:
            with self._cond:
                expired = self._expire()
                while True:
                    idle = self._idle.get(key)
                    if idle:
                        return idle.pop()[1]
                    if self._count.get(key, 0) < self.max_per_key:
                        break
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or self._closed:
                        raise PoolExhausted(f"4.4.5 All connections to {target.host} are busy")
                    self._cond.wait(remaining)
                self._count[key] = self._count.get(key, 0) + 1
                connection = Connection(
                    target,
                    helo_name=helo_name,
                    use_helo=use_helo,
                    security=security,
                    password=password,
                    timeout=timeout,
                )
                self._keys[connection] = key
                return connection
        finally:
            _close_all(expired)

    def release(self, connection: Connection) -> None:
        """Take a session back: keep it if it may carry more mail, else close it."""
        keep = connection.usable and connection.transactions < self.max_messages
        with self._cond:
            key = self._keys.get(connection)
            if key is None:
                keep = False
            elif keep and not self._closed:
                self._idle.setdefault(key, []).append((self._clock(), connection))
            else:
                keep = False
                self._forget(key, connection)
            expired = self._expire()
            self._cond.notify_all()
        _close_all(expired if keep else [*expired, connection])

    def send(
        self,
        target: Target,
        *,
        sender: str,
        recipients: Sequence[str],
        data: bytes,
        smtputf8: bool = False,
        **kwargs: Any,
    ) -> TransactionResult:
        """get(), :meth:`Connection.send`, release(): one transaction on a pooled session.
        ``kwargs`` are get()'s. Never raises for network or SMTP failures; a pool with
        every session busy past ``wait`` gives temporary results with connect_error."""
        try:
            conn = self.get(target, **kwargs)
        except PoolExhausted as exc:
            peer = f"{target.host}[{target.address}]:{target.port}"
            results = tuple(RecipientResult(r, exc.code, exc.reply) for r in recipients)
            return TransactionResult(peer, results, connect_error=exc.reply)
        try:
            return conn.send(sender, recipients, data, smtputf8=smtputf8)
        finally:
            self.release(conn)

    @contextmanager
    def connection(self, target: Target, **kwargs: Any) -> Iterator[Connection]:
        """``with pool.connection(target, helo_name=..., ...) as conn: conn.send(...)``"""
        conn = self.get(target, **kwargs)
        try:
            yield conn
        finally:
            self.release(conn)

    def prune(self) -> int:
        """Close sessions idle for longer than ``idle_timeout``; return how many."""
        with self._cond:
            expired = self._expire()
            self._cond.notify_all()
        _close_all(expired)
        return len(expired)

    def close_all(self) -> None:
        """Close every idle session; sessions in use are closed when released."""
        with self._cond:
            self._closed = True
            idle = [c for entries in self._idle.values() for _, c in entries]
            for connection in idle:
                self._forget(self._keys[connection], connection)
            self._idle.clear()
            self._cond.notify_all()
        _close_all(idle)

    def _after_fork(self) -> None:
        # A forked child (Celery prefork) must not talk on its parent's sockets, and a
        # lock held at fork time would never be released here.
        self._cond = threading.Condition()
        self._idle, self._count, self._keys = {}, {}, {}

    def _expire(self) -> list[Connection]:
        now = self._clock()
        expired: list[Connection] = []
        for key, entries in self._idle.items():
            stale = [c for since, c in entries if now - since >= self.idle_timeout]
            entries[:] = [(since, c) for since, c in entries if now - since < self.idle_timeout]
            for connection in stale:
                self._forget(key, connection)
            expired += stale
        return expired

    def _forget(self, key: _Key, connection: Connection) -> None:
        self._keys.pop(connection, None)
        self._count[key] = self._count.get(key, 1) - 1


def _close_all(connections: list[Connection]) -> None:
    # QUIT does network I/O: never under the pool's lock.
    for connection in connections:
        connection.close()


POOL = ConnectionPool()
"""The process's pool, for delivery tasks: sessions are shared by the tasks of one worker
process, never across processes."""
os.register_at_fork(after_in_child=POOL._after_fork)
