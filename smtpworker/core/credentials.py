"""SMTP user verifiers: what the server keeps instead of a password (DESIGN invariant 7).

- PLAIN/LOGIN: a salted PBKDF2 hash in Django's ``pbkdf2_sha256$...`` format.
- SCRAM-SHA-256 (RFC 5802, RFC 7677): salt, iteration count, StoredKey and ServerKey.
- CRAM-MD5 (RFC 2195): the two HMAC-MD5 midstates, as Dovecot stores them. They are
  password-equivalent for CRAM-MD5 alone, so callers seal them at rest (see secretbox).

It also holds the primitives those verifiers are made of (SASLprep, SCRAM's key
derivation, HMAC-SHA-256, base64 text), which the SASL exchanges in ``smtpworker.sasl``
use too: one implementation of each, here, since the core may not import ``sasl``.
The exchanges themselves (challenges, SCRAM messages, proofs) live in ``smtpworker.sasl``.

Nothing here does I/O, so the SMTP worker can call it from its async AUTH handlers.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import secrets
import stringprep
import struct
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "ScramVerifier",
    "b64",
    "cram_md5_digest",
    "hash_password",
    "hmac_sha256",
    "make_cram_md5_context",
    "make_scram_verifier",
    "saslprep",
    "scram_keys",
    "unb64",
    "verify_cram_md5",
    "verify_password",
]

# --- PBKDF2 (PLAIN / LOGIN) -------------------------------------------------------------

_PBKDF2_ALGORITHM = "pbkdf2_sha256"
_SALT_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def hash_password(password: str, *, iterations: int = 600_000, salt: str | None = None) -> str:
    """Return ``pbkdf2_sha256$<iterations>$<salt>$<base64 hash>``, byte for byte what
    Django's ``PBKDF2PasswordHasher.encode`` gives for the same inputs.

    Without ``salt``, a random 22-character alphanumeric one is drawn (128 bits, Django's
    default). Raises ValueError for a salt that is empty or contains ``$``, or iterations < 1.
    """
    if salt is None:
        salt = "".join(secrets.choice(_SALT_CHARS) for _ in range(22))
    if not salt or "$" in salt:
        raise ValueError("salt must be non-empty and must not contain '$'")
    if iterations < 1:
        raise ValueError("iterations must be at least 1")
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), iterations)
    return f"{_PBKDF2_ALGORITHM}${iterations}${salt}${b64(digest)}"


def verify_password(password: str, encoded: str) -> bool:
    """Tell whether ``password`` matches ``encoded`` (from :func:`hash_password` or Django).

    Only ``pbkdf2_sha256`` is understood; any other or malformed value gives False.
    """
    parts = encoded.split("$")
    if len(parts) != 4 or parts[0] != _PBKDF2_ALGORITHM or not parts[1].isdecimal():
        return False
    try:
        candidate = hash_password(password, iterations=int(parts[1]), salt=parts[2])
    except (ValueError, UnicodeEncodeError):
        return False
    # Bytes, not str: compare_digest refuses non-ASCII str, and `encoded` is untrusted data.
    return hmac.compare_digest(candidate.encode(), encoded.encode("utf-8", "surrogatepass"))


# --- SASLprep (RFC 4013) ----------------------------------------------------------------

_PROHIBITED: tuple[Callable[[str], bool], ...] = (
    stringprep.in_table_c12,
    stringprep.in_table_c21_c22,
    stringprep.in_table_c3,
    stringprep.in_table_c4,
    stringprep.in_table_c5,
    stringprep.in_table_c6,
    stringprep.in_table_c7,
    stringprep.in_table_c8,
    stringprep.in_table_c9,
)


def saslprep(text: str, *, allow_unassigned: bool = True) -> str:
    """Prepare a user name or password with SASLprep (RFC 4013).

    Printable ASCII comes back unchanged. Raises ValueError for prohibited characters
    (controls, private use, surrogates, ...) or a bad mix of right-to-left text.
    ``allow_unassigned`` defaults to True ("query" strings): the stdlib tables are
    Unicode 3.2, and refusing everything newer (emoji) would refuse real passwords.
    """
    if all(" " <= ch <= "~" for ch in text):
        return text
    mapped = "".join(
        " " if stringprep.in_table_c12(ch) else ch for ch in text if not stringprep.in_table_b1(ch)
    )
    prepared = unicodedata.normalize("NFKC", mapped)
    for ch in prepared:
        if any(in_table(ch) for in_table in _PROHIBITED):
            raise ValueError(f"SASLprep: prohibited character U+{ord(ch):04X}")
        if not allow_unassigned and stringprep.in_table_a1(ch):
            raise ValueError(f"SASLprep: unassigned character U+{ord(ch):04X}")
    if any(stringprep.in_table_d1(ch) for ch in prepared):
        # RFC 3454 section 6: right-to-left text must not mix in left-to-right characters
        # and must begin and end with a right-to-left one.
        if any(stringprep.in_table_d2(ch) for ch in prepared):
            raise ValueError("SASLprep: mixes right-to-left and left-to-right text")
        if not (stringprep.in_table_d1(prepared[0]) and stringprep.in_table_d1(prepared[-1])):
            raise ValueError("SASLprep: right-to-left text must start and end with RTL")
    return prepared


# --- SCRAM-SHA-256 (RFC 5802 / RFC 7677) ------------------------------------------------


def hmac_sha256(key: bytes, msg: bytes) -> bytes:
    """HMAC-SHA-256 of ``msg`` under ``key`` (RFC 5802's HMAC for SCRAM-SHA-256)."""
    return hmac.new(key, msg, hashlib.sha256).digest()


def b64(data: bytes) -> str:
    """``data`` in standard base64, as text (verifiers, SCRAM attributes, SMTP AUTH lines)."""
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    """Decode strict standard base64. Raises ValueError (binascii.Error is one) for
    anything else, non-ASCII text included."""
    return base64.b64decode(text.encode("ascii"), validate=True)


def scram_keys(password: str, salt: bytes, iterations: int) -> tuple[bytes, bytes, bytes]:
    """ClientKey, StoredKey and ServerKey (RFC 5802 section 3) of ``password``, which
    must already be SASLprep'd: what a verifier stores, and what a client proves with."""
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac_sha256(salted, b"Client Key")
    stored_key = hashlib.sha256(client_key).digest()
    return client_key, stored_key, hmac_sha256(salted, b"Server Key")


@dataclass(frozen=True)
class ScramVerifier:
    """What the server stores for SCRAM-SHA-256: enough to check a proof, not to make one."""

    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes

    def to_text(self) -> str:
        """``SCRAM-SHA-256$<iter>:<b64 salt>$<b64 StoredKey>:<b64 ServerKey>``.

        This is the form PostgreSQL and others use, so verifiers can be moved between them.
        """
        return (
            f"SCRAM-SHA-256${self.iterations}:{b64(self.salt)}"
            f"${b64(self.stored_key)}:{b64(self.server_key)}"
        )

    @classmethod
    def from_text(cls, text: str) -> ScramVerifier:
        """Parse the :meth:`to_text` form. Raises ValueError for anything else."""
        try:
            scheme, params, keys = text.split("$")
            iterations, salt = params.split(":")
            stored_key, server_key = keys.split(":")
            if scheme != "SCRAM-SHA-256" or not iterations.isdecimal():
                raise ValueError
            verifier = cls(unb64(salt), int(iterations), unb64(stored_key), unb64(server_key))
        except (ValueError, binascii.Error):
            raise ValueError("not a SCRAM-SHA-256 verifier") from None
        if verifier.iterations < 1 or {len(verifier.stored_key), len(verifier.server_key)} != {32}:
            raise ValueError("not a SCRAM-SHA-256 verifier")
        return verifier


def make_scram_verifier(
    password: str, *, iterations: int = 4096, salt: bytes | None = None
) -> ScramVerifier:
    """Derive the SCRAM-SHA-256 verifier of ``password``, SASLprep'd first.

    Without ``salt``, 16 random bytes are drawn; RFC 7677 asks for at least 4096 iterations.
    Raises ValueError if SASLprep refuses the password or iterations < 1.
    """
    if iterations < 1:
        raise ValueError("iterations must be at least 1")
    salt = secrets.token_bytes(16) if salt is None else salt
    _client_key, stored_key, server_key = scram_keys(saslprep(password), salt, iterations)
    return ScramVerifier(salt, iterations, stored_key, server_key)


# --- CRAM-MD5 (RFC 2195) ----------------------------------------------------------------
# hashlib does not expose MD5's intermediate state, so the compression function is written
# out (RFC 1321 section 3.4). It only ever runs a few blocks per login.

_Md5State = tuple[int, int, int, int]
_MASK = 0xFFFFFFFF
_MD5_INIT: _Md5State = (0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476)
_MD5_SHIFTS = (7, 12, 17, 22) * 4 + (5, 9, 14, 20) * 4 + (4, 11, 16, 23) * 4 + (6, 10, 15, 21) * 4
_MD5_T = tuple(int(abs(math.sin(i + 1)) * 2**32) & _MASK for i in range(64))


def _md5_compress(state: _Md5State, block: bytes) -> _Md5State:
    x = struct.unpack("<16I", block)
    a, b, c, d = state
    for i in range(64):
        if i < 16:
            f, g = (b & c) | (~b & d), i
        elif i < 32:
            f, g = (d & b) | (~d & c), (5 * i + 1) % 16
        elif i < 48:
            f, g = b ^ c ^ d, (3 * i + 5) % 16
        else:
            f, g = c ^ (b | ~d), (7 * i) % 16
        f = (f + a + _MD5_T[i] + x[g]) & _MASK
        a, d, c = d, c, b
        b = (b + ((f << _MD5_SHIFTS[i]) | (f >> (32 - _MD5_SHIFTS[i])))) & _MASK
    return (
        (state[0] + a) & _MASK,
        (state[1] + b) & _MASK,
        (state[2] + c) & _MASK,
        (state[3] + d) & _MASK,
    )


def _md5_finish(state: _Md5State, data: bytes, absorbed: int) -> bytes:
    """Digest of (``absorbed`` bytes already folded into ``state``) + ``data``."""
    total = absorbed + len(data)
    padded = data + b"\x80" + b"\0" * ((55 - total) % 64) + struct.pack("<Q", total * 8)
    for offset in range(0, len(padded), 64):
        state = _md5_compress(state, padded[offset : offset + 64])
    return struct.pack("<4I", *state)


def make_cram_md5_context(password: str) -> str:
    """Return the CRAM-MD5 context of ``password``: 64 hex digits.

    The layout is Dovecot's ``{CRAM-MD5}`` scheme: the MD5 states after absorbing
    key XOR opad, then key XOR ipad, each as four little-endian 32-bit words. It answers
    any CRAM-MD5 challenge, so treat it like the password and seal it at rest.
    """
    key = password.encode()
    if len(key) > 64:  # RFC 2104: keys longer than the block are hashed first
        key = _md5_finish(_MD5_INIT, key, 0)
    key = key.ljust(64, b"\0")
    inner = _md5_compress(_MD5_INIT, bytes(k ^ 0x36 for k in key))
    outer = _md5_compress(_MD5_INIT, bytes(k ^ 0x5C for k in key))
    return struct.pack("<8I", *outer, *inner).hex()


def cram_md5_digest(context: str, challenge: bytes) -> str:
    """HMAC-MD5 of ``challenge`` under the password behind ``context``, as lowercase hex.

    Raises ValueError if ``context`` is not 64 hex digits.
    """
    if len(context) != 64 or not all(ch in "0123456789abcdefABCDEF" for ch in context):
        raise ValueError("a CRAM-MD5 context is 64 hex digits")
    words = struct.unpack("<8I", bytes.fromhex(context))
    outer: _Md5State = (words[0], words[1], words[2], words[3])
    inner: _Md5State = (words[4], words[5], words[6], words[7])
    return _md5_finish(outer, _md5_finish(inner, challenge, 64), 64).hex()


def verify_cram_md5(context: str, challenge: bytes, client_response_hex: str) -> bool:
    """Tell whether the client's hex digest answers ``challenge`` (case-insensitive hex).

    A malformed context or response gives False.
    """
    try:
        expected = cram_md5_digest(context, challenge)
    except ValueError:
        return False
    if not client_response_hex.isascii():
        return False
    return hmac.compare_digest(expected.encode(), client_response_hex.lower().encode())
