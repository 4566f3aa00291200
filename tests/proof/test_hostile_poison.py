"""One message never holds another (issue 10 item 1, DESIGN.md invariant 8).

A message with a NUL byte in its Subject was acknowledged with ``250``, then the
``bulk_create`` of its hand-off batch raised ``DataError`` on PostgreSQL: all the messages
of that batch went unrecorded and undelivered, and the spool sweep batched the poison with
new mail again every 30 s. A NUL in a remote server's reply text failed the outcome write
of the whole run the same way. Here, poisoned messages travel with good ones, in process
(the delivery service over a real spool, database and SMTP sink) and end to end (the SMTP
worker, a Celery worker and a sink as separate processes); every good message is
delivered, every poisoned one is delivered or in Badmail with its reason.

These run on the suite's database: SQLite in ``make test``, PostgreSQL when DATABASE_URL
names one (where the original failure shows).
"""

from __future__ import annotations

import base64
import logging
import smtplib
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.db.models import Model
from rest_framework.test import APIClient

from mailadmin.models import Attempt, ConfigSnapshot, Message, MessageState, Recipient
from mailadmin.services.delivery import sweep as sweep_services
from mailadmin.services.delivery.queue import spool_for
from mailadmin.services.delivery.runs import messages_deliver
from mailadmin.tests import conftest as shared
from mailadmin.tests.factories import configure, make_relay, spool
from mailadmin.tests.stack import Stack, until
from smtpworker.tests.sink import Sink

pytestmark = pytest.mark.django_db(transaction=True)

# The queue suites' fixtures, by name: the API as an administrator, the recording SMTP sink,
# a private mail root with a short delivery minute, the test Redis.
api, mailroot, sink, test_redis = shared.api, shared.mailroot, shared.sink, shared.test_redis

NUL = "\u2400"  # how a NUL byte shows in the record

# Header sections that once stopped a batch (NUL) or that no database column takes as they
# are (controls, undecodable bytes, over-long values), each with the Subject recorded.
POISONED_HEADERS: list[tuple[bytes, str]] = [
    (b"Subject: a\x00b", f"a{NUL}b"),
    (b"Subject: =?utf-8?q?a=00b?=", f"a{NUL}b"),
    (b"Subject: =?utf-8?b?" + base64.b64encode(b"x\x00\x1f\x7fy") + b"?=", "x\u2400\u241f\ufffdy"),
    (b"Subject: \x1b[31mred\x07", "\u241b[31mred\u2407"),
    (b"Subject: caf\xe9 \xff", "caf\ufffd \ufffd"),
    (b"From: a\x00b <app@corp.test>\r\nSubject: =?iso-8859-1?q?=00=FF?=", f"{NUL}\u00ff"),
    (b"To: =?utf-8?b?7bO/?= <u@example.test>\r\nSubject: s\x00", f"s{NUL}"),
    (
        b"Subject: =?utf-8?q?" + b"y" * 300 + b"=00?=\r\nX-\x00Bad: \xed\xb3\xbf",
        "y" * 254 + "\u2026",
    ),
    (
        b"Subject: " + b"\r\n ".join([b"word" * 15] * 60),
        " ".join(["word" * 15] * 5)[:254] + "\u2026",
    ),
    (b"Subject: \x00", NUL),
]


def body(headers: bytes, tag: str) -> bytes:
    return b"From: app@corp.test\r\n" + headers + f"\r\n\r\ntag {tag}\r\n".encode()


def tagged(sink: Sink, tag: str) -> int:
    """How many messages the sink got with ``tag`` (the body's one line)."""
    line = f"\r\n\r\ntag {tag}\r\n".encode()
    return sum(1 for m in sink.messages if m.data.endswith(line))


# --- in process: a delivery run of good and poisoned messages -----------------------------


@pytest.mark.usefixtures("mailroot")
def test_poisoned_subjects_are_recorded_visibly_and_hold_nothing_back(
    api: APIClient, sink: Sink
) -> None:
    make_relay(api, delivery={"smart_host": sink.smart_host})
    good = [spool("a@corp.test", f"g{i}@example.test", record=False) for i in range(5)]
    poisoned = {
        spool(
            "a@corp.test", f"p{i}@example.test", data=body(headers, f"p{i}"), record=False
        ): subject
        for i, (headers, subject) in enumerate(POISONED_HEADERS)
    }
    ids = [*good[:2], *poisoned, *good[2:]]
    results = messages_deliver(server_name="Relay", queue_ids=ids, node="n1")
    assert results == dict.fromkeys(ids, "delivered")
    assert len(sink.wait_for(len(ids))) == len(ids)
    recorded = dict(
        Message.objects.filter(queue_id__in=poisoned).values_list("queue_id", "subject")
    )
    assert recorded == poisoned
    assert spool_for("Relay").ids() == []


