"""Quiet by default (issue 12): at INFO a relayed message writes one line on the SMTP side
and one per recipient outcome on the delivery side; periodic tasks write none.

Real processes as `make run` starts them (SMTP worker, Celery worker and beat, in the
default plain format), the test database and Redis, a real sink. The Celery worker and
beat run at DEBUG here, so that their output shows that the relay batches and the
periodic tasks did run, at DEBUG, while nothing of theirs is at INFO.
"""

from __future__ import annotations

import json
import logging
import re
import smtplib
from collections import Counter
from typing import Any

import pytest
from celery.app import trace
from rest_framework.test import APIClient

from mailadmin.jsonlog import RoutineAtDebug
from mailadmin.models import ConfigSnapshot, Message, MessageState
from mailadmin.tests.factories import configure
from mailadmin.tests.stack import Process, Stack, until
from smtpworker.tests.sink import Sink

# Our plain lines ("2024-05-01 12:00:00,123 INFO name: message") and Celery's own
# ("[2024-05-01 12:00:00,123: INFO/ForkPoolWorker-1] message"), which its worker and beat
# use in the plain format.
_PLAIN = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?P<level>[A-Z]+) (?P<text>.*)$")
_CELERY = re.compile(r"^\[\d{4}-\d\d-\d\d [^\]]*: (?P<level>[A-Z]+)/[^\]]*\] (?P<text>.*)$")
_QUEUE_ID = re.compile(r"\b[0-9A-Z]{24}[ND]?\b")
# What the old code logged at INFO for each task run and each beat tick.
_CELERY_ROUTINE = re.compile(r"^Task \S+\[[0-9a-f-]+\] (received|succeeded in )|^Scheduler: ")
_PERIODIC_TASKS = ("mailadmin.sweep", "mailadmin.config_republish", "mailadmin.traffic_collect")
# The fields of the accepted line's JSON form, as handler._store and the session's
# ContextAdapter wrote them before issue 12: the base four, the node (the formatter's),
# the session's server, client_ip and session, the call's queue_id and size.
ACCEPTED_FIELDS = {
    "time",
    "level",
    "logger",
    "message",
    "node",
    "server",
    "client_ip",
    "session",
    "queue_id",
    "size",
}


def logged(process: Process) -> list[tuple[str, str]]:
    """(level, text) of each log line of ``process`` (banners and tracebacks left out)."""
    found = []
    for line in process.output().splitlines():
        match = _PLAIN.match(line) or _CELERY.match(line)
        if match:
            found.append((match["level"], match["text"]))
    return found


def at_info(process: Process) -> list[str]:
    return [text for level, text in logged(process) if level == "INFO"]


def mentioning(lines: list[str], queue_id: str) -> list[str]:
    return [line for line in lines if queue_id in _QUEUE_ID.findall(line)]


def delivery_kind(queue_id: str, line: str) -> str:
    """What a delivery INFO line about ``queue_id`` tells: a recipient outcome (delivered,
    deferred or failed, by the reply's class) or the message's end (bounced...)."""
    attempt = re.match(rf"{queue_id}: .+ via \S+: (\d)\d\d ", line)
    if attempt:
        return {"2": "delivered", "4": "deferred", "5": "failed"}[attempt[1]]
    end = re.fullmatch(rf"{queue_id}: ([a-z ]+)", line)
    return end[1] if end else f"other: {line}"


def send_each(address: tuple[str, int], envelopes: list[list[str]]) -> list[str]:
    """One message per connection (the usual relay traffic), to each list of recipients;
    the queue ids the server acknowledged."""
    acked = []
    for i, recipients in enumerate(envelopes):
        with smtplib.SMTP(*address, timeout=10) as client:
            client.ehlo("load.test")
            client.mail("app@corp.test")
            for recipient in recipients:
                assert client.rcpt(recipient)[0] == 250
            code, reply = client.data(f"Subject: quiet-{i}\r\n\r\nbody {i}\r\n".encode())
            assert code == 250, reply
            acked.append(reply.decode().rsplit(" ", 1)[-1])
    return acked


def finished(queue_ids: list[str]) -> bool:
    done = Message.objects.filter(
        queue_id__in=queue_ids, state__in=[MessageState.DELIVERED, MessageState.BOUNCED]
    )
    return done.count() == len(queue_ids)


