"""Follow the published configuration: Redis pub/sub for speed, polling for certainty.

The web side writes the snapshot body to ``mailadmin:config:body`` and publishes its
version on ``mailadmin:config`` (names in :mod:`smtpworker.core.contract`). Pub/sub loses
messages while disconnected, so the follower also polls the body key every
``poll_interval`` seconds: a lost message delays a change by at most that long and never
loses it. A new body is validated in full
(:func:`smtpworker.core.config.load_site`) before the node applies it; a bad one is refused,
reported, and the old configuration stays. The last good body is kept in a file so a node
restarted while Redis is down comes back with the configuration it had.

A body is trusted only with a valid signature (:mod:`smtpworker.core.configmac`), in Redis and
in the last good file alike: one written by someone without the encryption key is refused
and reported as ``config_error`` while the node keeps what it runs. A signed body is
applied when its site identity or runtime digest differs from what the node runs, whatever
its version number (another database's "version 1", a restored older backup); a new
version with the same site and digest (a description changed) only updates the version.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from pathlib import Path

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from smtpworker.core import configmac, contract, safefile
from smtpworker.core.config import ConfigFormatError, SiteConfig, load_site
from smtpworker.inbound.runtime import Node

log = logging.getLogger(__name__)


class Follower:
    """Keeps a :class:`Node` on the latest valid configuration and reports its status."""

    def __init__(
        self,
        node: Node,
        redis_url: str,
        cache_file: Path,
        *,
        mac_key: bytes,
        poll_interval: float = 1.0,
        status_interval: float = 2.0,
    ) -> None:
        self.node = node
        self.redis = aioredis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
        self.cache_file = cache_file
        self.mac_key = mac_key
        self.poll_interval = poll_interval
        self.status_interval = status_interval
        self.config_error = ""
        self._running_wire = b""
        self._refused_wire = b""
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Load the configuration once: from Redis, else from the last good file."""
        if await self.check():
            return
        cached = self._read_cache()
        if cached is not None:
            log.warning(
                "config not available from Redis; running v%s from %s",
                cached.version,
                self.cache_file,
            )
            await self.node.apply(cached)

    def trigger(self) -> None:
        """Check for a new version now (a control message or pub/sub said there is one)."""
        self._wake.set()

    async def check(self) -> bool:
        """Fetch the body and apply it if it is a newer valid version; True if in step."""
        async with self._lock:
            try:
                body = await self.redis.get(contract.CONFIG_BODY_KEY)
            except (RedisError, OSError) as exc:
                log.debug("cannot read config from Redis: %s", exc)
                return False
            if body is None:
                return False
            return await self._consider(body if isinstance(body, bytes) else body.encode())

    async def _consider(self, wire: bytes) -> bool:
        current = self.node.site
        if wire == self._running_wire and current is not None:
            self.config_error = ""  # a refused body, if any, has been replaced by ours
            return True  # the poll's usual case: nothing new, nothing to parse or check
        if wire == self._refused_wire:
            return False  # refused and reported already; keep polling for a good one
        try:
            body = configmac.verify(self.mac_key, wire)
            site = load_site(body)
        except ConfigFormatError as exc:
            self._refused_wire = wire
            self.config_error = f"configuration refused: {exc}"
            log.error("%s; keeping v%s", self.config_error, current.version if current else 0)
            return False
        if current is not None and (site.site, site.digest) == (current.site, current.digest):
            if site.version != current.version:  # a new version with the same runtime part
                self.node.site = dataclasses.replace(current, version=site.version)
                log.info("configuration v%s: nothing to reload", site.version)
        else:
            await self.node.apply(site)
            log.info("applied configuration v%s of site %s", site.version, site.site or "-")
        self.config_error = ""
        self._running_wire = wire
        self._write_cache(wire)
        return True

    async def run(self) -> None:
        """Run until cancelled: pub/sub listener, poller and status reporter."""
        await asyncio.gather(self._listen(), self._poll(), self._report())

    async def _poll(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)
            except TimeoutError:
                pass
            self._wake.clear()
            await self.check()

    async def _listen(self) -> None:
        while True:
            try:
                pubsub = self.redis.pubsub()
                await pubsub.subscribe(contract.CONFIG_CHANNEL)
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        self.trigger()
            except (RedisError, OSError) as exc:
                log.debug("config channel lost (%s); polling meanwhile", exc)
                await asyncio.sleep(self.poll_interval)

    async def _report(self) -> None:
        while True:
            await self.publish_status()
            await asyncio.sleep(self.status_interval)

    def status(self) -> contract.NodeReport:
        """The node's status and how its configuration stands (``smtp_status`` replies it)."""
        site = self.node.site
        return {
            **self.node.status(),
            "config_error": self.config_error,
            "applied_site": site.site if site else "",
            "applied_digest": site.digest if site else "",
        }

    async def publish_status(self, *, final: bool = False) -> None:
        status: contract.WorkerReport = {**self.status(), "stopped": final}
        key = contract.worker_key(self.node.name)
        try:
            await self.redis.set(key, json.dumps(status), ex=contract.WORKER_STATUS_TTL)
        except (RedisError, OSError) as exc:
            log.debug("cannot report status: %s", exc)

    async def close(self) -> None:
        await self.redis.aclose()

    def _read_cache(self) -> SiteConfig | None:
        try:
            wire = self.cache_file.read_bytes()
            site = load_site(configmac.verify(self.mac_key, wire))
        except OSError as exc:
            log.debug("no usable cached config at %s: %s", self.cache_file, exc)
            return None
        except ConfigFormatError as exc:
            self.config_error = f"last good configuration {self.cache_file} refused: {exc}"
            log.error("%s", self.config_error)
            return None
        self._running_wire = wire
        return site

    def _write_cache(self, body: bytes) -> None:
        # Atomic replace: a crash mid-write must not leave a corrupt last-known-good file.
        # 0600, never through a link: it holds the users' password verifiers.
        try:
            with safefile.directory(self.cache_file.parent) as dir_fd:
                safefile.write_replace(dir_fd, self.cache_file.name, body, mode=0o600)
        except OSError as exc:
            log.warning("cannot keep last good config in %s: %s", self.cache_file, exc)
