"""``make run``'s supervisor (bin/run) starts a child that exits on its own again, and gives
up on one that keeps dying right after its start. Real child processes."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from mailadmin.tests.factories import load_bin_run
from mailadmin.tests.stack import until


@pytest.fixture
def run_module(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    module = load_bin_run(monkeypatch)
    # Seconds instead of the production timings, so the test takes one or two.
    monkeypatch.setattr(module, "RESTART_DELAY", 0.05)
    monkeypatch.setattr(module, "MIN_UPTIME", 2.0)
    monkeypatch.setattr(module, "POLL_INTERVAL", 0.02)
    yield module


def supervised(module: ModuleType, argv: tuple[str, ...]) -> tuple[Any, threading.Thread, list]:
    console = module.Console([module.SYSTEM, "child"])
    supervisor = module.Supervisor(console)
    supervisor.start(module.Proc("child", argv), {})
    result: list[int] = []
    thread = threading.Thread(
        target=lambda: result.append(module.supervise(supervisor, "127.0.0.1:1", [])),
        daemon=True,
    )
    thread.start()
    return supervisor, thread, result


def test_a_child_that_exits_is_started_again(run_module: ModuleType, tmp_path: Path) -> None:
    starts = tmp_path / "starts"
    # Exits with 1 on its first two starts (as a Celery worker on a broker failure), then runs.
    script = (
        "import pathlib, sys, time\n"
        f"p = pathlib.Path({str(starts)!r})\n"
        "n = len(p.read_text()) if p.exists() else 0\n"
        "p.write_text('x' * (n + 1))\n"
        "sys.exit(1) if n < 2 else time.sleep(60)\n"
    )
    supervisor, thread, result = supervised(run_module, (sys.executable, "-c", script))
    try:
        until(lambda: starts.exists() and len(starts.read_text()) == 3, timeout=10)
        time.sleep(0.3)
        assert thread.is_alive() and supervisor.children["child"].poll() is None
    finally:
        supervisor.stop_requests += 1
        thread.join(5)
        supervisor.stop()
    assert result == [0]
    assert supervisor.children["child"].poll() is not None


def test_a_child_that_keeps_dying_at_once_stops_everything(
    run_module: ModuleType, tmp_path: Path
) -> None:
    starts = tmp_path / "starts"
    script = f"import pathlib, sys; pathlib.Path({str(starts)!r}).open('a').write('x'); sys.exit(3)"
    supervisor, thread, result = supervised(run_module, (sys.executable, "-c", script))
    try:
        thread.join(10)
    finally:
        supervisor.stop()
    assert result == [1]
    # Started again after each quick exit, until the limit: not given up at the first.
    assert len(starts.read_text()) == run_module.RESTART_LIMIT


@pytest.mark.parametrize(("given", "expected"), [(None, "info"), ("DEBUG", "debug")])
def test_celery_runs_at_the_products_log_level(
    run_module: ModuleType, monkeypatch: pytest.MonkeyPatch, given: str | None, expected: str
) -> None:
    # Celery's own loggers ("Task ... received") follow -l, not LOGGING.
    monkeypatch.setenv("MAILADMIN_NODE", "n1")
    if given is None:
        monkeypatch.delenv("LOG_LEVEL", raising=False)
    else:
        monkeypatch.setenv("LOG_LEVEL", given)
    table = {proc.name: proc.argv for proc in run_module.process_table("127.0.0.1:1", Path("."))}
    for name in ("worker", "beat"):
        argv = table[name]
        assert argv[argv.index("-l") + 1] == expected, name
