"""Helpers the browser tests share: plain functions and constants (fixtures are in conftest).

Browser tests import what they need from here (or from ``mailadmin.tests.factories``),
never from another test module.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from django.utils import timezone
from playwright.sync_api import Browser, BrowserContext, Page, expect

from mailadmin.models import Message
from mailadmin.tests.factories import spool

ARTIFACTS = Path(__file__).resolve().parents[3] / "test-artifacts"
SCREENS = ARTIFACTS / "screens"
ADMIN_PASSWORD = "e2e-admin-password"


def log_in(page: Page, base: str) -> None:
    """Log in to the console as the e2e admin, from its login page."""
    page.goto(f"{base}/")
    expect(page).to_have_url(f"{base}/accounts/login/?next=/")
    page.get_by_label("User name").fill("admin")
    page.get_by_label("Password").fill(ADMIN_PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("tree", name="Console tree")).to_be_visible()
    page.wait_for_load_state()  # the console's script modules have run


def log_in_to(page: Page, base: str, node: str) -> None:
    """Log in, then open ``node`` of the console tree and wait for its page's heading."""
    log_in(page, base)
    page.get_by_role("treeitem", name=node).click()
    expect(page.get_by_role("heading", name=node, level=1)).to_be_visible()


def shot(page: Page, name: str) -> None:
    """A screenshot for a person to look at, as test-artifacts/screens/<name>.png."""
    SCREENS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENS / f"{name}.png"))


def narrow_context(browser: Browser, page: Page) -> BrowserContext:
    """A phone-sized browser context, logged in as ``page`` is."""
    return browser.new_context(
        viewport={"width": 390, "height": 844}, storage_state=page.context.storage_state()
    )


def phone_page(browser: Browser, page: Page, url: str) -> Page:
    """``url`` open in a :func:`narrow_context`; close it with ``phone.context.close()``."""
    phone = narrow_context(browser, page).new_page()
    phone.goto(url)
    return phone


def dark_context(browser: Browser, page: Page) -> BrowserContext:
    """A 1280x800 browser context in dark mode, logged in as ``page`` is."""
    return browser.new_context(
        viewport={"width": 1280, "height": 800},
        color_scheme="dark",
        storage_state=page.context.storage_state(),
    )


# --- mail in CorpRelay's queue (conftest's corp_relay), for the queue and tracking pages --

BODY = (
    "From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n"
    "Message-ID: <{n}@corp.example.com>\r\nDate: Mon, 1 Dec 2025 09:00:00 +0000\r\n"
    "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHello.\r\n"
)


def spool_mail(n: int, sender: str, to: str, subject: str) -> str:
    """Queue message number ``n`` on CorpRelay, as received over SMTP; its queue id."""
    data = BODY.format(sender=sender, to=to, subject=subject, n=n).encode()
    return spool(sender, to, data=data, server="CorpRelay")


def received_ago(queue_id: str, minutes: int, **fields: Any) -> None:
    """Date the message's arrival back (and set other recorded fields)."""
    received = timezone.now() - timedelta(minutes=minutes)
    Message.objects.filter(queue_id=queue_id).update(received_at=received, **fields)
