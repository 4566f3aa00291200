"""The suite's own pytest plugin (``-p tests.pytest_plugin`` in pyproject's addopts).

Keys: the product has no default SECRET_KEY or MAILADMIN_ENCRYPTION_KEY, so the suite
makes its own, random for each session, before pytest-django loads the settings. They go
into the environment, so every process a test starts (Celery, the SMTP worker, gunicorn)
gets them as `make run` gives them. A key given in the environment is kept.

Login limits: failed logins are counted in Redis (django-axes), and every test client
comes from 127.0.0.1; each test starts with no failures counted, so one test's wrong
passwords never lock another out.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import pytest

from smtpworker.core.contract import ENCRYPTION_KEY_ENV, SECRET_KEY_ENV, env_given

for _name in (SECRET_KEY_ENV, ENCRYPTION_KEY_ENV):
    if not env_given(_name):
        os.environ[_name] = f"test-session-{secrets.token_urlsafe(32)}"

# settings.CACHES["axes"]["KEY_PREFIX"]; Django puts ":<version>:" after it.
LOGIN_LIMIT_KEYS = "mailadmin:axes:*"


def forget_failed_logins() -> None:
    """Forget every failed login counted so far (django-axes' keys in the run's Redis)."""
    url = os.environ.get("REDIS_URL")  # only the run's own Redis (make test), never a default
    if url:
        import redis

        client = redis.Redis.from_url(url)
        try:
            keys = list(client.scan_iter(LOGIN_LIMIT_KEYS, count=1000))
            if keys:
                client.delete(*keys)
        except redis.RedisError:
            pass  # a test that stops Redis on purpose restarts it; nothing counted then
        finally:
            client.close()


@pytest.fixture(autouse=True)
def _no_failed_logins_counted() -> Iterator[None]:
    forget_failed_logins()
    yield
