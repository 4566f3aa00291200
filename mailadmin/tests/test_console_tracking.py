"""The console's Message Tracking: the search, its results and a message's history.

Messages enter the record as the worker leaves them (a spool file plus ``message_ingest``);
attempts come from real delivery runs against a Sink, as in test_tracking (the API's side
of the same selector and history).
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from mailadmin.models import Message, MessageState
from mailadmin.services.delivery.actions import messages_delete
from mailadmin.tests.factories import deferred_until_expired, make_relay, run, spool
from mailadmin.tracking import parse_moment
from smtpworker.tests.sink import Sink

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("mailroot")]

INVOICE = b"From: x@elsewhere.test\r\nSubject: Invoice 4711\r\n\r\nPay.\r\n"


@pytest.fixture
def mail(api: APIClient) -> dict[str, str]:
    """Four messages on two servers, a day apart from the oldest to the newest."""
    make_relay(api)
    make_relay(api, name="Edge", bindings=["127.0.0.3:2525"], default_domain="edge.test")
    found = {
        "boss": spool("a@corp.test", "boss@corp.test"),
        "invoice": spool("x@elsewhere.test", "clerk@corp.test", data=INVOICE),
        "edge": spool("b@corp.test", "ops@example.test", server="Edge"),
        "two": spool("c@corp.test", "d@example.test", "e@example.test"),
    }
    now = timezone.now()
    for hours, name in enumerate(["two", "edge", "invoice", "boss"]):
        received = now - timedelta(hours=8 * hours)
        Message.objects.filter(queue_id=found[name]).update(received_at=received)
    return found


def listed(client: Client, **params: str) -> list[str]:
    response = client.get("/tracking/", params)
    assert response.status_code == 200, response.content[:500]
    return re.findall(r'<tr data-queue-id="([A-Z0-9]+)"', response.content.decode())


def page(client: Client, queue_id: str, query: str = "") -> str:
    response = client.get(f"/tracking/{queue_id}/{query}")
    assert response.status_code == 200
    return re.sub(r"\s+", " ", response.content.decode())


def test_it_sends_anonymous_users_to_the_login_page(mail: dict[str, str]) -> None:
    for url in ["/tracking/", "/tracking/?sender=a%40corp.test", f"/tracking/{mail['boss']}/"]:
        response = Client().get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith("/accounts/login/?next="), url


def test_operators_read_it_and_users_in_no_group_may_not(
    mail: dict[str, str], operator_user: User
) -> None:
    operator = Client()
    operator.force_login(operator_user)
    assert mail["boss"] in listed(operator, sender="a@corp")
    assert operator.get(f"/tracking/{mail['boss']}/").status_code == 200
    nobody = Client()
    nobody.force_login(User.objects.create_user("nobody", password="nobody-password"))
    assert nobody.get("/tracking/").status_code == 403
    assert nobody.get(f"/tracking/{mail['boss']}/").status_code == 403


def test_it_is_a_node_of_the_console_tree(admin_client: Client, mail: dict[str, str]) -> None:
    html = admin_client.get("/tracking/").content.decode()
    assert re.search(r'href="/tracking/"\s+aria-current="page"', html)
    assert '<form method="get" action="/tracking/"' in html and 'role="search"' in html
    for label in ["Queue ID", "Sender", "Recipient", "Subject", "Server", "Received from"]:
        assert re.search(rf'<label for="id_\w+">{label}</label>', html), label
    elsewhere = admin_client.get("/queues/").content.decode()
    assert re.search(r'<a role="treeitem" href="/tracking/">', elsewhere)


def test_it_lists_every_message_newest_first_without_criteria(
    admin_client: Client, mail: dict[str, str]
) -> None:
    assert listed(admin_client) == [mail["two"], mail["edge"], mail["invoice"], mail["boss"]]
    html = admin_client.get("/tracking/").content.decode()
    row = html[html.index(f'data-queue-id="{mail["two"]}"') :].split("</tr>")[0]
    for shown in [mail["two"], "Relay", "c@corp.test", "d@example.test", "+1", "Ready"]:
        assert shown in row, shown
    assert f'href="/tracking/{mail["two"]}/"' in row and ">Quarterly numbers</a>" in row


def test_it_searches_by_each_criterion(admin_client: Client, mail: dict[str, str]) -> None:
    assert listed(admin_client, queue_id=mail["edge"].lower()) == [mail["edge"]]  # any case
    assert listed(admin_client, queue_id=mail["edge"][:-1]) == []  # exact, not a prefix
    assert listed(admin_client, sender="A@CORP") == [mail["boss"]]
    assert listed(admin_client, recipient="example.test") == [mail["two"], mail["edge"]]
    assert listed(admin_client, recipient="e@example") == [mail["two"]]  # one row, two matches
    assert listed(admin_client, subject="invoice 47") == [mail["invoice"]]
    assert listed(admin_client, server="Edge") == [mail["edge"]]
    now = timezone.now()
    since = (now - timedelta(hours=12)).strftime("%Y-%m-%d %H:%M")
    assert listed(admin_client, since=since) == [mail["two"], mail["edge"]]
    until = (now - timedelta(hours=20)).isoformat()
    assert listed(admin_client, until=until) == [mail["boss"]]
    assert listed(admin_client, until=(now - timedelta(days=3)).date().isoformat()) == []
    day = timezone.localdate(now - timedelta(hours=24)).isoformat()
    assert mail["boss"] in listed(admin_client, since=day, until=day)  # a date: the whole day
    # Criteria add up.
    assert listed(admin_client, sender="corp.test", recipient="example", server="Relay") == [
        mail["two"]
    ]
    html = admin_client.get("/tracking/", {"subject": "nothing like this"}).content.decode()
    assert "No message matches the search." in html


def test_it_shows_bad_criteria_beside_their_fields_and_searches_nothing(
    admin_client: Client, mail: dict[str, str]
) -> None:
    response = admin_client.get(
        "/tracking/",
        {"queue_id": "ABC-123", "since": "yesterday", "until": "2024-02-30", "sender": "a@"},
    )
    assert response.status_code == 400
    html = response.content.decode()
    assert 'role="alert"' in html and "The search was not run" in html
    assert 'data-queue-id="' not in html
    for name, text in [
        ("queue_id", "A queue ID has only letters and digits."),
        ("since", "&#x27;yesterday&#x27; is not an ISO 8601 date or date-time."),
        ("until", "&#x27;2024-02-30&#x27; is not an ISO 8601 date or date-time."),
    ]:
        error = re.search(rf'<p class="field-error" id="id_{name}-error">([^<]*)</p>', html)
        assert error is not None and text in error.group(1), name
        tag = re.search(rf'<input [^>]*id="id_{name}"[^>]*>', html)
        assert tag is not None and 'aria-invalid="true"' in tag.group(0), name
        assert f"id_{name}-error" in tag.group(0)  # aria-describedby
    assert 'value="yesterday"' in html and 'value="a@"' in html  # what was typed stays
    response = admin_client.get("/tracking/", {"since": "2025-06-02", "until": "2025-06-01 12:00"})
    assert response.status_code == 400
    assert "This must be later than “Received from”." in response.content.decode()
    response = admin_client.get("/tracking/", {"until": "9999-12-31"})  # its end overflows
    assert response.status_code == 400 and "is out of range." in response.content.decode()


def test_it_and_the_api_read_times_alike(api: APIClient, mail: dict[str, str]) -> None:
    assert parse_moment("") is None
    day = parse_moment("2025-06-01", end_of_day=True)
    assert day is not None and day.isoformat().startswith("2025-06-02T00:00:00")
    with pytest.raises(ValueError, match="is not an ISO 8601 date"):
        parse_moment("2025-02-30")
    # A date that does not exist was a 500 from the API before the two shared the parser.
    response = api.get("/api/v1/tracking/", {"since": "2025-02-30"})
    assert response.status_code == 400 and "since" in response.json()
    response = api.get("/api/v1/tracking/", {"until": "9999-12-31"})
    assert response.json() == {"until": ["'9999-12-31' is out of range."]}
    # A date as the upper bound includes that day (Python 3.11 reads a bare date as a
    # date-time too, which made it midnight before).
    today = timezone.localdate().isoformat()
    found = api.get("/api/v1/tracking/", {"until": today}).json()["results"]
    assert [m["queue_id"] for m in found][0] == mail["two"]


def test_it_pages_by_cursor_without_counting(admin_client: Client, mail: dict[str, str]) -> None:
    response = admin_client.get("/tracking/", {"sender": "corp.test", "limit": "2"})
    html = response.content.decode()
    assert re.findall(r'<tr data-queue-id="([A-Z0-9]+)"', html) == [mail["two"], mail["edge"]]
    older = re.search(r'<a class="btn" href="([^"]+)" rel="next">Older', html)
    assert older is not None and "sender=corp.test" in older.group(1)
    with CaptureQueriesContext(connection) as queries:
        second = admin_client.get(older.group(1).replace("&amp;", "&")).content.decode()
    assert re.findall(r'<tr data-queue-id="([A-Z0-9]+)"', second) == [mail["boss"]]
    sql = " ".join(q["sql"] for q in queries.captured_queries).upper()
    assert "COUNT(" not in sql and " OFFSET " not in sql
    assert 'rel="prev">' in second and "Newest</a>" in second
    assert admin_client.get("/tracking/", {"cursor": "bogus"}).status_code == 404


def test_the_history_shows_arrival_and_every_attempt(
    admin_client: Client, sink: Sink, relay: str
) -> None:
    sink.mode = "451"
    queue_id = spool("a@corp.test", "b@example.test")
    Message.objects.filter(queue_id=queue_id).update(auth_user="alice", node="mx-node-1")
    assert run(queue_id) == "retry"
    sink.mode = "accept"
    assert run(queue_id) == "delivered"

    html = page(admin_client, queue_id, "?sender=a%40corp.test&junk=1")
    titles = re.findall(r"<h3>([^<]+)</h3>", html)
    assert titles == ["Received", "Attempt 1: Deferred", "Attempt 2: Delivered"]
    received, first, second = html.split('<li class="ev"')[1:4]
    for fact in ["127.0.0.9", "alice", "Relay", "mx-node-1", "a@corp.test", "b@example.test"]:
        assert fact in received, fact
    assert 'data-kind="deferred"' in first and 'data-kind="delivered"' in second
    assert '<span class="code code-4xx">451</span> 4.3.0 Sink is told to defer' in first
    assert '<span class="code code-2xx">250</span>' in second
    assert sink.smart_host.strip("[]").split("]")[0] in first  # the host tried
    assert "b@example.test" in first and "b@example.test" in second
    assert "Delivered to every recipient." in html
    assert f'href="/queues/messages/{queue_id}/"' not in html  # it left the queue
    # The way back keeps the search, and only the search.
    assert 'href="/tracking/?sender=a%40corp.test">Search results</a>' in html
    assert re.search(r'href="/tracking/"\s+aria-current="page"', html)


def test_a_message_still_queued_links_to_its_queue_page(
    admin_client: Client, sink: Sink, relay: str
) -> None:
    sink.mode = "451"
    queue_id = spool("a@corp.test", "b@example.test")
    assert run(queue_id) == "retry"
    html = page(admin_client, queue_id)
    assert f'href="/queues/messages/{queue_id}/"' in html
    assert "Retry: waiting for the next attempt. Next attempt in" in html
    assert re.findall(r"<h3>([^<]+)</h3>", html)[-1] == "Now in the queue"
    suspended = spool("a@corp.test", "c@example.test")
    Message.objects.filter(queue_id=suspended).update(state=MessageState.SUSPENDED)
    assert "Suspended: held by an operator until resumed." in page(admin_client, suspended)


@pytest.mark.django_db(transaction=True)
def test_the_history_ends_with_the_notices_the_ndr_or_the_deletion(
    admin_client: Client, api: APIClient, sink: Sink
) -> None:
    queue_id = deferred_until_expired(api, sink)
    reports = {m.subject: m.queue_id for m in Message.objects.filter(is_report=True)}

    html = page(admin_client, queue_id)
    titles = re.findall(r"<h3>([^<]+)</h3>", html)
    assert titles[0] == "Received" and titles[-1] == "Non-delivery report sent"
    assert {"Delay notice sent", "Not delivered", "Attempt 1: Deferred"} <= set(titles)
    assert "4.4.7 Message expired in the queue" in html
    for subject in ["Delayed: Quarterly numbers", "Undeliverable: Quarterly numbers"]:
        assert f'href="/tracking/{reports[subject]}/"' in html
    assert "Not delivered to 1 of 1 recipient. The sender was sent a non-delivery report." in html
    report = page(admin_client, reports["Undeliverable: Quarterly numbers"])
    assert "a delivery report this site generated" in report

    deleted = spool("a@corp.test", "c@example.test")
    assert messages_delete(queue_ids=[deleted], author="console:root") == 1
    html = page(admin_client, deleted)
    assert re.findall(r"<h3>([^<]+)</h3>", html) == ["Received", "Deleted"]
    assert "Deleted by console:root" in html
    assert "Left the queue: deleted by console:root. No non-delivery report was sent." in html


def test_an_unknown_message_is_not_found(admin_client: Client, mail: dict[str, str]) -> None:
    assert admin_client.get("/tracking/NOSUCHMESSAGE/").status_code == 404


def test_it_reads_the_page_in_a_bounded_number_of_queries(
    admin_client: Client, mail: dict[str, str], api: APIClient
) -> None:
    with CaptureQueriesContext(connection) as few:
        admin_client.get("/tracking/")
    for n in range(6):
        spool(f"more{n}@corp.test", "x@example.test", "y@example.test")
    with CaptureQueriesContext(connection) as more:
        admin_client.get("/tracking/")
    assert len(more.captured_queries) == len(few.captured_queries)


def test_it_keeps_a_deleted_servers_name_as_a_choice(
    admin_client: Client, mail: dict[str, str], settings: Any
) -> None:
    html = admin_client.get("/tracking/", {"server": "Gone"}).content.decode()
    assert '<option value="Gone" selected>Gone</option>' in html
    assert "No message matches the search." in html
