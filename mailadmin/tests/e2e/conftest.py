"""Browser tests: pytest-playwright driving Debian's Chromium against the live server.

Debian's package (``apt-get install chromium``) is used because ``playwright install``
cannot download browsers here. The live server runs in another thread, so the tests use
``transactional_db``; Playwright's sync API runs an event loop in this thread, which makes
Django's async-safety check misfire on the test's own ORM calls.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from mailadmin.tests.e2e.factories import ADMIN_PASSWORD, ARTIFACTS
from smtpworker.tests.sink import Sink

CHROMIUM = "/usr/bin/chromium"


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the browser tests last, and skip them where there is no Chromium.

    Playwright's sync API keeps its event loop installed in the main thread until the
    session ends, so any later test calling asyncio.run() would fail. trylast: after
    pytest's own reordering by fixture scope.
    """
    browser = [item for item in items if "e2e" in item.path.parts]
    if not browser:
        return
    chosen = set(browser)
    items[:] = [item for item in items if item not in chosen] + browser
    if shutil.which(CHROMIUM) is None:
        for item in browser:
            item.add_marker(pytest.mark.skip(reason="needs /usr/bin/chromium"))


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    return {
        **browser_type_launch_args,
        "executable_path": CHROMIUM,
        "args": [
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
        ],
    }


@pytest.fixture(scope="session")
def base_url() -> str | None:
    # Replaces pytest-playwright's fallback fixture, a method that pytest 9 deprecates
    # (and warnings are errors here); the tests use live_server.url instead.
    return None


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args: dict[str, Any]) -> dict[str, Any]:
    return {**browser_context_args, "viewport": {"width": 1280, "height": 800}}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """On a failed test, keep what the browser showed (the page is still open here)."""
    report = yield
    page = getattr(item, "funcargs", {}).get("page")
    if report.when == "call" and report.failed and page is not None:
        ARTIFACTS.mkdir(exist_ok=True)
        try:
            page.screenshot(path=str(ARTIFACTS / f"{item.name}.png"), full_page=True)
        except Exception as exc:  # noqa: BLE001 - a failed screenshot must not hide the failure
            report.sections.append(("screenshot", f"could not take one: {exc}"))
    return report


@pytest.fixture(scope="session", autouse=True)
def _sync_orm_beside_playwright() -> Iterator[None]:
    # Django reads this on every guarded call. Session scope: the database flush after
    # each live_server test runs after any function-scoped fixture is torn down.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        yield


@pytest.fixture(autouse=True)
def _private_redis_db(settings: Any) -> None:
    # Publish test configurations to a Redis database no developer's worker follows.
    settings.REDIS_URL = settings.REDIS_URL.rsplit("/", 1)[0] + "/11"


@pytest.fixture
def e2e_admin(transactional_db: None) -> User:
    return User.objects.create_superuser("admin", "admin@example.test", ADMIN_PASSWORD)


# --- a relay with mail in its queue, for the queue and tracking pages ----------------------


@pytest.fixture
def corp_relay(e2e_admin: User, sink: Sink, settings: Any, tmp_path: Path) -> tuple[APIClient, int]:
    """An API client logged in as the admin, and the id of "CorpRelay" (corp.example.com,
    smart host: the sink), with a private mail root."""
    settings.MAILADMIN_MAILROOT = tmp_path / "mailroot"
    settings.MAILADMIN_OUTBOUND_TIMEOUT_CAP = 3
    api = APIClient()
    api.force_login(e2e_admin)
    response = api.post(
        "/api/v1/servers/",
        {
            "name": "CorpRelay",
            "default_domain": "corp.example.com",
            "bindings": ["127.0.0.2:2525"],
            "delivery": {"smart_host": sink.smart_host},
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    return api, int(response.json()["id"])
