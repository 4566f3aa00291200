"""The aiosmtpd adapter against the installed aiosmtpd: every private name it relies on
exists there, with the kind of value or the signature it expects. An aiosmtpd upgrade
that renames, drops or reshapes one fails here, not in a rarely run path in production."""

from __future__ import annotations

import asyncio
import inspect
import re
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import aiosmtpd
import pytest
from aiosmtpd.smtp import SMTP, Session

from smtpworker.inbound import aiosmtpd_adapter as adapter
from smtpworker.tests.transcript import BufferTransport

REQUIREMENTS = Path(__file__).resolve().parents[2] / "requirements.txt"


class _Sink:
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        return "250 OK"


class _Waiting(adapter.SessionBase):
    """The adapter with a session that only waits (the handler's tests run the real one)."""

    async def serve(self) -> None:
        await asyncio.Event().wait()

    def timed_out(self) -> None:
        pass


def _ours() -> _Waiting:
    return _Waiting(
        hostname="mx.example.test",
        ident="ESMTP test",
        tls_context=None,
        data_size_limit=1024,
        timeout=30,
    )


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    running = asyncio.new_event_loop()
    yield running
    running.close()


def _in_loop(loop: asyncio.AbstractEventLoop, make: Any) -> Any:
    async def build() -> Any:
        return make()

    return loop.run_until_complete(build())


def _connected(loop: asyncio.AbstractEventLoop, protocol: SMTP) -> SMTP:
    async def connect() -> None:
        protocol.connection_made(BufferTransport(("127.0.0.1", 40000)))
        await asyncio.sleep(0)  # the session task starts (aiosmtpd's greets)

    loop.run_until_complete(connect())
    return protocol


def _disconnect(loop: asyncio.AbstractEventLoop, protocol: SMTP) -> None:
    async def lose() -> None:
        assert protocol.transport is not None
        protocol.transport.close()  # a closed transport: its StreamWriter has nothing to flush
        protocol.connection_lost(None)
        await asyncio.sleep(0)

    loop.run_until_complete(lose())


def _kinds_hold(protocol: SMTP) -> list[str]:
    wrong = []
    for name, kinds in adapter.ATTRIBUTES.items():
        if name not in vars(protocol):
            wrong.append(f"{name}: not set")
        elif not isinstance(vars(protocol)[name], kinds):
            wrong.append(f"{name}: {type(vars(protocol)[name]).__name__} is not {kinds}")
    return wrong


def test_the_installed_aiosmtpd_is_the_pinned_one_the_adapter_was_written_for() -> None:
    pins = re.findall(r"^aiosmtpd==(\S+)", REQUIREMENTS.read_text(), flags=re.MULTILINE)
    assert pins == [adapter.PINNED_VERSION]
    assert version("aiosmtpd") == aiosmtpd.__version__ == adapter.PINNED_VERSION


def test_aiosmtpd_sets_every_attribute_the_adapter_sets_with_the_kinds_listed(
    loop: asyncio.AbstractEventLoop,
) -> None:
    theirs = _in_loop(loop, lambda: SMTP(_Sink(), hostname="mx.example.test"))
    assert _kinds_hold(theirs) == []
    _connected(loop, theirs)
    assert _kinds_hold(theirs) == []
    assert isinstance(theirs.session, Session) and isinstance(theirs.transport, BufferTransport)
    _disconnect(loop, theirs)


def test_the_adapter_sets_exactly_the_listed_attributes_with_their_kinds(
    loop: asyncio.AbstractEventLoop,
) -> None:
    ours = _in_loop(loop, _ours)
    bare = _in_loop(
        loop,
        lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader(), lambda r, w: None),
    )
    assert set(vars(ours)) - set(vars(bare)) == set(adapter.ATTRIBUTES)
    assert _kinds_hold(ours) == []
    _connected(loop, ours)
    assert _kinds_hold(ours) == []
    assert isinstance(ours.session, Session) and isinstance(ours.transport, BufferTransport)
    _disconnect(loop, ours)


@pytest.mark.parametrize("make", [lambda: SMTP(_Sink()), _ours], ids=["aiosmtpd", "adapter"])
def test_the_stream_internals_the_adapter_uses_are_there_once_connected(
    loop: asyncio.AbstractEventLoop, make: Any
) -> None:
    protocol = _connected(loop, _in_loop(loop, make))
    # _cb_client_connected (aiosmtpd's) names asyncio's reader and writer.
    assert isinstance(vars(protocol)["_reader"], asyncio.StreamReader)
    assert isinstance(vars(protocol)["_writer"], asyncio.StreamWriter)
    assert isinstance(getattr(protocol._reader, adapter.READER_BUFFER), bytearray)
    assert protocol.session is not None
    assert set(adapter.SESSION_FIELDS) <= set(vars(protocol.session))
    _disconnect(loop, protocol)


@pytest.mark.parametrize(("name", "expected"), [*adapter.INHERITED.items(), *adapter.HOOKS.items()])
def test_each_aiosmtpd_method_relied_on_exists_with_its_signature(
    name: str, expected: tuple[bool, tuple[str, ...]]
) -> None:
    method = inspect.getattr_static(SMTP, name)
    assert inspect.isfunction(method), f"SMTP.{name} is not a method"
    is_coroutine, parameters = expected
    assert inspect.iscoroutinefunction(method) == is_coroutine
    assert tuple(inspect.signature(method).parameters) == parameters


def test_the_adapter_replaces_each_hook_and_inherits_the_rest() -> None:
    own = vars(adapter.SessionBase)
    assert set(adapter.HOOKS) <= set(own)
    assert not (set(adapter.INHERITED) - {"push"}) & set(own)  # push wraps aiosmtpd's


def test_aiosmtpd_starttls_still_answers_what_the_adapter_rewrites() -> None:
    assert repr(adapter.AIOSMTPD_TLS_READY) in inspect.getsource(SMTP.smtp_STARTTLS)


def test_a_reply_goes_out_once_through_the_hook_with_the_tls_ready_rewritten(
    loop: asyncio.AbstractEventLoop,
) -> None:
    seen: list[str | bytes] = []
    ours = _in_loop(loop, _ours)
    ours.replying = seen.append
    _connected(loop, ours)
    loop.run_until_complete(ours.push(adapter.AIOSMTPD_TLS_READY))
    loop.run_until_complete(ours.push(b"250 OK"))
    assert seen == [adapter.TLS_READY, b"250 OK"]
    assert isinstance(ours.transport, BufferTransport)
    assert bytes(ours.transport.written) == f"{adapter.TLS_READY}\r\n250 OK\r\n".encode()
    _disconnect(loop, ours)
