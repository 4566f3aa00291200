"""Outbound TLS levels and AUTH through a man in the middle on loopback.

A real TCP proxy (:class:`~smtpworker.tests.mitm.Mitm`) stands between the delivery
client and a real sink and records the bytes it sees. The credentials must never appear
in them in clear unless the administrator allowed clear text AUTH for the hop.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
import trustme

from smtpworker.core.config import ConfigFormatError, load_site, to_data
from smtpworker.core.tlsinfo import TlsConfigError, check_ca_certificates
from smtpworker.outbound.client import Connection, TransactionResult
from smtpworker.outbound.routing import Target
from smtpworker.tests.factories import NO_SECURITY, server, site
from smtpworker.tests.mitm import Mitm
from smtpworker.tests.sink import Sink

HELO = "relay.example.test"
MESSAGE = b"From: a@example.org\r\nTo: b@example.test\r\nSubject: hi\r\n\r\nHello.\r\n"
USER, PASSWORD = "relay", "correct horse battery"


def credential_forms(user: str = USER, password: str = PASSWORD) -> list[bytes]:
    """Every way the password can travel in clear: as typed, in AUTH PLAIN's blob, or as
    AUTH LOGIN's answer."""
    plain = base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode())
    return [password.encode(), plain, base64.b64encode(password.encode())]


def clear_credentials(wire: bytes) -> list[bytes]:
    return [form for form in credential_forms() if form in wire]


@pytest.fixture
def tls_sink() -> Iterator[Sink]:
    with Sink(tls=True, auth=(USER, PASSWORD)) as sink:
        yield sink


def through(
    mitm: Mitm, *, name: str = "127.0.0.1", tls_name: str = "", **security: Any
) -> TransactionResult:
    """One message to the sink behind ``mitm``, with basic AUTH unless told otherwise."""
    security = {"auth_method": "basic", "username": USER, **security}
    conn = Connection(
        Target(name, mitm.address, mitm.port, 0, tls_name=tls_name),
        helo_name=HELO,
        use_helo=False,
        security=replace(NO_SECURITY, **security),
        password=PASSWORD,
        timeout=5.0,
    )
    try:
        return conn.send("a@example.org", ["b@example.test"], MESSAGE)
    finally:
        conn.close()


def refused(result: TransactionResult) -> str:
    """The session's failure, after checking it is temporary for every recipient."""
    assert result.connect_error is not None
    assert [r.code for r in result.results] == [421]
    return result.connect_error


# --- STARTTLS stripped from the EHLO reply ----------------------------------------------


def test_stripped_starttls_never_gets_the_password_in_clear(tls_sink: Sink) -> None:
    with Mitm(tls_sink.address, tls_sink.port, mode="strip_starttls") as mitm:
        error = refused(through(mitm))
        wire = mitm.client_bytes()
    assert error == (
        f"4.7.10 refusing to send credentials in clear text to "
        f"127.0.0.1[127.0.0.1]:{mitm.port}: STARTTLS not offered"
    )
    assert b"AUTH" not in wire and clear_credentials(wire) == []
    assert b"MAIL FROM" not in wire and tls_sink.messages == []


def test_stripped_starttls_with_clear_text_auth_allowed_sends_it_in_clear(tls_sink: Sink) -> None:
    # The administrator's explicit choice for this hop; it also shows the recorder sees
    # a password when one crosses in clear.
    with Mitm(tls_sink.address, tls_sink.port, mode="strip_starttls") as mitm:
        result = through(mitm, cleartext_auth=True)
        wire = mitm.client_bytes()
    assert [r.code for r in result.results] == [250]
    assert clear_credentials(wire) != []
    received = tls_sink.wait_for(1)[0]
    assert received.auth_user == USER and not received.tls


def test_stripped_starttls_without_auth_delivers_in_clear_when_opportunistic() -> None:
    with Sink(tls=True) as sink, Mitm(sink.address, sink.port, mode="strip_starttls") as mitm:
        result = through(mitm, auth_method="anonymous", username="")
        assert [r.code for r in result.results] == [250]
        assert not sink.wait_for(1)[0].tls


@pytest.mark.parametrize("level", ["required", "verified"])
def test_stripped_starttls_defers_a_required_level(tls_sink: Sink, level: str) -> None:
    with Mitm(tls_sink.address, tls_sink.port, mode="strip_starttls") as mitm:
        error = refused(through(mitm, tls=level, tls_ca=tls_sink.ca_pem()))
        wire = mitm.client_bytes()
    assert (
        error
        == f"4.7.4 TLS is required, but 127.0.0.1[127.0.0.1]:{mitm.port} does not offer STARTTLS"
    )
    assert b"AUTH" not in wire and b"MAIL FROM" not in wire and clear_credentials(wire) == []


# --- a handshake that fails -------------------------------------------------------------


def test_a_broken_handshake_is_retried_in_clear_only_without_auth() -> None:
    with Sink(tls=True) as sink, Mitm(sink.address, sink.port, mode="break_tls") as mitm:
        result = through(mitm, auth_method="anonymous", username="")
        assert mitm.connections == 2  # the second session never tries STARTTLS
        assert [r.code for r in result.results] == [250]
        assert not sink.wait_for(1)[0].tls


