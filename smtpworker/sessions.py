"""Current sessions: who is connected to which server (IIS's "Current Sessions" node)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class SessionInfo:
    """One open SMTP connection; updated by the handler as the session goes on."""

    server: str
    client_ip: str
    client_port: int
    id: str = field(default_factory=lambda: secrets.token_hex(8))
    since: float = field(default_factory=time.time)
    helo: str = ""
    user: str | None = None
    tls: bool = False
    messages: int = 0
    bytes: int = 0
    close: Callable[[], None] = field(default=lambda: None, repr=False)

    def as_dict(self) -> dict[str, Any]:
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
    """The sessions open on this node, by id; counts per server for the connection limit."""

    def __init__(self) -> None:
        self._sessions: dict[str, SessionInfo] = {}

    def add(self, info: SessionInfo) -> None:
        self._sessions[info.id] = info

    def remove(self, info: SessionInfo) -> None:
        self._sessions.pop(info.id, None)

    def count(self, server: str) -> int:
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
