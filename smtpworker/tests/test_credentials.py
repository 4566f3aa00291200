from __future__ import annotations

import base64
import hashlib
import hmac
import re

import pytest
from django.contrib.auth.hashers import PBKDF2PasswordHasher

from smtpworker.core.credentials import (
    ScramVerifier,
    cram_md5_digest,
    hash_password,
    make_cram_md5_context,
    make_scram_verifier,
    saslprep,
    verify_cram_md5,
    verify_password,
)
from smtpworker.sasl.scram import ScramError, ScramServer
from smtpworker.sasl.server import make_challenge

MOCK_KEY = b"test mock key, stable per deployment"


# --- PBKDF2 -----------------------------------------------------------------------------


def test_it_produces_djangos_exact_encoding() -> None:
    ours = hash_password("s3cret pässword", iterations=1000, salt="abcdefgh")
    assert ours == PBKDF2PasswordHasher().encode("s3cret pässword", "abcdefgh", 1000)
    assert re.fullmatch(r"pbkdf2_sha256\$1000\$abcdefgh\$[A-Za-z0-9+/]{43}=", ours)


def test_it_round_trips_with_django_both_ways() -> None:
    ours = hash_password("hunter2", iterations=1000)
    assert PBKDF2PasswordHasher().verify("hunter2", ours)
    assert not PBKDF2PasswordHasher().verify("hunter3", ours)
    djangos = PBKDF2PasswordHasher().encode("hunter2", "Zq9salt", 1200)
    assert verify_password("hunter2", djangos)
    assert not verify_password("Hunter2", djangos)


def test_it_uses_djangos_defaults() -> None:
    first, second = hash_password("x"), hash_password("x")
    _, iterations, salt, _ = first.split("$")
    assert iterations == "600000"
    assert re.fullmatch(r"[A-Za-z0-9]{22}", salt)
    assert first != second  # fresh salt each time
    assert verify_password("x", first)


@pytest.mark.parametrize("password", ["", "a", "пароль", "密码🙂", "x" * 500])
def test_it_verifies_any_password(password: str) -> None:
    encoded = hash_password(password, iterations=100)
    assert verify_password(password, encoded)
    assert not verify_password(password + "!", encoded)


@pytest.mark.parametrize(
    "encoded",
    [
        "",
        "hunter2",
        "pbkdf2_sha1$1000$abc$" + base64.b64encode(b"x" * 20).decode(),
        "argon2$argon2id$v=19$m=102400,t=2,p=8$c2FsdA$aGFzaA",
        "pbkdf2_sha256$abc$salt$hash",
        "pbkdf2_sha256$0$salt$hash",
        "pbkdf2_sha256$1000$$hash",
        "pbkdf2_sha256$1000$salt",
        "pbkdf2_sha256$1000$salt$hash$extra",
        "pbkdf2_sha256$1000$salt$häsh\udcff",
        "!unusable",
    ],
)
def test_it_refuses_unknown_or_malformed_encodings(encoded: str) -> None:
    assert verify_password("hunter2", encoded) is False


def test_it_refuses_a_password_that_cannot_be_encoded() -> None:
    encoded = hash_password("x", iterations=10)
    assert verify_password("\udcff", encoded) is False


@pytest.mark.parametrize("salt", ["", "a$b"])
def test_it_rejects_bad_salts(salt: str) -> None:
    with pytest.raises(ValueError):
        hash_password("x", salt=salt, iterations=10)


def test_it_rejects_zero_iterations() -> None:
    with pytest.raises(ValueError):
        hash_password("x", iterations=0)


# --- SASLprep ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["", "pencil", "USER", " spaced  out ", "!#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"]
)
def test_saslprep_passes_printable_ascii_through(text: str) -> None:
    assert saslprep(text) == text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("I\u00adX", "IX"),  # RFC 4013 section 3 examples
        ("\u00aa", "a"),
        ("\u2168", "IX"),
        ("a\u00a0b\u3000c", "a b c"),  # non-ASCII spaces become spaces
        ("a\u200bb", "ab"),  # zero-width space maps to nothing
        ("e\u0301", "\u00e9"),  # NFKC composes
        ("\u0627\u0628", "\u0627\u0628"),  # pure RTL is fine
        ("🙂", "🙂"),  # unassigned in Unicode 3.2, allowed as a query string
    ],
)
def test_saslprep_maps_and_normalises(text: str, expected: str) -> None:
    assert saslprep(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "\u0007",  # ASCII control (RFC 4013 example)
        "a\x00b",
        "tab\there",
        "\u0085",  # non-ASCII control
        "\ue000",  # private use
        "\ufffe",  # non-character
        "\ud800",  # surrogate
        "\u2ff0",  # ideographic description
        "\u200e",  # change display property
        "\U000e0001",  # tagging
        "\u0627\u0031",  # RFC 4013 example: RTL must end with RTL
        "\u0627a\u0628",  # RTL mixed with LTR
    ],
)
def test_saslprep_refuses_prohibited_text(text: str) -> None:
    with pytest.raises(ValueError):
        saslprep(text)


