"""The typical site built by hand in the browser: wizards, property sheets, live state,
the relay tester and the audit log."""

from __future__ import annotations

import smtplib
from pathlib import Path
from typing import Any

from django.contrib.auth.models import User
from playwright.sync_api import Locator, Page, expect

from mailadmin import configdoc
from mailadmin.models import ConfigSnapshot, VirtualServer
from mailadmin.services.config.servers import server_set_state
from mailadmin.services.config.users import user_create
from mailadmin.tests.e2e.factories import log_in
from mailadmin.tests.stack import Stack


def new_server(page: Page, name: str, ip: str, domain: str) -> None:
    page.get_by_role("link", name="New Virtual Server").first.click()
    page.get_by_label("Name", exact=True).fill(name)
    page.get_by_role("button", name="Next").click()
    page.get_by_label("IP address").fill(ip)
    page.get_by_label("TCP port").fill("2525")
    page.get_by_role("button", name="Next").click()
    expect(page.get_by_role("heading", name="Step 3 of 4: Home directory")).to_be_visible()
    page.get_by_role("button", name="Next").click()
    page.get_by_label("Default domain").fill(domain)
    page.get_by_role("button", name="Finish").click()
    expect(page.get_by_role("heading", name=name, level=1)).to_be_visible()
    expect(page.get_by_role("treeitem", name=f"{name} (Stopped)")).to_be_visible()


def open_properties(page: Page, tab: str) -> None:
    page.get_by_role("link", name="Properties").first.click()
    page.get_by_role("tab", name=tab).click()


def dialog(page: Page, button: str, title: str) -> Locator:
    page.get_by_role("button", name=button).click()
    box = page.get_by_role("dialog", name=title)
    expect(box).to_be_visible()
    return box


def close_sheet(page: Page, button: str = "OK") -> None:
    page.get_by_role("button", name=button, exact=True).last.click()
    expect(
        page.get_by_role("status").filter(has_text="saved as configuration version")
    ).to_be_visible()


def configure_corp(page: Page) -> None:
    open_properties(page, "Access")
    auth = dialog(page, "Authentication…", "Authentication")
    auth.get_by_label("Anonymous access").uncheck()
    auth.get_by_label("Basic authentication (AUTH PLAIN, LOGIN)").check()
    auth.get_by_label("Integrated authentication", exact=False).check()
    auth.get_by_role("button", name="OK").click()
    page.get_by_role("tab", name="Delivery").click()
    advanced = dialog(page, "Advanced…", "Advanced Delivery")
    advanced.get_by_label("Smart host", exact=True).fill("[127.0.0.10]:2526")
    advanced.get_by_label("Fully-qualified domain name").fill("corp-relay.example.net")
    advanced.get_by_role("button", name="OK").click()
    close_sheet(page)


def configure_internet(page: Page) -> None:
    open_properties(page, "Access")
    relay = dialog(page, "Relay…", "Relay Restrictions")
    relay.get_by_label("Allow all computers which", exact=False).uncheck()
    relay.get_by_role("button", name="OK").click()
    close_sheet(page)
    page.get_by_role("link", name="New Domain").first.click()
    page.get_by_label("Remote: mail for it is relayed", exact=False).check()
    page.get_by_role("button", name="Next").click()
    page.get_by_label("Name", exact=True).fill("example.com")
    page.get_by_role("button", name="Finish").click()
    expect(page.get_by_role("heading", name="example.com Properties")).to_be_visible()
    page.get_by_label("Allow incoming mail to be relayed to this domain").check()
    page.get_by_label("Forward all mail to smart host").check()
    page.get_by_label("Smart host", exact=True).fill("[127.0.0.10]:2526")
    page.get_by_role("button", name="OK").click()
    expect(page.get_by_role("cell", name="example.com", exact=True)).to_be_visible()


def set_relay_list(page: Page, entries: str, *, allow_authenticated: bool | None = None) -> None:
    open_properties(page, "Access")
    relay = dialog(page, "Relay…", "Relay Restrictions")
    relay.get_by_label("Only the list below").check()
    relay.get_by_label("Computers that may relay", exact=False).fill(entries)
    if allow_authenticated is False:
        relay.get_by_label("Allow all computers which", exact=False).uncheck()
    relay.get_by_role("button", name="OK").click()
    page.get_by_role("button", name="Apply").click()
    expect(
        page.get_by_role("status").filter(has_text="saved as configuration version")
    ).to_be_visible()


def select_server(page: Page, name: str) -> Locator:
    item = page.get_by_role("treeitem", name=name, exact=False).first
    item.click()
    expect(page.get_by_role("heading", name=name, level=1)).to_be_visible()
    return item