@pytest.mark.usefixtures("mailroot")
def test_a_nul_in_a_remote_reply_holds_no_other_outcome(api: APIClient, sink: Sink) -> None:
    make_relay(api, delivery={"smart_host": sink.smart_host, "retry_minutes": [10, 20, 30, 40]})
    sink.rcpt_replies = {
        "refused@example.test": "550 5.1.1 no\x00such \x1buser",
        "later@example.test": "451 4.2.1 busy\x00",
    }
    first = spool("a@corp.test", "u1@example.test", record=False)
    refused = spool("a@corp.test", "refused@example.test", record=False)
    later = spool("a@corp.test", "u2@example.test", "later@example.test", record=False)
    last = spool("a@corp.test", "u3@example.test", record=False)
    ids = [first, refused, later, last]
    results = messages_deliver(server_name="Relay", queue_ids=ids, node="n1")
    assert results == {first: "delivered", refused: "bounced", later: "retry", last: "delivered"}
    replies = dict(Recipient.objects.values_list("address", "last_reply"))
    assert replies["refused@example.test"] == f"5.1.1 no{NUL}such \u241buser"
    assert replies["later@example.test"] == f"4.2.1 busy{NUL}"
    assert replies["u2@example.test"].startswith("2.")  # its other recipient: delivered once
    deferred = Message.objects.get(queue_id=later)
    assert (deferred.state, deferred.attempts) == (MessageState.RETRY, 1)
    assert deferred.last_error == f"4.2.1 busy{NUL}"
    assert Attempt.objects.filter(message__queue_id__in=ids).count() == 5
    ndr = Message.objects.get(is_report=True)  # the refused one's NDR, quoting the reply
    assert ndr.state == MessageState.QUEUED

    # The deferred message goes on through its retries like any other, not held forever.
    sink.rcpt_replies = {}
    Message.objects.filter(queue_id=later).update(next_attempt_at=None)
    assert messages_deliver(server_name="Relay", queue_ids=[later]) == {later: "delivered"}


Refuse = Callable[[type[Model], str, str], None]


@pytest.fixture
def refuse() -> Iterator[Refuse]:
    """Make the database refuse some rows, as any database error would: ``refuse(model,
    "INSERT" or "UPDATE", condition on NEW)`` adds a trigger; all are dropped afterwards."""
    postgres = connection.vendor == "postgresql"
    made: list[tuple[str, str]] = []

    def add(model: type[Model], event: str, condition: str) -> None:
        name, table = f"poison_refuse{len(made)}", connection.ops.quote_name(model._meta.db_table)
        with connection.cursor() as cursor:
            if postgres:
                cursor.execute(
                    f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS "
                    "$$ BEGIN RAISE EXCEPTION 'refused by the test database'; END $$"
                )
                cursor.execute(
                    f"CREATE TRIGGER {name} BEFORE {event} ON {table} FOR EACH ROW "
                    f"WHEN ({condition}) EXECUTE FUNCTION {name}()"
                )
            else:
                cursor.execute(
                    f"CREATE TRIGGER {name} BEFORE {event} ON {table} WHEN {condition} "
                    "BEGIN SELECT RAISE(ABORT, 'refused by the test database'); END"
                )
        made.append((name, table))

    yield add
    with connection.cursor() as cursor:
        for name, table in made:
            cursor.execute(
                f"DROP TRIGGER {name} ON {table}" if postgres else f"DROP TRIGGER {name}"
            )
            if postgres:
                cursor.execute(f"DROP FUNCTION {name}()")


def test_a_message_the_database_refuses_goes_to_badmail_and_leaves_the_spool(
    api: APIClient, sink: Sink, mailroot: Path, refuse: Refuse, caplog: pytest.LogCaptureFixture
) -> None:
    make_relay(api, delivery={"smart_host": sink.smart_host})
    refuse(Recipient, "INSERT", "NEW.address = 'refused@example.test'")
    data = body(b"Subject: refused", "refused")
    before = spool("a@corp.test", "u1@example.test", record=False)
    refused = spool("a@corp.test", "refused@example.test", data=data, record=False)
    after = spool("a@corp.test", "u2@example.test", record=False)
    with caplog.at_level(logging.WARNING):
        results = messages_deliver(server_name="Relay", queue_ids=[before, refused, after])
    # The others of its batch are recorded and delivered in the same run.
    assert results == {before: "delivered", refused: "badmail", after: "delivered"}
    assert sorted(r for m in sink.wait_for(2) for r in m.recipients) == [
        "u1@example.test",
        "u2@example.test",
    ]
    badmail = mailroot / "Relay" / "Badmail"
    assert (badmail / f"{refused}.BAD").read_bytes() == data
    reason = (badmail / f"{refused}.BDR").read_text()
    assert "cannot be recorded" in reason and "refused by the test database" in reason
    assert any(refused in r.getMessage() and "Badmail" in r.getMessage() for r in caplog.records)
    # Out of the spool, so no sweep batches it again; on record, so tracking finds it.
    assert spool_for("Relay").ids() == []
    assert sweep_services.spool_sweep(node="", enqueue=lambda *a: None, now=time.time() + 60) == 0
    stub = Message.objects.get(queue_id=refused)
    assert stub.state == MessageState.DELETED and "Badmail" in stub.last_error
    # And the run that meets it again (a task delivered twice) changes nothing.
    assert messages_deliver(server_name="Relay", queue_ids=[refused]) == {refused: "not due"}


