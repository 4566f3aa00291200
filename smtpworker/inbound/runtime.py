"""A worker node: the listeners of the virtual servers assigned to it, kept in step with
the configuration.

:meth:`Node.apply` takes a validated :class:`~smtpworker.core.config.SiteConfig` and makes
the node match it: a listener for every binding of every started or paused server of this
node. A new binding is opened before an old one is closed; a binding that cannot be bound
puts that server in error with the reason while the others run on. Connections bind the
server context in force when they arrive, so sessions in progress keep their old
configuration.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import os
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smtpworker.core import contract, safefile, tlsinfo
from smtpworker.core.config import ServerConfig, SiteConfig
from smtpworker.core.grammar import Binding, bindings_conflict
from smtpworker.core.mailroot import ServerLayout, server_layout
from smtpworker.core.secretbox import SecretBox, SecretBoxError
from smtpworker.core.spool import Spool
from smtpworker.inbound.auth import Accounts
from smtpworker.inbound.authbrake import AuthBrake
from smtpworker.inbound.authpool import VerifyPool
from smtpworker.inbound.handler import ServerContext, SmtpSession
from smtpworker.inbound.pickup import process_pickup
from smtpworker.inbound.sessions import SessionRegistry
from smtpworker.inbound.w3clog import W3CLog

log = logging.getLogger(__name__)

RUNNING = contract.RUNNING_STATES


@dataclass(slots=True)
class Listener:
    binding: Binding  # the address alone; ``proxy`` says whether it takes PROXY headers
    server: str
    handle: asyncio.Server
    proxy: bool = False


# A listening address -> (server name, whether it takes the PROXY protocol).
Wanted = dict[Binding, tuple[str, bool]]


@dataclass(slots=True)
class NodeOptions:
    """What a node needs besides the configuration."""

    name: str
    mailroot: Path
    box: SecretBox
    mock_key: bytes
    hostname: str
    executor: Executor | None = None
    # The AUTH brake (node-wide through Redis when it has a URL) and the password pool.
    brake: AuthBrake = field(default_factory=AuthBrake)
    verifier: VerifyPool = field(default_factory=VerifyPool)
    enqueue: Callable[[str, str], None] = lambda queue_id, server: None
    reverse_names: Callable[[str], Awaitable[tuple[str, ...]]] | None = None
    # SO_REUSEPORT on every listener, so that several processes of one node can listen on
    # the same ip:port and Linux spreads the connections among them (``--processes``).
    # Off for a single process: with it, a second copy of the node started by the same
    # user would share the port silently instead of failing to bind.
    reuse_port: bool = False


class Node:
    """The servers this node runs, and their listeners."""

    def __init__(self, options: NodeOptions) -> None:
        self.options = options
        self.name = options.name
        self.site: SiteConfig | None = None
        self.contexts: dict[str, ServerContext] = {}
        self.listeners: dict[Binding, Listener] = {}
        self.errors: dict[str, str] = {}
        self.sessions = SessionRegistry()
        self.counters: dict[str, dict[str, int]] = {}
        self._tls_cache: dict[tuple[str, str], Any] = {}
        self._logs: dict[str, W3CLog] = {}

    def mine(self, site: SiteConfig) -> list[ServerConfig]:
        return [s for s in site.servers if s.node in ("", self.name)]

    def layout(self, server: ServerConfig) -> ServerLayout:
        """Where ``server``'s mail directories are on this node."""
        return server_layout(self.options.mailroot, server.name, server)

    def home(self, server: ServerConfig) -> Path:
        return self.layout(server).home

    async def apply(self, site: SiteConfig) -> None:
        """Make the listeners match ``site``; never raises for one server's problem."""
        servers = {s.name: s for s in self.mine(site)}
        errors: dict[str, str] = {}
        contexts: dict[str, ServerContext] = {}
        for server in servers.values():
            try:
                contexts[server.name] = self._context(site, server)
            except (OSError, tlsinfo.TlsConfigError, SecretBoxError) as exc:
                errors[server.name] = f"cannot prepare {server.name}: {exc}"
        # Keyed by address: turning PROXY on or off keeps the socket and flips the flag.
        wanted = {
            b.address: (name, b.proxy)
            for name, server in servers.items()
            if server.state in RUNNING and name in contexts
            for b in server.bindings
        }
        self.contexts = contexts
        await self._rebind(wanted, errors)
        self.errors = errors
        self.site = site

    async def _rebind(self, wanted: Wanted, errors: dict[str, str]) -> None:
        # No await before this loop ends, so no connection sees new contexts with old flags.
        for binding, listener in self.listeners.items():
            if binding in wanted:
                # Same socket, maybe another server now, maybe PROXY turned on or off.
                listener.server, listener.proxy = wanted[binding]
        for binding, (name, proxy) in wanted.items():
            if binding in self.listeners:
                continue
            try:
                await self._open(binding, name, proxy, wanted)
            except OSError as exc:
                reason = exc.strerror or str(exc)
                errors[name] = f"cannot listen on {binding}: {reason}"
                log.error("%s: cannot listen on %s: %s", name, binding, reason)
        for binding in [b for b in self.listeners if b not in wanted]:
            self._close(binding)

    async def _open(self, binding: Binding, name: str, proxy: bool, wanted: Wanted) -> None:
        try:
            handle = await self._serve(binding)
        except OSError as exc:
            # Turning 127.0.0.2:25 into *:25 needs the old socket gone first (Linux refuses
            # the overlap); close the overlapping ones that are going away and retry once.
            overlapping = [
                b for b in self.listeners if b not in wanted and bindings_conflict(b, binding)
            ]
            if exc.errno != errno.EADDRINUSE or not overlapping:
                raise
            for old in overlapping:
                self._close(old)
            handle = await self._serve(binding)
        self.listeners[binding] = Listener(binding, name, handle, proxy)
        log.info("%s: listening on %s", name, Binding(binding.host, binding.port, proxy))

    async def _serve(self, binding: Binding) -> asyncio.Server:
        loop = asyncio.get_running_loop()
        return await loop.create_server(
            lambda: self._session(binding),
            host=binding.host,
            port=binding.port,
            reuse_address=True,
            # With SO_REUSEPORT the bind still fails (EADDRINUSE, reported as the server's
            # error) when the port is held by a socket without it or by another user.
            reuse_port=self.options.reuse_port,
        )

    def _close(self, binding: Binding) -> None:
        listener = self.listeners.pop(binding)
        # close() stops accepting; connections already open go on to their end.
        listener.handle.close()
        log.info("%s: stopped listening on %s", listener.server, binding)

    def _session(self, binding: Binding) -> SmtpSession:
        listener = self.listeners.get(binding)
        context = self.contexts.get(listener.server) if listener else None
        if listener is None or context is None:  # pragma: no cover - outlived its server
            raise ConnectionRefusedError(f"no server for {binding}")
        # The flag lives on the listener, so a plain binding pays nothing for PROXY.
        return SmtpSession(context, proxy=listener.proxy)

    def _context(self, site: SiteConfig, server: ServerConfig) -> ServerContext:
        layout = self.layout(server)
        for directory in layout.mail_directories:
            _make_mail_directory(directory)
        opts = self.options
        return ServerContext(
            cfg=server,
            hostname=server.fqdn or opts.hostname,
            accounts=Accounts(site, server, opts.box, opts.mock_key),
            spool=Spool(layout.queue),
            sessions=self.sessions,
            brake=opts.brake,
            executor=opts.executor,
            verifier=opts.verifier,
            tls_context=self._tls(server),
            reverse_names=opts.reverse_names,
            enqueue=opts.enqueue,
            w3c=self._w3c(server, layout.logs),
            counters=self.counters.setdefault(server.name, {}),
        )

    def _w3c(self, server: ServerConfig, logs: Path) -> W3CLog | None:
        """The server's W3C log, kept across configuration versions (one open file)."""
        current = self._logs.get(server.name)
        if not server.logging.enabled:
            if current is not None:
                current.close()
                del self._logs[server.name]
            return None
        if current is None:
            current = W3CLog(logs, period=server.logging.period, fields=server.logging.fields)
            self._logs[server.name] = current
        else:
            current.reconfigure(period=server.logging.period, fields=server.logging.fields)
        return current

    def _tls(self, server: ServerConfig) -> Any:
        if not server.tls.enabled:
            return None
        key = (server.tls.certificate, server.tls.private_key)
        if key not in self._tls_cache:
            pem = self.options.box.open(server.tls.private_key)
            self._tls_cache[key] = tlsinfo.build_ssl_context(server.tls.certificate, pem)
        return self._tls_cache[key]

    async def pickup_loop(self, interval: float = 1.0) -> None:
        """Queue what is dropped into each running server's Pickup/ directory, forever."""
        while True:
            await self.pickup_once()
            await asyncio.sleep(interval)

    async def pickup_once(self) -> None:
        loop = asyncio.get_running_loop()
        for context in list(self.contexts.values()):
            cfg = context.cfg
            if cfg.state not in RUNNING:
                continue
            layout = self.layout(cfg)
            job = functools.partial(
                process_pickup,
                layout.pickup,
                layout.badmail,
                context.spool,
                server=cfg.name,
                enqueue=context.enqueue,
                max_message_size=cfg.messages.max_message_size,
                max_hop_count=cfg.delivery.max_hop_count,
                hostname=context.hostname,
            )
            try:
                result = await loop.run_in_executor(self.options.executor, job)
            except OSError as exc:
                log.warning("%s: pickup directory failed: %s", cfg.name, exc)
                continue
            if result.queued or result.bad:
                context.count("accepted", len(result.queued))
                # A scan's sum: each file has its own line (queued at INFO, Badmail a warning).
                log.debug(
                    "%s: pickup queued %d, badmail %d",
                    cfg.name,
                    len(result.queued),
                    len(result.bad),
                )

    async def close(self, *, grace: float = 10.0) -> None:
        """Stop accepting, let open sessions finish for up to ``grace`` seconds, then cut."""
        for binding in list(self.listeners):
            self._close(binding)
        deadline = time.monotonic() + grace
        while len(self.sessions) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for info in self.sessions:
            info.close()
        for w3c in self._logs.values():
            w3c.close()
        await self.options.brake.close()
        self.options.verifier.shutdown(wait=False)

    def status(self) -> contract.NodeStatus:
        """What this node runs, for the API and the dashboard (JSON-ready)."""
        servers: dict[str, contract.ServerStatus] = {}
        for server in self.mine(self.site) if self.site else []:
            bound = [
                str(Binding(b.host, b.port, lst.proxy))
                for b, lst in self.listeners.items()
                if lst.server == server.name
            ]
            servers[server.name] = {
                "state": server.state,
                "listening": bool(bound) and server.name not in self.errors,
                "bindings": bound,
                "error": self.errors.get(server.name, ""),
                "sessions": self.sessions.count(server.name),
                "counters": dict(self.counters.get(server.name, {})),
            }
        return {
            "node": self.name,
            "pid": os.getpid(),
            "applied_version": self.site.version if self.site else 0,
            "heartbeat": time.time(),
            "servers": servers,
            "sessions": [s.as_dict() for s in self.sessions],
        }


def _make_mail_directory(path: Path) -> None:
    """Create a mail directory 0700 (and its missing parents). One that is a link is
    reported, not fatal: the spool, Pickup/, Drop/ and Badmail/ writers refuse it."""
    try:
        os.close(safefile.open_directory(path))
    except safefile.UnsafePath as exc:
        log.error("mail directory %s", exc)
