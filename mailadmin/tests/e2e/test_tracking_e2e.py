"""Message Tracking in the browser: search, correct a bad time, open a message's history.

A relay whose smart host (a Sink) first answers 451 and then takes the mail holds a
message tried three times; a few others sit in the queue or were delivered at once.
Screenshots go to test-artifacts/screens/5x-*.png.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from playwright.sync_api import Browser, Page, expect
from rest_framework.test import APIClient

from mailadmin.tests.e2e.factories import log_in_to, phone_page, received_ago, shot, spool_mail
from mailadmin.tests.factories import run
from smtpworker.tests.sink import Sink

MAIL = [  # sender, recipient, subject, minutes ago
    ("alice@corp.example.com", "bob@example.net", "Quarterly numbers", 95),
    ("alice@corp.example.com", "carol@example.net", "Lunch on Friday?", 50),
    ("payroll@corp.example.com", "bank@example.net", "Payroll batch 2025-12", 30),
    ("noreply@corp.example.com", "ops@example.net", "Nightly backup report", 5),
]


@pytest.fixture
def tracked(corp_relay: tuple[APIClient, int], sink: Sink) -> dict[str, str]:
    """Subject -> queue id; "Quarterly numbers" was deferred twice, then delivered."""
    ids = {}
    for n, (sender, to, subject, age) in enumerate(MAIL):
        ids[subject] = spool_mail(n, sender, to, subject)
        received_ago(ids[subject], age, auth_user=sender.split("@")[0], node="mx-node-1")
    sink.mode = "451"
    for subject in ("Quarterly numbers", "Quarterly numbers", "Payroll batch 2025-12"):
        assert run(ids[subject]) == "retry"
    sink.mode = "accept"
    assert run(ids["Quarterly numbers"]) == "delivered"
    assert run(ids["Lunch on Friday?"]) == "delivered"
    return ids


def test_search_then_follow_a_message_from_arrival_to_delivery(
    page: Page, live_server: Any, tracked: dict[str, str], sink: Sink, browser: Browser
) -> None:
    base = live_server.url
    log_in_to(page, base, "Message Tracking")
    search = page.get_by_role("search", name="Search")

    # A time the console cannot read is shown beside its field; nothing is searched.
    search.get_by_label("Received from").fill("yesterday")
    search.get_by_role("button", name="Search").click()
    expect(page.get_by_role("alert")).to_contain_text("The search was not run")
    expect(search.get_by_label("Received from")).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_text("'yesterday' is not an ISO 8601 date or date-time.")).to_be_visible()

    since = (timezone.localtime() - timedelta(hours=3)).strftime("%Y-%m-%d %H:%M")
    search.get_by_label("Received from").fill(since)
    search.get_by_label("Sender").fill("alice@")
    search.get_by_role("button", name="Search").click()
    assert "sender=alice%40" in page.url  # a GET search: it can be bookmarked
    results = page.get_by_role("table", name="Messages that match the search, newest first")
    expect(results.get_by_role("row")).to_have_count(3)  # the header and two messages
    row = results.get_by_role("row").filter(has_text="Quarterly numbers")
    expect(row).to_contain_text(tracked["Quarterly numbers"])
    expect(row.get_by_text("Delivered", exact=True)).to_be_visible()
    expect(results).not_to_contain_text("Payroll batch")
    shot(page, "50-tracking-search")

    row.get_by_role("link", name="Quarterly numbers").click()
    expect(page.get_by_role("heading", name="Quarterly numbers", level=1)).to_be_visible()
    history = page.get_by_role("list", name="History")
    expect(history.get_by_role("heading", level=3)).to_have_text(
        ["Received", "Attempt 1: Deferred", "Attempt 2: Deferred", "Attempt 3: Delivered"]
    )
    received = history.get_by_role("listitem").first
    for fact in ["127.0.0.9", "alice", "mx-node-1", "CorpRelay", "bob@example.net"]:
        expect(received).to_contain_text(fact)
    expect(history).to_contain_text("451 4.3.0 Sink is told to defer")
    expect(history.get_by_role("listitem").last).to_contain_text("250")
    expect(page.get_by_text("Delivered to every recipient.")).to_be_visible()
    expect(page.get_by_role("link", name="Open in the queue")).to_have_count(0)
    shot(page, "51-tracking-history")

    # Back to the same results, then a message still waiting, with the way to its queue.
    page.get_by_role("navigation", name="Breadcrumb").get_by_role(
        "link", name="Search results"
    ).click()
    expect(search.get_by_label("Sender")).to_have_value("alice@")
    search.get_by_label("Sender").fill("")
    search.get_by_label("Subject").fill("payroll")
    search.get_by_role("button", name="Search").click()
    page.get_by_role("link", name="Payroll batch 2025-12").click()
    expect(page.get_by_text("Retry: waiting for the next attempt.").first).to_be_visible()
    page.get_by_role("link", name="Open in the queue").click()
    expect(page.get_by_role("heading", name="Payroll batch 2025-12", level=1)).to_be_visible()
    expect(page.get_by_role("heading", name="Delivery attempts (1)")).to_be_visible()

    phone = phone_page(browser, page, f"{base}/tracking/{tracked['Quarterly numbers']}/")
    expect(phone.get_by_role("heading", name="Attempt 3: Delivered")).to_be_attached()
    shot(phone, "52-narrow-tracking-history")
    phone.context.close()
