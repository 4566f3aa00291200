"""Issue 10.4: AUTH abuse is braked per server and never locks out the innocent.

Real sockets to a live node, real Redis. The guessing client speaks from 127.0.0.9; the
servers listen on other 127.0.0.x addresses, as two virtual servers of one node would.
"""

from __future__ import annotations

import base64
import socket
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis

from smtpworker.core.config import ServerConfig
from smtpworker.core.grammar import parse_binding
from smtpworker.inbound import authbrake
from smtpworker.inbound.authbrake import AuthBrake
from smtpworker.tests.factories import free_port, site, user
from smtpworker.tests.harness import LiveNode
from tests.proof.conftest import LOCAL_DOMAIN, Wire, internet_relay, spool_of

GUESSER = "127.0.0.9"
BYSTANDER = "127.0.0.10"
USERS = (user("alice", "s3cret"),)
BLOCKED = (454, "4.7.0 Too many failed authentication attempts, try again later")


class From(Wire):
    """A raw SMTP client speaking from a chosen loopback address."""

    def __init__(self, address: tuple[str, int], source: str = GUESSER) -> None:
        self.sock = socket.create_connection(address, timeout=10, source_address=(source, 0))
        self.file = self.sock.makefile("rb")


def plain(password: str, name: str = "alice") -> str:
    return "AUTH PLAIN " + base64.b64encode(f"\0{name}\0{password}".encode()).decode()


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.fixture
def shared(tmp_path: Path, redis_url: str) -> Iterator[LiveNode]:
    """A node whose brake counts in Redis, with short delays."""
    brake = AuthBrake(redis_url, delay=0.01, max_delay=0.02, refusal_delay=0.01)
    node = LiveNode(tmp_path, brake=brake)
    yield node
    node.close()


def two_servers(live: LiveNode, **brake: Any) -> tuple[tuple[str, int], tuple[str, int]]:
    """Two servers of one node: Submission on 127.0.0.2 (AUTH, blocks after 4 failures)
    and Relay on 127.0.0.3 (AUTH, default brake), both taking anonymous local mail."""
    settings = {"block_after_failures": 4, **brake}
    first = on("127.0.0.2", "Submission", auth={"basic": True}, auth_brake=settings)
    second = on("127.0.0.3", "Relay", auth={"basic": True})
    live.apply(site(first, second, users=USERS))
    return _address(first), _address(second)


def on(host: str, name: str = "InternetRelay", **overrides: Any) -> ServerConfig:
    """The proof suites' Internet relay, named ``name``, listening on ``host``."""
    binding = parse_binding(f"{host}:{free_port(host)}")
    return replace(internet_relay(**overrides), name=name, bindings=(binding,))


def _address(cfg: ServerConfig) -> tuple[str, int]:
    binding = cfg.bindings[0]
    assert binding.host is not None
    return binding.host, binding.port


def block(address: tuple[str, int], failures: int = 4) -> None:
    with From(address) as wire:
        wire.hello()
        for n in range(failures):
            reply = wire.command(plain(f"guess{n}"))
            assert (reply.code, reply.text) == (535, "5.7.8 Authentication credentials invalid")
        reply = wire.command(plain("s3cret"))
        assert (reply.code, reply.text) == BLOCKED


def mail_without_auth(wire: Wire) -> None:
    assert wire.command("MAIL FROM:<a@sender.test>").code == 250
    assert wire.command(f"RCPT TO:<b@{LOCAL_DOMAIN}>").code == 250
    assert wire.command("DATA").code == 354
    wire.send(b"Subject: hi\r\n\r\nHello.\r\n.\r\n")
    assert wire.reply().code == 250


def test_a_block_touches_neither_another_server_nor_mail_without_auth(
    shared: LiveNode,
) -> None:
    submission, relay = two_servers(shared)
    block(submission)
    # The blocked server still greets the client and takes its mail that needs no AUTH.
    with From(submission) as wire:
        wire.hello()
        assert (wire.command(plain("s3cret")).code, wire.command("NOOP").code) == (454, 250)
        mail_without_auth(wire)
    # The other server of the node: AUTH with the right password and mail, as ever.
    with From(relay) as wire:
        wire.hello()
        reply = wire.command(plain("s3cret"))
        assert (reply.code, reply.text) == (235, "2.7.0 Authentication successful")
        mail_without_auth(wire)
    assert len(spool_of(shared, "Submission").ids()) == 1
    assert len(spool_of(shared, "Relay").ids()) == 1
    # Another client of the blocked server is not braked either.
    with From(submission, BYSTANDER) as wire:
        wire.hello()
        assert wire.command(plain("s3cret")).code == 235


