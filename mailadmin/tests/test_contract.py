"""The web side of the contract (``smtpworker.core.contract``): the models hold the
enumerations' values, and what a real worker node writes to Redis is what the selectors,
the metrics and the traffic collection read."""

from __future__ import annotations

import json
import smtplib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from django.db import models

from mailadmin import metrics
from mailadmin.models import domains, servers
from mailadmin.selectors.nodes import server_runtime, sessions_list, worker_statuses
from mailadmin.services.delivery.traffic import traffic_collect
from smtpworker.core import config, contract
from smtpworker.inbound.watcher import Follower
from smtpworker.tests.factories import free_port, server, site
from smtpworker.tests.harness import LiveNode

PAIRS: list[tuple[type[models.TextChoices], type[Any]]] = [
    (servers.ServerState, contract.ServerState),
    (servers.ListMode, contract.ListMode),
    (servers.OutboundAuth, contract.OutboundAuth),
    (servers.OutboundTls, contract.OutboundTls),
    (servers.LogPeriod, contract.LogPeriod),
    (domains.DomainKind, contract.DomainKind),
]


@pytest.mark.parametrize(("model", "shared"), PAIRS, ids=[m.__name__ for m, _ in PAIRS])
def test_the_models_choices_are_the_contracts_enumerations(
    model: type[models.TextChoices], shared: type[Any]
) -> None:
    # Same names, values and order: the migrations record the choices, the snapshot
    # carries the values, the worker validates them against the same enumeration.
    assert [(m.name, m.value) for m in model] == [(m.name, m.value) for m in shared]


def test_every_choice_the_snapshot_carries_is_checked_against_the_contract() -> None:
    assert config.SERVER_STATES == tuple(contract.ServerState)
    assert config.LIST_MODES == tuple(contract.ListMode)
    assert config.AUTH_METHODS == tuple(contract.OutboundAuth)
    assert config.TLS_LEVELS == tuple(contract.OutboundTls)
    assert config.DOMAIN_KINDS == tuple(contract.DomainKind)
    # Every enumerated setting of a server or a domain reaches the worker: its values are
    # one of the contract's enumerations (a new one belongs in the contract first).
    shared = {tuple(m.value for m in e) for _, e in PAIRS}
    checked = []
    for model in (servers.VirtualServer, domains.Domain):
        for field in model._meta.get_fields():
            choices = getattr(field, "choices", None)
            if choices:
                checked.append(f"{model.__name__}.{field.name}")
                assert tuple(value for value, _label in choices) in shared, checked[-1]
    assert len(checked) == 9, checked


@pytest.fixture
def node(tmp_path: Path, test_redis: str) -> Iterator[tuple[LiveNode, Follower]]:
    """A real worker node on its own loop, reporting to the suite's private Redis."""
    live = LiveNode(tmp_path, name="mx-1")
    follower = Follower(live.node, test_redis, tmp_path / "last-good.json", mac_key=b"key")
    yield live, follower
    live.run(follower.close())
    live.close()


def test_what_a_worker_writes_the_web_side_reads(
    node: tuple[LiveNode, Follower], test_redis: str
) -> None:
    live, follower = node
    port = free_port()
    live.apply(site(server("Relay", f"127.0.0.1:{port}")))
    client = smtplib.SMTP("127.0.0.1", port, timeout=10)
    try:
        client.ehlo("client.example.test")
        live.run(follower.publish_status())
    finally:
        client.quit()

    raw = redis.Redis.from_url(test_redis).get(contract.worker_key("mx-1"))
    assert raw is not None
    assert set(json.loads(raw)) == contract.WorkerReport.__required_keys__

    [status] = worker_statuses()
    assert set(status) == contract.WorkerStatus.__required_keys__
    assert status["node"] == "mx-1" and not status["stale"]

    runtime = server_runtime("Relay", [status])
    assert runtime["status"] == "listening"
    assert runtime["nodes"][0]["bindings"] == [f"127.0.0.1:{port}"]
    [session] = sessions_list([status])
    assert session["id"].startswith("mx-1:") and session["helo"] == "client.example.test"

    samples = {
        (family.name, tuple(sample.labels.values())): sample.value
        for family in metrics.worker_metrics([status], latest=0, now=time.time())
        for sample in family.samples
    }
    assert samples[("mailadmin_smtp_connections", ("mx-1", "Relay"))] == 1.0
    assert samples[("mailadmin_smtp_server_listening", ("mx-1", "Relay"))] == 1.0
    assert traffic_collect([status], {}) == {f"mx-1/{status['pid']}/Relay": {"connections": 1}}


def test_a_worker_that_stopped_reads_as_stale(node: tuple[LiveNode, Follower]) -> None:
    live, follower = node
    live.apply(site(server("Relay", f"127.0.0.1:{free_port()}")))
    live.run(follower.publish_status(final=True))
    [status] = worker_statuses()
    assert status["stopped"] and status["stale"]
    assert server_runtime("Relay", [status])["status"] == "unknown"
