"""The console's Queues pages and the Dashboard's queue and throughput parts.

Messages enter the queue as the worker leaves them: a spool file plus ``message_ingest``;
retries and attempts come from real delivery runs against a Sink told to answer 451.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from mailadmin.models import Message, MessageState, QueueControl
from mailadmin.services.delivery.queue import spool_for
from mailadmin.services.delivery.traffic import traffic_add, traffic_add_rejected
from mailadmin.tests.factories import run, spool
from smtpworker.tests.sink import Sink

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("mailroot")]


@pytest.fixture
def sink(sink: Sink) -> Sink:
    # This module's pages need mail that stays in the queue: overriding `sink` (conftest's,
    # told to defer) makes every fixture built on it defer too.
    sink.mode = "451"
    return sink


def deferred(sender: str, *recipients: str) -> str:
    """A message that was tried once and got 451: state retry, one attempt."""
    queue_id = spool(sender, *recipients)
    assert run(queue_id) == "retry"
    return queue_id


def state(queue_id: str) -> str:
    return Message.objects.get(queue_id=queue_id).state


def listed(client: Client, query: str = "") -> list[str]:
    html = client.get(f"/queues/messages/?{query}&fragment=1").content.decode()
    return re.findall(r'data-queue-id="([A-Z0-9]+)"', html)


def test_it_sends_anonymous_users_to_the_login_page(relay: str) -> None:
    queue_id = spool("a@corp.test", "b@example.test")
    for url in [
        "/queues/",
        "/queues/?fragment=1",
        "/queues/messages/",
        "/queues/messages/?fragment=1",
        f"/queues/messages/{queue_id}/",
        f"/queues/messages/{queue_id}/delete/",
    ]:
        response = Client().get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith("/accounts/login/?next="), url
    assert Client().post("/queues/messages/action/", {"action": "delete"}).status_code == 302
    assert state(queue_id) == MessageState.QUEUED


def test_it_lists_the_queues_by_next_hop_with_their_state(admin_client: Client, relay: str) -> None:
    deferred("a@corp.test", "b@example.test")
    deferred("c@corp.test", "d@example.test")
    (queue,) = admin_client.get("/queues/").context["queues"]
    assert (queue["next_hop"], queue["state"], queue["messages"]) == (relay, "retry", 2)
    html = admin_client.get("/queues/?fragment=1").content.decode()
    assert relay in html and ">Retry<" in html and "451 4.3.0 Sink is told to defer" in html
    assert 'name="action" value="suspend"' in html
    tree = admin_client.get("/queues/").content.decode()
    assert re.search(r'href="/queues/"\s+aria-current="page"', tree)


def test_it_suspends_and_resumes_a_queue(
    admin_client: Client,
    relay: str,
    sink: Sink,
    enqueued: Callable[[], list[str]],
    django_capture_on_commit_callbacks: Any,
) -> None:
    queue_id = deferred("a@corp.test", "b@example.test")
    response = admin_client.post("/queues/action/", {"next_hop": relay, "action": "suspend"})
    assert response.status_code == 302
    assert QueueControl.objects.get(next_hop=relay).suspended
    html = admin_client.get("/queues/?fragment=1").content.decode()
    assert 'data-state="suspended"' in html and ">Suspended<" in html
    assert 'value="resume"' in html and 'value="suspend"' not in html
    page = admin_client.get("/queues/messages/", {"queue": relay}).content.decode()
    assert "queue-card" in page and ">Suspended<" in page
    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post("/queues/action/", {"next_hop": relay, "action": "resume"})
    assert not QueueControl.objects.get(next_hop=relay).suspended
    assert state(queue_id) == MessageState.QUEUED and enqueued() == [queue_id]


def test_filters_narrow_the_list(admin_client: Client, relay: str) -> None:
    old = spool("old@corp.test", "x@example.test")
    Message.objects.filter(queue_id=old).update(
        received_at=Message.objects.get(queue_id=old).received_at.replace(year=2000)
    )
    alice = deferred("alice@corp.test", "bob@example.test")
    carol = spool("carol@corp.test", "dave@other.test")
    assert listed(admin_client) == [carol, alice, old]
    assert listed(admin_client, "sender=alice") == [alice]
    assert listed(admin_client, "recipient=dave@") == [carol]
    assert listed(admin_client, "subject=quarterly&state=retry") == [alice]
    assert listed(admin_client, f"queue={relay}&age=lt1h") == [carol, alice]
    assert listed(admin_client, "age=gt1d") == [old]
    assert listed(admin_client, "server=Relay&sender=nobody") == []
    assert listed(admin_client, "server=Elsewhere") == []
    admin_client.post(
        "/queues/messages/action/", {"action": "delete", "queue_id": old, "confirm": "yes"}
    )
    assert old not in listed(admin_client)  # finished messages leave the default view
    assert old in listed(admin_client, "state=all") and listed(admin_client, "state=deleted") == [
        old
    ]


def test_the_live_region_keeps_the_filter(admin_client: Client, relay: str) -> None:
    page = admin_client.get("/queues/messages/", {"sender": "alice", "state": "retry"})
    refresh = re.search(r'<tbody data-refresh="([^"]+)"', page.content.decode())
    assert refresh is not None
    assert refresh[1] == "/queues/messages/?sender=alice&amp;state=retry&amp;fragment=1"
    form = page.context["filter"]
    assert form["sender"].value() == "alice" and form["state"].value() == "retry"


def test_it_pages_by_cursor_newest_first_without_counting(admin_client: Client, relay: str) -> None:
    ids = [spool(f"s{i}@corp.test", "b@example.test") for i in range(7)]
    first = admin_client.get("/queues/messages/?limit=3")
    assert [r["m"].queue_id for r in first.context["rows"]] == ids[::-1][:3]
    assert first.context["newer"] is None
    older = first.context["older"]
    assert older.startswith("/queues/messages/?cursor=")
    with CaptureQueriesContext(connection) as queries:
        second = admin_client.get(older + "&fragment=1")
    assert re.findall(r'data-queue-id="([A-Z0-9]+)"', second.content.decode()) == ids[::-1][3:6]
    sql = " ".join(q["sql"] for q in queries.captured_queries).upper()
    assert "COUNT(" not in sql and "OFFSET" not in sql
    assert admin_client.get("/queues/messages/?cursor=garbage").status_code == 404


def test_bulk_suspend_resume_and_retry_go_through_the_services(
    admin_client: Client,
    relay: str,
    enqueued: Callable[[], list[str]],
    django_capture_on_commit_callbacks: Any,
) -> None:
    a, b = deferred("a@corp.test", "x@example.test"), deferred("b@corp.test", "y@example.test")
    response = admin_client.post(
        "/queues/messages/action/",
        {"action": "suspend", "queue_id": [a, b], "next": "/queues/messages/?state=retry"},
    )
    assert response.status_code == 302 and response["Location"] == "/queues/messages/?state=retry"
    assert {state(a), state(b)} == {MessageState.SUSPENDED}
    assert run(a) == "not due"
    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post("/queues/messages/action/", {"action": "resume", "queue_id": [a]})
    assert (state(a), state(b)) == (MessageState.QUEUED, MessageState.SUSPENDED)
    assert enqueued() == [a]
    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post("/queues/messages/action/", {"action": "retry", "queue_id": [a, b]})
    assert state(b) == MessageState.SUSPENDED  # retry leaves suspended messages alone
    # a's task from the resume still waits in the broker: Retry now sends no second one.
    assert enqueued() == [a]
    followed = admin_client.post(
        "/queues/messages/action/", {"action": "suspend", "queue_id": [b]}, follow=True
    )
    assert "could not be" in followed.content.decode()
    off_site = admin_client.post(
        "/queues/messages/action/", {"action": "retry", "queue_id": [a], "next": "//evil.test/"}
    )
    assert off_site["Location"] == "/queues/messages/"


def test_delete_asks_first(
    admin_client: Client, relay: str, django_capture_on_commit_callbacks: Any
) -> None:
    queue_id = deferred("a@corp.test", "b@example.test")
    confirm = admin_client.get(f"/queues/messages/{queue_id}/delete/")
    assert confirm.status_code == 200 and 'name="confirm" value="yes"' in confirm.content.decode()
    unconfirmed = admin_client.post(
        "/queues/messages/action/", {"action": "delete", "queue_id": queue_id}
    )
    html = unconfirmed.content.decode()
    assert (
        unconfirmed.status_code == 200 and "Delete 1 message?" in html and "Nobody is told" in html
    )
    assert admin_client.post(f"/queues/messages/{queue_id}/delete/").status_code == 200
    assert state(queue_id) == MessageState.RETRY
    assert queue_id in spool_for("Relay").ids()
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            "/queues/messages/action/",
            {"action": "delete", "queue_id": queue_id, "confirm": "yes"},
        )
    assert response.status_code == 302
    assert state(queue_id) == MessageState.DELETED
    assert queue_id not in spool_for("Relay").ids()


def test_delete_with_ndr_tells_the_sender(admin_client: Client, relay: str) -> None:
    queue_id = deferred("a@corp.test", "b@example.test")
    page = admin_client.post(
        "/queues/messages/action/", {"action": "delete_ndr", "queue_id": queue_id}
    )
    assert "non-delivery report" in page.content.decode()
    assert state(queue_id) == MessageState.RETRY
    admin_client.post(
        "/queues/messages/action/", {"action": "delete_ndr", "queue_id": queue_id, "confirm": "yes"}
    )
    assert state(queue_id) == MessageState.DELETED
    report = Message.objects.get(is_report=True)
    assert list(report.recipients.values_list("address", flat=True)) == ["a@corp.test"]


def test_the_detail_shows_envelope_recipients_attempts_and_headers(
    admin_client: Client, relay: str
) -> None:
    queue_id = deferred("a@corp.test", "b@example.test", "c@example.test")
    run(queue_id)
    response = admin_client.get(f"/queues/messages/{queue_id}/")
    html = response.content.decode()
    assert response.context["headers"][:3] == [
        ("From", "a@corp.test"),
        ("To", "b@example.test"),
        ("Subject", "Quarterly numbers"),
    ]
    assert "Message-ID" in html and "&lt;m1@corp.test&gt;" in html
    assert html.count('class="code code-4xx">451</span>') >= 2 + 2  # 2 attempts, 2 recipients
    assert "c@example.test" in html and "127.0.0.1" in html
    assert 'Delivery attempts <span class="muted">(2)</span>' in html
    assert "Delete with NDR…" in html
    assert admin_client.get("/queues/messages/NOSUCHMESSAGE/").status_code == 404


def test_operators_see_no_write_controls_and_are_refused(
    operator_user: User, relay: str, enqueued: Callable[[], list[str]]
) -> None:
    queue_id = deferred("a@corp.test", "b@example.test")
    client = Client()
    client.force_login(operator_user)
    for url in ["/queues/", "/queues/messages/", f"/queues/messages/{queue_id}/"]:
        html = client.get(url).content.decode()
        assert 'name="queue_id"' not in html and 'name="action"' not in html, url
        assert "Delete…" not in html and 'method="post" action="/queues' not in html, url
    for url, data in [
        ("/queues/action/", {"next_hop": relay, "action": "suspend"}),
        ("/queues/messages/action/", {"action": "suspend", "queue_id": queue_id}),
        ("/queues/messages/action/", {"action": "delete", "queue_id": queue_id, "confirm": "yes"}),
        (f"/queues/messages/{queue_id}/delete/", {}),
    ]:
        assert client.post(url, data).status_code == 403, url
    assert state(queue_id) == MessageState.RETRY and not QueueControl.objects.exists()
    assert enqueued() == []


def test_it_refuses_a_post_without_the_csrf_token(admin_user: User, relay: str) -> None:
    queue_id = deferred("a@corp.test", "b@example.test")
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    data = {"action": "suspend", "queue_id": queue_id}
    assert client.post("/queues/messages/action/", data).status_code == 403
    assert (
        client.post("/queues/action/", {"next_hop": relay, "action": "suspend"}).status_code == 403
    )
    assert state(queue_id) == MessageState.RETRY
    page = client.get("/queues/messages/").content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert token is not None
    response = client.post("/queues/messages/action/", {**data, "csrfmiddlewaretoken": token[1]})
    assert response.status_code == 302 and state(queue_id) == MessageState.SUSPENDED
    for url in ["/queues/", "/queues/messages/", f"/queues/messages/{queue_id}/"]:
        html = client.get(url).content.decode()
        for form in re.findall(r"<form[^>]*method=\"post\".*?</form>", html, flags=re.S):
            assert "csrfmiddlewaretoken" in form, (url, form[:200])


def test_the_queue_shape_counts_waiting_messages_by_age(admin_client: Client, relay: str) -> None:
    now = time.time()
    for hours in (0.5, 0.9, 3, 23, 25, 72):  # the buckets end at 1 h, 6 h and 1 day
        spool("a@corp.test", "b@example.test", at=now - hours * 3600)
    (row,) = admin_client.get("/dashboard/?fragment=1").context["shape"]["rows"]
    buckets = [row[key] for key in ("lt_1h", "h1_6", "h6_24", "gt_1d", "total")]
    assert (row["next_hop"], buckets) == (relay, [2, 1, 1, 2, 6])


def test_the_dashboard_shows_counts_throughput_and_queue_shape(
    admin_client: Client, relay: str
) -> None:
    deferred("a@corp.test", "b@example.test")
    spool("c@corp.test", "d@example.test")
    traffic_add("Relay", delivered=5, bounced=1)
    traffic_add_rejected("Relay", "relay denied", 3)
    response = admin_client.get("/dashboard/?fragment=1")
    data = response.context
    counts = {key: n for key, _label, n in data["message_counts"]["open"]}
    assert counts == {"queued": 1, "active": 0, "retry": 1, "suspended": 0}
    hour = data["traffic"]["hour"]
    assert {name: n for name, _label, n in hour["totals"]} == {
        "accepted": 2,
        "delivered": 5,
        "deferred": 1,
        "bounced": 1,
    }
    assert hour["rejected"] == [("relay denied", 3)]
    assert hour["summary"] == (
        "Last hour: 2 accepted, 5 delivered, 1 deferred, 1 bounced, 3 rejected (relay denied 3)."
    )
    (row,) = data["shape"]["rows"]
    assert (row["next_hop"], row["lt_1h"], row["total"]) == (relay, 2, 2)
    html = response.content.decode()
    chart_json = re.search(
        r'<script id="dash-chart-data" type="application/json">(.*?)</script>', html
    )
    assert chart_json is not None
    charts = json.loads(chart_json[1])
    assert sum(charts["hour"]["accepted"]) == 2 and sum(charts["day"]["delivered"]) == 5
    ((reason, counts),) = charts["hour"]["rejected"].items()
    assert reason == "relay denied" and sum(counts) == 3 and len(counts) == len(charts["hour"]["t"])
    assert len(charts["day"]["t"]) in (24, 25)
    assert 'id="chart-hour" data-chart="hour" data-live-keep' in html
    assert "Show as a table" in html and 'id="chart-hour-summary"' in html
    page = admin_client.get("/dashboard/").content.decode()
    assert "vendor/uplot/uPlot.min.css" in page and "mailadmin/charts.js" in page
    assert 'class="flashes"' not in page  # the counts must not pass for Django's messages
