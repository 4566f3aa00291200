"""Delivery runs of several messages at once (the relay_batch task), against real sinks.

As in test_delivery, the service and the Celery task functions are called in-process;
the spool, database, Redis and the SMTP sinks are real. The end-to-end tests
(test_delivery_e2e, test_worker_e2e) drive the same path through the SMTP worker's
hand-off and a real Celery worker.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings as conf
from django.utils import timezone
from rest_framework.test import APIClient

from mailadmin.celery import app as celery_app
from mailadmin.models import (
    Attempt,
    Message,
    MessageState,
    Recipient,
    RecipientState,
    TrafficCounter,
)
from mailadmin.services.delivery import sweep as sweep_services
from mailadmin.services.delivery.enqueue import relays_enqueue
from mailadmin.services.delivery.queue import spool_for
from mailadmin.services.delivery.runs import messages_deliver
from mailadmin.tasks import relay_batch, relay_message
from mailadmin.tests.factories import make_relay, spool
from mailadmin.tests.stack import until
from smtpworker.core.contract import delivery_queue
from smtpworker.core.handoff import Handoff
from smtpworker.core.spool import new_queue_id
from smtpworker.tests.sink import Sink

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("mailroot")]


def spooled(sender: str, *recipients: str, server: str = "Relay", at: float | None = None) -> str:
    """A message in the spool only, as the SMTP worker leaves it before its hand-off."""
    return spool(sender, *recipients, server=server, at=at, record=False)


def state(queue_id: str) -> str:
    return Message.objects.get(queue_id=queue_id).state


def traffic() -> dict[str, int]:
    rows = TrafficCounter.objects.filter(server_name="Relay")
    return {f: sum(getattr(r, f) for r in rows) for f in ("accepted", "delivered", "deferred")}


def test_a_batch_records_new_messages_and_sends_them_over_one_connection(
    sink: Sink, relay: str
) -> None:
    ids = [spooled("a@corp.test", f"u{i}@example.test") for i in range(5)]
    assert relay_batch("Relay", ids, "n1") == {"delivered": 5}
    received = sink.wait_for(5)
    assert [m.recipients for m in received] == [(f"u{i}@example.test",) for i in range(5)]
    assert len({m.peer for m in received}) == 1  # one TCP connection for the batch
    messages = Message.objects.filter(queue_id__in=ids)
    assert {(m.state, m.node, m.lease_until) for m in messages} == {("delivered", "n1", None)}
    assert all(m.finished_at is not None and m.subject == "Quarterly numbers" for m in messages)
    assert Attempt.objects.filter(message__in=messages, code=250).count() == 5
    assert spool_for("Relay").ids() == []
    assert traffic() == {"accepted": 5, "delivered": 5, "deferred": 0}


def test_a_batch_of_due_not_due_delivered_and_unknown_messages(sink: Sink, relay: str) -> None:
    new = spooled("a@corp.test", "new@example.test")
    due = spool("a@corp.test", "due@example.test")  # recorded, never run
    later = spool("a@corp.test", "later@example.test")
    Message.objects.filter(queue_id=later).update(
        state=MessageState.RETRY, next_attempt_at=timezone.now() + timedelta(hours=1)
    )
    done = spool("a@corp.test", "done@example.test")
    assert messages_deliver(server_name="Relay", queue_ids=[done]) == {done: "delivered"}
    held = spool("a@corp.test", "held@example.test")  # another run holds it
    Message.objects.filter(queue_id=held).update(
        state=MessageState.ACTIVE, lease_until=timezone.now() + timedelta(minutes=5)
    )
    abandoned = spool("a@corp.test", "abandoned@example.test")  # its run died
    Message.objects.filter(queue_id=abandoned).update(
        state=MessageState.ACTIVE, lease_until=timezone.now() - timedelta(seconds=1)
    )
    unknown = new_queue_id()  # neither recorded nor spooled
    sink.reset()

    ids = [new, due, later, done, held, abandoned, unknown]
    assert messages_deliver(server_name="Relay", queue_ids=ids) == {
        new: "delivered",
        due: "delivered",
        later: "not due",
        done: "not due",
        held: "not due",
        abandoned: "delivered",
        unknown: "missing",
    }
    got = sorted(r for m in sink.wait_for(3) for r in m.recipients)
    assert got == ["abandoned@example.test", "due@example.test", "new@example.test"]
    assert (state(later), state(held)) == (MessageState.RETRY, MessageState.ACTIVE)
    assert not Message.objects.filter(queue_id=unknown).exists()


def test_a_batch_run_twice_sends_nothing_twice(sink: Sink, relay: str) -> None:
    ids = [spooled("a@corp.test", f"u{i}@example.test") for i in range(3)]
    assert relay_batch("Relay", ids, "n1") == {"delivered": 3}
    # The broker hands the same task out again (a worker lost before its late ack).
    assert relay_batch("Relay", ids, "n1") == {"not due": 3}
    assert len(sink.wait_for(3)) == 3
    time.sleep(0.2)
    assert len(sink.messages) == 3
    assert traffic() == {"accepted": 3, "delivered": 3, "deferred": 0}
    assert Message.objects.count() == 3


def test_a_missing_spool_file_does_not_stop_the_rest_of_the_batch(sink: Sink, relay: str) -> None:
    first, vanished, last = (spooled("a@corp.test", f"u{i}@example.test") for i in range(3))
    recorded = spool("a@corp.test", "gone@example.test")
    for queue_id in (vanished, recorded):
        spool_for("Relay").remove(queue_id)  # lost outside the queue
    results = messages_deliver(
        server_name="Relay", queue_ids=[first, vanished, recorded, last], node="n1"
    )
    assert results == {
        first: "delivered",
        vanished: "missing",
        recorded: "missing",
        last: "delivered",
    }
    assert [m.recipients for m in sink.wait_for(2)] == [("u0@example.test",), ("u2@example.test",)]
    assert not Message.objects.filter(queue_id=vanished).exists()
    gone = Message.objects.get(queue_id=recorded)
    assert gone.state == MessageState.DELETED and "spool file missing" in gone.last_error


def test_each_message_of_a_batch_concludes_on_its_own(
    api: APIClient, sink: Sink, mailroot: Path
) -> None:
    make_relay(api, delivery={"smart_host": sink.smart_host, "retry_minutes": [10, 20, 30, 40]})
    sink.rcpt_replies = {
        "busy@example.test": "451 4.2.1 Mailbox busy",
        "gone@example.test": "550 5.1.1 No such user",
    }
    ok = spooled("a@corp.test", "ok@example.test")
    partly = spooled("a@corp.test", "ok2@example.test", "busy@example.test")
    bounced = spooled("a@corp.test", "gone@example.test")
    results = messages_deliver(server_name="Relay", queue_ids=[ok, partly, bounced], node="n1")
    assert results == {ok: "delivered", partly: "retry", bounced: "bounced"}
    message = Message.objects.get(queue_id=partly)
    assert message.state == MessageState.RETRY and message.attempts == 1
    assert message.last_error.startswith("4.2.1")
    by_address = dict(Recipient.objects.values_list("address", "state"))
    assert by_address["ok2@example.test"] == RecipientState.DELIVERED
    assert by_address["busy@example.test"] == RecipientState.PENDING
    assert Message.objects.filter(is_report=True).count() == 1  # the NDR for gone@
    assert traffic() == {"accepted": 3, "delivered": 1, "deferred": 1}

    # The retry sends only the recipient still pending; in the same batch, the NDR goes
    # to a local domain (the Drop directory) and the rest to the smart host.
    sink.rcpt_replies = {}
    Message.objects.filter(queue_id=partly).update(next_attempt_at=None)
    sink.reset()
    ndr = Message.objects.get(is_report=True).queue_id
    assert messages_deliver(server_name="Relay", queue_ids=[partly, ndr]) == {
        partly: "delivered",
        ndr: "delivered",
    }
    assert [m.recipients for m in sink.wait_for(1)] == [("busy@example.test",)]
    assert (mailroot / "Relay" / "Drop" / f"{ndr}.eml").exists()


def test_an_unreachable_host_is_waited_for_once_per_batch(
    sink: Sink, settings: Any, relay: str
) -> None:
    sink.mode = "stall"  # accepts the connection, never greets
    ids = [spooled("a@corp.test", f"u{i}@example.test") for i in range(4)]
    started = time.monotonic()
    results = messages_deliver(server_name="Relay", queue_ids=ids, node="n1")
    elapsed = time.monotonic() - started
    assert results == {queue_id: "retry" for queue_id in ids}
    # One greeting time-out (MAILADMIN_OUTBOUND_TIMEOUT_CAP), not one per message.
    assert elapsed < 2 * settings.MAILADMIN_OUTBOUND_TIMEOUT_CAP
    ((code, reply),) = set(Recipient.objects.values_list("last_code", "last_reply"))
    assert code is not None and 400 <= code < 500 and "timed out" in reply
    assert Attempt.objects.count() == 4  # each message's attempt is on record
    assert set(Message.objects.values_list("attempts", flat=True)) == {1}


def test_the_sweep_enqueues_due_messages_in_batches(relay: str) -> None:
    due = [spool("a@corp.test", f"u{i}@example.test") for i in range(3)]
    Message.objects.filter(queue_id__in=due).update(
        state=MessageState.RETRY, next_attempt_at=timezone.now(), node="n1"
    )
    fresh = spool("a@corp.test", "fresh@example.test")  # its hand-off is on its way
    sent: list[tuple[str, list[str], str]] = []
    result = sweep_services.messages_sweep(enqueue=lambda s, ids, n: sent.append((s, ids, n)))
    assert result == {"due": 3}
    assert sorted(sent[0][1]) == sorted(due) and sent[0][::2] == ("Relay", "n1")
    assert fresh not in sent[0][1]


def test_a_running_task_lets_its_messages_be_enqueued_again(
    sink: Sink, test_redis: str, relay: str
) -> None:
    # A message deferred soon (its next hop full: again in 5 s) must not wait out the
    # minute-long mark that keeps the sweep from sending a second task for it.
    sink.mode = "451"
    queue_id = spool("a@corp.test", "u@example.test")
    marked = redis.Redis.from_url(test_redis)
    relays_enqueue("Relay", [queue_id], "n1")
    assert marked.exists(f"mailadmin:enqueued:{queue_id}")
    relay_batch("Relay", [queue_id], "n1")  # the task's body, as a worker runs it
    assert not marked.exists(f"mailadmin:enqueued:{queue_id}")
    marked.close()
    broker = redis.Redis.from_url(str(celery_app.conf.broker_url))
    broker.delete(delivery_queue("n1"))  # the task sent above: no worker here takes it
    broker.close()


def test_the_spool_sweep_waits_for_the_hand_off_and_cleans_up_finished_messages(
    mailroot: Path, relay: str
) -> None:
    young = spooled("a@corp.test", "young@example.test")
    orphan = spooled("a@corp.test", "old@example.test", at=time.time() - 60)
    finished = spool("a@corp.test", "done@example.test")
    Message.objects.filter(queue_id=finished).update(state=MessageState.DELIVERED)
    queued = spool("a@corp.test", "queued@example.test")
    sent: list[tuple[str, list[str], str]] = []
    found = sweep_services.spool_sweep(
        node="n1", enqueue=lambda s, ids, n: sent.append((s, ids, n))
    )
    assert found == 1 and sent == [("Relay", [orphan], "n1")]
    # A finished message's leftover files go; a queued one's stay; the young one waits.
    assert sorted(spool_for("Relay").ids()) == sorted([young, orphan, queued])


def test_a_node_sweeps_only_the_spools_of_its_own_servers(api: APIClient, relay: str) -> None:
    # Two nodes on one machine share the mail root: node n2's old orphan is n2's to send.
    make_relay(
        api, name="Other", node="n2", bindings=["127.0.0.3:2525"], default_domain="other.test"
    )
    mine = spooled("a@corp.test", "old@example.test", at=time.time() - 60)
    theirs = spooled("a@other.test", "old@example.test", server="Other", at=time.time() - 60)
    sent: list[tuple[str, list[str], str]] = []
    found = sweep_services.spool_sweep(
        node="n1", enqueue=lambda s, ids, n: sent.append((s, ids, n))
    )
    assert found == 1 and sent == [("Relay", [mine], "n1")]
    sent.clear()
    sweep_services.spool_sweep(node="n2", enqueue=lambda s, ids, n: sent.append((s, ids, n)))
    assert sorted(sent) == [("Other", [theirs], "n2"), ("Relay", [mine], "n2")]


def test_the_hand_off_sends_one_task_per_batch_to_the_node_queue(test_redis: str) -> None:
    executor = ThreadPoolExecutor(max_workers=2)
    node = f"hx{os.getpid()}"
    handoff = Handoff(test_redis, executor, node=node, linger=1.0, max_batch=3)
    # CELERY_BROKER_URL, when set, wins over the URL given (as for the SMTP worker).
    broker = redis.Redis.from_url(str(handoff.app.conf.broker_url))
    queue = delivery_queue(node)
    broker.delete(queue)

    def tasks() -> list[list[Any]]:
        sent = []
        for item in reversed(broker.lrange(queue, 0, -1)):  # kombu pushes to the head
            envelope = json.loads(item)
            assert envelope["headers"]["task"] == "mailadmin.relay_batch"
            args, _kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
            sent.append(args)
        return sent

    try:
        relay = [new_queue_id() for _ in range(6)]
        other = new_queue_id()
        started = time.monotonic()
        handoff(relay[0], "Relay")
        handoff(relay[1], "Relay")
        handoff(other, "Other")  # the third id fills the batch: it goes without lingering
        until(lambda: len(tasks()) == 2, timeout=0.8)
        for queue_id in relay[2:5]:
            handoff(queue_id, "Relay")
        until(lambda: len(tasks()) == 3, timeout=0.8)
        handoff(relay[5], "Relay")  # alone: sent once it has waited the linger
        executor.shutdown(wait=True)  # as the SMTP worker stops: what waits is still sent
        assert time.monotonic() - started >= 1.0
        assert tasks() == [
            ["Relay", relay[:2], node],
            ["Other", [other], node],
            ["Relay", relay[2:5], node],
            ["Relay", relay[5:], node],
        ]
    finally:
        broker.delete(queue)
        broker.close()


@pytest.mark.parametrize("task", [relay_batch, relay_message])
def test_relay_tasks_ack_late_and_stop_inside_the_lease(task: Any) -> None:
    # Celery is only the carrier: a task whose worker died is delivered again by the
    # broker, and a slow run is stopped before the lease lets another run claim its
    # messages, long before the broker's visibility time-out would redeliver the task.
    assert task.acks_late and conf.CELERY_TASK_REJECT_ON_WORKER_LOST
    assert task.soft_time_limit < task.time_limit < conf.MAILADMIN_DELIVERY_LEASE_SECONDS
    visibility = conf.CELERY_BROKER_TRANSPORT_OPTIONS["visibility_timeout"]
    assert conf.MAILADMIN_DELIVERY_LEASE_SECONDS < visibility


def test_the_apis_retry_sends_one_batch_task_for_what_it_made_due(
    api: APIClient, sink: Sink, enqueued: Callable[[], list[str]], relay: str
) -> None:
    sink.mode = "451"
    ids = [spool("a@corp.test", f"u{i}@example.test") for i in range(3)]
    assert messages_deliver(server_name="Relay", queue_ids=ids) == dict.fromkeys(ids, "retry")
    held = ids.pop()
    assert api.post(f"/api/v1/messages/{held}/suspend/").status_code == 200
    response = api.post(
        "/api/v1/messages/bulk/", {"action": "retry", "queue_ids": [*ids, held]}, format="json"
    )
    assert response.status_code == 200, response.content
    # The suspended one stays held; the two others go in one task, not one each.
    assert sorted(enqueued()) == sorted(ids)
    broker = redis.Redis.from_url(str(celery_app.conf.broker_url))
    assert broker.llen(delivery_queue("")) == 1
    broker.close()
