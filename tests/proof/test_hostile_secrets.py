"""No public default secret in a running product (issue 10, item 7).

The keys have no default in the repository: every process refuses to start without one or
with the old public development key, `make run` generates them once into var/ (0600,
created exclusively) and hands them to every child, and an old install's secrets sealed
under the public key are re-sealed. Real processes (``manage.py``, gunicorn's WSGI module,
Celery, the SMTP worker, ``bin/run`` with its private Redis), no mocks.
"""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from rest_framework.test import APIClient

from mailadmin.checks import check_keys, check_sealed_secrets
from mailadmin.models import ConfigSnapshot, VirtualServer
from mailadmin.services.config.secrets import secret_open
from mailadmin.tests.factories import load_bin_run, make_server
from mailadmin.tests.stack import database_url, until
from smtpworker.core.contract import PUBLIC_DEVELOPMENT_KEY
from smtpworker.core.secretbox import SecretBox
from smtpworker.tests.factories import free_port

ROOT = Path(__file__).resolve().parents[2]
KEY_NAMES = ("SECRET_KEY", "MAILADMIN_ENCRYPTION_KEY")
TIMEOUT = 60.0


def keyless_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a fresh machine: no key at all, its own SQLite and data dir, and
    a Redis address nothing answers at (a process that does not refuse hangs there)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(KEY_NAMES)
        and k not in ("DATABASE_URL", "CELERY_BROKER_URL", "DEBUG", "PYTEST_CURRENT_TEST")
    }
    env.update(
        MAILADMIN_DATA_DIR=str(tmp_path / "var"),
        REDIS_URL="redis://127.0.0.1:1/0",
        DJANGO_SETTINGS_MODULE="mailadmin.settings",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *argv], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=TIMEOUT, check=False,
    )  # fmt: skip