@pytest.mark.django_db(transaction=True)
def test_at_info_one_line_per_message_and_outcome_and_none_from_periodic_tasks(
    api: APIClient, stack: Stack, sink: Sink, django_capture_on_commit_callbacks: Any
) -> None:
    address = configure(api, sink, django_capture_on_commit_callbacks)
    sink.rcpt_replies = {"nobody@example.test": "550 5.1.1 No such user"}
    smtp, worker, beat = stack.smtp(), stack.worker(level="debug"), stack.beat(level="debug")
    stack.wait_smtp_applied(ConfigSnapshot.objects.latest().pk)
    delivered = send_each(address, [[f"user{i}@example.test"] for i in range(24)])
    failed = send_each(address, [["nobody@example.test"]] * 3)
    mixed = send_each(address, [["user0@example.test", "nobody@example.test"]] * 3)
    acked = delivered + failed + mixed
    ndrs = [f"{queue_id}N" for queue_id in failed + mixed]
    until(lambda: finished(acked + ndrs), timeout=60, interval=0.2)

    def ran_at_debug() -> bool:
        routine = {
            text.split("[")[0]
            for level, text in logged(worker) + logged(beat)
            if level == "DEBUG" and _CELERY_ROUTINE.match(text)
        }
        return {
            "Task mailadmin.relay_batch",
            "Task mailadmin.sweep",
            "Task mailadmin.sweep_spool",
            "Task mailadmin.config_republish",
            "Scheduler: Sending due task sweep-due (mailadmin.sweep)",
        } <= routine

    until(ran_at_debug, timeout=20, interval=0.2)

    smtp_info = at_info(smtp)
    for queue_id in acked:
        (line,) = mentioning(smtp_info, queue_id)
        assert line.startswith(f"smtpworker.inbound.handler: accepted {queue_id} from ")
    # Start-up lines only otherwise: nothing per session or connection at INFO.
    assert len(smtp_info) - len(acked) <= 8, smtp_info

    worker_info = at_info(worker)
    stories = {
        queue_id: Counter(
            delivery_kind(queue_id, line) for line in mentioning(worker_info, queue_id)
        )
        for queue_id in acked + ndrs
    }
    expected = {
        **{queue_id: {"delivered": 1} for queue_id in delivered + ndrs},
        **{queue_id: {"failed": 1, "bounced": 1} for queue_id in failed},
        **{queue_id: {"delivered": 1, "failed": 1, "bounced": 1} for queue_id in mixed},
    }
    assert stories == expected
    per_message = sum(sum(story.values()) for story in stories.values())
    assert len(worker_info) - per_message <= 8, worker_info  # start-up lines

    beat_info = at_info(beat)
    assert len(beat_info) <= 3, beat_info  # "beat: Starting...", the config published
    for line in worker_info + beat_info:
        assert not _CELERY_ROUTINE.match(line), line
        assert not any(task in line for task in _PERIODIC_TASKS), line


@pytest.mark.django_db(transaction=True)
def test_the_accepted_line_keeps_its_json_fields(
    api: APIClient, stack: Stack, sink: Sink, django_capture_on_commit_callbacks: Any
) -> None:
    """What the SMTP worker's one INFO line per message carries in JSON: the fields it
    had before, with the same values."""
    address = configure(api, sink, django_capture_on_commit_callbacks)
    stack.env["LOG_FORMAT"] = "json"
    smtp = stack.smtp()
    stack.wait_smtp_applied(ConfigSnapshot.objects.latest().pk)
    (queue_id,) = send_each(address, [["user1@example.test", "user2@example.test"]])

    def lines() -> list[dict[str, Any]]:
        return [json.loads(line) for line in smtp.output().splitlines() if line.startswith("{")]

    until(lambda: any(r.get("queue_id") == queue_id for r in lines()))
    (accepted,) = [r for r in lines() if r.get("queue_id") == queue_id or queue_id in r["message"]]
    assert set(accepted) == ACCEPTED_FIELDS
    size = accepted["size"]
    assert isinstance(size, int) and size > 0
    assert accepted["message"] == (
        f"accepted {queue_id} from <app@corp.test> for 2 recipient(s), {size} bytes"
    )
    assert {k: accepted[k] for k in ("level", "logger", "node", "server", "client_ip")} == {
        "level": "INFO",
        "logger": "smtpworker.inbound.handler",
        "node": stack.node,
        "server": "Relay",
        "client_ip": "127.0.0.1",
    }
    assert accepted["queue_id"] == queue_id and re.fullmatch(r"[0-9a-f]{16}", accepted["session"])


@pytest.mark.parametrize("level", [logging.INFO, logging.DEBUG])
def test_celerys_routine_lines_go_to_debug_and_its_failures_stay(level: int, settings: Any) -> None:
    """The filter ``LOGGING`` puts on Celery's loggers, on Celery's own format strings: a
    routine line becomes DEBUG (kept only where DEBUG is on); a failure, a retry, an
    ignored task and any other line keep their level."""
    (name,) = settings.LOGGING["filters"]
    routine_at_debug = RoutineAtDebug()
    seen = []
    for logger_name, levelno, msg in [
        ("celery.worker.strategy", logging.INFO, trace.LOG_RECEIVED),
        ("celery.app.trace", logging.INFO, trace.LOG_SUCCESS),
        ("celery.beat", logging.INFO, "Scheduler: Sending due task %s (%s)"),
        ("celery.app.trace", logging.ERROR, trace.LOG_FAILURE),
        ("celery.app.trace", logging.INFO, trace.LOG_RETRY),
        ("celery.app.trace", logging.INFO, trace.LOG_IGNORED),
        ("celery.beat", logging.INFO, "beat: Starting..."),
    ]:
        assert name in settings.LOGGING["loggers"][logger_name]["filters"]
        logger = logging.getLogger(logger_name)
        record = logger.makeRecord(logger_name, levelno, __file__, 1, msg, (), None)
        before = logger.level
        logger.setLevel(level)
        try:
            kept = routine_at_debug.filter(record)
        finally:
            logger.setLevel(before)
        seen.append((record.levelname, kept))
    routine = ("DEBUG", level == logging.DEBUG)
    assert seen == [routine] * 3 + [("ERROR", True)] + [("INFO", True)] * 3
