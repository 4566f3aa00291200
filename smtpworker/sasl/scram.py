"""SCRAM-SHA-256 (RFC 5802, RFC 7677) exchanges, without I/O.

:class:`ScramServer` checks a client's proof against a stored
:class:`~smtpworker.core.credentials.ScramVerifier`; :class:`ScramClient` proves a
password to a server and checks that the server knows the verifier too. Both build the
AuthMessage, the signatures and the proof with the same helpers here. The key derivation
and the verifier format are the core's (``smtpworker.core.credentials``), since the web
side makes verifiers when it saves a user; what happens on the wire is here.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Callable

from smtpworker.core.credentials import ScramVerifier, b64, hmac_sha256, saslprep, scram_keys, unb64

__all__ = ["ScramClient", "ScramError", "ScramServer"]

MAX_ITERATIONS = 1_000_000  # a hostile server must not make a client hash for minutes


class ScramError(Exception):
    """The SCRAM exchange failed: malformed message, refused option, or wrong proof."""


def _decode_message(message: bytes) -> str:
    try:
        return message.decode("utf-8")
    except UnicodeDecodeError:
        raise ScramError("message is not UTF-8") from None


def _decode_saslname(text: str) -> str:
    # RFC 5802 section 5.1: "," and "=" travel as "=2C" and "=3D"; any other "=" is an error.
    # Decode "=2C" first so that "=3D2C" (a literal "=2C") is not decoded twice.
    if text.count("=") != text.count("=2C") + text.count("=3D"):
        raise ScramError("malformed user name")
    name = text.replace("=2C", ",").replace("=3D", "=")
    if not name:
        raise ScramError("empty user name")
    return name


def _is_nonce(text: str) -> bool:
    return bool(text) and all("!" <= ch <= "~" and ch != "," for ch in text)


class ScramServer:
    """The server side of one SCRAM-SHA-256 exchange, without I/O.

    Call :meth:`first` with the client-first message and send back what it returns, then
    :meth:`final` with the client-final message. On success ``username`` is set and
    :meth:`final` returns the server-final message (``v=...``); every failure raises
    :class:`ScramError` and ends the exchange. Only ``n`` and ``y`` GS2 flags are accepted
    (no channel binding: SCRAM-SHA-256-PLUS must not be advertised).

    ``lookup`` maps a user name, as the client sent it, to its verifier or None. An unknown
    user still gets a server-first message, with a salt derived from ``mock_key`` and the
    name, so probing names reveals nothing; it fails at the final step like a wrong
    password. ``mock_key`` must be a server secret that is stable across connections and
    nodes: were the fake salt unkeyed, anyone could recompute it and spot unknown users.
    ``mock_iterations`` should match the iteration count real verifiers use.
    """

    def __init__(
        self,
        lookup: Callable[[str], ScramVerifier | None],
        *,
        mock_key: bytes,
        nonce: Callable[[], str] = secrets.token_urlsafe,
        mock_iterations: int = 4096,
    ) -> None:
        if not mock_key:
            raise ValueError("mock_key must be a non-empty server secret")
        self._lookup = lookup
        self._mock_key = mock_key
        self._make_nonce = nonce
        self._mock_iterations = mock_iterations
        self._step = "first"
        self._candidate = ""
        self._verifier: ScramVerifier | None = None
        self._known = False
        self._channel_binding = ""
        self._nonce = ""
        self._auth_prefix = ""
        self.username: str | None = None

    def first(self, client_first: bytes) -> bytes:
        """Answer the client-first message with the server-first message."""
        if self._step != "first":
            raise ScramError("unexpected client-first message")
        self._step = "failed"  # until this step completes; a failed exchange cannot resume
        gs2_flag, authzid, bare = self._split_client_first(_decode_message(client_first))
        attrs = bare.split(",")
        if attrs[0].startswith("m="):
            raise ScramError("unsupported mandatory extension")
        if len(attrs) < 2 or not attrs[0].startswith("n=") or not attrs[1].startswith("r="):
            raise ScramError("malformed client-first message")
        username = _decode_saslname(attrs[0][2:])
        if authzid and (not authzid.startswith("a=") or _decode_saslname(authzid[2:]) != username):
            raise ScramError("authorization identity must equal the user name")
        client_nonce, server_nonce = attrs[1][2:], self._make_nonce()
        if not _is_nonce(client_nonce) or not _is_nonce(server_nonce):
            raise ScramError("malformed nonce")
        verifier = self._lookup(username)
        self._known = verifier is not None
        self._verifier = verifier if verifier is not None else self._mock_verifier(username)
        self._candidate = username
        self._nonce = client_nonce + server_nonce
        self._channel_binding = b64(f"{gs2_flag},{authzid},".encode())
        server_first = f"r={self._nonce},s={b64(self._verifier.salt)},i={self._verifier.iterations}"
        self._auth_prefix = f"{bare},{server_first},"
        self._step = "final"
        return server_first.encode()

    def final(self, client_final: bytes) -> bytes:
        """Check the client-final message's proof; return the server-final message."""
        if self._step != "final" or self._verifier is None:
            raise ScramError("unexpected client-final message")
        self._step = "failed"
        without_proof, sep, proof_text = _decode_message(client_final).rpartition(",p=")
        attrs = without_proof.split(",")
        if not sep or len(attrs) < 2:
            raise ScramError("malformed client-final message")
        if attrs[0] != f"c={self._channel_binding}":
            raise ScramError("channel binding data does not match")
        if attrs[1] != f"r={self._nonce}":
            raise ScramError("nonce does not match")
        try:
            proof = unb64(proof_text)
        except (ValueError, binascii.Error):
            raise ScramError("malformed proof") from None
        auth_message = (self._auth_prefix + without_proof).encode()
        stored_key = self._verifier.stored_key
        client_key = _xor(proof, hmac_sha256(stored_key, auth_message))
        matches = hmac.compare_digest(hashlib.sha256(client_key).digest(), stored_key)
        # One message for an unknown user and a wrong password: the reply must not tell them apart.
        if not (matches and self._known and len(proof) == len(stored_key)):
            raise ScramError("authentication failed")
        self._step = "done"
        self.username = self._candidate
        return f"v={b64(_server_signature(self._verifier.server_key, auth_message))}".encode()

    @staticmethod
    def _split_client_first(text: str) -> tuple[str, str, str]:
        parts = text.split(",", 2)
        if len(parts) != 3:
            raise ScramError("malformed client-first message")
        if parts[0].startswith("p="):
            raise ScramError("channel binding is not supported")
        if parts[0] not in ("n", "y"):
            raise ScramError("malformed GS2 header")
        return parts[0], parts[1], parts[2]

    def _mock_verifier(self, username: str) -> ScramVerifier:
        salt = hmac_sha256(self._mock_key, b"mailadmin scram mock salt\0" + username.encode())
        # Random keys: no proof can match them, and they never leave this object.
        return ScramVerifier(
            salt[:16], self._mock_iterations, secrets.token_bytes(32), secrets.token_bytes(32)
        )


