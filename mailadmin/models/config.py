"""Configuration versions: every committed change is one immutable snapshot row."""

from __future__ import annotations

from django.db import models


class ConfigSnapshot(models.Model):
    """The whole configuration as the workers consume it; ``id`` is the version number.

    Rows are only ever inserted (by ``services.config.config_publish``), never updated, so
    the table is the history of what every node was asked to run.
    """

    body = models.JSONField()
    digest = models.CharField(max_length=64, db_index=True)
    author = models.CharField(max_length=150, blank=True, default="")
    reason = models.CharField(max_length=200, blank=True, default="")
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
        get_latest_by = "id"

    @property
    def version(self) -> int:
        return self.pk

    def __str__(self) -> str:
        return f"config v{self.pk}"


class ConfigLock(models.Model):
    """A single row locked by every configuration write.

    Cross-row rules (no two running servers on one ip:port) are checked and then written
    under this lock, so two concurrent requests cannot both pass the check.
    """

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
