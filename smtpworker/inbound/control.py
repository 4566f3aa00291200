"""Celery's control plane reaching the SMTP worker.

A node joins Celery's broadcast mailbox (kombu's pidbox, the mechanism behind
``app.control.broadcast`` and ``celery inspect``) as ``smtp@<node>``, so the web side can
reach every SMTP node, or one, with ordinary Celery control messages (the names are in
:mod:`smtpworker.core.contract`):

* ``smtp_reload`` — check for a new configuration version now;
* ``smtp_status`` — reply with what the node runs;
* ``smtp_terminate`` ``{"session_id": ...}`` — close one SMTP session;
* ``smtp_ping`` — reply ``"pong"``.

Commands of Celery's own workers are ignored. The consumer runs in a thread and hands
work to the node's event loop; it reconnects by itself after broker failures.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

from kombu.connection import Connection
from kombu.pidbox import Mailbox, Node

from smtpworker.core import contract
from smtpworker.inbound.watcher import Follower

log = logging.getLogger(__name__)


class _SmtpNode(Node):
    def handle_message(self, body: dict[str, Any], message: Any = None) -> Any:
        if body.get("method") not in (self.handlers or {}):
            return None  # a command for Celery's workers, not for us
        return super().handle_message(body, message)


class ControlPlane(threading.Thread):
    """Consume control messages for one node until :meth:`stop`."""

    def __init__(
        self, broker_url: str, follower: Follower, loop: asyncio.AbstractEventLoop
    ) -> None:
        super().__init__(name="smtp-control", daemon=True)
        self.broker_url = broker_url
        self.follower = follower
        self.loop = loop
        self._stopped = threading.Event()
        self.ready = threading.Event()

    def stop(self) -> None:
        self._stopped.set()

    def _on_loop(self, make: Callable[[], Any], timeout: float = 5.0) -> Any:
        async def call() -> Any:
            return make()

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(timeout)

    def handlers(self) -> dict[str, Callable[..., Any]]:
        follower = self.follower

        def reload(state: Any, version: int | None = None, **_: Any) -> contract.ReloadReply:
            self.loop.call_soon_threadsafe(follower.trigger)
            return {"ok": True, "requested": version}

        def status(state: Any, **_: Any) -> contract.NodeReport:
            report: contract.NodeReport = self._on_loop(follower.status)
            return report

        def terminate(state: Any, session_id: str = "", **_: Any) -> contract.TerminateReply:
            done = self._on_loop(lambda: follower.node.sessions.terminate(session_id))
            return {"ok": bool(done), "session_id": session_id}

        def ping(state: Any, **_: Any) -> str:
            return "pong"

        return {
            contract.Command.RELOAD: reload,
            contract.Command.STATUS: status,
            contract.Command.TERMINATE: terminate,
            contract.Command.PING: ping,
        }

    def run(self) -> None:
        mailbox = Mailbox(
            contract.CONTROL_NAMESPACE, type="fanout", accept=["json"], serializer="json"
        )
        hostname = contract.control_hostname(self.follower.node.name)
        while not self._stopped.is_set():
            try:
                with Connection(self.broker_url, connect_timeout=5) as conn:
                    channel = conn.channel()
                    node = _SmtpNode(
                        hostname, mailbox=mailbox(conn), channel=channel, handlers=self.handlers()
                    )
                    node.listen(channel=channel)
                    self.ready.set()
                    log.info("control plane: listening as %s", hostname)
                    while not self._stopped.is_set():
                        try:
                            conn.drain_events(timeout=1)
                        except TimeoutError:
                            continue
            except Exception as exc:  # noqa: BLE001 - keep serving after any broker failure
                self.ready.clear()
                log.warning("control plane: broker connection lost (%s); retrying", exc)
                self._stopped.wait(2)
