"""Writes to SMTP user accounts. Passwords become verifiers here and are then dropped."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.utils import timezone

from mailadmin.exceptions import ConfigError, from_django_validation_error
from mailadmin.models import SmtpUser, VirtualServer
from mailadmin.services.config.secrets import secret_box
from mailadmin.services.config.versions import config_transaction
from smtpworker.core import credentials

USER_FIELD_PATHS = {"is_active": ("active",), "allow_cram_md5": ("allow_cram_md5",)}


def user_create(*, data: dict[str, Any], author: str) -> SmtpUser:
    """Create an account; ``data`` has username, password and optionally active,
    allow_cram_md5 and servers (VirtualServer objects; none means every server)."""
    if not data.get("password"):
        raise ConfigError.at(("password",), "Give a password for the new user.")
    with config_transaction(author=author, reason=f"create SMTP user {data.get('username')}"):
        user = SmtpUser()
        user_apply(user, data)
    return user


def user_update(*, user: SmtpUser, data: dict[str, Any], author: str) -> SmtpUser:
    with config_transaction(author=author, reason=f"update SMTP user {user.username}"):
        user = SmtpUser.objects.select_for_update().get(pk=user.pk)
        user_apply(user, data)
    return user


def user_delete(*, user: SmtpUser, author: str) -> None:
    with config_transaction(author=author, reason=f"delete SMTP user {user.username}"):
        user.delete()


def user_apply(user: SmtpUser, data: dict[str, Any]) -> None:
    """Validate and save (no lock, no publish). A password equal to the current one
    changes nothing, so re-importing a document does not create a version."""
    data = dict(data)
    password = data.pop("password", None)
    servers: Sequence[VirtualServer] | None = data.pop("servers", None)
    cram_before = user.allow_cram_md5
    for field, value in data.items():
        setattr(user, field, value)
    if password and not (
        user.password_hash
        and credentials.verify_password(password, user.password_hash)
        and (user.cram_md5_context or not user.allow_cram_md5)
    ):
        user_set_verifiers(user, password)
    if cram_before and not user.allow_cram_md5:
        user.cram_md5_context = ""  # drop the password-equivalent as soon as it is not needed
    try:
        user.full_clean()
    except DjangoValidationError as exc:
        raise from_django_validation_error(exc, USER_FIELD_PATHS) from exc
    user.save()
    if servers is not None:
        user.servers.set(servers)


def user_set_verifiers(user: SmtpUser, password: str) -> None:
    """Replace the verifiers; ConfigError at ``password`` for one SMTP AUTH cannot carry."""
    try:
        credentials.saslprep(password)  # what SCRAM will do to it: refuse here, not with a 500
    except ValueError as exc:
        raise ConfigError.at(
            ("password",),
            f"SMTP clients could not log in with this password: {exc} (RFC 4013).",
        ) from exc
    iterations = settings.MAILADMIN_PASSWORD_ITERATIONS
    user.password_hash = credentials.hash_password(password, iterations=iterations)
    user.scram_sha256 = credentials.make_scram_verifier(
        password, iterations=max(4096, iterations // 150)
    ).to_text()
    user.cram_md5_context = (
        secret_box().seal(credentials.make_cram_md5_context(password))
        if user.allow_cram_md5
        else ""
    )
    user.password_changed = timezone.now()
