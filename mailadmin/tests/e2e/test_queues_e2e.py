"""The Queues pages and the Dashboard's charts in the browser.

A relay server whose smart host (a Sink) answers 451 holds deferred mail, a partner
domain's host refuses connections, and a few messages wait untried. In the browser:
suspend a message, then delete it (through the confirmation), read a message's history,
and see the traffic chart drawn. Screenshots go to test-artifacts/screens/4x-*.png.
"""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from playwright.sync_api import Browser, Page, expect
from rest_framework.test import APIClient

from mailadmin.models import Message, MessageState
from mailadmin.services.delivery.traffic import traffic_add, traffic_add_rejected
from mailadmin.tests.e2e.factories import (
    dark_context,
    log_in,
    log_in_to,
    phone_page,
    received_ago,
    shot,
    spool_mail,
)
from mailadmin.tests.factories import run
from smtpworker.tests.factories import free_port
from smtpworker.tests.sink import Sink

MAIL = [  # sender, recipient, subject, minutes ago
    ("alice@corp.example.com", "bob@example.net", "Quarterly numbers", 38),
    ("payroll@corp.example.com", "bank@example.net", "Payroll batch 2025-12", 130),
    ("carol@corp.example.com", "dan@example.net", "Re: Site visit on Thursday", 1570),
    ("noreply@corp.example.com", "ops@example.net", "Nightly backup report", 3),
    ("erin@corp.example.com", "frank@partner.example.org", "Contract draft v3", 412),
    ("erin@corp.example.com", "grace@partner.example.org", "Purchase order 4471", 21),
]


@pytest.fixture
def sink(sink: Sink) -> Sink:
    # This module's pages need mail that stays in the queue: overriding `sink` (conftest's,
    # told to defer) makes every fixture built on it defer too.
    sink.mode = "451"
    return sink


@pytest.fixture
def queued(corp_relay: tuple[APIClient, int]) -> dict[str, str]:
    """Subject -> queue id, for mail deferred, refused and not yet tried."""
    api, server = corp_relay
    api.post(
        "/api/v1/domains/",
        {
            "server": server,
            "name": "partner.example.org",
            "type": "remote",
            "relay_allowed": True,
            "smart_host": f"[127.0.0.1]:{free_port()}",  # nobody listens: refused
            "forward_all_to_smart_host": True,
        },
        format="json",
    )
    ids = {}
    for n, (sender, to, subject, age) in enumerate(MAIL):
        ids[subject] = spool_mail(n, sender, to, subject)
        if n not in (3, 5):  # two stay untried (Ready)
            assert run(ids[subject]) == "retry"
        received_ago(ids[subject], age)
    past_traffic()
    return ids


def past_traffic() -> None:
    """A working day's counters (every minute of the last hour, every 5th before), so
    the charts have a shape."""
    now = timezone.now()
    for minutes in [*range(0, 60), *range(60, 24 * 60, 5)]:
        when = now - timedelta(minutes=minutes)
        weight = 1 if minutes < 60 else 5
        office = 3 if 8 <= when.hour < 18 else 0
        busy = 4 + office + round(2 * math.sin(minutes / 5)) + (minutes * 7919) % 2
        traffic_add("CorpRelay", when=when, accepted=busy * weight, delivered=(busy - 1) * weight)
        if minutes % 3 == 0:
            traffic_add("CorpRelay", when=when, deferred=weight)
        if minutes % 4 == 0:
            traffic_add_rejected("CorpRelay", "relay denied", (1 + minutes % 3) * weight, when=when)
        if minutes % 10 == 0:
            traffic_add("CorpRelay", when=when, bounced=1)
            traffic_add_rejected("CorpRelay", "authentication failed", 1, when=when)


