"""mailadmin: IIS 6 SMTP virtual servers on Django, Celery and aiosmtpd."""

from __future__ import annotations

from . import celery_signals  # noqa: F401 - connecting the start hooks is the import's effect
from .celery import app as celery_app

__all__ = ["celery_app"]
