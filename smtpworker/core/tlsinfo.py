"""Check an uploaded TLS certificate and private key, and turn them into a server context.

Messages in :class:`TlsConfigError` are written for the administrator who uploaded the
files: the console and the API show them as they are.
"""

from __future__ import annotations

import re
import ssl
import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificatePublicKeyTypes,
    PrivateKeyTypes,
)

__all__ = [
    "CertificateInfo",
    "TlsConfigError",
    "build_ssl_context",
    "check_ca_certificates",
    "days_left",
    "inspect_certificate",
]

_ServerKey = (
    rsa.RSAPrivateKey
    | ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
)


class TlsConfigError(Exception):
    """The certificate or key cannot be used; ``message`` says why, for an administrator."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class CertificateInfo:
    """What the console shows about the server (leaf) certificate.

    ``subject`` and ``issuer`` are RFC 4514 strings, ``dns_names`` the subjectAltName DNS
    entries (empty if there are none), the dates timezone-aware UTC, and
    ``fingerprint_sha256`` the SHA-256 of the DER certificate as ``AB:CD:...`` (as
    ``openssl x509 -fingerprint -sha256`` prints it).
    """

    subject: str
    issuer: str
    dns_names: tuple[str, ...]
    not_before: datetime
    not_after: datetime
    fingerprint_sha256: str


def inspect_certificate(
    cert_pem: str, key_pem: str, *, password: str | None = None
) -> CertificateInfo:
    """Check that ``cert_pem`` and ``key_pem`` form a usable pair and describe the leaf.

    ``cert_pem`` may hold a chain: the first certificate is the server's own and the key
    must match it. ``password`` opens an encrypted key (and is ignored for a plain one).
    An expired certificate is not an error: compare ``not_after`` (see :func:`days_left`).
    Raises TlsConfigError with an administrator-facing message otherwise.
    """
    chain, _ = _load_pair(cert_pem, key_pem, password)
    return _describe(chain[0])


def days_left(info: CertificateInfo, now: datetime) -> int:
    """Whole days until ``info`` expires, rounded down: 0 on its last day, negative once expired.

    ``now`` must be timezone-aware.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return (info.not_after - now) // timedelta(days=1)


def build_ssl_context(
    cert_pem: str, key_pem: str, *, password: str | None = None
) -> ssl.SSLContext:
    """A server-side SSLContext (TLS 1.2 or later) presenting this certificate and key.

    The pair is checked first, as by :func:`inspect_certificate`, and raises the same errors.
    """
    chain, key = _load_pair(cert_pem, key_pem, password)
    encryption: serialization.KeySerializationEncryption = serialization.NoEncryption()
    if password:  # keep the key as protected on disk, for its instant there, as it came in
        encryption = serialization.BestAvailableEncryption(password.encode())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    ) + b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in chain)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # load_cert_chain reads only files. NamedTemporaryFile creates it 0600 (mkstemp) and
    # deletes it when the block ends, whatever happens inside.
    with tempfile.NamedTemporaryFile(prefix="mailadmin-tls-", suffix=".pem") as handle:
        handle.write(pem)
        handle.flush()
        try:
            context.load_cert_chain(handle.name, password=password or None)
        except ssl.SSLError as exc:
            raise TlsConfigError(_explain_ssl_error(exc)) from None
    return context


MAX_CA_BUNDLE = 512 * 1024  # the whole Mozilla bundle is about 220 KB
_PEM_LABEL = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----")


def check_ca_certificates(pem: str) -> int:
    """Check that ``pem`` holds only PEM certificates that the TLS library takes as trust
    anchors (a CA bundle for verified outbound TLS); return how many. Raises
    TlsConfigError otherwise: anything but certificates (a private key pasted by mistake
    would be stored and exported in clear), damaged text, or more than 512 KB. Text
    between the certificates (comments) is allowed, as in the system's bundle."""
    if len(pem) > MAX_CA_BUNDLE:
        raise TlsConfigError("The CA certificates are larger than 512 KB.")
    labels = _PEM_LABEL.findall(pem)
    if not labels:
        raise TlsConfigError(
            "The CA certificates are not in PEM format (text starting with "
            "-----BEGIN CERTIFICATE-----)."
        )
    others = sorted({label for label in labels if label != "CERTIFICATE"})
    if others:
        raise TlsConfigError(
            f"Only CA certificates belong here, not {', '.join(others)}: remove it."
        )
    try:
        count = len(x509.load_pem_x509_certificates(pem.encode()))
    except ValueError:
        count = 0
    if count != len(labels):
        raise TlsConfigError("A CA certificate cannot be read: it is damaged or incomplete.")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=pem)
    except ssl.SSLError as exc:
        raise TlsConfigError(_explain_ssl_error(exc)) from None
    return count