def test_suspend_and_delete_a_queued_message(
    page: Page, live_server: Any, queued: dict[str, str], sink: Sink, browser: Browser
) -> None:
    base = live_server.url
    log_in_to(page, base, "Queues")
    expect(page.get_by_role("cell", name=sink.smart_host, exact=True)).to_be_visible()
    expect(page.get_by_role("cell", name="451 4.3.0 Sink is told to defer")).to_be_visible()
    shot(page, "40-queues")

    page.get_by_role("link", name=sink.smart_host).click()
    expect(page.get_by_role("heading", name=sink.smart_host, level=1)).to_be_visible()
    box = page.get_by_role(
        "checkbox", name="Select “Quarterly numbers” from alice@corp.example.com"
    )
    box.check()
    expect(page.get_by_text("1 message selected")).to_be_visible()
    page.get_by_role("toolbar", name="Actions on the selected messages").get_by_role(
        "button", name="Suspend"
    ).click()
    expect(page.get_by_role("status")).to_contain_text("1 message suspended.")
    row = page.get_by_role("row").filter(has_text="Quarterly numbers")
    expect(row.get_by_text("Suspended", exact=True)).to_be_visible()
    assert Message.objects.get(queue_id=queued["Quarterly numbers"]).state == "suspended"

    # A refresh of the list keeps what is ticked.
    payroll = page.get_by_role("checkbox", name="Select “Payroll batch 2025-12”", exact=False)
    payroll.check()
    page.get_by_role("heading", level=1).click()  # focus leaves the list, so it may refresh
    newcomer = spool_mail(99, "zoe@corp.example.com", "yan@example.net", "Lunch?")
    expect(page.locator(f'tr[data-queue-id="{newcomer}"]')).to_be_visible(timeout=10_000)
    expect(payroll).to_be_checked()
    payroll.uncheck()
    shot(page, "43-queue-messages")

    box.check()
    page.get_by_role("button", name="Delete…").click()
    dialog = page.get_by_role("alertdialog", name="Delete 1 message?")
    expect(dialog).to_contain_text("Quarterly numbers")
    dialog.get_by_role("button", name="Delete").click()
    expect(page.get_by_role("status")).to_contain_text("1 message deleted.")
    expect(page.get_by_role("row").filter(has_text="Quarterly numbers")).to_have_count(0)
    assert Message.objects.get(queue_id=queued["Quarterly numbers"]).state == MessageState.DELETED

    page.get_by_role("navigation", name="Breadcrumb").get_by_role("link", name="Queues").click()
    page.get_by_role("link", name="All messages in the queue").click()
    page.get_by_role("link", name="Contract draft v3").click()
    expect(page.get_by_role("heading", name="Contract draft v3", level=1)).to_be_visible()
    expect(page.get_by_role("heading", name="Delivery attempts (1)")).to_be_visible()
    expect(page.get_by_role("rowheader", name="Message-ID")).to_be_visible()
    shot(page, "41-message")

    phone = phone_page(browser, page, f"{base}/queues/messages/")
    expect(phone.get_by_role("link", name="Contract draft v3")).to_be_visible()
    shot(phone, "46-narrow-queue-messages")
    phone.context.close()


def test_the_dashboard_draws_the_traffic(
    page: Page, live_server: Any, queued: dict[str, str], browser: Browser
) -> None:
    base = live_server.url
    log_in(page, base)
    page.get_by_role("treeitem", name="Dashboard").click()
    hour = page.get_by_role("figure", name="Last hour")
    expect(hour.locator("canvas")).to_be_visible()
    expect(hour.locator(".u-legend")).to_contain_text("Rejected: relay denied")
    expect(page.get_by_role("figure", name="Last 24 hours").locator("canvas")).to_be_visible()
    expect(page.get_by_role("heading", name="Queue shape", exact=False)).to_be_visible()
    canvas = hour.locator("canvas")
    # The chart survives the panels' refresh (same canvas, new data).
    canvas.evaluate("el => { el.dataset.marker = 'first'; }")
    page.evaluate(
        "() => new Promise((done) => document.addEventListener('live:refreshed', done, {once: true}))"
    )
    expect(hour.locator("canvas[data-marker=first]")).to_be_visible()
    page.locator("#main").evaluate(
        """main => {
            const to = main.querySelector("#dash-messages").getBoundingClientRect().top;
            main.scrollBy(0, to - main.getBoundingClientRect().top - 12);
        }"""
    )
    shot(page, "42-dashboard-charts")
    page.locator("#main").evaluate("main => main.scrollBy(0, 520)")
    shot(page, "45-dashboard-queue-shape")

    dark = dark_context(browser, page)
    night = dark.new_page()
    night.goto(f"{base}/dashboard/")
    expect(night.get_by_role("figure", name="Last hour").locator("canvas")).to_be_visible()
    shot(night, "44-dark-dashboard-charts")
    dark.close()
