"""Celery control messages to the SMTP worker nodes (see smtpworker.inbound.control)."""

from __future__ import annotations

import logging
from typing import Any

from mailadmin.celery import app
from mailadmin.exceptions import ConfigError

log = logging.getLogger(__name__)


def control_reload(version: int) -> None:
    """Ask every SMTP node to check for ``version`` now; best effort (nodes also poll)."""
    try:
        # Only SMTP nodes (smtp@<node>) match: Celery's own workers would log an error.
        app.control.broadcast(
            "smtp_reload", arguments={"version": version}, pattern="smtp@*", matcher="glob"
        )
    except Exception as exc:  # noqa: BLE001 - a broker outage must not fail the commit
        log.warning("reload broadcast for v%s failed (%s); nodes will poll", version, exc)


def session_terminate(*, session_id: str, author: str) -> bool:
    """Close one SMTP session, given as ``node:id``; False if it was already gone."""
    node, sep, local_id = session_id.partition(":")
    if not sep or not node or not local_id:
        raise ConfigError.at(("id",), "A session id is node:session, as listed.")
    replies: list[dict[str, Any]] = app.control.broadcast(
        "smtp_terminate",
        arguments={"session_id": local_id},
        destination=[f"smtp@{node}"],
        reply=True,
        timeout=2.0,
    )
    log.info("%s terminated session %s", author, session_id)
    return any(r.get(f"smtp@{node}", {}).get("ok") for r in replies)