def test_saslprep_can_refuse_unassigned() -> None:
    with pytest.raises(ValueError, match="unassigned"):
        saslprep("🙂", allow_unassigned=False)


# --- SCRAM-SHA-256 ----------------------------------------------------------------------

RFC_SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
RFC_CLIENT_NONCE = "rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_NONCE = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"


class ScramClient:
    """An independent RFC 5802 client, written from the RFC rather than from the server."""

    def __init__(self, username: str, password: str, nonce: str, gs2: str = "n,,") -> None:
        self.password = password
        self.nonce = nonce
        self.gs2 = gs2
        name = username.replace("=", "=3D").replace(",", "=2C")
        self.bare = f"n={name},r={nonce}"
        self.server_signature = b""

    def first(self) -> bytes:
        return (self.gs2 + self.bare).encode()

    def final(self, server_first: bytes, *, channel_binding: str | None = None) -> bytes:
        fields = dict(item.split("=", 1) for item in server_first.decode().split(","))
        assert fields["r"].startswith(self.nonce)
        salted = hashlib.pbkdf2_hmac(
            "sha256", self.password.encode(), base64.b64decode(fields["s"]), int(fields["i"])
        )
        client_key = hmac.new(salted, b"Client Key", "sha256").digest()
        stored_key = hashlib.sha256(client_key).digest()
        cbind = channel_binding or base64.b64encode(self.gs2.encode()).decode()
        without_proof = f"c={cbind},r={fields['r']}"
        auth = f"{self.bare},{server_first.decode()},{without_proof}".encode()
        signature = hmac.new(stored_key, auth, "sha256").digest()
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        server_key = hmac.new(salted, b"Server Key", "sha256").digest()
        self.server_signature = hmac.new(server_key, auth, "sha256").digest()
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()

    def check(self, server_final: bytes) -> bool:
        return server_final == b"v=" + base64.b64encode(self.server_signature)


def no_users(name: str) -> ScramVerifier | None:
    return None


def make_server(users: dict[str, ScramVerifier], nonce: str = "srvnonce") -> ScramServer:
    return ScramServer(users.get, mock_key=MOCK_KEY, nonce=lambda: nonce)


