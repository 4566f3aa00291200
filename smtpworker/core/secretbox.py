"""Secrets encrypted at rest: TLS private keys, smart-host passwords, CRAM-MD5 contexts.

The web app seals what it stores and the SMTP worker opens it; both derive the same key
from one passphrase (``MAILADMIN_ENCRYPTION_KEY``), which never goes in the database.
"""

from __future__ import annotations

import base64

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from smtpworker.core.contract import PUBLIC_DEVELOPMENT_KEY

__all__ = [
    "PREFIX",
    "SecretBox",
    "SecretBoxError",
    "is_sealed",
    "key_problem",
]

PREFIX = "enc:v1:"
# A fixed salt is enough here: HKDF only stretches a random passphrase into a key, it is
# not a password hash, and one key per deployment is the point. Changing it breaks every
# stored secret, so it is versioned together with PREFIX and _INFO.
_SALT = b"mailadmin secretbox salt v1"
_INFO = b"mailadmin secretbox v1"
_WRONG_KEY = "cannot decrypt: the encryption key differs from the one this secret was stored with"


def key_problem(name: str, key: str) -> str | None:
    """Say why the key ``key`` (the setting ``name``) must not be used, or None if it may.

    An empty key and the public development key are refused; the text names the setting
    and says how to give it a value.
    """
    if not key.strip():
        return (
            f"{name} is not set: set it (or {name}_FILE, a file holding it) to a long random "
            "string, e.g. python3 -c 'import secrets; print(secrets.token_urlsafe(48))'; "
            "`make run` generates one into var/"
        )
    if key.strip() == PUBLIC_DEVELOPMENT_KEY:
        return (
            f"{name} is the public development key that older versions shipped in the "
            "repository: anyone can read it. Set a long random key of your own (see README)"
        )
    return None


class SecretBoxError(Exception):
    """A sealed value cannot be opened: wrong key, tampering, or not a sealed value."""


def is_sealed(text: str) -> bool:
    """Tell whether ``text`` looks like :meth:`SecretBox.seal` output.

    The empty string, which stands for "no secret", is not sealed.
    """
    return text.startswith(PREFIX)


class SecretBox:
    """Authenticated encryption (Fernet: AES-128-CBC + HMAC-SHA256) under one passphrase.

    The passphrase should be a long random string (``secrets.token_urlsafe(32)``): the key
    is derived with HKDF-SHA256, which does not slow down guessing of a weak passphrase.
    """

    is_sealed = staticmethod(is_sealed)

    def __init__(self, passphrase: str) -> None:
        if not passphrase:
            raise SecretBoxError("the encryption key is empty")
        kdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=_SALT, info=_INFO)
        key = kdf.derive(passphrase.encode())
        self._fernet = Fernet(base64.urlsafe_b64encode(key))

    def __repr__(self) -> str:
        return "SecretBox(<key hidden>)"

    def seal(self, plaintext: str) -> str:
        """Return ``"enc:v1:" + token``; the empty string stays empty ("no secret").

        Sealing the same text twice gives different tokens (random IV).
        """
        if plaintext == "":
            return ""
        return PREFIX + self._fernet.encrypt(plaintext.encode()).decode("ascii")

    def open(self, sealed: str) -> str:
        """Return the plaintext of :meth:`seal` output; the empty string opens to itself.

        Raises SecretBoxError if ``sealed`` is not sealed, was sealed under another key, or
        was altered.
        """
        if sealed == "":
            return ""
        if not is_sealed(sealed):
            raise SecretBoxError("cannot decrypt: the value is not an encrypted secret")
        token = sealed[len(PREFIX) :]
        if not token.isascii():  # Fernet raises ValueError, not InvalidToken, for these
            raise SecretBoxError(_WRONG_KEY)
        try:
            return self._fernet.decrypt(token.encode("ascii")).decode()
        except (InvalidToken, UnicodeDecodeError):
            # Fernet cannot tell a wrong key from tampering; a wrong key is the usual cause.
            raise SecretBoxError(_WRONG_KEY) from None
