from __future__ import annotations

import base64

import pytest

from smtpworker.core.contract import PUBLIC_DEVELOPMENT_KEY
from smtpworker.core.secretbox import (
    SecretBox,
    SecretBoxError,
    is_sealed,
    key_problem,
)

KEY = "0Ys0jQm7Sx8w2dQ7m6n4ZCkqB1c7r2v3W9oXy5tLh0U"
WRONG_KEY_MESSAGE = (
    "cannot decrypt: the encryption key differs from the one this secret was stored with"
)


@pytest.mark.parametrize(
    "plaintext",
    [
        "smart-host password",
        "-----BEGIN PRIVATE KEY-----\nMIIB...\n-----END PRIVATE KEY-----\n",
        "пароль 密码 🙂",
        " ",
        "x" * 100_000,
    ],
)
def test_it_round_trips(plaintext: str) -> None:
    sealed = SecretBox(KEY).seal(plaintext)
    assert sealed.startswith("enc:v1:")
    assert is_sealed(sealed) and SecretBox.is_sealed(sealed)
    assert plaintext not in sealed
    # A second box from the same passphrase stands for the other process (web app vs worker).
    assert SecretBox(KEY).open(sealed) == plaintext


def test_it_keeps_no_secret_representable() -> None:
    box = SecretBox(KEY)
    assert box.seal("") == ""
    assert box.open("") == ""
    assert not is_sealed("")


def test_it_seals_differently_each_time() -> None:
    box = SecretBox(KEY)
    assert box.seal("same") != box.seal("same")


def test_it_refuses_a_wrong_key() -> None:
    sealed = SecretBox(KEY).seal("secret")
    with pytest.raises(SecretBoxError) as excinfo:
        SecretBox(KEY + "x").open(sealed)
    assert str(excinfo.value) == WRONG_KEY_MESSAGE


def flip_ciphertext_byte(sealed: str, index: int) -> str:
    raw = bytearray(base64.urlsafe_b64decode(sealed.removeprefix("enc:v1:")))
    raw[index] ^= 0x01
    return "enc:v1:" + base64.urlsafe_b64encode(bytes(raw)).decode()


@pytest.mark.parametrize("index", [0, 1, 9, 30, -1])
def test_it_refuses_tampering(index: int) -> None:
    box = SecretBox(KEY)
    tampered = flip_ciphertext_byte(box.seal("secret"), index)
    with pytest.raises(SecretBoxError, match="cannot decrypt"):
        box.open(tampered)


@pytest.mark.parametrize(
    "value",
    ["enc:v1:", "enc:v1:garbage", "enc:v1:gAAAAé", "enc:v1:" + "A" * 100],
)
def test_it_refuses_damaged_tokens(value: str) -> None:
    with pytest.raises(SecretBoxError, match="cannot decrypt"):
        SecretBox(KEY).open(value)


@pytest.mark.parametrize("value", ["plain text", "enc:v2:abc", "ENC:V1:abc"])
def test_it_refuses_unsealed_values(value: str) -> None:
    assert not is_sealed(value)
    with pytest.raises(SecretBoxError, match="not an encrypted secret"):
        SecretBox(KEY).open(value)


def test_it_refuses_an_empty_passphrase() -> None:
    with pytest.raises(SecretBoxError):
        SecretBox("")


def test_it_does_not_show_the_key() -> None:
    assert KEY not in repr(SecretBox(KEY))


def test_it_still_opens_secrets_sealed_by_earlier_releases() -> None:
    # Sealed once and frozen here: a change to the key derivation (salt, info, hash) would
    # make every secret already in a database unreadable.
    sealed = (
        "enc:v1:gAAAAABrCwaax9EwqxfGddHq6BUguBZZZc32l8msrHEZu3oaxUin2cPwGTK437mOLjs4cVj5PRtzn"
        "cWMCIM2eHCVZSgPX2iyXg=="
    )
    assert SecretBox(KEY).open(sealed) == "stored by v1"


@pytest.mark.parametrize(
    ("key", "says"),
    [
        ("", "is not set"),
        ("   \n", "is not set"),
        (PUBLIC_DEVELOPMENT_KEY, "is the public development key"),
        (f" {PUBLIC_DEVELOPMENT_KEY}\n", "is the public development key"),
    ],
)
def test_key_problem_refuses_a_missing_or_public_key(key: str, says: str) -> None:
    problem = key_problem("MAILADMIN_ENCRYPTION_KEY", key)
    assert problem is not None and problem.startswith(f"MAILADMIN_ENCRYPTION_KEY {says}")


def test_key_problem_accepts_a_key_of_ones_own() -> None:
    assert key_problem("SECRET_KEY", KEY) is None
