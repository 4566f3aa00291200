"""Django's side of ``LOG_FORMAT``: the SMTP worker's formatters, for ``LOGGING``.

``settings.LOGGING`` names these classes; the web process and Celery (which runs
``django.setup()`` and so takes the same ``LOGGING``) then write the same lines as the SMTP
worker. Inside a Celery task, JSON lines also carry ``task_id`` and ``task_name``.

Celery configures logging itself when its worker or beat starts, after Django did, and
would replace these lines with its own. In JSON mode this module, which Django imports
while it applies ``LOGGING``, connects :func:`celery_setup_logging` to Celery's
``setup_logging`` signal: Celery then leaves the configuration alone and Django's applies,
at the level given by ``celery ... -l``. Plain mode keeps Celery's own format.

:class:`RoutineAtDebug` keeps Celery's routine lines (a task received, a task succeeded,
beat sending a due task) out of INFO in either format: ``LOGGING`` puts it on their
loggers.
"""

from __future__ import annotations

import logging
from logging.config import dictConfig
from typing import Any

from smtpworker.core.jsonlog import ContextAdapter, PlainFormatter, extra_fields
from smtpworker.core.jsonlog import JsonFormatter as _JsonFormatter

__all__ = [
    "ContextAdapter",
    "JsonFormatter",
    "PlainFormatter",
    "RoutineAtDebug",
    "celery_setup_logging",
    "extra_fields",
]


class JsonFormatter(_JsonFormatter):
    """The SMTP worker's JSON lines, plus the Celery task a line was logged in."""

    def context(self, record: logging.LogRecord) -> dict[str, Any]:
        try:
            from celery import current_task
        except ImportError:  # pragma: no cover - Celery is a dependency
            return {}
        task = current_task
        request = getattr(task, "request", None) if task else None
        task_id = getattr(request, "id", None)
        if not task_id:
            return {}
        return {"task_id": task_id, "task_name": getattr(task, "name", "")}


class RoutineAtDebug(logging.Filter):
    """Logs Celery's routine INFO lines at DEBUG: "Task ... received", "Task ... succeeded
    in ...", and beat's "Scheduler: Sending due task ...". Every relay batch and every
    periodic run would otherwise write two or three lines at INFO, more than the messages
    themselves. Nothing else is touched: a failed, retried or rejected task keeps its
    level, as does every other line of these loggers.

    A logger filter runs after the INFO check, so the record is re-levelled here and kept
    only if its logger is enabled for DEBUG (``celery ... -l debug``).
    """

    def __init__(self, name: str = "") -> None:
        super().__init__(name)
        from celery.app.trace import LOG_RECEIVED, LOG_SUCCESS

        # The format strings Celery logs them with (celery.worker.strategy and
        # celery.app.trace pass these constants; celery.beat spells its own out).
        self.routine = frozenset([LOG_RECEIVED, LOG_SUCCESS, "Scheduler: Sending due task %s (%s)"])

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.msg  # the format, not yet filled in (and a str for these lines)
        if record.levelno != logging.INFO or not isinstance(msg, str) or msg not in self.routine:
            return True
        record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def celery_setup_logging(loglevel: int | str | None = None, **kwargs: Any) -> None:
    """Celery's ``setup_logging`` receiver: Django's ``LOGGING`` is the configuration,
    at the level Celery was given."""
    from django.conf import settings

    dictConfig(settings.LOGGING)
    if loglevel:
        logging.getLogger().setLevel(loglevel)


def _connect_celery() -> None:
    from django.conf import settings

    if not settings.configured or getattr(settings, "LOG_FORMAT", "plain") != "json":
        return
    try:
        from celery.signals import setup_logging
    except ImportError:  # pragma: no cover - Celery is a dependency
        return
    setup_logging.connect(celery_setup_logging, weak=False, dispatch_uid=__name__)


_connect_celery()
