"""Reads that are not plain ORM queries: what the SMTP worker nodes report.

Each node writes ``mailadmin:worker:<node>`` to Redis every few seconds (with a 30 s
expiry): its applied configuration version, heartbeat, listeners, errors and sessions
(``smtpworker.core.contract.WorkerReport``). Redis being down means "unknown", never an
error page.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Literal, TypedDict, cast

import redis
from django.conf import settings

from smtpworker.core import contract
from smtpworker.core.contract import SessionStatus, WorkerStatus
from smtpworker.inbound import authbrake

log = logging.getLogger(__name__)

# A node that has not reported for this long is shown as stale (it reports every 2 s).
STALE_AFTER = 10.0
# What a server's runtime says: no live node serves it (unknown), one failed (error).
RuntimeSummary = Literal["listening", "stopped", "error", "unknown"]


class NodeRuntime(TypedDict):
    """One live node's part in :class:`ServerRuntime`."""

    node: str
    applied_version: int
    listening: bool
    bindings: list[str]
    error: str
    sessions: int


class ServerRuntime(TypedDict):
    """One server as the live nodes run it (the API's ``runtime`` of a server)."""

    status: RuntimeSummary
    error: str  # each failing node's "<node>: <error>", joined by "; "
    nodes: list[NodeRuntime]


class SessionRow(SessionStatus):
    """A session as listed: its ``id`` is ``<node>:<id on the node>``."""

    node: str


def worker_statuses() -> list[WorkerStatus]:
    """Every node's last report, with ``stale`` set; sorted by node name. A report is
    taken as the node wrote it (an older or newer node's may lack keys: read with care)."""
    try:
        client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2)
        keys = sorted(client.scan_iter(contract.WORKER_KEY_PATTERN, count=100))
        bodies = client.mget(keys) if keys else []
        client.close()
    except redis.RedisError as exc:
        log.warning("cannot read worker status from Redis: %s", exc)
        return []
    now = time.time()
    statuses = []
    for body in bodies:
        if body is None:
            continue
        try:
            status = json.loads(body)
        except ValueError:
            continue
        status["stale"] = (
            bool(status.get("stopped")) or now - float(status.get("heartbeat", 0)) > STALE_AFTER
        )
        statuses.append(cast(WorkerStatus, status))
    return sorted(statuses, key=lambda s: str(s.get("node")))


def auth_blocks(server: str) -> list[dict[str, Any]] | None:
    """The clients the AUTH brake blocks on one server now (``smtpworker.inbound.authbrake``),
    soonest end first, as ``{client, until, seconds_left}``; None when Redis is down."""
    try:
        client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2)
        rows = authbrake.list_blocks(client, server)
        client.close()
    except redis.RedisError as exc:
        log.warning("cannot read AUTH blocks from Redis: %s", exc)
        return None
    now = time.time()
    return [
        {"client": key, "until": until, "seconds_left": max(0, int(until - now))}
        for key, until in rows
    ]


def server_runtime(name: str, statuses: list[WorkerStatus]) -> ServerRuntime:
    """One server as the nodes run it: ``status`` is listening, paused, stopped, error or
    unknown (no live node serves it), with per-node detail."""
    nodes: list[NodeRuntime] = []
    for status in statuses:
        server = status.get("servers", {}).get(name)
        if server is None or status["stale"]:
            continue
        nodes.append(
            {
                "node": status.get("node"),
                "applied_version": status.get("applied_version"),
                "listening": bool(server.get("listening")),
                "bindings": server.get("bindings", []),
                "error": server.get("error", ""),
                "sessions": server.get("sessions", 0),
            }
        )
    summary: RuntimeSummary
    if not nodes:
        summary = "unknown"
    elif any(n["error"] for n in nodes):
        summary = "error"
    elif any(n["listening"] for n in nodes):
        summary = "listening"
    else:
        summary = "stopped"
    errors = [f"{n['node']}: {n['error']}" for n in nodes if n["error"]]
    return {"status": summary, "error": "; ".join(errors), "nodes": nodes}


def sessions_list(statuses: list[WorkerStatus]) -> list[SessionRow]:
    """Current SMTP sessions on every live node, newest first; ids are ``node:session``."""
    sessions: list[SessionRow] = []
    for status in statuses:
        if status["stale"]:
            continue
        for session in status.get("sessions", []):
            sessions.append(
                {
                    **session,
                    "node": status.get("node"),
                    "id": f"{status.get('node')}:{session['id']}",
                }
            )
    return sorted(sessions, key=lambda s: -float(s.get("since", 0)))
