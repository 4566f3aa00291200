"""Hand spooled messages to delivery: Celery tasks sent by name, off the event loop, in batches.

The SMTP worker does not import the Django project; it only names the task
(``mailadmin.relay_batch``) and passes ids. The ids accepted within a few milliseconds
travel together, one task per virtual server (``relay_batch(server, [queue ids], node)``):
a Celery task costs the delivery side about as much as relaying a message, so one per
message would halve the rate. Each task goes to the node's own delivery queue
(:func:`smtpworker.core.contract.delivery_queue`), which only Celery workers of the same
node consume: the spool is on this node's disk, so only they can read it.

A hand-off that fails (broker down), or ids still waiting when the process is killed, are
logged or lost and nothing else: every message is already durable in the spool, and the
delivery side's periodic sweep records spool files nobody handed over.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Executor

from celery import Celery

from smtpworker.core.contract import RELAY_BATCH_TASK, delivery_queue

log = logging.getLogger(__name__)

# How long the first id of a batch waits for company, and the most ids in one task. At
# 700 msg/s, 50 ms make batches of about 35: the delivery side's fixed cost per task and
# per batch (about 3 ms) then weighs 0.1 ms per message. The cap bounds how long one
# batch, delivered one message after another, keeps its last messages waiting.
LINGER_SECONDS = 0.05
MAX_BATCH = 50


class Handoff:
    """``handoff(queue_id, server)`` queues a spooled message for delivery; thread-safe,
    and it never blocks on the broker.

    The first id of a batch starts a flush on ``executor`` that waits up to ``linger``
    seconds (less once ``max_batch`` ids are waiting), then sends what has gathered. Being
    ordinary work on the executor, a pending flush also runs when the executor is shut
    down with ``wait=True``, as the SMTP worker does on SIGTERM.
    """

    def __init__(
        self,
        broker_url: str,
        executor: Executor,
        node: str = "",
        *,
        linger: float = LINGER_SECONDS,
        max_batch: int = MAX_BATCH,
    ) -> None:
        self.executor = executor
        self.node = node
        self.queue = delivery_queue(node)
        self.linger = linger
        self.max_batch = max_batch
        self.app = Celery("smtpworker-handoff", broker=broker_url, set_as_current=False)
        self.app.conf.update(
            task_serializer="json",
            accept_content=["json"],
            broker_connection_timeout=3,
            broker_connection_retry_on_startup=False,
        )
        self._lock = threading.Lock()
        self._waiting: dict[str, list[str]] = {}  # server -> ids, in arrival order
        self._count = 0
        self._full: threading.Event | None = None  # set: the pending flush runs now

    def __call__(self, queue_id: str, server: str) -> None:
        with self._lock:
            self._waiting.setdefault(server, []).append(queue_id)
            self._count += 1
            if self._full is None:
                self._full = threading.Event()
                full = self._full
            elif self._count >= self.max_batch:
                self._full.set()
                return
            else:
                return
        try:
            self.executor.submit(self._flush_after, full)
        except RuntimeError:  # the executor is shut down: the worker is stopping
            self._flush_after(full, wait=False)

    def _flush_after(self, full: threading.Event, wait: bool = True) -> None:
        if wait:
            full.wait(self.linger)
        with self._lock:
            batch, self._waiting, self._count = self._waiting, {}, 0
            if self._full is full:
                self._full = None
        for server, ids in batch.items():
            for start in range(0, len(ids), self.max_batch):
                self._send(server, ids[start : start + self.max_batch])

    def _send(self, server: str, queue_ids: list[str]) -> None:
        try:
            self.app.send_task(
                RELAY_BATCH_TASK,
                args=[server, queue_ids, self.node],
                queue=self.queue,
                retry=True,
                retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
            )
        except Exception as exc:  # noqa: BLE001 - the spool sweep is the backstop
            log.warning(
                "hand-off of %d message(s) (%s...) to delivery failed (%s); the sweep will "
                "find them",
                len(queue_ids),
                queue_ids[0],
                exc,
            )
