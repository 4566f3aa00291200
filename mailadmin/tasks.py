"""Celery entry points. Thin: each calls one service and carries only ids."""

from __future__ import annotations

from celery import shared_task

from mailadmin.services.config import config_republish as _config_republish


@shared_task(name="mailadmin.config_republish", ignore_result=True)
def config_republish() -> int:
    """Re-push the configuration in force to Redis if Redis lost it (beat, every few s)."""
    return _config_republish()
