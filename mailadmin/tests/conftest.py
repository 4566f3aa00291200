"""Shared fixtures: real database, real Redis (REDIS_URL, started by `make test`)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from django.contrib.auth.models import User
from django.core.management import call_command
from rest_framework.test import APIClient

from mailadmin import configdoc
from mailadmin.celery import app as celery_app
from mailadmin.models import VirtualServer
from mailadmin.tests.factories import console_user, make_relay
from mailadmin.tests.stack import Stack
from smtpworker.core.contract import RELAY_BATCH_TASK, delivery_queue
from smtpworker.tests.sink import Sink

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings: Any) -> None:
    # Real PBKDF2/SCRAM, with fewer rounds so creating accounts stays quick.
    settings.MAILADMIN_PASSWORD_ITERATIONS = 1000


@pytest.fixture
def admin_user(db: None) -> User:
    return User.objects.create_superuser("root", "root@example.test", "root-password")


@pytest.fixture
def operator_user(db: None) -> User:
    return console_user("watcher", "operators")


@pytest.fixture
def api(admin_user: User) -> APIClient:
    client = APIClient()
    client.force_login(admin_user)
    return client


@pytest.fixture
def operator_api(operator_user: User) -> APIClient:
    client = APIClient()
    client.force_login(operator_user)
    return client


@pytest.fixture
def typical_site() -> dict[str, Any]:
    return json.loads((EXAMPLES / "typical-site.json").read_text())


@pytest.fixture
def site(typical_site: dict[str, Any]) -> dict[str, VirtualServer]:
    """examples/typical-site.json imported: its servers by name."""
    configdoc.document_import(typical_site, author="test")
    return {s.name: s for s in VirtualServer.objects.all()}


@pytest.fixture
def corp(site: dict[str, VirtualServer]) -> VirtualServer:
    """The typical site's corporate server, "CorpServer"."""
    return site["CorpServer"]


@pytest.fixture(scope="session")
def schema(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The API's OpenAPI document as `manage.py spectacular` writes it: --fail-on-warn turns
    every drf-spectacular warning or error into a failure, and --validate checks the result
    against the OpenAPI 3 JSON schema."""
    target = tmp_path_factory.mktemp("schema") / "openapi.json"
    call_command(
        "spectacular",
        "--validate",
        "--fail-on-warn",
        "--format",
        "openapi-json",
        "--file",
        str(target),
    )
    return dict(json.loads(target.read_text()))


@pytest.fixture
def mailroot(settings: Any, tmp_path: Path) -> Path:
    """A private mail root, and a delivery schedule whose "minute" is 10 ms."""
    settings.MAILADMIN_MAILROOT = tmp_path / "mailroot"
    settings.MAILADMIN_DELIVERY_MINUTE = 0.01
    settings.MAILADMIN_OUTBOUND_TIMEOUT_CAP = 3
    return Path(settings.MAILADMIN_MAILROOT)


@pytest.fixture
def sink() -> Iterator[Sink]:
    """A recording SMTP server on loopback standing in for a smart host or MX."""
    with Sink() as server:
        yield server


@pytest.fixture
def relay(api: APIClient, sink: Sink) -> str:
    """The server "Relay" (corp.test) sending through the sink; returns its next hop."""
    make_relay(api, delivery={"smart_host": sink.smart_host})
    return sink.smart_host


@pytest.fixture
def test_redis(settings: Any) -> Iterator[str]:
    """Redis database 9 of the test Redis, empty, as settings.REDIS_URL (the worker
    processes an end-to-end test starts use it too, apart from a developer's own)."""
    url = settings.REDIS_URL.rsplit("/", 1)[0] + "/9"
    settings.REDIS_URL = url
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


@pytest.fixture
def enqueued(test_redis: str) -> Iterator[Callable[[], list[str]]]:
    """The queue ids of the relay tasks the console sent, read from the real broker.

    For tests where no Celery worker runs, so the tasks stay in the default queue (for
    messages recorded without a node); it is emptied first. ``test_redis`` isolates the
    de-duplication keys.
    """
    broker = redis.Redis.from_url(str(celery_app.conf.broker_url))
    queue = delivery_queue("")
    broker.delete(queue)

    def sent() -> list[str]:
        ids = []
        for raw in reversed(broker.lrange(queue, 0, -1)):  # LPUSHed: oldest last
            message = json.loads(raw)
            if message["headers"]["task"] == RELAY_BATCH_TASK:
                args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
                ids.extend(args[1])
        return ids

    yield sent
    broker.delete(queue)
    broker.close()


@pytest.fixture
def stack(test_redis: str, tmp_path: Path, settings: Any) -> Iterator[Stack]:
    """The product's processes as `make run` starts them, on the test database and
    ``test_redis`` with a private mail root: a test starts those it needs
    (``stack.smtp()``, ``stack.worker()``, ``stack.beat()``); all are stopped after it."""
    settings.MAILADMIN_MAILROOT = tmp_path / "mailroot"
    running = Stack(redis_url=test_redis, mailroot=tmp_path / "mailroot", log_dir=tmp_path)
    yield running
    running.stop()
