"""Signed configuration bodies: only the holder of the encryption key can write one."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from smtpworker.core import secretbox
from smtpworker.core.config import ConfigFormatError
from smtpworker.core.configmac import MAGIC, ConfigAuthError, body_key, sign, verify

KEY = body_key("the site's encryption key")
BODY = b'{"schema":1,"servers":[],"users":[],"version":3}'


def test_a_signed_body_verifies_to_its_exact_bytes() -> None:
    assert verify(KEY, sign(KEY, BODY)) == BODY
    assert sign(KEY, BODY) == sign(KEY, BODY)  # deterministic: Redis can be compared


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (BODY, "not signed"),
        (b"", "not signed"),
        (MAGIC + b"00" * 32, "not signed"),  # no body line at all
        (MAGIC + b"xyz\n" + BODY, "malformed"),
        (MAGIC + b"A" * 64 + b"\n" + BODY, "malformed"),  # upper case is not what we write
        (MAGIC + b"0" * 64 + b"\n" + BODY, "does not match"),
        (sign(body_key("another site's key"), BODY), "does not match"),
        (sign(KEY, BODY) + b" ", "does not match"),  # one byte appended
        (sign(KEY, BODY).replace(b'"version":3', b'"version":4'), "does not match"),
    ],
)
def test_anything_else_is_refused(wire: bytes, message: str) -> None:
    with pytest.raises(ConfigAuthError, match=message):
        verify(KEY, wire)


def test_a_refusal_is_a_config_format_error_and_an_empty_key_signs_nothing() -> None:
    assert issubclass(ConfigAuthError, ConfigFormatError)  # the worker's one refusal path
    with pytest.raises(ConfigAuthError, match="empty"):
        body_key("")


def test_the_mac_key_is_not_the_secretbox_key() -> None:
    # Same passphrase, another label: the MAC key never doubles as the key sealing secrets.
    secretbox_kdf = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=secretbox._SALT, info=secretbox._INFO
    )
    assert body_key("k") != secretbox_kdf.derive(b"k")
    assert len(body_key("k")) == 32 and body_key("k") != body_key("k ")
