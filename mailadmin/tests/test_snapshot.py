"""The versioned snapshot the workers consume, and its delivery through Redis."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis
from django.conf import settings
from rest_framework.test import APIClient

from mailadmin.models import ConfigSnapshot
from mailadmin.services.config.versions import (
    config_republish,
    published_body,
)
from smtpworker.core import configmac
from smtpworker.core.config import SCHEMA, ConfigFormatError, dump_site, load_site, to_data
from smtpworker.core.contract import CONFIG_BODY_KEY, CONFIG_CHANNEL
from smtpworker.core.grammar import Binding

pytestmark = pytest.mark.django_db


@pytest.fixture
def redis_client() -> Any:
    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        client.ping()
    except redis.RedisError as exc:  # make test always provides one
        pytest.fail(f"no Redis at {settings.REDIS_URL}: {exc}")
    yield client
    client.close()


def held_body(redis_client: Any) -> dict[str, Any]:
    """The body Redis holds, its signature checked as a worker checks it."""
    key = configmac.body_key(settings.MAILADMIN_ENCRYPTION_KEY)
    return dict(json.loads(configmac.verify(key, redis_client.get(CONFIG_BODY_KEY))))


def test_the_snapshot_is_plain_and_loads_in_the_worker(
    api: APIClient, typical_site: dict[str, Any]
) -> None:
    api.put("/api/v1/config/", typical_site, format="json")
    snapshot = ConfigSnapshot.objects.latest()
    site = load_site(published_body(snapshot))
    assert site.schema == SCHEMA and site.version == snapshot.pk
    corp = site.server("CorpServer")
    assert corp is not None
    assert corp.bindings == (Binding("127.0.0.2", 2525),)
    assert corp.default_domain == "bogus1"
    assert corp.messages.max_message_size == 2048 * 1024
    assert corp.delivery.retry_minutes == (15, 30, 60, 240)
    internal = site.server("InternalRelay")
    assert internal is not None
    assert [str(e) for e in internal.relay.entries] == ["127.0.0.5", "10.1.0.0/16"]
    (alice,) = site.users
    assert alice.servers == ("CorpServer",) and alice.may_use("CorpServer")
    assert not alice.may_use("InternetRelay")
    assert "change-me-alice" not in published_body(snapshot)
    # canonical: the same configuration always serialises to the same text
    assert dump_site(load_site(published_body(snapshot))) == published_body(snapshot)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b.update(schema=SCHEMA + 1), "schema"),
        (lambda b: b["servers"][0].update(state="exploded"), "state"),
        (lambda b: b["servers"][0].update(connection_timeout="600"), "expected int"),
        (lambda b: b["servers"][0]["relay"].update(allow_authenticated=1), "expected bool"),
        (lambda b: b["servers"][0].update(bindings=["nonsense"]), r"bindings\[0\]"),
        (lambda b: b["servers"][0].pop("relay"), "missing relay"),
    ],
)
def test_the_worker_refuses_a_snapshot_it_does_not_understand(
    api: APIClient, typical_site: dict[str, Any], mutate: Any, message: str
) -> None:
    api.put("/api/v1/config/", typical_site, format="json")
    body = json.loads(published_body(ConfigSnapshot.objects.latest()))
    mutate(body)
    with pytest.raises(ConfigFormatError, match=message):
        load_site(body)


def test_a_commit_pushes_the_version_to_redis(
    api: APIClient, redis_client: Any, django_capture_on_commit_callbacks: Any
) -> None:
    pubsub = redis_client.pubsub()
    pubsub.subscribe(CONFIG_CHANNEL)
    pubsub.get_message(timeout=1)  # subscription confirmation
    with django_capture_on_commit_callbacks(execute=True):
        api.post("/api/v1/servers/", {"name": "Pushed", "default_domain": "p.test"}, format="json")
    version = ConfigSnapshot.objects.latest().pk
    held = held_body(redis_client)
    assert held["version"] == version
    assert [s["name"] for s in held["servers"]] == ["Pushed"]
    message = pubsub.get_message(timeout=2)
    assert message and message["data"] == str(version).encode()
    pubsub.close()


def test_a_flushed_redis_is_refilled_by_the_republish_task(
    api: APIClient, redis_client: Any, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        api.post("/api/v1/servers/", {"name": "Kept", "default_domain": "k.test"}, format="json")
    redis_client.delete(CONFIG_BODY_KEY)
    version = config_republish()
    assert version == ConfigSnapshot.objects.latest().pk
    assert held_body(redis_client)["version"] == version


def test_secrets_travel_sealed(api: APIClient) -> None:
    server = api.post(
        "/api/v1/servers/", {"name": "S", "default_domain": "s.test"}, format="json"
    ).json()
    api.patch(
        f"/api/v1/servers/{server['id']}/",
        {
            "delivery": {
                "outbound": {"auth": {"method": "basic", "username": "u", "password": "hunter2"}}
            }
        },
        format="json",
    )
    body = published_body(ConfigSnapshot.objects.latest())
    assert "hunter2" not in body
    sealed = load_site(body).servers[0].delivery.outbound.security.password
    assert sealed.startswith("enc:v1:")


def test_to_data_round_trips_every_field(api: APIClient, typical_site: dict[str, Any]) -> None:
    api.put("/api/v1/config/", typical_site, format="json")
    body = json.loads(published_body(ConfigSnapshot.objects.latest()))
    assert to_data(load_site(body)) == body
