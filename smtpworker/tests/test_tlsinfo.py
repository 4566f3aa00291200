from __future__ import annotations

import hashlib
import os
import ssl
import stat
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa, x25519
from cryptography.x509.oid import NameOID

from smtpworker.core.tlsinfo import (
    CertificateInfo,
    TlsConfigError,
    build_ssl_context,
    days_left,
    inspect_certificate,
)

HOST = "mail.example.test"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_cert(ca: trustme.CA) -> trustme.LeafCert:
    return ca.issue_cert(HOST, "smtp.example.test")


def pems(leaf: trustme.LeafCert) -> tuple[str, str]:
    chain = "".join(blob.bytes().decode() for blob in leaf.cert_chain_pems)
    return chain, leaf.private_key_pem.bytes().decode()


def key_pem(key: Any, password: bytes | None = None) -> str:
    encryption: serialization.KeySerializationEncryption = serialization.NoEncryption()
    if password:
        encryption = serialization.BestAvailableEncryption(password)
    data: bytes = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    return data.decode()


def self_signed(key: Any, *, days: int = 30, san: bool = True) -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)])
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=60))
        .not_valid_after(now + timedelta(days=days))
    )
    if san:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(HOST)]), critical=False
        )
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.PEM).decode()


# --- inspect_certificate ----------------------------------------------------------------


def test_it_describes_a_trustme_certificate(server_cert: trustme.LeafCert) -> None:
    cert_pem, private_pem = pems(server_cert)
    info = inspect_certificate(cert_pem, private_pem)
    parsed = x509.load_pem_x509_certificate(cert_pem.encode())
    der = parsed.public_bytes(serialization.Encoding.DER)
    assert info == CertificateInfo(
        subject=parsed.subject.rfc4514_string(),
        issuer=parsed.issuer.rfc4514_string(),
        dns_names=(HOST, "smtp.example.test"),
        not_before=parsed.not_valid_before_utc,
        not_after=parsed.not_valid_after_utc,
        fingerprint_sha256=":".join(f"{b:02X}" for b in hashlib.sha256(der).digest()),
    )
    assert "trustme" in info.issuer
    assert info.not_after.tzinfo is not None


@pytest.mark.parametrize("key_type", [trustme.KeyType.RSA, trustme.KeyType.ECDSA])
def test_it_accepts_rsa_and_ec_pairs(key_type: trustme.KeyType) -> None:
    leaf = trustme.CA(key_type=key_type).issue_cert(HOST, key_type=key_type)
    assert inspect_certificate(*pems(leaf)).dns_names == (HOST,)


@pytest.mark.parametrize(
    "key",
    [
        ec.generate_private_key(ec.SECP384R1()),
        ed25519.Ed25519PrivateKey.generate(),
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
    ],
    ids=["ec-p384", "ed25519", "rsa"],
)
def test_it_matches_keys_of_each_type(key: Any) -> None:
    info = inspect_certificate(self_signed(key), key_pem(key))
    assert info.subject == f"CN={HOST}"
    assert info.subject == info.issuer


@pytest.mark.parametrize(
    "other",
    [
        ec.generate_private_key(ec.SECP256R1()),
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ed25519.Ed25519PrivateKey.generate(),
    ],
    ids=["ec", "rsa", "ed25519"],
)
def test_it_refuses_a_key_from_another_pair(server_cert: trustme.LeafCert, other: Any) -> None:
    cert_pem, _ = pems(server_cert)
    with pytest.raises(TlsConfigError, match="does not match the certificate"):
        inspect_certificate(cert_pem, key_pem(other))


def test_it_accepts_a_chain_led_by_the_leaf(ca: trustme.CA) -> None:
    intermediate = ca.create_child_ca()
    leaf = intermediate.issue_cert(HOST)
    cert_pem, private_pem = pems(leaf)
    assert cert_pem.count("BEGIN CERTIFICATE") == 2
    info = inspect_certificate(cert_pem, private_pem)
    assert info.dns_names == (HOST,)
    leaf_pem = leaf.cert_chain_pems[0].bytes()
    assert info.subject == x509.load_pem_x509_certificate(leaf_pem).subject.rfc4514_string()


def test_it_explains_a_chain_in_the_wrong_order(ca: trustme.CA) -> None:
    leaf = ca.create_child_ca().issue_cert(HOST)
    blobs = [blob.bytes().decode() for blob in leaf.cert_chain_pems]
    with pytest.raises(TlsConfigError, match="certificate 2 in the file.*first"):
        inspect_certificate(blobs[1] + blobs[0], leaf.private_key_pem.bytes().decode())


