"""Hand a spooled message to delivery: a Celery task sent by name, off the event loop.

The SMTP worker does not import the Django project; it only names the task
(``mailadmin.relay_message``) and passes ids. The task goes to the node's own delivery
queue (:func:`delivery_queue`), which only Celery workers of the same node consume: the
spool is on this node's disk, so only they can read it. A hand-off that fails (broker down) is
logged and dropped: the message is already durable in the spool and the delivery side's
periodic sweep finds unrecorded spool files.
"""

from __future__ import annotations

import logging
from concurrent.futures import Executor

from celery import Celery

log = logging.getLogger(__name__)

RELAY_TASK = "mailadmin.relay_message"
DEFAULT_QUEUE = "celery"


def delivery_queue(node: str) -> str:
    """The Celery queue that delivers what ``node`` spooled (the default one for no node)."""
    return f"delivery.{node}" if node else DEFAULT_QUEUE


class Handoff:
    def __init__(self, broker_url: str, executor: Executor, node: str = "") -> None:
        self.executor = executor
        self.node = node
        self.queue = delivery_queue(node)
        self.app = Celery("smtpworker-handoff", broker=broker_url, set_as_current=False)
        self.app.conf.update(
            task_serializer="json",
            accept_content=["json"],
            broker_connection_timeout=3,
            broker_connection_retry_on_startup=False,
        )

    def __call__(self, queue_id: str, server: str) -> None:
        self.executor.submit(self._send, queue_id, server)

    def _send(self, queue_id: str, server: str) -> None:
        try:
            self.app.send_task(
                RELAY_TASK,
                args=[server, queue_id, self.node],
                queue=self.queue,
                retry=True,
                retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
            )
        except Exception as exc:  # noqa: BLE001 - the spool sweep is the backstop
            log.warning(
                "hand-off of %s to delivery failed (%s); the sweep will find it", queue_id, exc
            )
