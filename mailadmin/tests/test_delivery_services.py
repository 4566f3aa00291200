"""The delivery services called directly: enqueueing, the sweep, operator actions,
reports, intake and the traffic collector.

The database, the spool, Redis and the Celery broker are real; no Celery worker runs, so
the tasks a service sends stay in the broker, where the tests read them.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from django.db import transaction
from django.utils import timezone

from mailadmin.celery import app as celery_app
from mailadmin.models import Message, MessageState, QueueControl, TrafficCounter
from mailadmin.selectors.config import current_config
from mailadmin.services.delivery import actions, enqueue, intake, reports, sweep, traffic
from mailadmin.services.delivery.queue import (
    message_ingest,
    message_recipients,
    message_record,
    spool_for,
)
from mailadmin.tests.factories import spool
from smtpworker.core.contract import RELAY_BATCH_TASK, delivery_queue, worker_key

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("mailroot")]

NODES = ("", "n1", "n2", "here")
Sent = Callable[[str], list[tuple[str, list[Any]]]]


@pytest.fixture
def sent(test_redis: str, settings: Any) -> Iterator[Sent]:
    """``sent(node)``: the tasks (name, arguments) waiting in ``node``'s delivery queue
    of the real broker, oldest first. The queues start empty; this process is node
    "here"."""
    settings.MAILADMIN_NODE = "here"
    broker = redis.Redis.from_url(str(celery_app.conf.broker_url))
    queues = [delivery_queue(node) for node in NODES]
    broker.delete(*queues)

    def read(node: str) -> list[tuple[str, list[Any]]]:
        tasks = []
        for raw in reversed(broker.lrange(delivery_queue(node), 0, -1)):
            message = json.loads(raw)
            args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
            tasks.append((message["headers"]["task"], args))
        return tasks

    yield read
    broker.delete(*queues)
    broker.close()


def relays(tasks: list[tuple[str, list[Any]]]) -> list[list[str]]:
    """The queue ids of each relay batch task."""
    assert {name for name, _ in tasks} <= {RELAY_BATCH_TASK}
    return [args[1] for _, args in tasks]


# --- enqueue --------------------------------------------------------------------------------


def test_an_id_gets_one_relay_task_a_minute_until_its_task_runs(sent: Sent) -> None:
    enqueue.relays_enqueue("Relay", ["A", "B"], "n1")
    enqueue.relays_enqueue("Relay", ["B", "C"], "n1")  # B's task is still waiting
    enqueue.relays_enqueue("Relay", ["B"], "n1")  # nothing new: no task at all
    assert relays(sent("n1")) == [["A", "B"], ["C"]]
    enqueue.relays_forget(["B"])  # what a relay task does as it starts
    enqueue.relays_enqueue("Relay", ["A", "B"], "n1")
    assert relays(sent("n1"))[-1] == ["B"] and sent("") == []


def test_batches_are_cut_at_the_task_batch_per_server_and_node(sent: Sent) -> None:
    ids = [f"Q{i:03}" for i in range(enqueue.TASK_BATCH * 2 + 3)]
    enqueue.relays_enqueue_in_batches({("Relay", "n1"): ids, ("Other", "n2"): ["X"]})
    assert relays(sent("n1")) == [ids[:50], ids[50:100], ids[100:]]
    assert sent("n2") == [(RELAY_BATCH_TASK, ["Other", ["X"], "n2"])]


def test_only_due_messages_are_enqueued_each_to_its_node(relay: str, sent: Sent) -> None:
    due, later, elsewhere = (spool("a@corp.test", f"u{i}@example.test") for i in range(3))
    Message.objects.filter(queue_id=later).update(
        state=MessageState.RETRY, next_attempt_at=timezone.now() + timedelta(hours=1)
    )
    Message.objects.filter(queue_id=elsewhere).update(node="n2")
    enqueue.messages_enqueue(queue_ids=[due, later, elsewhere, "NOSUCHID"])
    assert relays(sent("")) == [[due]] and relays(sent("n2")) == [[elsewhere]]


def test_enqueueing_on_commit_waits_for_the_commit_and_skips_a_rollback(
    relay: str, sent: Sent
) -> None:
    kept, undone = spool("a@corp.test", "u@example.test"), spool("a@corp.test", "v@example.test")
    with transaction.atomic():
        enqueue.messages_enqueue_on_commit(queue_ids=[kept])
        assert sent("") == []  # the change is not visible yet: no task either
    assert relays(sent("")) == [[kept]]
    with pytest.raises(RuntimeError), transaction.atomic():
        enqueue.messages_enqueue_on_commit(queue_ids=[undone])
        raise RuntimeError("rolled back")
    assert relays(sent("")) == [[kept]]


def test_spool_sweeps_go_to_each_nodes_own_queue(sent: Sent) -> None:
    assert enqueue.spool_sweeps_enqueue(["n1", "n2"]) == 2
    assert sent("n1") == [(enqueue.SWEEP_SPOOL_TASK, ["n1"])]
    assert sent("n2") == [(enqueue.SWEEP_SPOOL_TASK, ["n2"])]


# --- the sweep ------------------------------------------------------------------------------


def test_the_sweep_enqueues_what_is_due_and_asks_the_nodes_with_mail(
    relay: str, sent: Sent
) -> None:
    due = spool("a@corp.test", "u@example.test")
    Message.objects.filter(queue_id=due).update(
        state=MessageState.RETRY, next_attempt_at=timezone.now(), node="n1"
    )
    assert sweep.sweep_run(spools=False) == {"due": 1}
    assert relays(sent("n1")) == [[due]] and sent("here") == []
    enqueue.relays_forget([due])
    assert sweep.sweep_run(spools=True) == {"due": 1, "spool_nodes": 2}
    assert sent("n1")[1:] == [
        (RELAY_BATCH_TASK, ["Relay", [due], "n1"]),
        (enqueue.SWEEP_SPOOL_TASK, ["n1"]),
    ]
    assert sent("here") == [(enqueue.SWEEP_SPOOL_TASK, ["here"])]


def test_a_spool_sweep_runs_only_on_its_own_node(relay: str, sent: Sent) -> None:
    orphan = spool("a@corp.test", "u@example.test", at=time.time() - 60, record=False)
    assert sweep.spool_sweep_local(node="elsewhere") == 0  # not this disk
    assert sent("here") == [] and sent("elsewhere") == []
    assert sweep.spool_sweep_local(node="here") == 1
    assert sent("here") == [(RELAY_BATCH_TASK, ["Relay", [orphan], "here"])]


# --- operator actions -----------------------------------------------------------------------


def test_a_message_being_delivered_is_neither_deleted_nor_bounced(relay: str) -> None:
    held = spool("a@corp.test", "u@example.test")
    Message.objects.filter(queue_id=held).update(
        state=MessageState.ACTIVE, lease_until=timezone.now() + timedelta(minutes=5)
    )
    assert actions.messages_delete(queue_ids=[held], author="test") == 0
    assert actions.messages_delete_with_ndr(queue_ids=[held], author="test") == 0
    assert actions.messages_suspend(queue_ids=[held]) == 0
    assert Message.objects.get(queue_id=held).state == MessageState.ACTIVE
    assert held in spool_for("Relay").ids() and not Message.objects.filter(is_report=True)


def test_unknown_actions_are_refused() -> None:
    with pytest.raises(ValueError):
        actions.messages_act(action="explode", queue_ids=["A"], author="test")


def test_a_queue_resumed_is_retried_now(relay: str, sink: Any, sent: Sent) -> None:
    waiting = spool("a@corp.test", "u@example.test")
    Message.objects.filter(queue_id=waiting).update(
        state=MessageState.RETRY, next_attempt_at=timezone.now() + timedelta(hours=1)
    )
    actions.queue_suspend(next_hop=sink.smart_host)
    assert actions.queue_resume(next_hop=sink.smart_host) == 1
    assert not QueueControl.objects.get(next_hop=sink.smart_host).suspended
    assert Message.objects.get(queue_id=waiting).state == MessageState.QUEUED
    assert relays(sent("")) == [[waiting]]


# --- reports --------------------------------------------------------------------------------


def test_a_report_is_spooled_recorded_and_enqueued_once(relay: str, sent: Sent) -> None:
    data = b"From: <>\r\nSubject: report\r\n\r\nbody\r\n"
    queue_id = reports.report_inject("Relay", ["a@corp.test"], data, queue_id="REPORT1N")
    assert queue_id == "REPORT1N"
    report = Message.objects.get(queue_id=queue_id)
    assert report.is_report and report.sender == "" and report.node == "here"
    assert spool_for("Relay").load(queue_id)[1] == data
    assert relays(sent("here")) == [[queue_id]]
    enqueue.relays_forget([queue_id])
    # A run cut short after making it makes it again: the same report, once.
    assert reports.report_inject("Relay", ["a@corp.test"], data, queue_id=queue_id) == queue_id
    assert Message.objects.filter(is_report=True).count() == 1 and len(sent("here")) == 1


def test_a_report_whose_store_was_cut_between_its_two_links_is_stored_again(
    relay: str, sent: Sent
) -> None:
    # A worker killed after linking the report's .eml and before its .env (the commit)
    # leaves Queue/<id>.eml alone; the id derives from the message's, so the next run
    # makes the same report and must not take the leftover for a spooled report.
    data = b"From: <>\r\nSubject: report\r\n\r\nbody\r\n"
    spool = spool_for("Relay")
    spool.message_path("REPORT2N").write_bytes(b"half of an earlier store")
    queue_id = reports.report_inject("Relay", ["a@corp.test"], data, queue_id="REPORT2N")
    assert queue_id == "REPORT2N"
    assert spool.load(queue_id)[1] == data
    assert Message.objects.get(queue_id=queue_id).is_report
    assert relays(sent("here")) == [[queue_id]]


def test_a_finished_message_leaves_the_spool_once_that_is_committed(relay: str) -> None:
    queue_id = spool("a@corp.test", "u@example.test")
    message = Message.objects.get(queue_id=queue_id)
    with transaction.atomic():
        reports.message_finish(message, MessageState.DELIVERED, "")
        assert queue_id in spool_for("Relay").ids()
    assert queue_id not in spool_for("Relay").ids()
    assert Message.objects.get(queue_id=queue_id).state == MessageState.DELIVERED


# --- intake ---------------------------------------------------------------------------------


def unsaved(queue_id: str) -> tuple[Message, list[Any], bytes]:
    """The rows a delivery run builds for a spooled message, not yet saved."""
    envelope, data = spool_for("Relay").load(queue_id)
    cfg = current_config("Relay")
    message = message_record(envelope, data, cfg, None, node="", lease_until=timezone.now())
    return message, message_recipients(message, envelope, cfg), data


def test_a_message_another_run_recorded_first_is_left_to_be_claimed(relay: str) -> None:
    first = spool("a@corp.test", "u@example.test", record=False)
    second = spool("a@corp.test", "v@example.test", record=False)
    rows = [unsaved(first)[:2], unsaved(second)[:2]]
    assert message_ingest(server_name="Relay", queue_id=second) is not None  # meanwhile
    done, raced, failed = intake.messages_record(rows)
    assert (done, raced, failed) == ([0], [second], [])
    assert Message.objects.get(queue_id=first).recipients.count() == 1


def test_a_message_given_up_goes_to_badmail_on_record_and_out_of_the_spool(
    relay: str, mailroot: Path
) -> None:
    queue_id = spool("a@corp.test", "u@example.test", record=False)
    message, _recipients, data = unsaved(queue_id)
    assert intake.message_give_up(spool_for("Relay"), message, data, "too odd")
    assert (mailroot / "Relay" / "Badmail" / f"{queue_id}.BAD").read_bytes() == data
    stub = Message.objects.get(queue_id=queue_id)
    assert stub.state == MessageState.DELETED and "too odd" in stub.last_error
    assert queue_id not in spool_for("Relay").ids()


# --- traffic --------------------------------------------------------------------------------


def test_rejections_are_collected_from_the_live_nodes_only(test_redis: str) -> None:
    client = redis.Redis.from_url(test_redis)

    def report(node: str, relay_denied: int, heartbeat: float) -> None:
        status = {
            "node": node,
            "pid": 1,
            "heartbeat": heartbeat,
            "servers": {"Relay": {"counters": {"rejected_rcpt_550_5.7.1": relay_denied}}},
        }
        client.set(worker_key(node), json.dumps(status))

    report("n1", 3, time.time())
    report("gone", 50, time.time() - 3600)  # stale: not counted
    assert traffic.traffic_collect_from_nodes() == 1
    report("n1", 5, time.time())
    assert traffic.traffic_collect_from_nodes() == 1  # only what was added since
    row = TrafficCounter.objects.get(server_name="Relay")
    assert row.rejected == {"relay denied": 5}
    client.close()
