"""/metrics: Prometheus text built at scrape time from the nodes' reports and the database."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import redis
from django.contrib.auth.models import User
from django.core.exceptions import ImproperlyConfigured
from django.test import Client
from django.urls import path
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from mailadmin import metrics
from mailadmin.metrics import metrics_view
from mailadmin.models import Message, MessageState, TrafficCounter
from mailadmin.services.config.versions import current_version
from mailadmin.services.delivery.traffic import traffic_add
from mailadmin.settings import _metrics_allow
from mailadmin.tests.factories import make_server
from mailadmin.urls import urlpatterns as site_urls
from smtpworker.core import contract

# Until the lead wires it into mailadmin.urls, this module is the URLconf of its tests.
urlpatterns = [path("metrics", metrics_view), *site_urls]
pytestmark = [pytest.mark.django_db, pytest.mark.urls(__name__)]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(autouse=True)
def workers(settings: Any) -> Iterator[redis.Redis]:
    """A Redis database of our own for the nodes' reports (13: no other test uses it)."""
    settings.REDIS_URL = settings.REDIS_URL.rsplit("/", 1)[0] + "/13"
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.flushdb()
    metrics.reset_caches()
    yield client
    client.flushdb()
    client.close()
    metrics.reset_caches()


def report(client: redis.Redis, node: str, **status: Any) -> None:
    client.set(contract.worker_key(node), json.dumps({"node": node, "pid": 1, **status}), ex=30)


def scrape(client: Client, **headers: Any) -> tuple[dict[str, Any], Samples]:
    response = client.get("/metrics", **headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    text = response.content.decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in families.values()
        for s in family.samples
    }
    return families, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def message(server: str, state: str, *, age: float, latency: float | None = None) -> Message:
    now = timezone.now()
    return Message.objects.create(
        queue_id=f"Q{Message.objects.count() + 1:06d}",
        server_name=server,
        sender="a@corp.test",
        received_at=now - timedelta(seconds=age),
        state=state,
        finished_at=None if latency is None else now - timedelta(seconds=age - latency),
    )


