"""What Celery's worker and beat do as they start (connected when ``mailadmin`` is imported).

Apart from the app (:mod:`mailadmin.celery`), because these need the project's checks
and services, and the services send tasks through the app: in one module the two would
import each other.
"""

from __future__ import annotations

from typing import Any

from celery.signals import beat_init, worker_init


@worker_init.connect
@beat_init.connect
def _refuse_unsafe_start(**kwargs: Any) -> None:
    """Celery runs no Django system checks: refuse to start without usable keys.

    SystemExit, because Celery logs and ignores any Exception a signal handler raises.
    """
    from django.core.exceptions import ImproperlyConfigured

    from mailadmin.checks import refuse_unsafe_start

    try:
        refuse_unsafe_start()
    except ImproperlyConfigured as exc:
        raise SystemExit(f"celery: {exc}") from None


@beat_init.connect
def _publish_config_at_start(**kwargs: Any) -> None:
    """Beat starts by making Redis hold this database's configuration (then republishes it
    on its schedule): another database's or a forged body must not wait for a change."""
    from mailadmin.services.config.versions import config_republish_at_start

    config_republish_at_start()