# OpenSSL's security level refuses these at load time; say what to do about them.
_SSL_REASONS = {
    "EE_KEY_TOO_SMALL": "the key is too small (use RSA of 2048 bits or more, or an EC key)",
    "CA_KEY_TOO_SMALL": "a certificate in the chain has a key that is too small",
    "CA_MD_TOO_WEAK": "a certificate is signed with a weak hash (MD5 or SHA-1)",
}


def _explain_ssl_error(exc: ssl.SSLError) -> str:
    reason = getattr(exc, "reason", None) or ""
    detail = _SSL_REASONS.get(reason, reason.replace("_", " ").lower() or str(exc))
    return f"The TLS library refused the certificate: {detail}."


def _load_pair(
    cert_pem: str, key_pem: str, password: str | None
) -> tuple[list[x509.Certificate], _ServerKey]:
    chain = _load_chain(cert_pem)
    key = _load_key(key_pem, password)
    key_id = _public_key_id(key.public_key())
    for position, cert in enumerate(chain):
        if _public_key_id(_certificate_key(cert)) != key_id:
            continue
        if position == 0:
            return chain, key
        raise TlsConfigError(
            f"The private key belongs to certificate {position + 1} in the file "
            f"({cert.subject.rfc4514_string()}), not to the first one. Put the server's "
            "own certificate first, followed by the intermediate certificates."
        )
    raise TlsConfigError(
        "The private key does not match the certificate: they are not from the same pair."
    )


def _load_chain(cert_pem: str) -> list[x509.Certificate]:
    if not cert_pem.strip():
        raise TlsConfigError("The certificate is empty.")
    if "-----BEGIN CERTIFICATE-----" not in cert_pem:
        if "PRIVATE KEY-----" in cert_pem:
            raise TlsConfigError(
                "This is a private key, not a certificate: enter it as the private key."
            )
        raise TlsConfigError(
            "The certificate is not in PEM format (text starting with "
            "-----BEGIN CERTIFICATE-----). Convert a binary .cer or .der file with: "
            "openssl x509 -inform der -in server.cer -out server.pem"
        )
    try:
        return x509.load_pem_x509_certificates(cert_pem.encode())
    except ValueError:
        raise TlsConfigError(
            "The certificate cannot be read: it is damaged or incomplete."
        ) from None


def _load_key(key_pem: str, password: str | None) -> _ServerKey:
    if not key_pem.strip():
        raise TlsConfigError("The private key is empty.")
    if "PRIVATE KEY-----" not in key_pem:
        if "-----BEGIN CERTIFICATE-----" in key_pem:
            raise TlsConfigError("This is a certificate, not a private key.")
        raise TlsConfigError(
            "The private key is not in PEM format (text starting with "
            "-----BEGIN PRIVATE KEY----- or similar)."
        )
    data = key_pem.encode()
    secret = password.encode() if password else None
    key: PrivateKeyTypes
    try:
        try:
            key = serialization.load_pem_private_key(data, secret)
        except TypeError:
            if secret is None:
                raise TlsConfigError("The private key is encrypted: enter its password.") from None
            # A password for a key that has none is harmless; accept the key as it is.
            key = serialization.load_pem_private_key(data, None)
    except (ValueError, UnsupportedAlgorithm):
        reason = "the password is wrong or the key is damaged" if secret else "it is damaged"
        raise TlsConfigError(f"The private key cannot be read: {reason}.") from None
    if not isinstance(key, _ServerKey):
        raise TlsConfigError("Unsupported private key type: use an RSA, EC or Ed25519 key.")
    return key


def _certificate_key(cert: x509.Certificate) -> CertificatePublicKeyTypes:
    try:
        return cert.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise TlsConfigError("The certificate's public key type is not supported.") from None


def _public_key_id(key: CertificatePublicKeyTypes) -> bytes:
    # Comparing DER SubjectPublicKeyInfo works the same for RSA, EC and EdDSA keys.
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _describe(cert: x509.Certificate) -> CertificateInfo:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        dns_names = tuple(san.value.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        dns_names = ()
    except ValueError:
        raise TlsConfigError("The certificate's extensions cannot be read.") from None
    fingerprint = cert.fingerprint(hashes.SHA256()).hex().upper()
    return CertificateInfo(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        dns_names=dns_names,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        fingerprint_sha256=":".join(fingerprint[i : i + 2] for i in range(0, len(fingerprint), 2)),
    )
