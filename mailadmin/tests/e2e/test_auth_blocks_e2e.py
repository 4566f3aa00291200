"""In a browser: the AUTH brake's settings in the Authentication dialog, and a block listed
under Blocked Logons, lifted with Unblock (issue 10.4)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from playwright.sync_api import Page, expect

from mailadmin.services.config import servers as server_services
from mailadmin.tests.e2e.factories import log_in, shot
from smtpworker.core.config import AuthBrakeConfig
from smtpworker.core.grammar import parse_binding
from smtpworker.inbound.authbrake import AuthBrake


def block(server: str, client: str) -> None:
    async def fail() -> None:
        brake = AuthBrake(settings.REDIS_URL)
        try:
            for _ in range(2):
                await brake.failure(server, client, AuthBrakeConfig(block_after_failures=2))
        finally:
            await brake.close()

    # In a thread of its own: Playwright's event loop runs in this one.
    with ThreadPoolExecutor(1) as thread:
        thread.submit(asyncio.run, fail()).result(10)


def test_a_blocked_client_is_listed_and_unblocked(
    page: Page, live_server: Any, e2e_admin: User
) -> None:
    server = server_services.server_create(
        data={
            "name": "Submission",
            "default_domain": "corp.example.test",
            "bindings": [parse_binding("127.0.0.2:2587")],
        },
        author="test",
    )
    block("Submission", "203.0.113.7")
    base = live_server.url
    log_in(page, base)
    page.goto(f"{base}/servers/{server.pk}/properties/access/")
    page.get_by_role("button", name="Authentication…").click()
    dialog = page.get_by_role("dialog", name="Authentication")
    expect(dialog.get_by_label("Brake password guessing")).to_be_checked()
    expect(dialog.get_by_label("Failed logons before the client is blocked")).to_have_value("10")
    shot(page, "auth-brake-dialog")
    dialog.get_by_role("link", name="Clients blocked now…").click()
    row = page.get_by_role("row", name="203.0.113.7")
    expect(row).to_be_visible()
    shot(page, "auth-blocks")
    page.once("dialog", lambda prompt: prompt.accept())
    row.get_by_role("button", name="Unblock").click()
    expect(page.get_by_text("203.0.113.7 may log on to Submission again.")).to_be_visible()
    expect(page.get_by_text("No client is blocked from logging on to Submission.")).to_be_visible()
