"""The server side of SMTP AUTH's SASL mechanisms (RFC 4954): PLAIN, LOGIN, CRAM-MD5,
SCRAM-SHA-256.

Each mechanism is an async function ``(session, initial_response) -> user or None``: the
account name on success, None when the credentials are wrong (the caller answers 535 and
counts the failure against the AUTH brake). A malformed or cancelled exchange raises
:class:`AuthFailed`, which is not a credential failure.

A mechanism sees the SMTP session only through :class:`AuthSession` (send a challenge,
read the answer; check a password; the accounts' verifiers), so this package knows
neither the inbound daemon nor aiosmtpd: ``smtpworker.inbound.handler.SmtpSession``
is one.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from smtpworker.core.config import UserConfig
from smtpworker.core.credentials import ScramVerifier
from smtpworker.sasl.scram import ScramError, ScramServer

__all__ = ["MECHANISMS", "AuthFailed", "AuthSession", "Verifiers", "make_challenge"]


class Verifiers(Protocol):
    """The accounts of the server being authenticated to, by the name the client typed."""

    @property
    def mock_key(self) -> bytes:
        """The server secret SCRAM's answers for unknown users are derived from."""

    def find(self, username: str) -> UserConfig | None: ...

    def scram_verifier(self, username: str) -> ScramVerifier | None: ...

    def check_cram_md5(self, username: str, challenge: bytes, digest_hex: str) -> str | None:
        """The account name if ``digest_hex`` answers ``challenge``, else None."""


class AuthSession(Protocol):
    """The SMTP session, as a mechanism sees it."""

    @property
    def hostname(self) -> str:
        """The server's name, for CRAM-MD5's challenge."""

    @property
    def accounts(self) -> Verifiers: ...

    async def challenge(self, challenge: bytes) -> bytes | None:
        """Send ``334 <base64 challenge>`` and return the client's decoded answer, or None
        when the exchange is over and the session has answered it already (the client
        cancelled with "*", sent bad base64 or an over-long line)."""

    async def check_password(self, username: str, password: str) -> str | None:
        """The account name if the password is right, else None; may raise AuthFailed."""


class AuthFailed(Exception):
    """The exchange ended without a verdict; ``reply`` is what to answer (None: answered)."""

    def __init__(self, reply: str | None) -> None:
        super().__init__(reply or "")
        self.reply = reply


async def _challenge(session: AuthSession, challenge: bytes) -> bytes:
    answer = await session.challenge(challenge)
    if answer is None:  # the session answered already ("*", bad base64, too long)
        raise AuthFailed(None)
    return answer


def _decode(initial: str) -> bytes:
    if initial == "=":
        return b""  # RFC 4954 4: "=" is an empty initial response
    try:
        return base64.b64decode(initial, validate=True)
    except (binascii.Error, ValueError):
        raise AuthFailed("501 5.5.2 Cannot decode the base64 response") from None


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise AuthFailed("501 5.5.2 Credentials are not UTF-8") from None


def make_challenge(fqdn: str) -> bytes:
    """A fresh CRAM-MD5 challenge ``<random.timestamp@fqdn>`` (RFC 2195 section 2).

    Raises ValueError if ``fqdn`` is empty, not ASCII, or holds spaces or angle brackets.
    """
    if not fqdn or not fqdn.isascii() or any(ch in "<> \t\r\n" for ch in fqdn):
        raise ValueError(f"not a host name: {fqdn!r}")
    return f"<{secrets.randbits(64)}.{int(time.time())}@{fqdn}>".encode("ascii")


async def auth_plain(session: AuthSession, initial: str | None) -> str | None:
    raw = _decode(initial) if initial is not None else await _challenge(session, b"")
    parts = raw.split(b"\x00")
    if len(parts) != 3:
        raise AuthFailed("501 5.5.2 PLAIN wants authzid NUL authcid NUL password")
    authzid, username, password = (_text(p) for p in parts)
    if authzid and authzid != username:
        return None  # acting for someone else is not supported
    return await session.check_password(username, password)


async def auth_login(session: AuthSession, initial: str | None) -> str | None:
    raw_user = _decode(initial) if initial is not None else await _challenge(session, b"Username:")
    raw_password = await _challenge(session, b"Password:")
    username, password = _text(raw_user), _text(raw_password)
    return await session.check_password(username, password)


async def auth_cram_md5(session: AuthSession, initial: str | None) -> str | None:
    if initial is not None:
        raise AuthFailed("501 5.5.2 CRAM-MD5 takes no initial response")
    challenge = make_challenge(session.hostname)
    answer = _text(await _challenge(session, challenge))
    username, _, digest = answer.rpartition(" ")
    if not username or len(digest) != 32:
        raise AuthFailed("501 5.5.2 CRAM-MD5 wants: user SP digest")
    return session.accounts.check_cram_md5(username, challenge, digest)


async def auth_scram_sha256(session: AuthSession, initial: str | None) -> str | None:
    accounts = session.accounts
    server = ScramServer(accounts.scram_verifier, mock_key=accounts.mock_key)
    client_first = _decode(initial) if initial is not None else await _challenge(session, b"")
    try:
        server_first = server.first(client_first)
        client_final = await _challenge(session, server_first)
        server_final = server.final(client_final)
    except ScramError:
        return None
    # RFC 4954 4: the server's final message goes in a last 334; the client answers empty.
    if await _challenge(session, server_final):
        raise AuthFailed("501 5.5.2 Expected an empty response after the server's final message")
    account = accounts.find(server.username or "")
    return account.username if account else None


MECHANISMS: dict[str, Callable[[AuthSession, str | None], Awaitable[str | None]]] = {
    "PLAIN": auth_plain,
    "LOGIN": auth_login,
    "CRAM-MD5": auth_cram_md5,
    "SCRAM-SHA-256": auth_scram_sha256,
}
