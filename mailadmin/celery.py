"""The Celery application: broker settings come from Django settings (CELERY_*)."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from celery.signals import beat_init, celeryd_after_setup, task_postrun, task_prerun, worker_init

from smtpworker.core.handoff import delivery_queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mailadmin.settings")

app = Celery("mailadmin")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


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


@celeryd_after_setup.connect
def _consume_node_queue(sender: str, instance: Any, **kwargs: Any) -> None:
    """Make every worker also consume the delivery queue of its node (MAILADMIN_NODE).

    What an SMTP worker node spools only its own machine can read, so its relay tasks go
    to ``delivery.<node>``; the default queue still carries everything else.
    """
    from django.conf import settings

    instance.app.amqp.queues.select_add(delivery_queue(settings.MAILADMIN_NODE))


@task_prerun.connect
@task_postrun.connect
def _recycle_database_connections(**kwargs: Any) -> None:
    """Django's per-request connection hygiene, around every task.

    Celery's Django fix-up would close every connection after each task (PostgreSQL then
    starts a server process per task, about 15 ms of its CPU each); CELERY_DB_REUSE_MAX
    turns that off, and this keeps what Django does around a request instead: a
    connection older than CONN_MAX_AGE, or broken (a restarted server, a failed
    transaction), is closed, and with CONN_HEALTH_CHECKS a kept one is checked before
    its next use. With CONN_MAX_AGE 0 (SQLite) every task still gets a fresh one.
    """
    from django.db import close_old_connections

    close_old_connections()