# -- every process refuses to start without a usable key ------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["manage.py", "check"], id="manage.py check"),
        pytest.param(["-c", "import mailadmin.wsgi"], id="gunicorn's WSGI module"),
        pytest.param(
            ["-m", "celery", "-A", "mailadmin", "worker", "--pool", "solo"], id="celery worker"
        ),
        # Beat opens its schedule file before it refuses: keep it out of the work tree.
        pytest.param(
            ["-m", "celery", "-A", "mailadmin", "beat", "-s", "{tmp}/beat"], id="celery beat"
        ),
        pytest.param(["-m", "smtpworker", "--node", "n1"], id="smtp worker"),
    ],
)
def test_a_process_refuses_to_start_without_a_key(argv: list[str], tmp_path: Path) -> None:
    argv = [arg.replace("{tmp}", str(tmp_path)) for arg in argv]
    result = run(argv, keyless_env(tmp_path))
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "is not set" in output, output


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["manage.py", "check"], id="manage.py check"),
        pytest.param(["-c", "import mailadmin.wsgi"], id="gunicorn's WSGI module"),
        pytest.param(["-m", "smtpworker", "--node", "n1"], id="smtp worker"),
    ],
)
def test_a_process_refuses_the_public_development_key(argv: list[str], tmp_path: Path) -> None:
    result = run(
        argv, keyless_env(tmp_path, **{name: PUBLIC_DEVELOPMENT_KEY for name in KEY_NAMES})
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "is the public development key" in output, output


def test_debug_mode_only_warns_about_the_public_key(tmp_path: Path) -> None:
    env = keyless_env(
        tmp_path, DEBUG="true", **{name: PUBLIC_DEVELOPMENT_KEY for name in KEY_NAMES}
    )
    result = run(["manage.py", "check"], env)
    assert result.returncode == 0, result.stderr
    assert "mailadmin.W001" in result.stderr and "mailadmin.W002" in result.stderr


def test_the_key_checks_name_each_setting(settings: Any) -> None:
    settings.DEBUG = False
    settings.SECRET_KEY = PUBLIC_DEVELOPMENT_KEY
    settings.MAILADMIN_ENCRYPTION_KEY = ""
    found = {m.id: m for m in check_keys()}
    assert set(found) == {"mailadmin.E001", "mailadmin.E002"}
    assert "SECRET_KEY is the public development key" in found["mailadmin.E001"].msg
    assert "MAILADMIN_ENCRYPTION_KEY is not set" in found["mailadmin.E002"].msg
    settings.SECRET_KEY = "x" * 64
    settings.MAILADMIN_ENCRYPTION_KEY = "y" * 64
    assert check_keys() == []


# -- make run: keys generated once, 0600, never through a link ------------------------


@pytest.fixture
def bin_run(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    module = load_bin_run(monkeypatch)
    for name in KEY_NAMES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(f"{name}_FILE", raising=False)
    yield module


def test_make_run_generates_each_key_once_and_reuses_it(
    bin_run: ModuleType, tmp_path: Path
) -> None:
    given = bin_run.ensure_keys(tmp_path)
    assert set(given) == {"SECRET_KEY_FILE", "MAILADMIN_ENCRYPTION_KEY_FILE"}
    keys = {name: Path(path).read_text() for name, path in given.items()}
    for path in given.values():
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert keys["SECRET_KEY_FILE"] != keys["MAILADMIN_ENCRYPTION_KEY_FILE"]
    assert all(len(key.strip()) >= 64 for key in keys.values())
    again = bin_run.ensure_keys(tmp_path)
    assert again == given
    assert {name: Path(path).read_text() for name, path in again.items()} == keys


def test_make_run_never_writes_a_key_through_a_planted_link(
    bin_run: ModuleType, tmp_path: Path
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    data = tmp_path / "var"
    data.mkdir()
    (data / "secret-key.txt").symlink_to(victim)
    with pytest.raises(RuntimeError, match="not a regular file of ours"):
        bin_run.ensure_keys(data)
    assert victim.read_text() == "precious\n"


def test_make_run_keeps_keys_the_environment_gives(
    bin_run: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SECRET_KEY alone: the encryption key falls back to it, as it may have sealed secrets.
    monkeypatch.setenv("SECRET_KEY", "given-" + "k" * 60)
    assert bin_run.ensure_keys(tmp_path) == {}
    assert list(tmp_path.iterdir()) == []


def test_make_run_starts_every_process_with_generated_keys(tmp_path: Path) -> None:
    """`make run` (bin/run) on a fresh checkout: keys appear in var/ as 0600 files, and the
    web process, Celery worker, beat and SMTP worker all start on them and stay up."""
    web = f"127.0.0.1:{free_port()}"
    env = keyless_env(tmp_path, WEB_ADDR=web, NO_COLOR="1", MAILADMIN_NODE="keys")
    proc = subprocess.Popen(
        [sys.executable, "bin/run"], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    lines: list[bytes] = []
    assert proc.stdout is not None
    stream = proc.stdout

    def read() -> None:
        with stream:
            lines.extend(iter(stream.readline, b""))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        until(lambda: any(b"Login: admin / " in line for line in lines), timeout=TIMEOUT)
        with urllib.request.urlopen(f"http://{web}/accounts/login/", timeout=TIMEOUT) as answer:
            assert answer.status == 200
        until(lambda: any(b"smtp" in line and b" running (config" in line for line in lines)
              or proc.poll() is not None, timeout=TIMEOUT)  # fmt: skip
        # Celery's worker and beat refuse (exit) right after their start if they do.
        until(lambda: any(b"worker" in line and b" ready." in line for line in lines)
              or proc.poll() is not None, timeout=TIMEOUT)  # fmt: skip
    finally:
        os.kill(proc.pid, signal.SIGINT)
        code = proc.wait(timeout=TIMEOUT)
        reader.join(timeout=10)
    text = b"".join(lines).decode(errors="replace")
    assert code == 0, text
    assert "exited" not in text, text  # no child died (a refused key would make one exit)
    for name in ("secret-key.txt", "encryption-key.txt"):
        path = tmp_path / "var" / name
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.read_text().strip() not in text  # never printed


# -- an install from before: secrets sealed under the public key ----------------------

OLD_INSTALL = """
from mailadmin.models import VirtualServer
from smtpworker.core.contract import PUBLIC_DEVELOPMENT_KEY
from smtpworker.core.secretbox import SecretBox
for name, key in (("Old", PUBLIC_DEVELOPMENT_KEY), ("Lost", "a key nobody has any more")):
    pk = VirtualServer.objects.create(name=name).pk
    VirtualServer.objects.filter(pk=pk).update(outbound_password=SecretBox(key).seal(name))
"""
READ_BACK = """
from mailadmin.models import VirtualServer
from mailadmin.services.config.secrets import secret_open
print(secret_open(VirtualServer.objects.get(name="Old").outbound_password))
"""


def test_make_run_reseals_an_old_install_and_starts_anyway(
    bin_run: ModuleType, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """An install from before generated keys: its database holds a smart-host password
    sealed under the public key and one sealed under a key that is lost. make run's start
    re-seals the first under the new key, names the second, and starts anyway."""
    data = tmp_path / "var"
    data.mkdir()
    redis_base = os.environ["REDIS_URL"].rsplit("/", 1)[0]
    env = keyless_env(tmp_path, STATIC_ROOT=str(tmp_path / "static"), REDIS_URL=f"{redis_base}/12")
    env.update(bin_run.ensure_keys(data))
    assert run(["manage.py", "migrate", "--noinput", "-v0"], env).returncode == 0
    assert run(["manage.py", "shell", "-c", OLD_INSTALL], env).returncode == 0

    console = bin_run.Console([bin_run.SYSTEM])
    assert bin_run.prepare(env, console) is None  # nothing stops the start
    said = capfd.readouterr()
    output = said.out + said.err
    assert "Re-sealed 1 stored secret(s)" in output, output
    assert "VirtualServer 2 outbound_password" in output, output
    assert "starting anyway" in output, output
    opened = run(["manage.py", "shell", "-c", READ_BACK], env)
    assert opened.stdout.strip().splitlines()[-1] == "Old", opened.stderr


@pytest.mark.django_db
def test_an_old_installs_secrets_are_resealed_not_lost() -> None:
    admin = User.objects.create_superuser("root", "root@example.test", "root-password")
    api = APIClient()
    api.force_login(admin)
    server = make_server(api)
    old = SecretBox(PUBLIC_DEVELOPMENT_KEY).seal("smart-host-password")
    VirtualServer.objects.filter(pk=server["id"]).update(outbound_password=old)
    versions = ConfigSnapshot.objects.count()

    warnings = check_sealed_secrets(databases=["default"])
    assert [w.id for w in warnings] == ["mailadmin.W003"]
    assert f"VirtualServer {server['id']} outbound_password" in warnings[0].msg
    with pytest.raises(CommandError, match="open with none of the keys"):
        call_command("reseal_secrets")  # without the old key it cannot, and says so

    call_command("reseal_secrets", "--public-development-key")
    sealed = VirtualServer.objects.get(pk=server["id"]).outbound_password
    assert sealed != old
    assert secret_open(sealed) == "smart-host-password"
    assert check_sealed_secrets(databases=["default"]) == []
    assert ConfigSnapshot.objects.count() == versions + 1  # the workers get the new seal
    call_command("reseal_secrets", "--public-development-key")  # a no-op the second time
    assert ConfigSnapshot.objects.count() == versions + 1


# -- login rate limits: per client and per account, counted in Redis ------------------

LOCKED = "Too many failed logins"
LIMIT = 3


@pytest.fixture
def limited(settings: Any) -> None:
    settings.AXES_FAILURE_LIMIT = LIMIT


@pytest.fixture
def root(db: None) -> User:
    return User.objects.create_superuser("root", "root@example.test", "root-password")


def console_login(client: Client, password: str, user: str = "root") -> Any:
    return client.post("/accounts/login/", {"username": user, "password": password})


def admin_login(client: Client, password: str, user: str = "root") -> Any:
    return client.post(
        "/admin/login/?next=/admin/", {"username": user, "password": password, "next": "/admin/"}
    )


def token_login(client: Client, password: str, user: str = "root") -> Any:
    return client.post(
        "/api/v1/token/", {"username": user, "password": password}, content_type="application/json"
    )


@pytest.mark.parametrize("login", [console_login, admin_login, token_login])
def test_guessing_a_password_locks_the_address_and_the_account(
    login: Any, limited: None, root: User
) -> None:
    guesser = Client(REMOTE_ADDR="192.0.2.7")
    for _ in range(LIMIT - 1):
        assert login(guesser, "wrong").status_code in (200, 400)  # the ordinary refusal
    locked = login(guesser, "wrong")
    assert locked.status_code == 429
    assert LOCKED in locked.content.decode()
    assert int(locked["Retry-After"]) == 15 * 60
    # Now even the right password is refused: from that address, and for that account
    # from anywhere; and that address is refused for any account.
    assert login(guesser, "root-password").status_code == 429
    elsewhere = Client(REMOTE_ADDR="198.51.100.9")
    assert login(elsewhere, "root-password").status_code == 429
    User.objects.create_user("other", password="other-password", is_staff=True)
    assert login(guesser, "other-password", user="other").status_code == 429
    # An innocent account from an innocent address is not touched.
    assert login(elsewhere, "other-password", user="other").status_code in (200, 302)


def test_a_locked_out_login_form_says_why_in_place(limited: None, root: User) -> None:
    guesser = Client(REMOTE_ADDR="192.0.2.7")
    for _ in range(LIMIT):
        answer = console_login(guesser, "wrong")
    page = answer.content.decode()
    assert answer.status_code == 429
    assert 'role="alert"' in page and LOCKED in page and 'name="password"' in page
    assert 'value="root"' in page  # the form keeps the user name
    answer = admin_login(guesser, "wrong")
    page = answer.content.decode()
    assert answer.status_code == 429 and "errornote" in page and LOCKED in page


def test_a_locked_out_token_request_gets_the_api_error_shape(limited: None, root: User) -> None:
    guesser = Client(REMOTE_ADDR="192.0.2.7")
    for _ in range(LIMIT):
        answer = token_login(guesser, "wrong")
    assert answer.status_code == 429
    assert (
        answer.json() == {"detail": answer.json()["detail"]} and LOCKED in answer.json()["detail"]
    )
    assert answer["Content-Type"] == "application/json"


def test_ipv6_clients_are_counted_by_their_64(limited: None, root: User) -> None:
    for host in range(LIMIT):  # a new address of the same /64 for every guess
        answer = console_login(Client(REMOTE_ADDR=f"2001:db8:1:2::{host + 1}"), "wrong", "x")
    assert answer.status_code == 429
    assert console_login(Client(REMOTE_ADDR="2001:db8:1:3::1"), "root-password").status_code == 302


@pytest.mark.django_db(transaction=True)
def test_every_web_process_sees_the_same_count(limited: None) -> None:
    """The failures one process saw lock the client out in another process too: the count
    lives in Redis, not in a process's memory. The other process is a second Python running
    Django against the same database and Redis."""
    User.objects.create_superuser("root", "root@example.test", "root-password")
    guesser = Client(REMOTE_ADDR="192.0.2.7")
    for _ in range(LIMIT - 1):
        assert console_login(guesser, "wrong").status_code == 200
    code = (
        "import django; django.setup()\n"
        "from django.test import Client\n"
        "from django.conf import settings\n"
        f"settings.AXES_FAILURE_LIMIT = {LIMIT}\n"
        "answer = Client(REMOTE_ADDR='192.0.2.7').post("
        "'/accounts/login/', {'username': 'root', 'password': 'root-password'})\n"
        "print(answer.status_code)\n"
    )
    other = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
        timeout=TIMEOUT, check=False, env={**os.environ, "DATABASE_URL": database_url()},
    )  # fmt: skip
    # The right password there: the other process saw this one's failures, and not yet
    # the limit, so it logs in (302) and resets the count for that client and account.
    assert other.stdout.strip() == "302", other.stderr
    for _ in range(LIMIT - 1):
        assert console_login(guesser, "wrong").status_code == 200
    # Now from the other process: one more failure there reaches the limit counted here.
    other = subprocess.run(
        [sys.executable, "-c", code.replace("root-password", "wrong")], cwd=ROOT,
        capture_output=True, text=True, timeout=TIMEOUT, check=False,
        env={**os.environ, "DATABASE_URL": database_url()},
    )  # fmt: skip
    assert other.stdout.strip() == "429", other.stderr
    assert console_login(guesser, "root-password").status_code == 429


# -- browsers: Content-Security-Policy, HSTS and Secure cookies over HTTPS ------------

INLINE_CODE = re.compile(
    # A JSON data block is never run, so the policy allows it.
    r"<script(?![^>]*\b(?:src=|type=\"application/json\"))[^>]*>"
    r"|<style\b|\sstyle\s*=|\son[a-z]+\s*=|javascript:",
    re.I,
)


def test_console_pages_carry_the_policy_and_no_inline_code(root: User) -> None:
    client = Client()
    login = client.get("/accounts/login/")
    assert "script-src 'self'" in login["Content-Security-Policy"]
    client.force_login(root)
    for path in ("/", "/dashboard/", "/queues/", "/tracking/", "/users/", "/audit/", "/admin/"):
        answer = client.get(path)
        assert answer.status_code == 200, path
        assert "default-src 'self'" in answer["Content-Security-Policy"], path
        if not path.startswith("/admin/"):  # Django's admin is checked in Chromium
            assert INLINE_CODE.findall(answer.content.decode()) == [], path


def test_https_answers_get_hsts_and_secure_cookies(root: User) -> None:
    secure = Client()
    page = secure.get("/accounts/login/", secure=True)
    assert page["Strict-Transport-Security"].startswith("max-age=31536000")
    assert page.cookies["csrftoken"]["secure"] is True
    login = secure.post(
        "/accounts/login/", {"username": "root", "password": "root-password"}, secure=True
    )
    assert login.status_code == 302
    assert login.cookies["sessionid"]["secure"] is True
    # Plain HTTP (make run on loopback): no HSTS, and the cookies still work there.
    plain = Client().get("/accounts/login/")
    assert "Strict-Transport-Security" not in plain
    assert not plain.cookies["csrftoken"]["secure"]


def test_a_forwarded_scheme_counts_only_behind_a_configured_proxy(
    root: User, settings: Any, tmp_path: Path
) -> None:
    forged = Client().get("/accounts/login/", HTTP_X_FORWARDED_PROTO="https")
    assert "Strict-Transport-Security" not in forged  # a client cannot claim HTTPS
    assert not forged.cookies["csrftoken"]["secure"]
    code = "from django.conf import settings; print(settings.SECURE_PROXY_SSL_HEADER)"
    env = keyless_env(tmp_path, SECRET_KEY="k" * 64, MAILADMIN_PROXY_SSL_HEADER="X-Forwarded-Proto")
    result = run(["-c", code], env)
    assert result.stdout.strip() == "('HTTP_X_FORWARDED_PROTO', 'https')", result.stderr
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    proxied = Client().get("/accounts/login/", HTTP_X_FORWARDED_PROTO="https")
    assert "Strict-Transport-Security" in proxied
    assert proxied.cookies["csrftoken"]["secure"] is True


def test_an_administrator_can_lift_a_lock_early(limited: None, root: User) -> None:
    guesser = Client(REMOTE_ADDR="192.0.2.7")
    for _ in range(LIMIT):
        console_login(guesser, "wrong")
    assert console_login(Client(REMOTE_ADDR="198.51.100.9"), "root-password").status_code == 429
    call_command("axes_reset_username", "root")
    assert console_login(Client(REMOTE_ADDR="198.51.100.9"), "root-password").status_code == 302
    assert console_login(guesser, "root-password").status_code == 429  # the address still is
    call_command("axes_reset_ip", "192.0.2.7")
    assert console_login(guesser, "root-password").status_code == 302
