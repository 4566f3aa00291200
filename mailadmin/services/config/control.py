"""Celery control messages to the SMTP worker nodes (see smtpworker.inbound.control; the
names are in smtpworker.core.contract)."""

from __future__ import annotations

import logging

from mailadmin.celery import app
from mailadmin.exceptions import ConfigError
from smtpworker.core import contract

log = logging.getLogger(__name__)


def control_reload(version: int) -> None:
    """Ask every SMTP node to check for ``version`` now; best effort (nodes also poll)."""
    try:
        # Only SMTP nodes (smtp@<node>) match: Celery's own workers would log an error.
        app.control.broadcast(
            contract.Command.RELOAD,
            arguments={"version": version},
            pattern=contract.CONTROL_HOST_PATTERN,
            matcher="glob",
        )
    except Exception as exc:  # noqa: BLE001 - a broker outage must not fail the commit
        log.warning("reload broadcast for v%s failed (%s); nodes will poll", version, exc)


def session_terminate(*, session_id: str, author: str) -> bool:
    """Close one SMTP session, given as ``node:id``; False if it was already gone."""
    node, sep, local_id = session_id.partition(":")
    if not sep or not node or not local_id:
        raise ConfigError.at(("id",), "A session id is node:session, as listed.")
    hostname = contract.control_hostname(node)
    replies: list[dict[str, contract.TerminateReply]] = app.control.broadcast(
        contract.Command.TERMINATE,
        arguments={"session_id": local_id},
        destination=[hostname],
        reply=True,
        timeout=2.0,
    )
    log.info("%s terminated session %s", author, session_id)
    return any(r[hostname].get("ok") for r in replies if hostname in r)
