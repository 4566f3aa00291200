"""The runtime runs where Django cannot be imported.

The layering itself is checked statically by import-linter (``make lint``, the contracts in
pyproject.toml), which reads every import statement of our own modules. What it cannot see
is checked here, in a process where ``import django`` fails and any warning is an error:
imports made at run time (``importlib``, Celery's ``symbol_by_name``) and imports that
third-party packages make on our behalf (a Celery app created while ``DJANGO_SETTINGS_MODULE``
is set tries to load its Django fix-up, and warns when it cannot).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Imports every smtpworker module but the tests (and __main__, which runpy runs), then runs
# `python -m smtpworker --help`.
# None in sys.modules makes an import of that name raise ImportError.
CHILD = """
import pkgutil, runpy, sys
for name in ("django", "rest_framework", "mailadmin"):
    sys.modules[name] = None
import smtpworker
for info in pkgutil.walk_packages(smtpworker.__path__, "smtpworker."):
    if not info.name.startswith(("smtpworker.tests", "smtpworker.__main__")):
        __import__(info.name)
sys.argv = ["smtpworker", "--help"]
runpy.run_module("smtpworker", run_name="__main__", alter_sys=True)
"""


def test_every_runtime_module_imports_and_the_daemon_starts_without_django() -> None:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "mailadmin.settings"}
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", CHILD],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: "), result.stdout
    assert "--node" in result.stdout
