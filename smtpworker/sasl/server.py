"""The SASL mechanisms of SMTP AUTH (RFC 4954): PLAIN, LOGIN, CRAM-MD5, SCRAM-SHA-256.

Each mechanism is an async function ``(session, initial_response) -> user or None``: the
account name on success, None when the credentials are wrong (the caller answers 535 and
counts the failure against the AUTH brake). A malformed or cancelled exchange raises
:class:`AuthFailed`, which is not a credential failure.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiosmtpd.smtp import MISSING

from smtpworker.sasl.scram import ScramError, ScramServer

if TYPE_CHECKING:
    from smtpworker.inbound.handler import SmtpSession


class AuthFailed(Exception):
    """The exchange ended without a verdict; ``reply`` is what to answer (None: answered)."""

    def __init__(self, reply: str | None) -> None:
        super().__init__(reply or "")
        self.reply = reply


async def _challenge(session: SmtpSession, challenge: bytes) -> bytes:
    # The session's challenge_auth sends "334 <base64>", reads the answer, and itself
    # answers "*" (cancel), bad base64 and an over-long line; MISSING tells us it did.
    answer = await session.challenge_auth(challenge, encode_to_b64=True)
    if answer is MISSING:
        raise AuthFailed(None)
    assert isinstance(answer, bytes)
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


async def auth_plain(session: SmtpSession, initial: str | None) -> str | None:
    raw = _decode(initial) if initial is not None else await _challenge(session, b"")
    parts = raw.split(b"\x00")
    if len(parts) != 3:
        raise AuthFailed("501 5.5.2 PLAIN wants authzid NUL authcid NUL password")
    authzid, username, password = (_text(p) for p in parts)
    if authzid and authzid != username:
        return None  # acting for someone else is not supported
    return await session.check_password(username, password)


async def auth_login(session: SmtpSession, initial: str | None) -> str | None:
    raw_user = _decode(initial) if initial is not None else await _challenge(session, b"Username:")
    raw_password = await _challenge(session, b"Password:")
    username, password = _text(raw_user), _text(raw_password)
    return await session.check_password(username, password)


async def auth_cram_md5(session: SmtpSession, initial: str | None) -> str | None:
    if initial is not None:
        raise AuthFailed("501 5.5.2 CRAM-MD5 takes no initial response")
    challenge = make_challenge(session.hostname)
    answer = _text(await _challenge(session, challenge))
    username, _, digest = answer.rpartition(" ")
    if not username or len(digest) != 32:
        raise AuthFailed("501 5.5.2 CRAM-MD5 wants: user SP digest")
    return session.ctx.accounts.check_cram_md5(username, challenge, digest)


async def auth_scram_sha256(session: SmtpSession, initial: str | None) -> str | None:
    accounts = session.ctx.accounts
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


MECHANISMS: dict[str, Callable[[SmtpSession, str | None], Awaitable[str | None]]] = {
    "PLAIN": auth_plain,
    "LOGIN": auth_login,
    "CRAM-MD5": auth_cram_md5,
    "SCRAM-SHA-256": auth_scram_sha256,
}
