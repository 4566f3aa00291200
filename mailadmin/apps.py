"""The mailadmin application: registers its system checks (mailadmin.checks)."""

from __future__ import annotations

from django.apps import AppConfig


class MailadminConfig(AppConfig):
    name = "mailadmin"

    def ready(self) -> None:
        from mailadmin import checks  # noqa: F401 - registering is the import's effect
