"""Message tracking: every event of a message, from arrival to its last attempt.

Deliveries run in-process against a real SMTP sink, as in test_delivery.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from mailadmin.models import Message
from mailadmin.services.delivery.actions import messages_delete
from mailadmin.tests.factories import deferred_until_expired, make_relay, run, spool
from smtpworker.tests.sink import Sink

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("mailroot")]


def track(client: APIClient, **params: str) -> list[dict[str, Any]]:
    response = client.get("/api/v1/tracking/", params)
    assert response.status_code == 200, response.content
    return list(response.json()["results"])


def kinds(found: dict[str, Any]) -> list[str]:
    return [event["event"] for event in found["events"]]


def test_a_deferred_then_delivered_message_shows_every_event(
    operator_api: APIClient, sink: Sink, relay: str
) -> None:
    sink.mode = "451"
    queue_id = spool("a@corp.test", "b@example.test")
    assert run(queue_id) == "retry"
    sink.mode = "accept"
    assert run(queue_id) == "delivered"

    (found,) = track(operator_api, q=queue_id)
    assert found["queue_id"] == queue_id and found["state"] == "delivered"
    assert found["sender"] == "a@corp.test" and found["recipients"] == ["b@example.test"]
    assert found["subject"] == "Quarterly numbers"
    assert kinds(found) == ["received", "attempt", "deferred", "attempt", "delivered"]
    received, tried, deferred, retried, delivered = found["events"]
    assert received["host"] == "127.0.0.9" and "from <a@corp.test>" in received["detail"]
    assert "b@example.test" in received["detail"]
    assert tried["code"] == 451 and "4.3.0 Sink is told to defer" in tried["detail"]
    assert tried["host"] == deferred["host"] != ""
    assert deferred["code"] == 451 and deferred["detail"].startswith("b@example.test: 451")
    assert retried["code"] == 250 and delivered["code"] == 250
    assert delivered["detail"].startswith("b@example.test: 250")
    times = [event["at"] for event in found["events"]]
    assert times == sorted(times)


def test_a_message_still_in_retry_says_when_it_is_tried_next(
    api: APIClient, sink: Sink, relay: str
) -> None:
    sink.mode = "451"
    queue_id = spool("a@corp.test", "b@example.test")
    assert run(queue_id) == "retry"
    (found,) = track(api, q=queue_id)
    assert found["state"] == "retry"
    assert "(next attempt at " in found["events"][-1]["detail"]


def test_delay_notice_and_ndr_are_linked_to_their_reports(api: APIClient, sink: Sink) -> None:
    queue_id = deferred_until_expired(api, sink)
    other = spool("a@corp.test", "c@example.test")  # same sender and subject, never run
    reports = {m.subject: m.queue_id for m in Message.objects.filter(is_report=True)}

    (found,) = track(api, q=queue_id)
    events = found["events"]
    assert kinds(found)[0] == "received" and kinds(found)[-1] == "ndr"
    assert {"attempt", "deferred", "delay notice", "bounced"} <= set(kinds(found))
    (notice,) = [e for e in events if e["event"] == "delay notice"]
    assert notice["detail"] == (
        f"to <a@corp.test>, queued as {reports['Delayed: Quarterly numbers']}"
    )
    (bounced,) = [e for e in events if e["event"] == "bounced"]
    assert "4.4.7 Message expired" in bounced["detail"]
    assert events[-1]["detail"] == (
        f"to <a@corp.test>, queued as {reports['Undeliverable: Quarterly numbers']}"
    )
    assert kinds(track(api, q=other)[0]) == ["received"]  # never run: no borrowed report

    # A search by sender finds the message, the other one and the reports sent to it.
    by_sender = {m["queue_id"]: m for m in track(api, q="A@CORP.TEST")}
    assert set(by_sender) == {queue_id, other, *reports.values()}
    assert all(by_sender[r]["is_report"] for r in reports.values())


def test_a_deleted_message_shows_who_deleted_it(api: APIClient) -> None:
    make_relay(api)
    queue_id = spool("a@corp.test", "b@example.test")
    assert messages_delete(queue_ids=[queue_id], author="api:root") == 1
    (found,) = track(api, q=queue_id)
    assert kinds(found) == ["received", "deleted"]
    assert found["events"][-1]["detail"] == "deleted by api:root"


def test_search_by_recipient_subject_and_time(api: APIClient) -> None:
    make_relay(api)
    first = spool("a@corp.test", "boss@corp.test")
    second = spool(
        "x@elsewhere.test",
        "clerk@corp.test",
        data=b"Subject: Invoice 4711\r\n\r\nPay.\r\n",
    )
    Message.objects.filter(queue_id=first).update(received_at=timezone.now() - timedelta(days=3))
    assert [m["queue_id"] for m in track(api, q="boss@")] == [first]
    assert [m["queue_id"] for m in track(api, q="invoice 47")] == [second]
    assert [m["queue_id"] for m in track(api, q="corp.test")] == [second, first]  # newest first
    since = (timezone.now() - timedelta(days=1)).isoformat()
    assert [m["queue_id"] for m in track(api, q="corp.test", since=since)] == [second]
    until = (timezone.now() - timedelta(days=2)).date().isoformat()
    assert [m["queue_id"] for m in track(api, until=until)] == [first]
    assert track(api, q="nothing-like-this") == []
    response = api.get("/api/v1/tracking/", {"since": "yesterday"})
    assert response.status_code == 400 and "since" in response.json()


def test_only_readers_may_track(client: Any, db: None) -> None:
    assert client.get("/api/v1/tracking/").status_code in (401, 403)


def test_the_schema_describes_tracking(schema: dict[str, Any]) -> None:
    operation = schema["paths"]["/api/v1/tracking/"]["get"]
    assert {p["name"] for p in operation["parameters"]} >= {"q", "since", "until", "cursor"}
    assert operation["description"]
    event = schema["components"]["schemas"]["TrackingEvent"]["properties"]["event"]
    assert event["$ref"].endswith("/EventEnum")
    assert "delay notice" in schema["components"]["schemas"]["EventEnum"]["enum"]
