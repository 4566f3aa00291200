"""WSGI entry point (gunicorn mailadmin.wsgi)."""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mailadmin.settings")
application = get_wsgi_application()

# gunicorn runs no system checks: refuse to serve without usable keys (mailadmin.checks).
from mailadmin.checks import refuse_unsafe_start  # noqa: E402 - needs the app registry

refuse_unsafe_start()

# Redis may hold another database's configuration (a reinstall, a second checkout, a
# restored backup) or a forged one: make it hold this site's before serving anything.
from mailadmin.services.config.versions import config_republish_at_start  # noqa: E402

config_republish_at_start()
