"""System checks for the secrets a running product needs (``manage.py check``).

They run with ``migrate`` and every management command, and :func:`refuse_unsafe_start`
runs them when the web process (``mailadmin.wsgi``) and Celery (worker, beat) start, which
Django itself does not check. Without ``DEBUG`` a missing key or the public development
key is an error, so the product does not start; with ``DEBUG`` the public key is only a
warning (a missing ``SECRET_KEY`` is an error either way: Django cannot sign anything).

Ids: mailadmin.E001 (SECRET_KEY), mailadmin.E002 (MAILADMIN_ENCRYPTION_KEY), the same
numbers as W for the DEBUG warnings, and mailadmin.W003 (stored secrets that do not open
under the configured key, a ``database`` check).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError

from smtpworker.core.secretbox import SecretBox, SecretBoxError, key_problem

SECRETS_TAG = "mailadmin_secrets"


def _raw_secret_key() -> str:
    try:
        return str(settings.SECRET_KEY)
    except ImproperlyConfigured:  # Django refuses to hand out an empty SECRET_KEY
        return ""


def _message(check_id: int, problem: str, missing: bool) -> checks.CheckMessage:
    if settings.DEBUG and not missing:
        return checks.Warning(problem, id=f"mailadmin.W{check_id:03d}")
    return checks.Error(
        problem,
        hint="A production deployment gives each key as NAME_FILE (see docker-compose.yml).",
        id=f"mailadmin.E{check_id:03d}",
    )


@checks.register(SECRETS_TAG, checks.Tags.security)
def check_keys(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """SECRET_KEY and MAILADMIN_ENCRYPTION_KEY are set and are not the public one."""
    found = []
    for check_id, name, value in (
        (1, "SECRET_KEY", _raw_secret_key()),
        (2, "MAILADMIN_ENCRYPTION_KEY", str(settings.MAILADMIN_ENCRYPTION_KEY)),
    ):
        problem = key_problem(name, value)
        if problem:
            found.append(_message(check_id, problem, missing=not value.strip()))
    return found


@checks.register(checks.Tags.database)
def check_sealed_secrets(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Every stored secret opens under the configured key (a warning, so ``migrate`` still
    runs and `make run` can re-seal what an old install stored under the public key)."""
    databases = kwargs.get("databases") or []
    if "default" not in databases or key_problem("key", settings.MAILADMIN_ENCRYPTION_KEY):
        return []
    from mailadmin.services.config.secrets import sealed_fields

    box = SecretBox(settings.MAILADMIN_ENCRYPTION_KEY)
    unreadable = []
    try:
        for label, _model, _field, _pk, sealed in sealed_fields():
            try:
                box.open(sealed)
            except SecretBoxError:
                unreadable.append(label)
    except DatabaseError:  # tables not created yet: nothing stored
        return []
    if not unreadable:
        return []
    return [
        checks.Warning(
            f"{len(unreadable)} stored secret(s) cannot be opened with "
            f"MAILADMIN_ENCRYPTION_KEY: {', '.join(unreadable[:10])}",
            hint=(
                "They were sealed under another key. Start with the key they were stored "
                "with, or re-seal them: manage.py reseal_secrets --old-key-file FILE "
                "(--public-development-key for an install that ran on the old default key; "
                "`make run` does that by itself), or enter them again in the console."
            ),
            id="mailadmin.W003",
        )
    ]


def refuse_unsafe_start() -> None:
    """Raise ImproperlyConfigured if the key checks report an error (not a warning).

    Called where a long-running process starts (the WSGI module, Celery's worker and beat),
    since gunicorn and Celery do not run Django's checks themselves.
    """
    errors = [m for m in checks.run_checks(tags=[SECRETS_TAG]) if m.is_serious()]
    if errors:
        text = "; ".join(f"{m.id}: {m.msg}" for m in errors)
        raise ImproperlyConfigured(f"refusing to start: {text}")
