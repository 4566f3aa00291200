"""Current sessions: who is connected to which server (IIS's "Current Sessions" node)."""

from __future__ import annotations

import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from smtpworker.core.contract import SessionStatus


@dataclass(slots=True)
class SessionInfo:
    """One open SMTP connection; updated by the handler as the session goes on."""

    server: str
    client_ip: str
    client_port: int
    # The client as the per-client connection limit counts it (an IPv6 /64 is one client).
    client_key: str = ""
    id: str = field(default_factory=lambda: secrets.token_hex(8))
    since: float = field(default_factory=time.time)
    helo: str = ""
    user: str | None = None
    tls: bool = False
    messages: int = 0
    bytes: int = 0
    close: Callable[[], None] = field(default=lambda: None, repr=False)

    def as_dict(self) -> SessionStatus:
        return {
            "id": self.id,
            "server": self.server,
            "client_ip": self.client_ip,
            "client_port": self.client_port,
            "since": self.since,
            "helo": self.helo,
            "user": self.user,
            "tls": self.tls,
            "messages": self.messages,
            "bytes": self.bytes,
        }


class SessionRegistry:
    """The sessions open on this node, by id; counts per server (and per client of a
    server) for the connection limits."""

    def __init__(self) -> None:
        self._sessions: dict[str, SessionInfo] = {}
        self._per_client: Counter[tuple[str, str]] = Counter()

    def add(self, info: SessionInfo) -> None:
        if info.id not in self._sessions:
            self._per_client[(info.server, info.client_key)] += 1
        self._sessions[info.id] = info

    def remove(self, info: SessionInfo) -> None:
        if self._sessions.pop(info.id, None) is not None:
            key = (info.server, info.client_key)
            self._per_client[key] -= 1
            if self._per_client[key] <= 0:
                del self._per_client[key]

    def count(self, server: str, client_key: str | None = None) -> int:
        """Open sessions of a server, or of one client (by its key) on that server."""
        if client_key is not None:
            return self._per_client.get((server, client_key), 0)
        return sum(1 for s in self._sessions.values() if s.server == server)

    def __iter__(self) -> Iterator[SessionInfo]:
        return iter(list(self._sessions.values()))

    def __len__(self) -> int:
        return len(self._sessions)

    def terminate(self, session_id: str) -> bool:
        """Close one session's connection; False if it is not (or no longer) here."""
        info = self._sessions.get(session_id)
        if info is None:
            return False
        info.close()
        return True
