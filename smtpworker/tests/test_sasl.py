"""The two SASL sides against each other, without I/O: the outbound client's mechanisms
answer what the SMTP daemon's exchanges ask, and a hostile server is refused."""

from __future__ import annotations

import pytest

from smtpworker.core.credentials import (
    ScramVerifier,
    b64,
    make_cram_md5_context,
    make_scram_verifier,
    verify_cram_md5,
)
from smtpworker.sasl.client import MECHANISMS
from smtpworker.sasl.scram import MAX_ITERATIONS, ScramClient, ScramError, ScramServer
from smtpworker.sasl.server import make_challenge

MOCK_KEY = b"test mock key"


def exchange(client: ScramClient, verifiers: dict[str, ScramVerifier]) -> tuple[str | None, bool]:
    """Run one SCRAM exchange; the user the server authenticated and the client's verdict."""
    server = ScramServer(verifiers.get, mock_key=MOCK_KEY)
    first = client.start()
    assert first is not None
    client_final = client.step(server.first(first))
    assert client.step(server.final(client_final)) == b""
    return server.username, client.complete()


@pytest.mark.parametrize(
    ("username", "password"),
    [("alice", "pencil"), ("a=b,c", "p=w,d"), ("jürgen", "pässwörd\u00a0x"), ("bob", "\u2168")],
)
def test_scram_client_and_server_agree(username: str, password: str) -> None:
    verifier = make_scram_verifier(password, iterations=4096)
    client = MECHANISMS["SCRAM-SHA-256"](username, password)
    assert isinstance(client, ScramClient) and not client.complete()
    assert exchange(client, {username: verifier}) == (username, True)


def test_scram_client_with_a_wrong_password_is_refused_by_the_server() -> None:
    verifiers = {"alice": make_scram_verifier("right", iterations=4096)}
    server = ScramServer(verifiers.get, mock_key=MOCK_KEY)
    client = ScramClient("alice", "wrong")
    first = client.start()
    assert first is not None
    client_final = client.step(server.first(first))
    with pytest.raises(ScramError, match="^authentication failed$"):
        server.final(client_final)
    assert not client.complete()


def test_scram_client_refuses_a_server_that_does_not_know_the_verifier() -> None:
    client = ScramClient("alice", "pencil")
    first = client.start()
    assert first is not None
    nonce = first.decode().split("r=", 1)[1]
    client.step(f"r={nonce}srv,s={b64(b'salt' * 4)},i=4096".encode())
    with pytest.raises(ValueError, match="signature is wrong"):
        client.step(f"v={b64(bytes(32))}".encode())
    assert not client.complete()


@pytest.mark.parametrize(
    "server_first",
    [
        f"r=NOTOURS,s={b64(b'salt')},i=4096",  # a nonce that does not extend ours
        "r={nonce}srv,i=4096",  # no salt
        f"r={{nonce}}srv,s={b64(b'salt')},i={MAX_ITERATIONS + 1}",  # hash for minutes
        f"r={{nonce}}srv,s={b64(b'salt')},i=0",
    ],
)
def test_scram_client_refuses_a_malformed_or_hostile_server_first(server_first: str) -> None:
    client = ScramClient("alice", "pencil")
    first = client.start()
    assert first is not None
    nonce = first.decode().split("r=", 1)[1]
    with pytest.raises(ValueError):
        client.step(server_first.replace("{nonce}", nonce).encode())


def test_cram_md5_client_answers_the_servers_challenge() -> None:
    challenge = make_challenge("mail.example.test")
    client = MECHANISMS["CRAM-MD5"]("alice", "tanstaaftanstaaf")
    assert client.start() is None
    user, _, digest = client.step(challenge).decode().rpartition(" ")
    assert user == "alice" and client.complete()
    assert verify_cram_md5(make_cram_md5_context("tanstaaftanstaaf"), challenge, digest)
    assert not verify_cram_md5(make_cram_md5_context("other"), challenge, digest)


def test_plain_and_login_clients_give_what_the_server_mechanisms_parse() -> None:
    plain = MECHANISMS["PLAIN"]("alice", "pw")
    assert plain.start() == b"\0alice\0pw" and plain.complete()
    with pytest.raises(ValueError):
        plain.step(b"")
    login = MECHANISMS["LOGIN"]("alice", "pw")
    assert login.start() is None and not login.complete()
    assert [login.step(b"Username:"), login.step(b"Password:")] == [b"alice", b"pw"]
    assert login.complete()
    with pytest.raises(ValueError):
        login.step(b"More:")
