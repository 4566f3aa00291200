"""The client side of SMTP AUTH's SASL mechanisms (RFC 4954): PLAIN, LOGIN, CRAM-MD5,
SCRAM-SHA-256.

A mechanism is made from a user name and the opened (plain) password and knows nothing of
SMTP: the outbound connection (``smtpworker.outbound.client``) sends :meth:`Mechanism.start`
as the initial response, answers each 334 challenge with :meth:`Mechanism.step`, and
trusts a 235 only if :meth:`Mechanism.complete` agrees (SCRAM: the server proved it knows
the verifier).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from typing import Protocol

from smtpworker.sasl.scram import ScramClient

__all__ = ["MECHANISMS", "CramMd5", "Login", "Mechanism", "Plain"]


class Mechanism(Protocol):
    def start(self) -> bytes | None:
        """The initial response, or None to wait for the first challenge."""

    def step(self, challenge: bytes) -> bytes:
        """The answer to a decoded challenge; ValueError for one it cannot answer."""

    def complete(self) -> bool:
        """Whether the exchange reached its end on this side."""


class Plain:
    def __init__(self, username: str, password: str) -> None:
        self._response = b"\0" + username.encode() + b"\0" + password.encode()

    def start(self) -> bytes | None:
        return self._response

    def step(self, challenge: bytes) -> bytes:
        raise ValueError("unexpected challenge")

    def complete(self) -> bool:
        return True


class Login:
    def __init__(self, username: str, password: str) -> None:
        self._answers = [username.encode(), password.encode()]

    def start(self) -> bytes | None:
        return None

    def step(self, challenge: bytes) -> bytes:
        if not self._answers:
            raise ValueError("unexpected challenge")
        return self._answers.pop(0)

    def complete(self) -> bool:
        return not self._answers


class CramMd5:
    def __init__(self, username: str, password: str) -> None:
        self._username, self._password = username, password

    def start(self) -> bytes | None:
        return None

    def step(self, challenge: bytes) -> bytes:
        # From the password itself, with the standard library: the server's stored
        # context and its hand-written MD5 (core.credentials) exist only because the
        # server has no password.
        digest = hmac.new(self._password.encode(), challenge, hashlib.md5).hexdigest()
        return f"{self._username} {digest}".encode()

    def complete(self) -> bool:
        return True


MECHANISMS: dict[str, Callable[[str, str], Mechanism]] = {
    "PLAIN": Plain,
    "LOGIN": Login,
    "CRAM-MD5": CramMd5,
    "SCRAM-SHA-256": ScramClient,
}
"""Each mechanism by its SASL name, made from (user name, password)."""