def test_it_exports_the_nodes_reports_and_the_queue(
    api: APIClient, workers: redis.Redis, operator_api: APIClient
) -> None:
    make_server(api, name="Relay", bindings=["127.0.0.2:2525"])
    make_server(api, name="Quiet", bindings=["127.0.0.3:2525"], default_domain="quiet.example")
    latest = current_version()
    now = time.time()
    report(
        workers,
        "n1",
        applied_version=latest - 1,
        heartbeat=now - 1,
        servers={
            "Relay": {
                "listening": True,
                "sessions": 3,
                "error": "",
                "counters": {
                    "connections": 40,
                    "accepted": 25,
                    "rejected_rcpt_550_5.7.1": 4,
                    "rejected_size": 1,
                    "rejected_data_5.3.4": 2,
                    "rejected_connect_554": 6,
                    "rejected_weird": 1,
                    "auth_failures": 5,
                },
            },
            "Quiet": {"listening": False, "sessions": 0, "error": "bind: in use", "counters": {}},
        },
    )
    report(
        workers,
        "n2",
        applied_version=latest,
        heartbeat=now - 60,
        servers={"Relay": {"listening": True, "sessions": 7, "counters": {"accepted": 3}}},
    )
    # n3 runs a number this database never made (another database's, on the same Redis).
    report(workers, "n3", applied_version=latest + 5, heartbeat=now - 1, servers={})
    for state in ("queued", "queued", "retry", "suspended"):
        message("Relay", state, age=600)
    message("Elsewhere", "active", age=30)  # a server that no longer exists
    message("Relay", MessageState.DELIVERED, age=100, latency=60)
    message("Relay", MessageState.DELIVERED, age=100, latency=2)
    message("Relay", MessageState.DELIVERED, age=100, latency=4000)
    message("Relay", MessageState.DELIVERED, age=3 * 86400, latency=1)  # outside the window
    message("Relay", MessageState.BOUNCED, age=100, latency=5)  # not a delivery
    traffic_add("Relay", delivered=2, deferred=3)
    traffic_add("Quiet", bounced=1)
    TrafficCounter.objects.create(
        server_name="Relay", minute=timezone.now() - timedelta(days=2), delivered=5, bounced=4
    )

    families, samples = scrape(operator_api)

    n1 = {"node": "n1", "server": "Relay"}
    assert value(samples, "mailadmin_smtp_connections_total", **n1) == 40
    assert value(samples, "mailadmin_smtp_messages_accepted_total", **n1) == 25
    assert value(samples, "mailadmin_smtp_sessions", **n1) == 3
    assert value(samples, "mailadmin_smtp_auth_failures_total", **n1) == 5
    rejected = {
        labels["reason"]: v
        for (name, key), v in samples.items()
        if name == "mailadmin_smtp_rejected_total"
        and (labels := dict(key))["node"] == "n1"
        and labels["server"] == "Relay"
    }
    assert rejected == {
        "relay denied": 4,
        "message too big": 3,
        "connection denied": 6,
        "authentication failed": 5,
        "other": 1,
    }
    assert value(samples, "mailadmin_smtp_server_listening", **n1) == 1
    assert value(samples, "mailadmin_smtp_server_error", **n1) == 0
    quiet = {"node": "n1", "server": "Quiet"}
    assert value(samples, "mailadmin_smtp_server_listening", **quiet) == 0
    assert value(samples, "mailadmin_smtp_server_error", **quiet) == 1
    # n2 stopped reporting a minute ago: stale, counters kept, nothing open.
    n2 = {"node": "n2", "server": "Relay"}
    assert value(samples, "mailadmin_smtp_messages_accepted_total", **n2) == 3
    assert value(samples, "mailadmin_smtp_sessions", **n2) == 0
    assert value(samples, "mailadmin_smtp_server_listening", **n2) == 0
    assert value(samples, "mailadmin_node_stale", node="n2") == 1
    assert value(samples, "mailadmin_node_stale", node="n1") == 0
    assert 59 <= value(samples, "mailadmin_node_heartbeat_age_seconds", node="n2") < 120
    assert value(samples, "mailadmin_node_config_version", node="n1") == latest - 1
    assert value(samples, "mailadmin_node_config_behind", node="n1") == 1
    assert value(samples, "mailadmin_node_config_behind", node="n2") == 0
    assert value(samples, "mailadmin_node_config_behind", node="n3") == 1
    assert value(samples, "mailadmin_config_version") == latest

    queue = {
        (dict(key)["server"], dict(key)["state"]): v
        for (name, key), v in samples.items()
        if name == "mailadmin_queue_messages"
    }
    assert queue[("Relay", "queued")] == 2 and queue[("Relay", "retry")] == 1
    assert queue[("Relay", "suspended")] == 1 and queue[("Relay", "active")] == 0
    assert queue[("Elsewhere", "active")] == 1
    assert queue[("Quiet", "queued")] == 0  # every server, every open state
    assert 599 <= value(samples, "mailadmin_queue_oldest_age_seconds", server="Relay") < 700
    assert value(samples, "mailadmin_queue_oldest_age_seconds", server="Quiet") == 0

    assert value(samples, "mailadmin_messages_delivered_total", server="Relay") == 7
    assert value(samples, "mailadmin_messages_deferred_total", server="Relay") == 3
    assert value(samples, "mailadmin_messages_bounced_total", server="Relay") == 4
    assert value(samples, "mailadmin_messages_bounced_total", server="Quiet") == 1
    assert families["mailadmin_messages_delivered"].type == "counter"

    latency = families["mailadmin_delivery_latency_seconds"]
    assert latency.type == "histogram"
    buckets = {
        s.labels["le"]: s.value
        for s in latency.samples
        if s.name.endswith("_bucket") and s.labels["server"] == "Relay"
    }
    assert buckets["1.0"] == 0 and buckets["5.0"] == 1 and buckets["30.0"] == 1
    assert buckets["60.0"] == 2 and buckets["3600.0"] == 2 and buckets["7200.0"] == 3
    assert buckets["+Inf"] == 3
    assert list(buckets.values()) == sorted(buckets.values())  # cumulative
    assert value(samples, "mailadmin_delivery_latency_seconds_gcount", server="Relay") == 3
    total = value(samples, "mailadmin_delivery_latency_seconds_gsum", server="Relay")
    assert total == pytest.approx(4062, abs=0.01)


