"""Django's side of ``LOG_FORMAT``: the SMTP worker's formatters, for ``LOGGING``.

``settings.LOGGING`` names these classes; the web process and Celery (which runs
``django.setup()`` and so takes the same ``LOGGING``) then write the same lines as the SMTP
worker. Inside a Celery task, JSON lines also carry ``task_id`` and ``task_name``.

Celery configures logging itself when its worker or beat starts, after Django did, and
would replace these lines with its own. In JSON mode this module, which Django imports
while it applies ``LOGGING``, connects :func:`celery_setup_logging` to Celery's
``setup_logging`` signal: Celery then leaves the configuration alone and Django's applies,
at the level given by ``celery ... -l``. Plain mode keeps Celery's own format.
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
