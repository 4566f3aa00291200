"""``manage.py ensure_admin``: make sure a superuser exists and say how to log in.

Used by ``make run`` on every start. The username is ``$DJANGO_SUPERUSER_USERNAME`` (default
``admin``) and the e-mail ``$DJANGO_SUPERUSER_EMAIL``, as for Django's ``createsuperuser``.

- ``$DJANGO_SUPERUSER_PASSWORD`` set: the account is created with it, or its password is set
  to it if it differs, so the environment is always the truth.
- Not set, no such account: it is created with a random password, which is saved in
  ``MAILADMIN_DATA_DIR/admin-password.txt`` (mode 0600) and printed.
- Not set, the account exists: the saved password is printed again if it still works;
  otherwise the command says how to reset it. It never changes an existing password here.

Prints exactly one line, starting ``Login: ``, for ``bin/run`` to show.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.core.management.base import BaseCommand
from django.db import transaction

from smtpworker.core import safefile

PASSWORD_FILE_NAME = "admin-password.txt"
RESET_HINT = "reset it with `python manage.py changepassword {username}`"


class Command(BaseCommand):
    help = "Create the admin superuser if missing and print one 'Login: ...' line."
    # `make run` has just run migrate, which ran the checks; running them again only slows
    # every start.
    requires_system_checks: list[str] = []

    def handle(self, *args: Any, **options: Any) -> None:
        username = os.environ.get("DJANGO_SUPERUSER_USERNAME") or "admin"
        env_password = os.environ.get("DJANGO_SUPERUSER_PASSWORD")
        email = os.environ.get("DJANGO_SUPERUSER_EMAIL", "")
        password_file = Path(settings.MAILADMIN_DATA_DIR) / PASSWORD_FILE_NAME
        with transaction.atomic():
            user = find_user(username)
            if env_password:
                line = from_environment(user, username, email, env_password)
            elif user is None:
                line = create_with_random_password(username, email, password_file)
            else:
                line = existing_account(user, username, password_file)
        self.stdout.write(line)


def find_user(username: str) -> AbstractBaseUser | None:
    user_model = get_user_model()
    return user_model._default_manager.filter(**{user_model.USERNAME_FIELD: username}).first()


def create_superuser(username: str, email: str, password: str) -> None:
    user_model = get_user_model()
    manager: Any = user_model._default_manager  # a UserManager, which the stubs cannot see
    manager.create_superuser(
        **{user_model.USERNAME_FIELD: username}, email=email, password=password
    )


def from_environment(
    user: AbstractBaseUser | None, username: str, email: str, password: str
) -> str:
    if user is None:
        create_superuser(username, email, password)
        return f"Login: {username} (password from DJANGO_SUPERUSER_PASSWORD)"
    if not user.check_password(password):
        user.set_password(password)
        user.save(update_fields=["password"])
        return f"Login: {username} (password reset from DJANGO_SUPERUSER_PASSWORD)"
    return f"Login: {username} (password from DJANGO_SUPERUSER_PASSWORD)"


def create_with_random_password(username: str, email: str, password_file: Path) -> str:
    password = secrets.token_urlsafe(12)
    # Saved before the account exists: if saving fails, nobody is locked out of an account
    # whose password was only ever printed.
    write_secret(password_file, password)
    create_superuser(username, email, password)
    return f"Login: {username} / {password}"


def existing_account(user: AbstractBaseUser, username: str, password_file: Path) -> str:
    hint = RESET_HINT.format(username=username)
    try:
        saved = password_file.read_text().strip()
    except FileNotFoundError:
        return f"Login: {username} (existing account, password not known here; {hint})"
    if saved and user.check_password(saved):
        return f"Login: {username} / {saved}"
    return f"Login: {username} (password changed since {password_file} was written; {hint})"


def write_secret(path: Path, secret: str) -> None:
    """Write ``secret`` to ``path`` readable by its owner only, replacing it atomically."""
    # Created 0600 from the start, so the secret is never readable by others, not even
    # briefly; under a random temporary name and renamed over, so never through a link.
    with safefile.directory(path.parent) as dir_fd:
        safefile.write_replace(dir_fd, path.name, (secret + "\n").encode(), mode=0o600)
