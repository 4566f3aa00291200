"""The production stack: docker-compose.yml and the Dockerfile run what the product needs.

Parsed, not run (no Docker daemon in CI); `docker-compose config` validates the file where
that binary is installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
README_SECTION = "## Production (docker compose)"
INFRASTRUCTURE = {"postgres", "redis"}
APP_SERVICES = {"migrate", "web", "worker", "beat", "smtp"}
LONG_RUNNING = ("web", "worker", "beat", "smtp")
# Every container that takes, spools or delivers mail mounts the same volume here.
DATA_DIR = "/data"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    # safe_load resolves the `<<: *app` merge keys, so each service is seen as compose sees it.
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def command_line(service: dict[str, Any]) -> str:
    command = service.get("command", "")
    return " ".join(command) if isinstance(command, list) else command


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def healthcheck_line(service: dict[str, Any]) -> str:
    test = service.get("healthcheck", {}).get("test", "")
    return " ".join(test) if isinstance(test, list) else test


_RECORD_READS = """
import json, os
seen = set()
class Recording(dict):
    def get(self, key, default=None):
        seen.add(key)
        return super().get(key, default)
    def __getitem__(self, key):
        seen.add(key)
        return super().__getitem__(key)
    def __contains__(self, key):
        seen.add(key)
        return super().__contains__(key)