def test_it_tolerates_crlf_and_surrounding_text(server_cert: trustme.LeafCert) -> None:
    cert_pem, private_pem = pems(server_cert)
    cert_text = "Bag Attributes\n    friendlyName: mail\n" + cert_pem.replace("\n", "\r\n")
    key_text = "\n\n" + private_pem.replace("\n", "\r\n") + "\n"
    assert inspect_certificate(cert_text, key_text).dns_names[0] == HOST


def test_it_accepts_a_combined_pem_as_the_key(server_cert: trustme.LeafCert) -> None:
    cert_pem, private_pem = pems(server_cert)
    assert inspect_certificate(cert_pem + private_pem, cert_pem + private_pem)


@pytest.mark.parametrize(
    ("cert_text", "message"),
    [
        ("", "certificate is empty"),
        ("   \n", "certificate is empty"),
        ("hello", "not in PEM format"),
        ("MIIBkTCB+wIJAK...", "not in PEM format"),
        ("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "cannot be read"),
        ("-----BEGIN CERTIFICATE-----\nMIIBkTCB+wIJ", "cannot be read"),
        ("-----BEGIN CERTIFICATE-----\n\u2019\n-----END CERTIFICATE-----\n", "cannot be read"),
    ],
)
def test_it_refuses_unreadable_certificates(
    server_cert: trustme.LeafCert, cert_text: str, message: str
) -> None:
    _, private_pem = pems(server_cert)
    with pytest.raises(TlsConfigError, match=message):
        inspect_certificate(cert_text, private_pem)


def test_it_spots_a_key_in_the_certificate_field(server_cert: trustme.LeafCert) -> None:
    _, private_pem = pems(server_cert)
    with pytest.raises(TlsConfigError, match="private key, not a certificate"):
        inspect_certificate(private_pem, private_pem)


@pytest.mark.parametrize(
    ("key_text", "message"),
    [
        ("", "private key is empty"),
        ("garbage", "not in PEM format"),
        ("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "cannot be read"),
        ("-----BEGIN RSA PRIVATE KEY-----\n", "cannot be read"),
    ],
)
def test_it_refuses_unreadable_keys(
    server_cert: trustme.LeafCert, key_text: str, message: str
) -> None:
    cert_pem, _ = pems(server_cert)
    with pytest.raises(TlsConfigError, match=message):
        inspect_certificate(cert_pem, key_text)


def test_it_spots_a_certificate_in_the_key_field(server_cert: trustme.LeafCert) -> None:
    cert_pem, _ = pems(server_cert)
    with pytest.raises(TlsConfigError, match="certificate, not a private key"):
        inspect_certificate(cert_pem, cert_pem)


def test_it_refuses_a_key_type_tls_cannot_use() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(TlsConfigError, match="Unsupported private key type"):
        inspect_certificate(self_signed(key), key_pem(x25519.X25519PrivateKey.generate()))


def encrypted_pair() -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    return self_signed(key), key_pem(key, b"s3cret")


def test_it_opens_an_encrypted_key_with_its_password() -> None:
    cert_pem, private_pem = encrypted_pair()
    assert "ENCRYPTED" in private_pem
    assert inspect_certificate(cert_pem, private_pem, password="s3cret").dns_names == (HOST,)


@pytest.mark.parametrize("password", [None, ""])
def test_it_asks_for_the_password_of_an_encrypted_key(password: str | None) -> None:
    cert_pem, private_pem = encrypted_pair()
    with pytest.raises(TlsConfigError, match="encrypted: enter its password"):
        inspect_certificate(cert_pem, private_pem, password=password)


def test_it_refuses_a_wrong_password() -> None:
    cert_pem, private_pem = encrypted_pair()
    with pytest.raises(TlsConfigError, match="password is wrong"):
        inspect_certificate(cert_pem, private_pem, password="nope")


def test_it_ignores_a_password_for_a_plain_key(server_cert: trustme.LeafCert) -> None:
    assert inspect_certificate(*pems(server_cert), password="unneeded")


def test_it_does_not_treat_expiry_as_an_error() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    info = inspect_certificate(self_signed(key, days=-3, san=False), key_pem(key))
    assert info.dns_names == ()
    assert info.not_after < datetime.now(UTC)
    assert days_left(info, info.not_after + timedelta(days=3)) == -3


def test_days_left_counts_whole_days() -> None:
    not_after = datetime(2030, 1, 31, 12, 0, tzinfo=UTC)
    info = CertificateInfo("CN=x", "CN=x", (), not_after - timedelta(days=90), not_after, "")
    assert days_left(info, not_after - timedelta(days=10)) == 10
    assert days_left(info, not_after - timedelta(days=9, hours=23)) == 9
    assert days_left(info, not_after - timedelta(hours=1)) == 0
    assert days_left(info, not_after + timedelta(hours=1)) == -1
    with pytest.raises(ValueError):
        days_left(info, datetime(2030, 1, 1))


# --- build_ssl_context ------------------------------------------------------------------


def handshake(server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> ssl.SSLObject:
    """Run a TLS handshake entirely in memory; return the client side."""
    client_in, client_out, server_in, server_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_context.wrap_bio(client_in, client_out, server_hostname=HOST)
    server = server_context.wrap_bio(server_in, server_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(20):
        for name, side in (("client", client), ("server", server)):
            try:
                side.do_handshake()
                done[name] = True
            except ssl.SSLWantReadError:
                pass
        server_in.write(client_out.read())
        client_in.write(server_out.read())
        if all(done.values()):
            return client
    raise AssertionError("handshake did not finish")


def test_it_builds_a_context_that_serves_the_certificate(
    ca: trustme.CA, server_cert: trustme.LeafCert
) -> None:
    context = build_ssl_context(*pems(server_cert))
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    client = handshake(context, client_context)
    assert client.version() in ("TLSv1.2", "TLSv1.3")
    assert ("DNS", HOST) in client.getpeercert()["subjectAltName"]  # type: ignore[index]


def test_it_builds_a_context_from_an_intermediate_chain(ca: trustme.CA) -> None:
    leaf = ca.create_child_ca().issue_cert(HOST)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)  # trusts the root only: the chain must be sent
    handshake(build_ssl_context(*pems(leaf)), client_context)


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_it_refuses_tls_1_1_clients(server_cert: trustme.LeafCert) -> None:
    client_context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_context.check_hostname = False
    client_context.verify_mode = ssl.CERT_NONE
    client_context.minimum_version = ssl.TLSVersion.TLSv1
    client_context.maximum_version = ssl.TLSVersion.TLSv1_1
    client_context.set_ciphers("DEFAULT:@SECLEVEL=0")  # so the client can offer TLS 1.1
    with pytest.raises(ssl.SSLError, match="UNSUPPORTED_PROTOCOL"):
        handshake(build_ssl_context(*pems(server_cert)), client_context)


@pytest.mark.parametrize("kind", ["ed25519", "encrypted"])
def test_it_builds_contexts_for_other_keys(kind: str) -> None:
    if kind == "ed25519":
        key = ed25519.Ed25519PrivateKey.generate()
        context = build_ssl_context(self_signed(key), key_pem(key))
    else:
        context = build_ssl_context(*encrypted_pair(), password="s3cret")
    assert isinstance(context, ssl.SSLContext)


def test_it_refuses_a_mismatched_pair_when_building(server_cert: trustme.LeafCert) -> None:
    cert_pem, _ = pems(server_cert)
    with pytest.raises(TlsConfigError, match="does not match"):
        build_ssl_context(cert_pem, key_pem(ec.generate_private_key(ec.SECP256R1())))


def test_it_leaves_only_a_private_temporary_file_while_loading(
    server_cert: trustme.LeafCert, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    seen: list[tuple[str, int]] = []
    original = ssl.SSLContext.load_cert_chain

    def spy(self: ssl.SSLContext, certfile: str, *args: Any, **kwargs: Any) -> None:
        seen.append((certfile, stat.S_IMODE(os.stat(certfile).st_mode)))
        original(self, certfile, *args, **kwargs)

    monkeypatch.setattr(ssl.SSLContext, "load_cert_chain", spy)
    build_ssl_context(*pems(server_cert))
    assert [Path(name).parent for name, _ in seen] == [tmp_path]
    assert seen[0][1] == 0o600
    assert list(tmp_path.iterdir()) == []


def test_it_explains_what_openssl_refuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    cert_pem = self_signed(key)
    assert inspect_certificate(cert_pem, key_pem(key))  # a sound pair, but too weak to serve
    with pytest.raises(TlsConfigError, match="key is too small"):
        build_ssl_context(cert_pem, key_pem(key))
    assert list(tmp_path.iterdir()) == []  # removed on failure too
