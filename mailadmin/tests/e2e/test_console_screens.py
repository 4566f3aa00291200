"""Screenshots of the console's main pages, at 1280x800, on a phone, and in dark mode.

They are written to test-artifacts/screens/ for a person to look at: the pages should
read as a product. The test also checks each page's main landmark and heading, so a page
that fails to render fails here rather than as a blank picture.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
import trustme
from django.conf import settings
from django.contrib.auth.models import User
from playwright.sync_api import Browser, Page, expect

from mailadmin import configdoc
from mailadmin.models import VirtualServer
from mailadmin.services.config import servers as server_services
from mailadmin.services.config.versions import current_version
from mailadmin.tests.e2e.factories import SCREENS, dark_context, log_in, phone_page, shot
from smtpworker.core import contract


def fake_worker(servers: list[VirtualServer]) -> None:
    """A worker node's report, as smtpworker writes it, so the live parts have content."""
    now = time.time()
    report = {
        "node": "mx-node-1",
        "applied_version": current_version(),
        "heartbeat": now,
        "config_error": "",
        "servers": {s.name: {"listening": True, "bindings": [], "error": ""} for s in servers},
        "sessions": [
            {
                "id": "s1",
                "server": servers[0].name,
                "client_ip": "10.1.4.20",
                "client_port": 51234,
                "since": now - 42,
                "helo": "ws-042.corp.example.net",
                "user": "alice",
                "tls": True,
                "messages": 3,
                "bytes": 48213,
            },
            {
                "id": "s2",
                "server": servers[0].name,
                "client_ip": "10.1.7.3",
                "client_port": 40112,
                "since": now - 7,
                "helo": "printer-3f",
                "user": None,
                "tls": False,
                "messages": 0,
                "bytes": 0,
            },
        ],
    }
    stale = dict(
        report,
        node="mx-node-2",
        applied_version=current_version() - 1,
        heartbeat=now - 60,
        sessions=[],
    )
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.flushdb()
    client.set(contract.worker_key("mx-node-1"), json.dumps(report), ex=60)
    client.set(contract.worker_key("mx-node-2"), json.dumps(stale), ex=60)
    client.close()


@pytest.fixture
def furnished_site(e2e_admin: User, typical_site: dict[str, Any]) -> list[VirtualServer]:
    configdoc.document_import(typical_site, author="api:admin")
    ca = trustme.CA()
    leaf = ca.issue_cert("mx.example.com", not_after=datetime.now(UTC) + timedelta(days=12))
    internet = VirtualServer.objects.get(name="InternetRelay")
    server_services.server_update(
        server=internet,
        data={
            "tls_certificate": leaf.cert_chain_pems[0].bytes().decode(),
            "tls_private_key": leaf.private_key_pem.bytes().decode(),
        },
        author="console:admin",
    )
    internal = VirtualServer.objects.get(name="InternalRelay")
    server_services.server_set_state(server=internal, state="paused", author="api:admin")
    servers = list(VirtualServer.objects.order_by("name"))
    fake_worker(servers)
    return servers


def test_it_keeps_screenshots_of_the_main_pages(
    page: Page, live_server: Any, furnished_site: list[VirtualServer], browser: Browser
) -> None:
    base = live_server.url
    page.goto(f"{base}/")
    shot(page, "01-login")
    log_in(page, base)
    expect(
        page.get_by_role("heading", name="SMTP virtual servers on this site").or_(
            page.get_by_role("heading", level=1)
        )
    ).to_be_visible()
    shot(page, "02-machine")
    corp = next(s for s in furnished_site if s.name == "CorpServer")
    page.goto(f"{base}/servers/{corp.pk}/")
    shot(page, "03-server")
    page.goto(f"{base}/servers/{corp.pk}/properties/")
    expect(page.get_by_role("tab", name="General")).to_have_attribute("aria-selected", "true")
    shot(page, "04-properties-general")
    page.get_by_role("tab", name="Access").click()
    page.get_by_role("button", name="Relay…").click()
    expect(page.get_by_role("dialog", name="Relay Restrictions")).to_be_visible()
    shot(page, "05-properties-relay-dialog")
    page.get_by_role("dialog").get_by_role("button", name="Cancel").click()
    page.get_by_role("tab", name="Delivery").click()
    shot(page, "06-properties-delivery")
    page.goto(f"{base}/servers/{corp.pk}/sessions/")
    expect(page.get_by_role("cell", name="ws-042.corp.example.net")).to_be_visible()
    shot(page, "07-sessions")
    internet = next(s for s in furnished_site if s.name == "InternetRelay")
    page.goto(f"{base}/servers/{internet.pk}/domains/")
    shot(page, "08-domains")
    page.goto(
        f"{base}/servers/{internet.pk}/relay-test/?client_ip=203.0.113.9&sender=a%40example.org&recipient=bob%40example.net"
    )
    expect(page.get_by_text("Refused", exact=True)).to_be_visible()
    shot(page, "09-relay-test")
    page.goto(f"{base}/dashboard/")
    expect(page.get_by_role("heading", name="Worker nodes")).to_be_visible()
    shot(page, "10-dashboard")
    page.goto(f"{base}/audit/")
    shot(page, "11-audit")
    page.goto(f"{base}/servers/new/")
    page.get_by_label("Name", exact=True).fill("Branch Relay")
    page.get_by_role("button", name="Next").click()
    page.get_by_label("IP address").fill("127.0.0.3")
    page.get_by_label("TCP port").fill("2525")
    page.get_by_label("Start the server when the wizard finishes").check()
    page.get_by_role("button", name="Next").click()
    expect(page.get_by_text("conflicts with 127.0.0.3:2525")).to_be_visible()
    shot(page, "12-wizard-error")
    page.goto(f"{base}/users/")
    shot(page, "13-users")

    phone = phone_page(browser, page, f"{base}/")
    shot(phone, "20-narrow-machine")
    phone.get_by_role("button", name="Tree").click()
    expect(phone.get_by_role("tree", name="Console tree")).to_be_visible()
    shot(phone, "21-narrow-tree")
    phone.goto(f"{base}/servers/{corp.pk}/properties/access/")
    shot(phone, "22-narrow-access")
    phone.context.close()

    dark = dark_context(browser, page)
    night = dark.new_page()
    night.goto(f"{base}/dashboard/")
    shot(night, "30-dark-dashboard")
    night.goto(f"{base}/servers/{corp.pk}/properties/access/")
    night.get_by_role("button", name="Authentication…").click()
    shot(night, "31-dark-auth-dialog")
    dark.close()
    assert len(list(Path(SCREENS).glob("*.png"))) >= 18