def test_it_builds_the_typical_site_in_the_browser(
    page: Page, live_server: Any, e2e_admin: User, settings: Any, tmp_path: Path
) -> None:
    base = live_server.url
    log_in(page, base)
    new_server(page, "CorpServer", "127.0.0.2", "bogus1")
    configure_corp(page)
    new_server(page, "InternetRelay", "127.0.0.3", "bogus2")
    configure_internet(page)
    new_server(page, "InternalRelay", "127.0.0.4", "bogus3")
    set_relay_list(page, "127.0.0.5\n10.1.0.0/16", allow_authenticated=False)

    corp = VirtualServer.objects.get(name="CorpServer")
    assert not corp.auth_anonymous and corp.auth_basic and corp.smart_host == "[127.0.0.10]:2526"
    assert (
        VirtualServer.objects.get(name="InternetRelay")
        .domains.get(name="example.com")
        .relay_allowed
    )

    # Start them: the context menu, the toolbar, and a change made elsewhere (the API,
    # another administrator) all show up without a reload.
    page.evaluate("window.__noReload = true")
    tree_corp = page.get_by_role("treeitem", name="CorpServer (Stopped)")
    tree_corp.click(button="right")
    page.get_by_role("menu", name="CorpServer actions").get_by_role(
        "menuitem", name="Start"
    ).click()
    expect(page.get_by_role("treeitem", name="CorpServer (Started)")).to_be_visible()
    select_server(page, "InternetRelay")
    page.get_by_role("toolbar", name="Actions").get_by_role("button", name="Start").click()
    expect(page.get_by_role("treeitem", name="InternetRelay (Started)")).to_be_visible()
    expect(page.get_by_role("toolbar").get_by_role("button", name="Start")).to_be_disabled()
    page.evaluate("window.__noReload = true")
    server_set_state(
        server=VirtualServer.objects.get(name="InternalRelay"), state="started", author="api:ops"
    )
    expect(page.get_by_role("treeitem", name="InternalRelay (Started)")).to_be_visible(timeout=6000)
    assert page.evaluate("window.__noReload === true")

    # The relay tester on the Internet relay: example.com from anyone, nothing else.
    page.get_by_role("toolbar", name="Actions").get_by_role("link", name="Test Relay").click()
    page.get_by_label("Client IP address").fill("203.0.113.9")
    page.get_by_label("Sender (MAIL FROM)").fill("someone@example.org")
    page.get_by_label("Recipient (RCPT TO)").fill("bob@example.com")
    page.get_by_role("button", name="Test").click()
    expect(page.get_by_text("Accepted", exact=True)).to_be_visible()
    expect(page.get_by_text("remote domain example.com allows relay").first).to_be_visible()
    page.get_by_label("Recipient (RCPT TO)").fill("bob@example.net")
    page.get_by_role("button", name="Test").click()
    expect(page.get_by_text("Refused", exact=True)).to_be_visible()
    expect(
        page.get_by_text("550 5.7.1 Unable to relay for bob@example.net", exact=True)
    ).to_be_visible()

    # A relay list change on the internal relay, then the audit log.
    select_server(page, "InternalRelay")
    set_relay_list(page, "127.0.0.5\n10.1.0.0/16\n10.0.0.5")
    page.get_by_role("treeitem", name="Audit Log").click()
    newest = page.get_by_role("listitem").filter(has_text="console:admin").first
    expect(newest).to_contain_text("servers[InternalRelay].relay.list: added 10.0.0.5")
    expect(page.get_by_text("api:ops")).to_be_visible()

    # What the browser configured, a real SMTP worker enforces.
    user_create(
        data={"username": "alice", "password": "alice-pw", "servers": [corp]}, author="api:admin"
    )
    stack = Stack(redis_url=settings.REDIS_URL, mailroot=tmp_path / "mailroot", log_dir=tmp_path)
    try:
        stack.smtp()
        stack.wait_smtp_applied(ConfigSnapshot.objects.latest().pk)
        with smtplib.SMTP("127.0.0.2", 2525, timeout=10) as client:  # relays only after AUTH
            client.ehlo("client.test")
            assert client.mail("a@corp.test") == (530, b"5.7.0 Authentication required")
            client.login("alice", "alice-pw")
            assert client.mail("alice@corp.test")[0] == 250
            assert client.rcpt("someone@internet.test")[0] == 250
        with smtplib.SMTP("127.0.0.3", 2525, timeout=10) as client:  # its own domains only
            client.ehlo("client.test")
            client.mail("sender@internet.test")
            assert client.rcpt("bob@example.com")[0] == 250
            assert client.rcpt("bob@example.net")[0] == 550
    finally:
        stack.stop()


def test_it_is_usable_by_keyboard(
    page: Page, live_server: Any, e2e_admin: User, typical_site: dict[str, Any]
) -> None:
    configdoc.document_import(typical_site, author="api:admin")
    base = live_server.url
    log_in(page, base)
    # The tree: one tab stop, arrows move, Shift+F10 opens the server's menu.
    page.get_by_role("treeitem", name="localhost", exact=False).focus()
    page.keyboard.press("ArrowDown")
    expect(page.get_by_role("treeitem", name="CorpServer (Started)")).to_be_focused()
    page.keyboard.press("Shift+F10")
    menu = page.get_by_role("menu", name="CorpServer actions")
    expect(menu).to_be_visible()
    expect(menu.get_by_role("menuitem", name="Start")).to_be_disabled()
    expect(menu.get_by_role("menuitem", name="Stop")).to_be_focused()
    page.keyboard.press("Escape")
    expect(menu).to_be_hidden()
    expect(page.get_by_role("treeitem", name="CorpServer (Started)")).to_be_focused()
    page.keyboard.press("Enter")
    # The sheet: arrow keys switch tabs; a sub-dialog's Cancel puts its fields back.
    page.get_by_role("toolbar").get_by_role("link", name="Properties").click()
    page.get_by_role("tab", name="General").focus()
    page.keyboard.press("ArrowRight")
    expect(page.get_by_role("tab", name="Access")).to_have_attribute("aria-selected", "true")
    relay = dialog(page, "Relay…", "Relay Restrictions")
    relay.get_by_label("Computers that may relay", exact=False).fill("10.9.9.9")
    page.keyboard.press("Escape")
    expect(relay).to_be_hidden()
    expect(page.get_by_label("Computers that may relay", exact=False)).to_have_value("")