def test_it_passes_the_rfc_7677_test_vector() -> None:
    verifier = make_scram_verifier("pencil", iterations=4096, salt=RFC_SALT)
    server = make_server({"user": verifier}, RFC_SERVER_NONCE)
    server_first = server.first(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO")
    assert server_first == (
        b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    )
    client = ScramClient("user", "pencil", RFC_CLIENT_NONCE)
    client_final = client.final(server_first)
    assert client_final == (
        b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
        b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    )
    assert server.username is None
    assert server.final(client_final) == b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
    assert server.username == "user"


@pytest.mark.parametrize(
    ("username", "password"),
    [("alice", "correct horse"), ("a,b=c", "p,=ss"), ("jörg@example.test", "pässwörd")],
)
def test_it_authenticates_a_real_client(username: str, password: str) -> None:
    seen: list[str] = []
    users = {username: make_scram_verifier(password)}

    def lookup(name: str) -> ScramVerifier | None:
        seen.append(name)
        return users.get(name)

    server = ScramServer(lookup, mock_key=MOCK_KEY)  # default, random server nonce
    client = ScramClient(username, password, "clientnonce123")
    server_final = server.final(client.final(server.first(client.first())))
    assert client.check(server_final)
    assert server.username == username
    assert seen == [username]


@pytest.mark.parametrize("gs2", ["y,,", "n,a=alice,", "y,a=alice,"])
def test_it_accepts_no_channel_binding_and_a_matching_authzid(gs2: str) -> None:
    server = make_server({"alice": make_scram_verifier("pw")})
    client = ScramClient("alice", "pw", "cn", gs2)
    assert client.check(server.final(client.final(server.first(client.first()))))


def test_it_refuses_a_wrong_password() -> None:
    server = make_server({"alice": make_scram_verifier("right")})
    client = ScramClient("alice", "wrong", "cn")
    server_first = server.first(client.first())
    with pytest.raises(ScramError, match="^authentication failed$"):
        server.final(client.final(server_first))
    assert server.username is None


def test_it_hides_whether_a_user_exists() -> None:
    real = make_scram_verifier("pw")
    replies = []
    for _ in range(2):
        server = make_server({"alice": real})
        replies.append(server.first(ScramClient("nobody", "pw", "cn").first()))
        client = ScramClient("nobody", "pw", "cn")
        with pytest.raises(ScramError, match="^authentication failed$"):
            server.final(client.final(replies[-1]))
        assert server.username is None
    assert replies[0] == replies[1]  # same fake salt every time, like a real user's
    salt = dict(i.split("=", 1) for i in replies[0].decode().split(","))["s"]
    assert len(base64.b64decode(salt)) == len(real.salt)
    other_name = make_server({}).first(b"n,,n=somebody,r=cn")
    other_key = ScramServer(no_users, mock_key=b"other", nonce=lambda: "srvnonce").first(
        b"n,,n=nobody,r=cn"
    )
    assert len({replies[0], other_name, other_key}) == 3


def test_it_refuses_an_empty_mock_key() -> None:
    with pytest.raises(ValueError):
        ScramServer(no_users, mock_key=b"")


@pytest.mark.parametrize(
    "client_first",
    [
        b"p=tls-unique,,n=alice,r=cn",
        b"n,a=bob,n=alice,r=cn",
        b"n,x=alice,n=alice,r=cn",
        b"n,,m=ext,n=alice,r=cn",
        b"x,,n=alice,r=cn",
        b"n,,n=alice",
        b"n,,r=cn,n=alice",
        b"n,,n=,r=cn",
        b"n,,n=al=3Xice,r=cn",
        b"n,,n=alice,r=",
        b"n,,n=alice,r=c\x7fn",
        b"n,,n=\xff,r=cn",
        b"n,n=alice",
        b"",
    ],
)
def test_it_refuses_bad_client_first_messages(client_first: bytes) -> None:
    server = make_server({"alice": make_scram_verifier("pw")})
    with pytest.raises(ScramError):
        server.first(client_first)
    with pytest.raises(ScramError):  # and the exchange cannot go on
        server.final(b"c=biws,r=cnsrvnonce,p=AAAA")


def test_it_refuses_channel_binding_with_a_clear_reason() -> None:
    with pytest.raises(ScramError, match="channel binding is not supported"):
        make_server({}).first(b"p=tls-server-end-point,,n=alice,r=cn")


def final_message(server_first: bytes, **changes: str) -> bytes:
    client = ScramClient("alice", "pw", "cn")
    message = client.final(server_first).decode()
    for old, new in changes.items():
        message = message.replace(old, new)
    return message.encode()


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("r=cnsrvnonce", "r=cnsrvnonceX"),  # nonce mismatch
        ("r=cnsrvnonce", "r=cn"),
        ("c=biws", "c=eSws"),  # GS2 header differs from client-first
        ("c=biws", "c=biwsAAAA"),
        (",p=", ",x="),  # no proof
        ("c=biws,", "c=biws,x=ext,"),  # attributes out of order
        (",p=", ",x=ext,p="),  # not what the client signed
    ],
)
def test_it_refuses_a_tampered_client_final(old: str, new: str) -> None:
    server = make_server({"alice": make_scram_verifier("pw")})
    server_first = server.first(b"n,,n=alice,r=cn")
    with pytest.raises(ScramError):
        server.final(final_message(server_first, **{old: new}))
    assert server.username is None


@pytest.mark.parametrize("proof", ["AAAA", "not base64!", "", base64.b64encode(b"x" * 32).decode()])
def test_it_refuses_a_bad_proof(proof: str) -> None:
    server = make_server({"alice": make_scram_verifier("pw")})
    server.first(b"n,,n=alice,r=cn")
    with pytest.raises(ScramError):
        server.final(f"c=biws,r=cnsrvnonce,p={proof}".encode())


def test_it_enforces_the_order_of_steps() -> None:
    server = make_server({"alice": make_scram_verifier("pw")})
    with pytest.raises(ScramError):
        server.final(b"c=biws,r=cnsrvnonce,p=AAAA")
    server = make_server({"alice": make_scram_verifier("pw")})
    server_first = server.first(b"n,,n=alice,r=cn")
    with pytest.raises(ScramError):
        server.first(b"n,,n=alice,r=cn")
    client_final = ScramClient("alice", "pw", "cn").final(server_first)
    server.final(client_final)
    with pytest.raises(ScramError):  # no replay on the same exchange
        server.final(client_final)


