"""The threads that check passwords, apart from the threads that write the spool.

A basic-authentication guess costs a 600,000-round PBKDF2 (about half a second of a core).
On the shared I/O pool a flood of parallel AUTH would queue every spool write behind the
guesses and stall mail acceptance; here guesses get their own small pool, and at most
``per_client`` checks of one client and ``total`` checks in all may be running or waiting.
Past either cap the AUTH is answered with a temporary error, without a check.

The pool's threads also run at a lower CPU priority (``NICENESS``): under a flood the
event loop and the spool writes get the cores first, and checks take what is left.
Linux schedules threads one by one, so this leaves the rest of the process as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

# Added to the password threads' nice value (0 -> 10: about a tenth of a core's share
# against a busy event loop thread at 0, and all of an idle core).
NICENESS = 10


class PoolBusy(Exception):
    """The client, or the node, already has as many password checks waiting as allowed."""


def lower_priority() -> None:
    """Lower the calling thread's CPU priority (Linux: per thread; elsewhere, nothing)."""
    with contextlib.suppress(AttributeError, OSError):
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + NICENESS)


def default_workers() -> int:
    """Half the cores, at least one: the rest stay for the event loop and the spool."""
    return max(1, (os.cpu_count() or 2) // 2)


class VerifyPool:
    """A bounded executor for password checks, with caps per client and in total.

    Use from one event loop. A check counts against the caps until its thread is done
    with it, even when the session that asked for it has gone (its CPU is still spent).
    """

    def __init__(self, workers: int | None = None, *, per_client: int = 2, total: int = 16):
        self.workers = workers or default_workers()
        self.per_client, self.total = per_client, total
        self.executor = ThreadPoolExecutor(
            self.workers, thread_name_prefix="smtp-auth", initializer=lower_priority
        )
        self.pending: Counter[str] = Counter()

    @property
    def in_flight(self) -> int:
        return sum(self.pending.values())

    async def run(self, client: str, func: Callable[..., T], *args: Any) -> T:
        """Run ``func(*args)`` on the pool for ``client``; raise PoolBusy past a cap."""
        if self.pending[client] >= self.per_client or self.in_flight >= self.total:
            raise PoolBusy(client)
        loop = asyncio.get_running_loop()
        self.pending[client] += 1
        future: Future[T] = self.executor.submit(func, *args)

        def release(_done: Future[T]) -> None:
            try:
                loop.call_soon_threadsafe(self._release, client)
            except RuntimeError:  # the loop is closed: the worker is stopping
                pass

        future.add_done_callback(release)
        return await asyncio.wrap_future(future)

    def _release(self, client: str) -> None:
        self.pending[client] -= 1
        if self.pending[client] <= 0:
            del self.pending[client]

    def shutdown(self, *, wait: bool = True) -> None:
        """Drop the checks not yet started; ``wait`` for the running ones."""
        self.executor.shutdown(wait=wait, cancel_futures=True)
