"""Secrets at rest: sealed with the shared encryption key, never shown back."""

from __future__ import annotations

from collections.abc import Iterator

from django.apps import apps
from django.conf import settings
from django.db.models import Model

from smtpworker.core.secretbox import SecretBox, SecretBoxError


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


# Every model field that holds a sealed secret.
SEALED_FIELDS = (
    ("mailadmin.VirtualServer", "tls_private_key"),
    ("mailadmin.VirtualServer", "outbound_password"),
    ("mailadmin.Domain", "outbound_password"),
    ("mailadmin.SmtpUser", "cram_md5_context"),
)


def sealed_fields() -> Iterator[tuple[str, type[Model], str, int, str]]:
    """Yield (label, model, field, pk, sealed text) for every stored, non-empty secret.

    Reads only the primary key and the one column, so it also works on a database whose
    other columns are not migrated yet.
    """
    for model_label, field in SEALED_FIELDS:
        model = apps.get_model(model_label)
        rows = model._default_manager.exclude(**{field: ""}).values_list("pk", field)
        for pk, sealed in rows.order_by("pk").iterator():
            yield f"{model.__name__} {pk} {field}", model, field, pk, sealed


def reseal_secrets(old_keys: list[str]) -> tuple[int, list[str]]:
    """Re-seal under the configured key every stored secret that does not open with it but
    opens with one of ``old_keys``; return (how many were re-sealed, labels of the secrets
    that open with none of the keys).

    Runs as one configuration change, so the workers get the re-sealed values at once.
    """
    from mailadmin.services.config.versions import config_transaction

    box = secret_box()
    olds = [SecretBox(key) for key in old_keys if key]
    updates, unreadable = [], []
    for label, model, field, pk, sealed in list(sealed_fields()):
        if _opens(box, sealed) is not None:
            continue
        plain = next((p for p in (_opens(old, sealed) for old in olds) if p is not None), None)
        if plain is None:
            unreadable.append(label)
        else:
            updates.append((model, field, pk, box.seal(plain)))
    if updates:  # no change, no new configuration version
        with config_transaction(author="reseal_secrets", reason="secrets re-sealed"):
            for model, field, pk, resealed in updates:
                model._default_manager.filter(pk=pk).update(**{field: resealed})
    return len(updates), unreadable


def _opens(box: SecretBox, sealed: str) -> str | None:
    try:
        return box.open(sealed)
    except SecretBoxError:
        return None