@pytest.mark.usefixtures("mailroot")
def test_an_outcome_the_database_refuses_is_recorded_plainly_and_holds_nothing(
    api: APIClient, sink: Sink, refuse: Refuse
) -> None:
    make_relay(api, delivery={"smart_host": sink.smart_host})
    refuse(Recipient, "UPDATE", "NEW.last_reply LIKE '%refuse-me%'")
    refuse(Attempt, "INSERT", "NEW.recipients LIKE '%unlogged@%'")
    sink.rcpt_replies = {"odd@example.test": "550 5.1.1 refuse-me"}
    ids = [
        spool("a@corp.test", f"{user}@example.test", record=False)
        for user in ("u1", "odd", "unlogged", "u2")
    ]
    results = messages_deliver(server_name="Relay", queue_ids=ids, node="n1")
    assert results == dict(
        zip(ids, ["delivered", "bounced", "delivered", "delivered"], strict=True)
    )
    odd = Recipient.objects.get(address="odd@example.test")
    assert (odd.state, odd.last_code) == ("failed", 550)
    assert odd.last_reply.startswith("5.1.1 (the reply could not be recorded: ")
    # The log row the database refused is left out; the outcome it logs is on record.
    logged = Attempt.objects.values_list("recipients", flat=True)
    assert sorted(logged) == ["odd@example.test", "u1@example.test", "u2@example.test"]


# --- end to end: 200 good and 10 poisoned messages over 8 sessions ------------------------


def _session(address: tuple[str, int], messages: list[tuple[str, bytes]]) -> dict[str, str]:
    """One SMTP session sending ``messages`` (tag, data); the queue id of each tag."""
    acked = {}
    with smtplib.SMTP(*address, timeout=20) as client:
        client.ehlo("load.test")
        for tag, data in messages:
            client.mail("app@corp.test")
            client.rcpt(f"{tag}@example.test")
            code, reply = client.data(data)
            assert code == 250, (tag, reply)
            acked[tag] = reply.decode().rsplit(" ", 1)[-1]
    return acked


def test_poisoned_messages_among_200_good_ones_over_8_sessions(
    api: APIClient,
    stack: Stack,
    sink: Sink,
    tmp_path: Path,
    django_capture_on_commit_callbacks: Any,
) -> None:
    address = configure(api, sink, django_capture_on_commit_callbacks)
    stack.smtp(), stack.worker(), stack.beat()
    stack.wait_smtp_applied(ConfigSnapshot.objects.latest().pk)
    messages = [(f"good{i}", body(f"Subject: good {i}".encode(), f"good{i}")) for i in range(200)]
    for k, (headers, _subject) in enumerate(POISONED_HEADERS):
        messages.insert(k * 21 + 10, (f"poison{k}", body(headers, f"poison{k}")))
    sessions = [messages[i::8] for i in range(8)]
    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        acked = {
            t: q
            for done in pool.map(lambda s: _session(address, s), sessions)
            for t, q in done.items()
        }
    assert len(acked) == 210

    good = [t for t in acked if t.startswith("good")]
    until(lambda: all(tagged(sink, t) for t in good), timeout=40, interval=0.2)
    elapsed = time.monotonic() - started
    assert all(tagged(sink, t) == 1 for t in good)
    badmail = tmp_path / "mailroot" / "Relay" / "Badmail"

    def poison_settled() -> bool:
        for tag, queue_id in acked.items():
            if tag.startswith("poison") and not tagged(sink, tag):
                if not (badmail / f"{queue_id}.BDR").is_file():
                    return False
        return True

    until(poison_settled, timeout=20, interval=0.2)
    for tag, queue_id in acked.items():
        if tag.startswith("poison") and not tagged(sink, tag):
            assert (badmail / f"{queue_id}.BDR").read_text().strip(), tag

    def states(tags: list[str]) -> set[str]:
        ids = [acked[t] for t in tags]
        return set(Message.objects.filter(queue_id__in=ids).values_list("state", flat=True))

    until(lambda: states(good) == {MessageState.DELIVERED}, timeout=20)
    # A poisoned message delivered is recorded delivered; one in Badmail, deleted.
    poisoned = [t for t in acked if t.startswith("poison")]
    assert states(poisoned) <= {MessageState.DELIVERED, MessageState.DELETED}
    print(f"\n210 messages over 8 sessions: every good one delivered in {elapsed:.1f} s")