def test_it_stores_verifiers_as_text() -> None:
    verifier = make_scram_verifier("pencil", salt=RFC_SALT)
    text = verifier.to_text()
    assert text.startswith("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$")
    assert ScramVerifier.from_text(text) == verifier
    assert "pencil" not in text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "SCRAM-SHA-1$4096:c2FsdA==$" + "A" * 44 + ":" + "A" * 44,
        "SCRAM-SHA-256$x:c2FsdA==$" + "A" * 43 + "=:" + "A" * 43 + "=",
        "SCRAM-SHA-256$0:c2FsdA==$" + "A" * 43 + "=:" + "A" * 43 + "=",
        "SCRAM-SHA-256$4096:c2FsdA==$AAAA:AAAA",
        "SCRAM-SHA-256$4096:c2Fsd!==$" + "A" * 43 + "=:" + "A" * 43 + "=",
        "SCRAM-SHA-256$4096:c2FsdA==$" + "A" * 43 + "=",
        "SCRAM-SHA-256$4096:é$" + "A" * 43 + "=:" + "A" * 43 + "=",
    ],
)
def test_it_refuses_malformed_verifier_text(text: str) -> None:
    with pytest.raises(ValueError):
        ScramVerifier.from_text(text)


def test_it_saslpreps_the_scram_password() -> None:
    salt = b"0123456789abcdef"
    prepared = make_scram_verifier("I\u00adX", iterations=10, salt=salt)
    assert prepared == make_scram_verifier("IX", iterations=10, salt=salt)
    with pytest.raises(ValueError):
        make_scram_verifier("bell\u0007", iterations=10)
    with pytest.raises(ValueError):
        make_scram_verifier("pw", iterations=0)


# --- CRAM-MD5 ---------------------------------------------------------------------------

RFC_2195_CHALLENGE = b"<1896.697170952@postoffice.reston.mci.net>"


def test_it_passes_the_rfc_2195_example() -> None:
    context = make_cram_md5_context("tanstaaftanstaaf")
    assert cram_md5_digest(context, RFC_2195_CHALLENGE) == "b913a602c7eda7a495b4e6e7334d3890"
    assert verify_cram_md5(context, RFC_2195_CHALLENGE, "b913a602c7eda7a495b4e6e7334d3890")
    assert verify_cram_md5(context, RFC_2195_CHALLENGE, "B913A602C7EDA7A495B4E6E7334D3890")
    assert not verify_cram_md5(context, RFC_2195_CHALLENGE, "b913a602c7eda7a495b4e6e7334d3891")


PASSWORDS = [
    "",
    "a",
    "tanstaaftanstaaf",
    "ümlaut pässwörd",
    "🙂" * 16,  # exactly 64 bytes: not hashed
    "x" * 63,
    "x" * 64,
    "x" * 65,  # longer than the block: HMAC hashes the key first
    "y" * 200,
    "ü" * 40,  # 80 bytes
]
CHALLENGES = [b"", b"<1.2@h>", b"c" * 55, b"c" * 56, b"c" * 64, b"c" * 119, bytes(range(256)) * 3]


@pytest.mark.parametrize("password", PASSWORDS)
@pytest.mark.parametrize("challenge", CHALLENGES)
def test_it_matches_stdlib_hmac_md5(password: str, challenge: bytes) -> None:
    expected = hmac.new(password.encode(), challenge, "md5").hexdigest()
    context = make_cram_md5_context(password)
    assert cram_md5_digest(context, challenge) == expected
    assert verify_cram_md5(context, challenge, expected)


def test_it_stores_a_password_free_hex_context() -> None:
    context = make_cram_md5_context("tanstaaftanstaaf")
    assert re.fullmatch(r"[0-9a-f]{64}", context)
    assert context == make_cram_md5_context("tanstaaftanstaaf")
    assert context != make_cram_md5_context("tanstaaftanstaafX")
    assert cram_md5_digest(context.upper(), b"x") == cram_md5_digest(context, b"x")


@pytest.mark.parametrize("context", ["", "00" * 31, "00" * 33, "zz" * 32, "00 " * 21 + "0"])
def test_it_rejects_a_malformed_context(context: str) -> None:
    with pytest.raises(ValueError):
        cram_md5_digest(context, b"x")
    assert verify_cram_md5(context, b"x", "00" * 16) is False


@pytest.mark.parametrize("response", ["", "b913", "é" * 32, "b913a602c7eda7a495b4e6e7334d3890 "])
def test_it_refuses_malformed_responses(response: str) -> None:
    context = make_cram_md5_context("tanstaaftanstaaf")
    assert verify_cram_md5(context, RFC_2195_CHALLENGE, response) is False


def test_it_makes_fresh_challenges() -> None:
    first, second = make_challenge("mail.example.test"), make_challenge("mail.example.test")
    assert re.fullmatch(rb"<\d+\.\d+@mail\.example\.test>", first)
    assert first != second


@pytest.mark.parametrize("fqdn", ["", "bad host", "x>y", "<x", "пример.test"])
def test_it_refuses_a_bad_fqdn(fqdn: str) -> None:
    with pytest.raises(ValueError):
        make_challenge(fqdn)
