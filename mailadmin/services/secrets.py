"""Secrets at rest: sealed with the shared encryption key, never shown back."""

from __future__ import annotations

from django.conf import settings

from smtpworker.secretbox import SecretBox, SecretBoxError


def secret_box() -> SecretBox:
    return SecretBox(settings.MAILADMIN_ENCRYPTION_KEY)


def secret_open(sealed: str) -> str:
    return secret_box().open(sealed) if sealed else ""


def secret_replace(old_sealed: str, new_plain: str) -> str:
    """Seal ``new_plain`` unless it equals the stored secret; keep the stored text then.

    Keeping the old ciphertext keeps the snapshot hash stable, so re-importing the same
    secret does not create a configuration version.
    """
    if not new_plain:
        return ""
    box = secret_box()
    if old_sealed:
        try:
            if box.open(old_sealed) == new_plain:
                return old_sealed
        except SecretBoxError:
            pass  # sealed under another key: replace it with one this install can open
    return box.seal(new_plain)