def test_the_traffic_totals_stay_right_from_scrape_to_scrape(
    operator_api: APIClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    long_ago = timezone.now() - timedelta(days=30)
    TrafficCounter.objects.create(server_name="Relay", minute=long_ago, delivered=10)
    _families, first = scrape(operator_api)
    assert value(first, "mailadmin_messages_delivered_total", server="Relay") == 10
    traffic_add("Relay", delivered=1, deferred=2)
    _families, second = scrape(operator_api)  # sealed minutes are not counted twice
    assert value(second, "mailadmin_messages_delivered_total", server="Relay") == 11
    # Time passes: this minute becomes final and moves from the live sums to the sealed.
    later = timezone.now() + timedelta(minutes=metrics.SEAL_MINUTES + 5)
    monkeypatch.setattr(timezone, "now", lambda: later)  # as metrics sees it
    for _ in range(2):
        _families, third = scrape(operator_api)
        assert value(third, "mailadmin_messages_delivered_total", server="Relay") == 11
        assert value(third, "mailadmin_messages_deferred_total", server="Relay") == 2


def test_it_speaks_openmetrics_to_a_scraper_that_asks(operator_api: APIClient) -> None:
    response = operator_api.get(
        "/metrics", HTTP_ACCEPT="application/openmetrics-text; version=1.0.0"
    )
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/openmetrics-text")
    assert response.content.endswith(b"# EOF\n")
    assert response["Cache-Control"] == "no-store"


def test_it_refuses_anonymous_and_plain_users(client: Client, db: None) -> None:
    response = client.get("/metrics")
    assert response.status_code == 403
    assert b"mailadmin_" not in response.content  # no metric leaks into the refusal
    User.objects.create_user("nobody", password="nobody-password")
    client.login(username="nobody", password="nobody-password")
    assert client.get("/metrics").status_code == 403
    assert client.post("/metrics").status_code == 405


def test_the_bearer_token_opens_it(client: Client, settings: Any) -> None:
    settings.MAILADMIN_METRICS_TOKEN = "s3cret-scraper-token"
    scrape(client, HTTP_AUTHORIZATION="Bearer s3cret-scraper-token")
    for wrong in ("Bearer s3cret", "Bearer ", "Basic s3cret-scraper-token", ""):
        assert client.get("/metrics", HTTP_AUTHORIZATION=wrong).status_code == 403
    settings.MAILADMIN_METRICS_TOKEN = ""  # empty: no token access at all
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer ").status_code == 403


def test_listed_addresses_may_scrape(client: Client, settings: Any) -> None:
    settings.MAILADMIN_METRICS_ALLOW = _metrics_allow(["10.1.0.0/255.255.0.0", "::1"])
    assert settings.MAILADMIN_METRICS_ALLOW == ["10.1.0.0/16", "::1"]
    scrape(client, REMOTE_ADDR="10.1.2.3")
    scrape(client, REMOTE_ADDR="::1")
    scrape(client, REMOTE_ADDR="::ffff:10.1.9.9")  # IPv4-mapped counts as IPv4
    for outside in ("10.2.0.1", "127.0.0.1", "", "not-an-ip"):
        assert client.get("/metrics", REMOTE_ADDR=outside).status_code == 403
    settings.MAILADMIN_METRICS_ALLOW = []
    assert client.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 403


def test_the_allow_list_takes_only_ips_and_networks() -> None:
    assert _metrics_allow([]) == []
    with pytest.raises(ImproperlyConfigured, match="domain"):
        _metrics_allow(["monitoring.example.com"])
    with pytest.raises(ImproperlyConfigured, match="host bits"):
        _metrics_allow(["10.1.2.3/16"])


def test_readers_may_scrape_with_a_session_or_an_api_token(
    operator_user: User, admin_user: User, client: Client
) -> None:
    client.force_login(operator_user)
    scrape(client)
    client.logout()
    key = Token.objects.create(user=operator_user).key
    scrape(client, HTTP_AUTHORIZATION=f"Token {key}")
    assert client.get("/metrics", HTTP_AUTHORIZATION="Token nope").status_code == 403
    operator_user.is_active = False
    operator_user.save()
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"Token {key}").status_code == 403
    client.force_login(admin_user)
    scrape(client)


def test_metrics_lets_in_exactly_whom_the_api_lets_in(
    operator_user: User, admin_user: User, client: Client
) -> None:
    """One rule decides who may read: the API's authentication (REST_FRAMEWORK's classes)
    and ``mailadmin.access.can_read``. Each way of presenting credentials gets in to both
    GET /api/v1/servers/ and /metrics, or to neither."""
    operator = Token.objects.create(user=operator_user).key
    admin = Token.objects.create(user=admin_user).key
    nobody = Token.objects.create(user=User.objects.create_user("nobody")).key
    gone_user = User.objects.create_user("gone", is_active=False)
    gone_user.groups.set(operator_user.groups.all())
    gone = Token.objects.create(user=gone_user).key
    cases = {
        f"Token {operator}": True,
        f"token {admin}": True,
        f"Token  {operator}": True,
        f"Token\t{operator}": True,  # any whitespace separates, as in DRF's header parsing
        f"Token {operator} extra": False,
        "Token nope": False,
        "Token ": False,
        f"Token {nobody}": False,
        f"Token {gone}": False,
        f"Bearer {operator}": False,
    }
    for header, admitted in cases.items():
        api = client.get("/api/v1/servers/", HTTP_AUTHORIZATION=header).status_code
        scraped = client.get("/metrics", HTTP_AUTHORIZATION=header).status_code
        assert (api == 200, scraped == 200) == (admitted, admitted), (header, api, scraped)
    client.force_login(operator_user)
    assert client.get("/api/v1/servers/").status_code == 200
    assert client.get("/metrics").status_code == 200
    # A session does not rescue a token the API refuses (the API answers 401 to it).
    assert client.get("/api/v1/servers/", HTTP_AUTHORIZATION="Token nope").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Token nope").status_code == 403


def test_redis_down_still_answers_with_the_database_part(
    operator_api: APIClient, settings: Any
) -> None:
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    message("Relay", "queued", age=5)
    families, samples = scrape(operator_api)
    assert value(samples, "mailadmin_queue_messages", server="Relay", state="queued") == 1
    assert not families["mailadmin_smtp_connections"].samples