os.environ = Recording(os.environ)
import mailadmin.settings
print(json.dumps(sorted(seen)))
"""


def settings_env_names() -> set[str]:
    """The variables importing mailadmin/settings.py reads, recorded in a fresh interpreter
    (settings.py reads some through the contract module both halves share, so its source
    alone does not name them all)."""
    env = {"PATH": os.environ.get("PATH", ""), "SECRET_KEY": "x" * 50, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", _RECORD_READS],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return set(json.loads(out))


def test_the_services_are_the_product_and_its_infrastructure(services):
    assert set(services) == APP_SERVICES | INFRASTRUCTURE


def test_every_app_service_runs_the_one_image(services):
    images = {
        (services[name].get("image"), str(services[name].get("build"))) for name in APP_SERVICES
    }
    assert len(images) == 1, images
    ((image, build),) = images
    assert image and image.startswith("mailadmin:")
    assert build == "."
    assert (ROOT / "Dockerfile").is_file()


def test_long_running_services_restart_and_have_a_healthcheck(services):
    for name in (*LONG_RUNNING, *INFRASTRUCTURE):
        service = services[name]
        assert service.get("restart") == "unless-stopped", name
        assert not service.get("healthcheck", {}).get("disable"), name
        assert healthcheck_line(service).startswith(("CMD ", "CMD-SHELL ")), name
    assert "pg_isready" in healthcheck_line(services["postgres"])
    assert "redis-cli ping" in healthcheck_line(services["redis"])


def test_migrate_runs_once_before_the_app(services):
    migrate = services["migrate"]
    assert command_line(migrate) == "python manage.py migrate --noinput"
    # unless-stopped would re-run a one-shot forever.
    assert migrate["restart"] == "no"
    assert migrate["depends_on"]["postgres"] == {"condition": "service_healthy"}
    for name in ("web", "worker", "beat"):
        assert services[name]["depends_on"]["migrate"] == {
            "condition": "service_completed_successfully"
        }, name
    for name in LONG_RUNNING:
        assert services[name]["depends_on"]["redis"] == {"condition": "service_healthy"}, name


def test_commands_start_the_product(services):
    web = command_line(services["web"])
    assert web.startswith("gunicorn mailadmin.wsgi ")
    assert "--bind 0.0.0.0:8000" in web
    assert command_line(services["worker"]).startswith("celery -A mailadmin worker ")
    assert command_line(services["beat"]).startswith("celery -A mailadmin beat ")
    assert command_line(services["smtp"]).startswith("python -m smtpworker --node ")


def test_the_modules_the_commands_name_exist():
    for module in ("mailadmin", "mailadmin.celery", "mailadmin.wsgi", "smtpworker"):
        assert importlib.util.find_spec(module) is not None, module
    import mailadmin

    assert mailadmin.celery_app.main == "mailadmin"  # what `celery -A mailadmin` finds


def test_celery_healthchecks_ping_the_node_the_command_names(services):
    worker = command_line(services["worker"])
    match = re.search(r"-n (\S+)@%h\b", worker)
    assert match, worker
    assert f"inspect ping -d {match.group(1)}@$$HOSTNAME" in healthcheck_line(services["worker"])
    # beat answers pings only with remote control on, as celerybeat@<hostname>.
    assert "--enable-remote-control" in command_line(services["beat"])
    assert "inspect ping -d celerybeat@$$HOSTNAME" in healthcheck_line(services["beat"])


def test_web_healthcheck_host_is_allowed(services):
    web = services["web"]
    assert "http://127.0.0.1:8000/accounts/login/" in healthcheck_line(web)
    allowed = environment(web)["ALLOWED_HOSTS"]
    default = re.fullmatch(r"\$\{ALLOWED_HOSTS:-(.*)\}", allowed)
    assert "127.0.0.1" in (default.group(1) if default else allowed).split(",")


def test_every_app_variable_is_one_settings_reads(services):
    names = settings_env_names()
    assert {"DATABASE_URL", "SECRET_KEY", "REDIS_URL", "MAILADMIN_DATA_DIR"} <= names
    for name in APP_SERVICES:
        for variable in environment(services[name]):
            base = variable.removesuffix("_FILE")
            assert variable in names or base in names, (
                f"{name}: {variable} is not read by mailadmin/settings.py"
            )


def test_secret_files_are_mounted_where_the_variables_point(compose, services):
    declared = compose["secrets"]
    for name, service in services.items():
        mounted = {
            entry if isinstance(entry, str) else entry["source"]
            for entry in service.get("secrets", [])
        }
        for variable, value in environment(service).items():
            if variable.endswith("_FILE"):
                secret = value.removeprefix("/run/secrets/")
                assert value == f"/run/secrets/{secret}", (name, variable, value)
                assert secret in mounted, (name, variable)
                assert declared[secret] == {"file": f"./secrets/{secret}"}, secret
    app_env = environment(services["web"])
    assert "DATABASE_URL" not in app_env and "SECRET_KEY" not in app_env  # never inline
    assert app_env["DATABASE_URL_FILE"] == "/run/secrets/database_url"


def test_mail_data_is_one_volume_shared_by_every_mail_process(compose, services):
    assert "maildata" in compose["volumes"]
    for name in LONG_RUNNING:
        assert f"maildata:{DATA_DIR}" in services[name]["volumes"], name
        assert environment(services[name])["MAILADMIN_DATA_DIR"] == DATA_DIR, name
    assert f"-s {DATA_DIR}/" in command_line(services["beat"])


def test_the_delivery_workers_consume_the_queue_the_smtp_worker_hands_off_to(services):
    # The SMTP worker hands mail to delivery.<its --node>; a Celery worker consumes the
    # delivery queue of its MAILADMIN_NODE: the two must name the same node.
    smtp_node = command_line(services["smtp"]).split("--node ", 1)[1].split()[0]
    assert environment(services["worker"])["MAILADMIN_NODE"] == smtp_node
    assert environment(services["smtp"])["MAILADMIN_NODE"] == smtp_node


def test_readme_says_how_to_create_each_secret(compose):
    readme = (ROOT / "README.md").read_text()
    assert README_SECTION in readme
    section = readme.split(README_SECTION, 1)[1].split("\n## ", 1)[0]
    for secret in compose["secrets"].values():
        assert secret["file"].removeprefix("./") in section, secret["file"]
    assert "docker compose up -d" in section
    assert "--scale worker=" in section


def test_image_is_non_root_and_never_holds_secrets():
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    dockerfile = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
    assert re.search(r"^FROM python:3\.11-slim\b", dockerfile, re.M)
    assert re.search(r"^USER 10001(:10001)?$", dockerfile, re.M)
    assert "pip install --no-cache-dir -r requirements.txt" in dockerfile
    assert "requirements-dev" not in dockerfile
    assert "collectstatic" in dockerfile
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert "secrets/" in ignored and ".env" in ignored


def test_docker_compose_accepts_the_file(tmp_path):
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed")
    # A copy with placeholder secrets, so nothing depends on ./secrets/ or ./.env here.
    shutil.copy(COMPOSE_FILE, tmp_path / "docker-compose.yml")
    shutil.copy(ROOT / "Dockerfile", tmp_path / "Dockerfile")
    (tmp_path / "secrets").mkdir()
    for name in yaml.safe_load(COMPOSE_FILE.read_text())["secrets"]:
        (tmp_path / "secrets" / name).write_text("placeholder\n")
    result = subprocess.run(
        [binary, "-f", "docker-compose.yml", "config", "-q"],
        cwd=tmp_path,
        env={"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
