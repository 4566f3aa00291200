"""The Celery application: broker settings come from Django settings (CELERY_*).

Services send tasks through this app, so it imports nothing of the project: what the
worker and beat do as they start, which needs the project's checks and services, is in
:mod:`mailadmin.celery_signals`.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from celery.signals import celeryd_after_setup, task_postrun, task_prerun

from smtpworker.core.contract import delivery_queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mailadmin.settings")

app = Celery("mailadmin")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


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