def test_sessions_opened_before_the_block_are_braked(shared: LiveNode) -> None:
    submission, _relay = two_servers(shared)
    early = [From(submission) for _ in range(5)]
    try:
        for wire in early:
            wire.hello()
        # A LOGIN exchange begun before the block, its password sent after it.
        assert early[4].command("AUTH LOGIN").code == 334
        assert early[4].command(b64("alice")).code == 334
        for wire in early[:4]:  # one wrong guess in each of four sessions: blocked
            assert wire.command(plain("wrong")).code == 535
        reply = early[0].command(plain("s3cret"))
        assert (reply.code, reply.text) == BLOCKED
        reply = early[4].command(b64("s3cret"))  # checked again before the verdict
        assert (reply.code, reply.text) == BLOCKED
        for wire in early[1:4]:
            assert (wire.command(plain("s3cret")).code, wire.command("NOOP").code) == (454, 250)
    finally:
        for wire in early:
            wire.close()


def test_a_block_holds_while_ten_thousand_other_clients_fail(
    shared: LiveNode, redis_url: str
) -> None:
    submission, _relay = two_servers(shared)
    block(submission)
    cfg = shared.node.contexts["Submission"].cfg.auth_brake
    brake = shared.node.options.brake

    async def others() -> None:
        for n in range(10_001):
            await brake.failure("Submission", f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}", cfg)

    shared.run(others(), timeout=120)
    with From(submission) as wire:
        wire.hello()
        assert (wire.command(plain("s3cret")).code, wire.command("NOOP").code) == (454, 250)
    client = redis.Redis.from_url(redis_url)
    try:
        assert [c for c, _until in authbrake.list_blocks(client, "Submission")] == [GUESSER]
    finally:
        client.close()


def test_redis_down_still_brakes_in_process_and_mail_goes_on(tmp_path: Path) -> None:
    nobody = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    brake = AuthBrake(nobody, delay=0.01, max_delay=0.02, refusal_delay=0.01)
    live = LiveNode(tmp_path, brake=brake)
    try:
        submission, _relay = two_servers(live)
        began = time.monotonic()
        block(submission)
        with From(submission) as wire:
            wire.hello()
            assert wire.command(plain("s3cret")).code == 454
            mail_without_auth(wire)
        assert time.monotonic() - began < 30  # Redis time-outs are short, not 5 s each
    finally:
        live.close()


def test_the_per_client_connection_limit_refuses_that_client_only(live: LiveNode) -> None:
    cfg = on("127.0.0.2", client_connection_limit=3)
    live.apply(site(cfg))
    address = _address(cfg)
    held = [From(address) for _ in range(3)]
    try:
        for wire in held:
            assert wire.greeting().code == 220
        with From(address) as fourth:
            greeting = fourth.greeting()
            assert greeting.code == 421, greeting
            assert "Too many connections from your address" in greeting.text
            assert fourth.closed()
        with From(address, BYSTANDER) as other:
            other.hello()
            mail_without_auth(other)
    finally:
        for wire in held:
            wire.close()


def test_a_blocked_client_that_keeps_asking_is_answered_slowly(tmp_path: Path) -> None:
    """Like Postfix's smtpd_error_sleep_time: a guesser looping on AUTH gets one 454 per
    refusal_delay, not a tight loop of cheap answers that would take the CPU from mail."""
    live = LiveNode(tmp_path, brake=AuthBrake(delay=0.01, max_delay=0.02, refusal_delay=0.3))
    try:
        submission, _relay = two_servers(live)
        with From(submission) as wire:
            wire.hello()
            for _ in range(4):
                assert wire.command(plain("wrong")).code == 535
            began = time.monotonic()
            for _ in range(3):
                assert wire.command(plain("wrong")).code == 454
            assert time.monotonic() - began >= 0.9
            assert wire.command("NOOP").code == 250  # and the session goes on
    finally:
        live.close()
