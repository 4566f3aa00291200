"""Configuration versions: every committed change is one immutable snapshot row."""

from __future__ import annotations

import uuid

from django.db import models


class ConfigSnapshot(models.Model):
    """The whole configuration as the workers consume it; ``id`` is the version number.

    Rows are only ever inserted (by ``services.config.config_publish``), never updated, so
    the table is the history of what every node was asked to run.
    """

    body = models.JSONField()
    # SHA-256 of the runtime part (what a worker runs): equal digests, no reload needed.
    digest = models.CharField(max_length=64, db_index=True)
    # SHA-256 of every configuration row (descriptions included): a commit that changes
    # it is a new version even when the runtime part is unchanged.
    record_digest = models.CharField(max_length=64, blank=True, default="")
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


class SiteIdentity(models.Model):
    """This database's identity: one row, a random id made once (by migration 0006).

    Published with every configuration body, so a worker tells this site's "version 3"
    from another database's (a reinstall, a second checkout on the same Redis, a backup
    restored over a newer state). A restored backup brings its identity back with it.
    """

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    uuid = models.UUIDField(default=uuid.uuid4, editable=False, unique=True)
    created = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"site {self.uuid}"
