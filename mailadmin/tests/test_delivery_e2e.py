"""Mail through the whole product: SMTP worker -> spool -> Celery -> smart host sink.

Real processes (SMTP worker, Celery worker and beat, as `make run` starts them), the real
test database and Redis. Faults are real too: Redis flushed mid-run, the Celery worker
killed with SIGKILL mid-delivery. At the end every accepted message is delivered or
bounced, none lost, and duplicates stay within the one window no relay can close.
"""

from __future__ import annotations

import functools
import json
import re
import threading
from collections import Counter
from typing import Any

import pytest
import redis
from django.db import connection
from django.db.models import Count
from rest_framework.test import APIClient

from mailadmin.models import ConfigSnapshot, Message, MessageState
from mailadmin.tests.factories import configure, send
from mailadmin.tests.stack import Stack, until
from smtpworker.tests.sink import Sink

pytestmark = pytest.mark.django_db(transaction=True)


def all_done(acked: list[str]) -> bool:
    done = Message.objects.filter(
        queue_id__in=acked, state__in=[MessageState.DELIVERED, MessageState.BOUNCED]
    )
    return done.count() == len(acked)


def _more_than(sink: Sink, count: int) -> bool:
    return len(sink.messages) > count


def subjects(sink: Sink) -> Counter[str]:
    counter: Counter[str] = Counter()
    for message in sink.messages:
        for line in message.data.split(b"\r\n"):
            if line.startswith(b"Subject: "):
                counter[line[9:].decode()] += len(message.recipients)
    return counter


def test_mail_flows_from_smtp_to_the_smart_host(
    api: APIClient, stack: Stack, sink: Sink, django_capture_on_commit_callbacks: Any
) -> None:
    address = configure(api, sink, django_capture_on_commit_callbacks)
    stack.smtp(), stack.worker(), stack.beat()
    stack.wait_smtp_applied(ConfigSnapshot.objects.latest().pk)
    acked = send(address, 20, "flow")
    until(lambda: all_done(acked), timeout=30, interval=0.2)
    assert set(Message.objects.filter(queue_id__in=acked).values_list("state", flat=True)) == {
        "delivered"
    }
    got = subjects(sink)
    assert set(got) == {f"flow-{i}" for i in range(20)} and set(got.values()) == {1}

    def counted() -> tuple[int, int]:
        traffic = api.get("/api/v1/traffic/?server=Relay").json()
        return sum(b["accepted"] for b in traffic), sum(b["delivered"] for b in traffic)

    # The counters are written just after each message's state: wait for the last one.
    until(lambda: counted() == (20, 20), timeout=20, interval=0.2)


def test_a_flushed_redis_loses_nothing(
    api: APIClient,
    stack: Stack,
    sink: Sink,
    test_redis: str,
    django_capture_on_commit_callbacks: Any,
) -> None:
    address = configure(api, sink, django_capture_on_commit_callbacks)
    sink.mode = "451"  # hold everything in the queue first
    stack.smtp(), stack.worker(), stack.beat()
    stack.wait_smtp_applied(ConfigSnapshot.objects.latest().pk)
    acked = send(address, 15, "flush")
    until(lambda: Message.objects.filter(queue_id__in=acked).count() == 15, timeout=20)
    redis.Redis.from_url(test_redis).flushdb()  # config, status, dedup keys: all gone
    broker = redis.Redis.from_url(str(stack.env["CELERY_BROKER_URL"]))
    broker.flushdb()  # and every task message in flight
    broker.close()
    Message.objects.filter(queue_id__in=acked).update(next_attempt_at=None)  # due again now
    sink.mode = "accept"
    until(lambda: all_done(acked), timeout=40, interval=0.2)
    got = subjects(sink)
    assert set(got) == {f"flush-{i}" for i in range(15)}
    assert max(got.values()) == 1


