"""The product's processes, started for end-to-end tests: SMTP worker, Celery worker, beat.

Each runs as a real subprocess against the test database and the test Redis, with the
delivery "minute" shortened so retry schedules play out in seconds. Only processes
started here are stopped, by their PID.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from django.db import connection

from mailadmin.celery import app as celery_app
from smtpworker.core import contract

ROOT = Path(__file__).resolve().parents[2]


def until(check: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll ``check`` until it returns something truthy; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s")
        time.sleep(interval)


def database_url() -> str:
    """The test database as a URL the child processes can open."""
    s = connection.settings_dict
    if s["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{s['NAME']}"
    user = s.get("USER") or ""
    password = f":{s['PASSWORD']}" if s.get("PASSWORD") else ""
    auth = f"{user}{password}@" if user else ""
    return f"postgres://{auth}{s.get('HOST') or '127.0.0.1'}:{s.get('PORT') or 5432}/{s['NAME']}"


class Process:
    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name, self.argv, self.env, self.log_dir = name, argv, env, log_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    def start(self) -> Process:
        self._log = open(self.log_dir / f"{self.name}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            self.argv,
            cwd=ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL the process group this test started (prefork children included)."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()
        if self._log is not None:
            self._log.close()
            self._log = None

    def output(self) -> str:
        path = self.log_dir / f"{self.name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


class Stack:
    """SMTP worker + Celery worker + beat for one test, sharing the test's settings."""

    def __init__(
        self,
        *,
        redis_url: str,
        mailroot: Path,
        log_dir: Path,
        minute: float = 0.05,
        node: str | None = None,
    ) -> None:
        self.redis_url, self.mailroot, self.log_dir = redis_url, mailroot, log_dir
        self.node = node or f"e2e{os.getpid()}"
        self.env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "DATABASE_URL": database_url(),
            "REDIS_URL": redis_url,
            "CELERY_BROKER_URL": str(celery_app.conf.broker_url),
            "MAILADMIN_MAILROOT": str(mailroot),
            "MAILADMIN_DATA_DIR": str(log_dir),
            # One node: the Celery workers consume the delivery queue the SMTP worker uses.
            "MAILADMIN_NODE": self.node,
            "MAILADMIN_DELIVERY_MINUTE": str(minute),
            "MAILADMIN_SWEEP_SECONDS": "1",
            "MAILADMIN_SPOOL_SWEEP_SECONDS": "2",
            "MAILADMIN_CONFIG_REPUBLISH_SECONDS": "2",
            "MAILADMIN_OUTBOUND_TIMEOUT_CAP": "2",
            # A killed worker's messages come back within seconds.
            "MAILADMIN_DELIVERY_LEASE_SECONDS": "12",
        }
        self.processes: dict[str, Process] = {}

    def _process(self, name: str, argv: list[str]) -> Process:
        previous = self.processes.get(name)
        if previous is not None:  # a restart: the old one is gone, its log still open
            previous.stop()
        process = Process(name, argv, self.env, self.log_dir)
        self.processes[name] = process
        return process.start()

    def smtp(self) -> Process:
        return self._process(
            "smtp",
            [
                sys.executable,
                "-m",
                "smtpworker",
                "--node",
                self.node,
                "--poll",
                "0.5",
                "--grace",
                "2",
            ],
        )

    def worker(self, name: str = "worker", concurrency: int = 2, level: str = "info") -> Process:
        return self._process(
            name,
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "mailadmin",
                "worker",
                "-l",
                level,
                "-n",
                f"{name}-{self.node}@%h",
                "--concurrency",
                str(concurrency),
                "--without-gossip",
                "--without-mingle",
            ],
        )

    def beat(self, level: str = "info") -> Process:
        return self._process(
            "beat",
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "mailadmin",
                "beat",
                "-l",
                level,
                "-s",
                str(self.log_dir / "beat-schedule"),
            ],
        )

    def wait_smtp_applied(self, version: int, timeout: float = 15.0) -> dict[str, Any]:
        def applied() -> dict[str, Any] | None:
            client = redis.Redis.from_url(self.redis_url)
            body = client.get(contract.worker_key(self.node))
            client.close()
            status = json.loads(body) if body else None
            if status and status["applied_version"] >= version and not status.get("stopped"):
                return dict(status)
            return None

        return dict(until(applied, timeout))

    def stop(self) -> None:
        for process in reversed(list(self.processes.values())):
            process.stop()
