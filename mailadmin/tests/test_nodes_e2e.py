"""Two worker nodes on one machine, as separate processes with their own node names.

Node A runs an SMTP worker and two Celery workers, node B an SMTP worker and one Celery
worker; one beat serves both. Each virtual server is assigned to one node and bound to its
own loopback address. What each node accepts is delivered from its own queue; a change to
one server reaches only that server's node; an outbound connection limit holds across the
two delivery workers of a node; a node killed with SIGKILL shows as stale, and what it had
accepted is delivered once it is back.
"""

from __future__ import annotations

import smtplib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from rest_framework.test import APIClient

from mailadmin.models import ConfigSnapshot, Message, MessageState, VirtualServer
from mailadmin.tests.factories import configure, send
from mailadmin.tests.stack import Stack, until
from smtpworker.core.contract import delivery_queue
from smtpworker.tests.factories import free_port
from smtpworker.tests.sink import Sink

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def nodes(test_redis: str, tmp_path: Path, settings: Any) -> Iterator[tuple[Stack, Stack]]:
    settings.MAILADMIN_MAILROOT = tmp_path / "mailroot"
    stacks = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        stacks.append(
            Stack(
                redis_url=test_redis,
                mailroot=tmp_path / "mailroot",
                log_dir=tmp_path / name,
                node=f"node-{name}",
            )
        )
    yield stacks[0], stacks[1]
    for stack in stacks:
        stack.stop()


def delivered(acked: list[str]) -> bool:
    done = Message.objects.filter(queue_id__in=acked, state=MessageState.DELIVERED)
    return done.count() == len(acked)


def status_of(api: APIClient, node: str) -> dict[str, Any]:
    workers = api.get("/api/v1/workers/").json()
    rows = workers["results"] if isinstance(workers, dict) else workers
    return next(row for row in rows if row["node"] == node)


def refused(host: str, port: int) -> bool:
    try:
        with smtplib.SMTP(host, port, timeout=2):
            return False
    except OSError:
        return True


def test_two_nodes_serve_and_deliver_their_own_servers(
    api: APIClient,
    nodes: tuple[Stack, Stack],
    sink: Sink,
    test_redis: str,
    django_capture_on_commit_callbacks: Any,
) -> None:
    a, b = nodes
    capture = django_capture_on_commit_callbacks
    # Server A: at most 2 outbound connections in all, whatever the number of workers.
    _, port_a = configure(
        api, sink, capture, name="Alpha", node=a.node, outbound={"connection_limit": 2}
    )
    _, port_b = configure(api, sink, capture, name="Bravo", node=b.node, host="127.0.0.3")
    alpha = VirtualServer.objects.get(name="Alpha").pk
    a.smtp(), a.worker(concurrency=2), a.worker(name="worker2", concurrency=2), a.beat()
    b.smtp(), b.worker(concurrency=1)
    version = ConfigSnapshot.objects.latest().pk
    status_a, status_b = a.wait_smtp_applied(version), b.wait_smtp_applied(version)

    # Each node runs only the server assigned to it.
    assert set(status_a["servers"]) == {"Alpha"} and set(status_b["servers"]) == {"Bravo"}
    assert refused("127.0.0.3", port_a) and refused("127.0.0.2", port_b)

    # What each node accepted goes through its own delivery queue and arrives once.
    sink.data_delay = 0.3
    acked_a = send(("127.0.0.2", port_a), 12, "alpha")
    acked_b = send(("127.0.0.3", port_b), 4, "bravo")
    until(lambda: delivered(acked_a + acked_b), timeout=60, interval=0.2)
    assert set(Message.objects.filter(queue_id__in=acked_a).values_list("node", flat=True)) == {
        a.node
    }
    assert set(Message.objects.filter(queue_id__in=acked_b).values_list("node", flat=True)) == {
        b.node
    }
    assert len(sink.messages) == 16
    # Four delivery processes on node A, and never more than Alpha's two connections at once
    # (Bravo's single worker process adds at most one more).
    assert 2 <= sink.peak <= 3
    sink.data_delay = 0.0

    # A change to Alpha (a new port) reaches node A; node B's listener never moves.
    new_port = free_port("127.0.0.2")
    with capture(execute=True):
        response = api.patch(
            f"/api/v1/servers/{alpha}/", {"bindings": [f"127.0.0.2:{new_port}"]}, format="json"
        )
    assert response.status_code == 200, response.content
    version = ConfigSnapshot.objects.latest().pk
    status_a = a.wait_smtp_applied(version)
    assert status_a["servers"]["Alpha"]["bindings"] == [f"127.0.0.2:{new_port}"]
    assert until(lambda: refused("127.0.0.2", port_a), timeout=5)
    status_b = b.wait_smtp_applied(version)
    assert set(status_b["servers"]) == {"Bravo"}
    assert status_b["servers"]["Bravo"]["bindings"] == [f"127.0.0.3:{port_b}"]

    # Node B dies (SMTP worker and Celery worker, SIGKILL) with mail accepted but not sent:
    # it shows as stale, its mail waits in its own queue, and goes once B is back.
    sink.mode = "451"
    held = send(("127.0.0.3", port_b), 5, "held")
    until(lambda: Message.objects.filter(queue_id__in=held).count() == 5, timeout=20)
    b.processes["smtp"].kill()
    b.processes["worker"].kill()
    sink.mode = "accept"
    Message.objects.filter(queue_id__in=held).update(next_attempt_at=None)  # due now
    until(lambda: status_of(api, b.node)["stale"], timeout=40, interval=0.5)
    time.sleep(3)  # sweeps run (every second); node A's workers must not take B's mail
    assert not Message.objects.filter(queue_id__in=held, state=MessageState.DELIVERED).exists()
    queued = redis.Redis.from_url(str(a.env["CELERY_BROKER_URL"])).llen(delivery_queue(b.node))
    assert queued >= 1
    b.smtp(), b.worker(name="worker-again", concurrency=1)
    until(lambda: delivered(held), timeout=60, interval=0.2)
    assert not status_of(api, b.node)["stale"]
    held_subjects = [m for m in sink.messages if b"Subject: held-" in m.data]
    assert len(held_subjects) == 5
