"""A worker node running on its own event loop thread, for tests that talk real SMTP."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from smtpworker.core.config import SiteConfig
from smtpworker.inbound.authbrake import AuthBrake
from smtpworker.inbound.runtime import Node, NodeOptions
from smtpworker.tests.factories import BOX


class LiveNode:
    def __init__(self, mailroot: Path, *, name: str = "test-node", **options: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.enqueued: list[tuple[str, str]] = []
        self.executor = ThreadPoolExecutor(4)
        # In-process brake (no Redis URL) with short delays; tests of the shared brake
        # pass their own.
        options.setdefault("brake", AuthBrake(delay=0.01, max_delay=0.05, refusal_delay=0.01))
        self.node = Node(
            NodeOptions(
                name=name,
                mailroot=mailroot,
                box=BOX,
                mock_key=b"test mock key",
                hostname="node.example.test",
                executor=self.executor,
                enqueue=lambda queue_id, server: self.enqueued.append((queue_id, server)),
                **options,
            )
        )

    def run(self, coro: Any, timeout: float = 10) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def apply(self, site: SiteConfig) -> None:
        self.run(self.node.apply(site))

    def close(self) -> None:
        self.run(self.node.close(grace=1))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()
        self.executor.shutdown()
