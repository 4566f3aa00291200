"""The published configuration body, authenticated: who may configure the relay.

Redis carries the configuration from the web side to the SMTP workers, and Redis often
has no password on a local machine. Whoever can write the body key could otherwise turn a
server into an open relay or add an SMTP account, so the body travels with an
HMAC-SHA256 over its exact bytes, under a key derived from ``MAILADMIN_ENCRYPTION_KEY``
(the secret the worker already needs to open sealed secrets). The last-known-good file
keeps the same signed bytes and is checked the same way when a worker starts from it.

Wire format (ASCII header line, then the body exactly as signed)::

    mailadmin-config hmac-sha256=<64 hex digits>\\n<canonical JSON body>

The MAC is checked, in constant time, before a single byte of the body is parsed.
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from smtpworker.core.config import ConfigFormatError

__all__ = ["ConfigAuthError", "body_key", "sign", "verify"]

MAGIC = b"mailadmin-config hmac-sha256="
# Own salt and label: the MAC key is independent of the secretbox key derived from the
# same passphrase, so neither use can be turned against the other.
_SALT = b"mailadmin config body salt v1"
_INFO = b"mailadmin config body hmac-sha256 v1"
_HEX = frozenset(b"0123456789abcdef")


class ConfigAuthError(ConfigFormatError):
    """The body is not signed, or not signed with this site's key: never applied."""


def body_key(passphrase: str) -> bytes:
    """The 32-byte MAC key for configuration bodies, derived from the encryption key."""
    if not passphrase:
        raise ConfigAuthError("the encryption key is empty: configuration cannot be signed")
    kdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=_SALT, info=_INFO)
    return kdf.derive(passphrase.encode())


def _mac(key: bytes, body: bytes) -> bytes:
    return hmac.new(key, body, hashlib.sha256).hexdigest().encode("ascii")


def sign(key: bytes, body: bytes) -> bytes:
    """The body as published: the header line with its MAC, then ``body`` unchanged."""
    return MAGIC + _mac(key, body) + b"\n" + body


def verify(key: bytes, wire: bytes) -> bytes:
    """Return the body of :func:`sign` output; raise ConfigAuthError if it is unsigned,
    malformed, or signed with another key, or was altered after signing."""
    header, newline, body = wire.partition(b"\n")
    if not newline or not header.startswith(MAGIC):
        raise ConfigAuthError("the configuration body is not signed")
    given = header[len(MAGIC) :]
    if len(given) != 64 or not set(given) <= _HEX:
        raise ConfigAuthError("the configuration body has a malformed signature")
    if not hmac.compare_digest(given, _mac(key, body)):
        raise ConfigAuthError(
            "the configuration body's signature does not match this site's key "
            "(written by someone without MAILADMIN_ENCRYPTION_KEY, or by another site)"
        )
    return body
