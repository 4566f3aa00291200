"""pytest plugin (``-p tests.session_keys`` in pyproject's addopts): the test run's keys.

The product has no default SECRET_KEY or MAILADMIN_ENCRYPTION_KEY, so the suite makes its
own, random for each session, before pytest-django loads the settings. They go into the
environment, so every process a test starts (Celery, the SMTP worker, gunicorn) gets them
as `make run` gives them. A key given in the environment is kept.
"""

from __future__ import annotations

import os
import secrets

for _name in ("SECRET_KEY", "MAILADMIN_ENCRYPTION_KEY"):
    if not (os.environ.get(_name) or os.environ.get(f"{_name}_FILE")):
        os.environ[_name] = f"test-session-{secrets.token_urlsafe(32)}"