def test_a_broken_handshake_never_sends_the_password_in_clear(tls_sink: Sink) -> None:
    with Mitm(tls_sink.address, tls_sink.port, mode="break_tls") as mitm:
        error = refused(through(mitm))
        assert mitm.connections == 1
        wire = mitm.client_bytes()
    assert error.startswith(
        f"4.7.10 refusing to send credentials in clear text to 127.0.0.1[127.0.0.1]:{mitm.port}: "
        "the TLS handshake failed: "
    )
    assert b"AUTH" not in wire and clear_credentials(wire) == []


@pytest.mark.parametrize("level", ["required", "verified"])
def test_a_broken_handshake_at_a_required_level_never_falls_back(
    tls_sink: Sink, level: str
) -> None:
    with Mitm(tls_sink.address, tls_sink.port, mode="break_tls") as mitm:
        error = refused(through(mitm, tls=level, auth_method="anonymous", username=""))
        assert mitm.connections == 1
        wire = mitm.client_bytes()
    assert error.startswith("4.7.5 ") and "TLS handshake with" in error
    assert b"MAIL FROM" not in wire and tls_sink.messages == []


# --- certificates -----------------------------------------------------------------------


def test_verified_refuses_a_certificate_for_another_name(tls_sink: Sink) -> None:
    # The sink's certificate comes from the trusted CA but names 127.0.0.1, sink.test,
    # *.test and *.example.test: not smtp.partner.example.
    with Mitm(tls_sink.address, tls_sink.port) as mitm:
        result = through(
            mitm, name="smtp.partner.example", tls="verified", tls_ca=tls_sink.ca_pem()
        )
        wire = mitm.client_bytes()
    error = refused(result)
    assert error.startswith("4.7.5 verified TLS handshake with smtp.partner.example[")
    assert "Hostname mismatch" in error
    assert b"STARTTLS" in wire and b"AUTH" not in wire and clear_credentials(wire) == []
    assert tls_sink.messages == []


def test_verified_refuses_a_certificate_from_another_ca(tls_sink: Sink) -> None:
    other_ca = trustme.CA().cert_pem.bytes().decode()
    with Mitm(tls_sink.address, tls_sink.port) as mitm:
        result = through(mitm, tls="verified", tls_ca=other_ca)
        wire = mitm.client_bytes()
    assert "certificate verify failed: unable to get local issuer" in refused(result)
    assert clear_credentials(wire) == [] and tls_sink.messages == []


def test_verified_checks_the_configured_smart_host_name_not_the_host_dns_gave(
    tls_sink: Sink,
) -> None:
    with Mitm(tls_sink.address, tls_sink.port) as mitm:
        result = through(
            mitm,
            name="mx.elsewhere.example",  # where DNS led: not in the certificate
            tls_name="relay.example.test",  # the smart host as configured
            tls="verified",
            tls_ca=tls_sink.ca_pem(),
        )
    assert [r.code for r in result.results] == [250]
    received = tls_sink.wait_for(1)[0]
    assert received.tls and received.auth_user == USER


def test_required_accepts_any_certificate_and_keeps_the_password_encrypted(
    tls_sink: Sink,
) -> None:
    # Neither the name nor the CA would pass verification: "required" only encrypts.
    with Mitm(tls_sink.address, tls_sink.port) as mitm:
        result = through(mitm, name="smtp.partner.example", tls="required")
        wire = mitm.client_bytes()
    assert [r.code for r in result.results] == [250]
    received = tls_sink.wait_for(1)[0]
    assert received.tls and received.auth_user == USER
    assert b"STARTTLS" in wire and b"AUTH" not in wire and clear_credentials(wire) == []


def test_an_unusable_ca_bundle_defers_and_never_goes_in_clear(tls_sink: Sink) -> None:
    with Mitm(tls_sink.address, tls_sink.port) as mitm:
        bad = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
        error = refused(through(mitm, tls="verified", tls_ca=bad))
        wire = mitm.client_bytes()
    assert error.startswith("4.7.5 The CA certificates for ")
    assert b"STARTTLS" not in wire and b"AUTH" not in wire


# --- configuration: the CA bundle, and bodies from before the levels --------------------


def test_a_ca_bundle_takes_only_readable_certificates() -> None:
    first, second = trustme.CA(), trustme.CA()
    bundle = (
        "# two CAs\n" + first.cert_pem.bytes().decode() + "\n" + second.cert_pem.bytes().decode()
    )
    assert check_ca_certificates(bundle) == 2
    key = first.issue_cert("x.test").private_key_pem.bytes().decode()
    for text, why in [
        ("", "not in PEM format"),
        (bundle + key, "not EC PRIVATE KEY"),
        (bundle.replace("MII", "MIX", 1), "damaged or incomplete"),
        (bundle + "-----BEGIN CERTIFICATE-----\n", "damaged or incomplete"),
        ("x" * (512 * 1024 + 1), "larger than 512 KB"),
    ]:
        with pytest.raises(TlsConfigError, match=why):
            check_ca_certificates(text)


def test_a_body_from_before_the_levels_keeps_the_meaning_of_its_check_box() -> None:
    security = {"auth_method": "anonymous", "username": "", "password": ""}
    data = to_data(site(server()))
    for old, level in ((True, "required"), (False, "opportunistic")):
        data["servers"][0]["delivery"]["outbound"]["security"] = {**security, "tls": old}
        loaded = load_site(data).servers[0].delivery.outbound.security
        assert (loaded.tls, loaded.tls_ca, loaded.cleartext_auth) == (level, "", False)
    data["servers"][0]["delivery"]["outbound"]["security"] = {**security, "tls": "sometimes"}
    with pytest.raises(ConfigFormatError, match="'sometimes' is not one of"):
        load_site(data)
