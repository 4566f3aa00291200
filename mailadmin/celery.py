"""The Celery application: broker settings come from Django settings (CELERY_*)."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from celery.signals import celeryd_after_setup

from smtpworker.handoff import delivery_queue

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
