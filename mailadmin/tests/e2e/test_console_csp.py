"""Every console page passes its own Content-Security-Policy in a real Chromium.

The policy (settings.MAILADMIN_CONTENT_SECURITY_POLICY) allows scripts, styles and images
from the site only and no inline code. Chromium reports each thing it blocks as a
``securitypolicyviolation`` event and a console error; the test collects both on every page
(dashboard, server sheet with each tab and dialog, queues, tracking, users, domains, tools,
the API docs, the admin) and expects none. It first proves the collector sees a violation.
"""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import Page, expect
from rest_framework.test import APIClient

from mailadmin.tests.e2e.factories import ADMIN_PASSWORD, received_ago, spool_mail

pytestmark = pytest.mark.django_db(transaction=True)

COLLECT = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__csp.push(`${e.violatedDirective} ${e.blockedURI || "inline"} at ${e.sourceFile}:${e.lineNumber}`);
});
"""


class Violations:
    """CSP violations on a page, from its events and from Chromium's console."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.console: list[str] = []
        page.add_init_script(COLLECT)
        page.on("console", self._console)

    def _console(self, message: Any) -> None:
        if "Content Security Policy" in message.text or "Content-Security-Policy" in message.text:
            self.console.append(message.text)

    def visit(self, url: str) -> None:
        answer = self.page.goto(url)
        assert answer is not None and answer.ok, url
        assert "script-src 'self'" in answer.headers["content-security-policy"], url
        self.page.wait_for_load_state("networkidle")
        self.check(url)

    def check(self, where: str) -> None:
        events = self.page.evaluate("() => window.__csp || []")
        assert (events, self.console) == ([], []), where


def test_every_console_page_passes_the_content_security_policy(
    page: Page, live_server: Any, corp_relay: tuple[APIClient, int]
) -> None:
    api, server_id = corp_relay
    domain = api.post(
        "/api/v1/domains/", {"server": server_id, "name": "branch.example.com"}, format="json"
    )
    queued = [spool_mail(n, "ann@corp.example.com", f"bob{n}@example.net", "Hi") for n in range(3)]
    received_ago(queued[0], 90)  # a second age bucket: the queue shape draws two segments
    base = live_server.url
    seen = Violations(page)

    # The collector works: an inline script is refused and reported.
    seen.visit(f"{base}/accounts/login/")
    page.evaluate(
        "() => { const s = document.createElement('script'); s.textContent = 'window.x = 1';"
        " document.body.append(s); }"
    )
    page.wait_for_function("() => window.__csp.length > 0")
    assert page.evaluate("() => window.x") is None
    seen.console.clear()

    seen.visit(f"{base}/accounts/login/")
    page.get_by_label("User name").fill("admin")
    page.get_by_label("Password").fill(ADMIN_PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("tree", name="Console tree")).to_be_visible()
    seen.check("after logging in")

    pages = [
        "/", "/dashboard/", f"/servers/{server_id}/", f"/servers/{server_id}/sessions/",
        f"/servers/{server_id}/domains/", f"/servers/{server_id}/domains/new/",
        f"/servers/{server_id}/relay-test/?client_ip=203.0.113.9&sender=a%40example.org"
        "&recipient=bob%40example.net",
        "/users/", "/users/new/", "/queues/", "/queues/messages/",
        f"/queues/messages/{queued[0]}/", "/tracking/", f"/tracking/{queued[0]}/",
        "/audit/", "/config/", "/servers/new/", "/admin/",
    ]  # fmt: skip
    assert domain.status_code == 201, domain.content
    pages.append(f"/domains/{domain.json()['id']}/")
    for path in pages:
        seen.visit(f"{base}{path}")
    seen.visit(f"{base}/dashboard/")
    expect(page.locator(".shape-bar rect")).to_have_count(2)  # the SVG bars drew

    seen.visit(f"{base}/servers/{server_id}/properties/")
    tabs, opened = page.get_by_role("tab"), 0
    for index in range(tabs.count()):
        tabs.nth(index).click()
        panel = page.locator("[role=tabpanel]:visible")
        dialogs = panel.get_by_role("button", name="…")
        for button in range(dialogs.count()):
            dialogs.nth(button).click()
            expect(page.get_by_role("dialog")).to_be_visible()
            opened += 1
            seen.check(f"tab {index} dialog {button}")
            page.keyboard.press("Escape")
            expect(page.get_by_role("dialog")).to_be_hidden()
        seen.check(f"properties tab {index}")
    assert tabs.count() >= 4 and opened >= 3, (tabs.count(), opened)

    seen.visit(f"{base}/api/v1/docs/")
    expect(page.locator(".swagger-ui .opblock").first).to_be_visible()
    seen.check("the API docs, rendered")