def test_a_killed_celery_worker_loses_nothing_and_duplicates_little(
    api: APIClient, stack: Stack, sink: Sink, django_capture_on_commit_callbacks: Any
) -> None:
    address = configure(api, sink, django_capture_on_commit_callbacks)
    stack.smtp()
    worker = stack.worker()
    stack.beat()
    stack.wait_smtp_applied(ConfigSnapshot.objects.latest().pk)
    acked: list[str] = []
    sender = threading.Thread(target=lambda: acked.extend(send(address, 60, "kill")))
    sender.start()
    kills = 2
    for round_ in range(1, kills + 1):
        until(functools.partial(_more_than, sink, 10 * round_), timeout=30, interval=0.02)
        worker.kill()  # SIGKILL to the worker and its pool processes, mid-delivery
        worker = stack.worker(name=f"worker{round_}")
    sender.join(60)
    assert len(acked) == 60
    until(lambda: all_done(acked), timeout=60, interval=0.2)
    got = subjects(sink)
    assert set(got) == {f"kill-{i}" for i in range(60)}  # nothing lost
    duplicates = sum(n - 1 for n in got.values())
    # Only deliveries in flight at a kill may repeat: at most one per process per kill.
    assert duplicates <= 2 * kills
    states = Message.objects.filter(queue_id__in=acked).values("state").annotate(n=Count("id"))
    assert {row["state"]: row["n"] for row in states} == {"delivered": 60}


def test_celery_workers_keep_their_postgresql_connections(
    api: APIClient, stack: Stack, sink: Sink, django_capture_on_commit_callbacks: Any
) -> None:
    """One PostgreSQL server process per worker process, not one per task (CONN_MAX_AGE
    is honoured in Celery: mailadmin/celery.py)."""
    if connection.vendor != "postgresql":
        pytest.skip("connection reuse is a PostgreSQL setting (CONN_MAX_AGE 0 on SQLite)")
    address = configure(api, sink, django_capture_on_commit_callbacks)
    stack.smtp(), stack.worker(concurrency=1)
    stack.wait_smtp_applied(ConfigSnapshot.objects.latest().pk)

    def backends() -> set[tuple[int, str]]:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pid, backend_start::text FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            return set(cursor.fetchall())

    warm = send(address, 3, "warm")
    until(lambda: all_done(warm), timeout=30, interval=0.2)
    before = backends()
    for round_ in range(5):  # separate hand-off batches, so separate tasks
        acked = send(address, 2, f"reuse{round_}")
        until(functools.partial(all_done, acked), timeout=30, interval=0.1)
    assert backends() == before and len(before) >= 1


def test_one_message_can_be_followed_through_the_json_logs(
    api: APIClient, stack: Stack, sink: Sink, django_capture_on_commit_callbacks: Any
) -> None:
    """Issue 7: the queue id is on the SMTP worker's acceptance and on every line of the
    delivery run, so grepping the JSON logs for it tells the message's story."""
    address = configure(api, sink, django_capture_on_commit_callbacks)
    stack.env["LOG_FORMAT"] = "json"
    smtp, worker, _beat = stack.smtp(), stack.worker(), stack.beat()  # beat: the retry
    stack.wait_smtp_applied(ConfigSnapshot.objects.latest().pk)
    sink.mode = "451"
    (queue_id,) = send(address, 1, "followed")
    until(lambda: Message.objects.filter(queue_id=queue_id, attempts__gte=1).exists(), timeout=30)
    sink.mode = "accept"
    until(lambda: all_done([queue_id]), timeout=30, interval=0.2)

    def lines(process: Any) -> list[dict[str, Any]]:
        found = []
        for line in process.output().splitlines():
            if line.startswith("{") and queue_id in line:
                record = json.loads(line)
                if record.get("queue_id") == queue_id:
                    found.append(record)
        return found

    accepted = lines(smtp)
    assert [r["message"].split()[0] for r in accepted] == ["accepted"]
    assert accepted[0]["server"] == "Relay" and accepted[0]["client_ip"] == "127.0.0.1"
    until(lambda: any(r.get("code") == 250 for r in lines(worker)))
    # At INFO one line per recipient outcome, each carrying the id: the deferral, then the
    # delivery (the runs' own lines and their ends, "retry" and "delivered", are at DEBUG).
    assert [(r.get("code"), r["recipients"]) for r in lines(worker)] == [
        (451, ["user0@example.test"]),
        (250, ["user0@example.test"]),
    ]
    # Nor does Celery say at INFO that it received and ran each task (issue 12).
    routine = re.compile(r"Task \S+ received|Task \S+ succeeded in ")
    for line in worker.output().splitlines():
        assert not (line.startswith("{") and routine.match(json.loads(line)["message"])), line
