"""``manage.py ensure_admin``: the login ``make run`` prints must always work."""

from __future__ import annotations

import io
import stat
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

ENV_NAMES = ("DJANGO_SUPERUSER_USERNAME", "DJANGO_SUPERUSER_PASSWORD", "DJANGO_SUPERUSER_EMAIL")


@pytest.fixture
def data_dir(settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    settings.MAILADMIN_DATA_DIR = tmp_path
    return tmp_path


def ensure_admin() -> str:
    out = io.StringIO()
    call_command("ensure_admin", stdout=out)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.django_db
def test_it_creates_the_superuser_from_the_environment(data_dir, monkeypatch):
    monkeypatch.setenv("DJANGO_SUPERUSER_USERNAME", "root")
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", "s3cret-Pass")
    monkeypatch.setenv("DJANGO_SUPERUSER_EMAIL", "root@example.com")

    assert ensure_admin() == "Login: root (password from DJANGO_SUPERUSER_PASSWORD)"

    user = get_user_model().objects.get(username="root")
    assert user.is_superuser and user.is_staff and user.is_active
    assert user.email == "root@example.com"
    assert user.check_password("s3cret-Pass")
    assert not (data_dir / "admin-password.txt").exists()


@pytest.mark.django_db
def test_it_resets_an_existing_password_to_the_environment_one(data_dir, monkeypatch):
    get_user_model().objects.create_superuser("admin", "", "old-password")
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", "new-password")

    assert ensure_admin() == "Login: admin (password reset from DJANGO_SUPERUSER_PASSWORD)"
    assert get_user_model().objects.get(username="admin").check_password("new-password")


@pytest.mark.django_db
def test_it_generates_prints_and_saves_a_password(data_dir):
    line = ensure_admin()

    assert line.startswith("Login: admin / ")
    password = line.removeprefix("Login: admin / ")
    assert len(password) >= 12
    saved = data_dir / "admin-password.txt"
    assert saved.read_text().strip() == password
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    user = get_user_model().objects.get(username="admin")
    assert user.is_superuser
    assert user.check_password(password)


@pytest.mark.django_db
def test_it_reprints_the_saved_password_without_changing_it(data_dir):
    first = ensure_admin()
    hashed = get_user_model().objects.get(username="admin").password

    assert ensure_admin() == first
    assert get_user_model().objects.get(username="admin").password == hashed
    assert get_user_model().objects.count() == 1


@pytest.mark.django_db
def test_it_tells_how_to_reset_when_the_password_is_unknown(data_dir):
    get_user_model().objects.create_superuser("admin", "", "chosen-by-someone")

    line = ensure_admin()

    assert line.startswith("Login: admin (existing account")
    assert "manage.py changepassword admin" in line
    assert get_user_model().objects.get(username="admin").check_password("chosen-by-someone")


@pytest.mark.django_db
def test_it_does_not_print_a_saved_password_that_no_longer_works(data_dir):
    password = ensure_admin().removeprefix("Login: admin / ")
    user = get_user_model().objects.get(username="admin")
    user.set_password("changed-in-the-console")
    user.save()

    line = ensure_admin()

    assert password not in line
    assert "manage.py changepassword admin" in line