class ScramClient:
    """The client side of one SCRAM-SHA-256 exchange without channel binding, as an SMTP
    AUTH mechanism (see ``smtpworker.sasl.client``): :meth:`start` is the client-first
    message, :meth:`step` answers the server-first message with the client-final one and
    then checks the server-final message, answering it empty. :meth:`complete` is True
    only once the server has proved that it knows the verifier. Raises ValueError when
    SASLprep refuses the name or password, and from :meth:`step` for a malformed or
    hostile server message (an iteration count over MAX_ITERATIONS) or a wrong server
    signature.
    """

    def __init__(self, username: str, password: str) -> None:
        name = encode_saslname(saslprep(username))
        self._password = saslprep(password)
        self._bare = f"n={name},r={secrets.token_urlsafe(18)}"
        self._server_signature = b""
        self._verified = False

    def start(self) -> bytes | None:
        return f"n,,{self._bare}".encode()

    def step(self, challenge: bytes) -> bytes:
        text = challenge.decode()
        attrs = dict(item.split("=", 1) for item in text.split(",") if "=" in item)
        if self._server_signature:  # server-final: check, then answer empty
            if not hmac.compare_digest(attrs.get("v", ""), b64(self._server_signature)):
                raise ValueError("the server's SCRAM signature is wrong")
            self._verified = True
            return b""
        nonce, salt, iterations = attrs.get("r", ""), attrs.get("s", ""), int(attrs.get("i", 0))
        if not nonce.startswith(self._bare.split("r=", 1)[1]) or not salt:
            raise ValueError("malformed SCRAM server-first message")
        if not 1 <= iterations <= MAX_ITERATIONS:
            raise ValueError(f"SCRAM iteration count {iterations} is out of range")
        keys = scram_keys(self._password, base64.b64decode(salt), iterations)
        client_key, stored_key, server_key = keys
        without_proof = f"c=biws,r={nonce}"  # biws = base64("n,,")
        auth_message = f"{self._bare},{text},{without_proof}".encode()
        proof = _xor(client_key, hmac_sha256(stored_key, auth_message))
        self._server_signature = _server_signature(server_key, auth_message)
        return f"{without_proof},p={b64(proof)}".encode()

    def complete(self) -> bool:
        return self._verified


def encode_saslname(name: str) -> str:
    """A user name as SCRAM carries it (RFC 5802 section 5.1): "=" and "," escaped."""
    return name.replace("=", "=3D").replace(",", "=2C")


def _xor(left: bytes, right: bytes) -> bytes:
    # ClientProof = ClientKey XOR ClientSignature, and back (RFC 5802 section 3).
    return bytes(a ^ b for a, b in zip(left, right, strict=False))


def _server_signature(server_key: bytes, auth_message: bytes) -> bytes:
    return hmac_sha256(server_key, auth_message)
