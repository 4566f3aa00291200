"""Outbound SMTP against a real sink on loopback: outcomes, TLS, AUTH, data, reuse."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import replace
from typing import Any

import pytest

from smtpworker.outbound.client import Connection, RecipientResult, TransactionResult, to_wire
from smtpworker.outbound.pool import ConnectionPool, PoolExhausted
from smtpworker.outbound.routing import Target
from smtpworker.tests.factories import NO_SECURITY, free_port
from smtpworker.tests.sink import Sink

PoolFactory = Callable[..., ConnectionPool]
HELO = "relay.example.test"
MESSAGE = b"From: a@example.org\r\nTo: b@example.test\r\nSubject: hi\r\n\r\nHello.\r\n"


@pytest.fixture
def sink() -> Iterator[Sink]:
    with Sink() as running:
        yield running


def target(sink: Sink, host: str = "127.0.0.1") -> Target:
    return Target(host, sink.address, sink.port, 0)


def connection(sink: Sink, *, password: str = "", **kw: Any) -> Connection:
    security = replace(NO_SECURITY, **kw.pop("security", {}))
    kw.setdefault("timeout", 5.0)
    kw.setdefault("use_helo", False)
    return Connection(
        kw.pop("target", None) or target(sink),
        helo_name=HELO,
        security=security,
        password=password,
        **kw,
    )


def send(sink: Sink, *recipients: str, data: bytes = MESSAGE, **kw: Any) -> TransactionResult:
    conn = connection(sink, **kw)
    try:
        return conn.send("a@example.org", recipients or ("b@example.test",), data)
    finally:
        conn.close()


def codes(result: TransactionResult) -> list[int]:
    return [r.code for r in result.results]


# --- outcomes ----------------------------------------------------------------------------


def test_a_message_is_delivered(sink: Sink) -> None:
    result = send(sink, "b@example.test", "c@example.test")
    assert result.connect_error is None
    assert codes(result) == [250, 250]
    assert result.results[0].delivered and result.results[0].reply.startswith("2.0.0")
    assert result.host == f"127.0.0.1[127.0.0.1]:{sink.port}"
    [got] = sink.wait_for(1)
    assert got.sender == "a@example.org"
    assert got.recipients == ("b@example.test", "c@example.test")
    assert got.data == MESSAGE
    assert (got.helo_name, got.esmtp, got.tls, got.auth_user) == (HELO, True, False, None)
    assert f"SIZE={len(MESSAGE) + 3}" in got.mail_options


def test_the_null_sender_goes_as_empty_brackets(sink: Sink) -> None:
    conn = connection(sink)
    assert codes(conn.send("", ["b@example.test"], MESSAGE)) == [250]
    conn.close()
    assert sink.wait_for(1)[0].sender == ""


@pytest.mark.parametrize("stage", ["mail", "rcpt", "data"])
@pytest.mark.parametrize("mode", ["421", "451"])
def test_4xx_is_temporary(sink: Sink, mode: str, stage: str) -> None:
    sink.mode, sink.stage = mode, stage
    result = send(sink, "b@example.test", "c@example.test")
    assert codes(result) == [int(mode)] * 2
    assert not any(r.delivered or r.permanent for r in result.results)
    assert result.connect_error is None
    assert sink.messages == []


def test_a_421_closes_the_session(sink: Sink) -> None:
    sink.mode, sink.stage = "421", "rcpt"
    conn = connection(sink)
    conn.send("a@example.org", ["b@example.test"], MESSAGE)
    assert not conn.usable
    sink.mode = "accept"
    assert codes(conn.send("a@example.org", ["b@example.test"], MESSAGE)) == [250]
    conn.close()
    assert len(sink.connections) == 2


@pytest.mark.parametrize("stage", ["mail", "rcpt", "data"])
def test_550_is_permanent(sink: Sink, stage: str) -> None:
    sink.mode, sink.stage = "550", stage
    result = send(sink, "b@example.test")
    assert codes(result) == [550] and result.results[0].permanent
    assert result.results[0].reply == "5.7.1 Sink is told to refuse"
    assert sink.messages == []


def test_a_refused_recipient_does_not_stop_the_others(sink: Sink) -> None:
    sink.rcpt_replies["nobody@example.test"] = "550 5.1.1 No such user"
    result = send(sink, "b@example.test", "nobody@example.test", "c@example.test")
    assert result.results == (
        RecipientResult("b@example.test", 250, "2.0.0 Queued as 1"),
        RecipientResult("nobody@example.test", 550, "5.1.1 No such user"),
        RecipientResult("c@example.test", 250, "2.0.0 Queued as 1"),
    )
    [got] = sink.wait_for(1)
    assert got.recipients == ("b@example.test", "c@example.test")


def test_no_data_when_every_recipient_is_refused_and_the_session_goes_on(sink: Sink) -> None:
    sink.rcpt_replies["nobody@example.test"] = "550 5.1.1 No such user"
    sink.rcpt_replies["later@example.test"] = "452 4.2.2 Mailbox full"
    conn = connection(sink)
    result = conn.send("a@example.org", ["nobody@example.test", "later@example.test"], MESSAGE)
    assert codes(result) == [550, 452] and result.connect_error is None
    assert codes(conn.send("a@example.org", ["b@example.test"], MESSAGE)) == [250]
    conn.close()
    assert [m.recipients for m in sink.wait_for(1)] == [("b@example.test",)]
    assert len(sink.connections) == 1


def test_a_helo_name_is_required(sink: Sink) -> None:
    with pytest.raises(ValueError):
        Connection(
            target(sink), helo_name="", use_helo=False, security=NO_SECURITY, password="", timeout=1
        )


def test_a_refused_connection_is_temporary() -> None:
    port = free_port()  # nothing listens there
    conn = Connection(
        Target("127.0.0.1", "127.0.0.1", port, 0),
        helo_name=HELO,
        use_helo=False,
        security=NO_SECURITY,
        password="",
        timeout=5,
    )
    result = conn.send("a@example.org", ["b@example.test", "c@example.test"], MESSAGE)
    assert codes(result) == [421, 421]
    assert result.connect_error is not None
    assert result.connect_error.startswith("4.4.1 Cannot connect to 127.0.0.1[127.0.0.1]")
    assert result.results[0].reply == result.connect_error


def test_a_sink_told_to_refuse_stops_listening(sink: Sink) -> None:
    sink.mode = "refuse"
    assert send(sink).connect_error is not None
    sink.mode = "accept"
    assert codes(send(sink)) == [250]


def test_a_stalled_server_times_out_as_temporary(sink: Sink) -> None:
    sink.mode = "stall"
    started = time.monotonic()
    result = send(sink, timeout=0.5)
    assert time.monotonic() - started < 3
    assert codes(result) == [421]
    assert result.connect_error is not None
    assert "timed out while waiting for the greeting" in result.connect_error


def test_a_connection_dropped_during_data_is_temporary(sink: Sink) -> None:
    sink.mode = "drop_mid_data"
    sink.rcpt_replies["nobody@example.test"] = "550 5.1.1 No such user"
    result = send(sink, "b@example.test", "nobody@example.test")
    assert codes(result) == [421, 550]  # the refusal at RCPT stands
    assert result.connect_error is not None and "Lost connection" in result.connect_error
    assert sink.messages == []


@pytest.mark.parametrize(("mode", "code"), [("421", 421), ("451", 451), ("550", 421)])
def test_a_refused_greeting_is_a_temporary_session_error(sink: Sink, mode: str, code: int) -> None:
    sink.mode, sink.stage = mode, "connect"
    result = send(sink)
    assert codes(result) == [code]
    assert result.connect_error is not None and "refused the session at greeting" in (
        result.connect_error
    )


# --- message data ------------------------------------------------------------------------


def test_dots_and_line_ends_arrive_intact(sink: Sink) -> None:
    data = b"Subject: dots\r\n\r\n.\r\n..\r\n.leading\r\nmid.dle\r\n.\r\nlast line"
    assert codes(send(sink, data=data)) == [250]
    assert sink.wait_for(1)[0].data == data + b"\r\n"


def test_bare_line_feeds_never_reach_the_wire(sink: Sink) -> None:
    assert codes(send(sink, data=b"Subject: lf\n\n.\nbare\rcr\r\n")) == [250]
    assert sink.wait_for(1)[0].data == b"Subject: lf\r\n\r\n.\r\nbare\r\ncr\r\n"


def test_to_wire() -> None:
    assert to_wire(b"") == b".\r\n"
    assert to_wire(b"a\nb\rc\r\n") == b"a\r\nb\r\nc\r\n.\r\n"
    assert to_wire(b".\r\n..x\r\n") == b"..\r\n...x\r\n.\r\n"
    assert to_wire(b"x\n.") == b"x\r\n..\r\n.\r\n"


def test_8bit_data_is_declared_when_offered(sink: Sink) -> None:
    data = "Subject: caf\u00e9\r\n\r\n\u00e9t\u00e9\r\n".encode()
    assert codes(send(sink, data=data)) == [250]
    assert codes(send(sink, data=MESSAGE)) == [250]
    eight, seven = sink.wait_for(2)
    assert "BODY=8BITMIME" in eight.mail_options and eight.data == data
    assert not any(o.startswith("BODY") for o in seven.mail_options)


def test_non_ascii_addresses_use_smtputf8(sink: Sink) -> None:
    conn = connection(sink)
    result = conn.send("j\u00f6rg@example.org", ["\u00fcser@b\u00fccher.test"], MESSAGE)
    conn.close()
    assert codes(result) == [250]
    [got] = sink.wait_for(1)
    assert got.sender == "j\u00f6rg@example.org"
    assert got.recipients == ("\u00fcser@b\u00fccher.test",)
    assert "SMTPUTF8" in got.mail_options


def test_non_ascii_addresses_bounce_without_smtputf8() -> None:
    with Sink(smtputf8=False) as sink:
        result = send(sink, "\u00fcser@example.test")
        assert codes(result) == [553]
        assert result.results[0].reply.startswith("5.6.7 SMTPUTF8 is required")
        assert sink.messages == []


def test_an_address_with_line_breaks_is_refused_not_sent(sink: Sink) -> None:
    result = send(sink, "b@example.test", "evil@example.test>\r\nRCPT TO:<x@example.test")
    assert codes(result) == [250, 553]
    assert sink.wait_for(1)[0].recipients == ("b@example.test",)


# --- HELO, TLS, AUTH ---------------------------------------------------------------------


def test_helo_instead_of_ehlo(sink: Sink) -> None:
    assert codes(send(sink, use_helo=True)) == [250]
    [got] = sink.wait_for(1)
    assert (got.esmtp, got.helo_name, got.mail_options) == (False, HELO, ())


def test_starttls_is_used_when_offered() -> None:
    with Sink(tls=True) as sink:
        conn = connection(sink)
        assert codes(conn.send("a@example.org", ["b@example.test"], MESSAGE)) == [250]
        assert conn.tls
        conn.close()
        assert sink.wait_for(1)[0].tls


def test_verified_tls_with_the_uploaded_ca() -> None:
    with Sink(tls=True) as sink:
        result = send(
            sink,
            target=target(sink, "mx.example.test"),  # the name is checked against the cert
            security={"tls": "verified", "tls_ca": sink.ca_pem()},
        )
        assert codes(result) == [250]
        assert sink.wait_for(1)[0].tls


def test_required_tls_not_offered_is_temporary_and_sends_nothing(sink: Sink) -> None:
    result = send(sink, security={"tls": "required"})
    assert codes(result) == [421]
    assert result.connect_error is not None
    assert result.connect_error.startswith("4.7.4 TLS is required")
    assert sink.messages == []


def test_required_tls_and_helo_cannot_meet() -> None:
    with Sink(tls=True) as sink:
        result = send(sink, security={"tls": "required"}, use_helo=True)
        assert result.connect_error is not None
        assert "HELO (not EHLO) is set" in result.connect_error
        assert sink.messages == []


def test_verified_tls_refuses_a_certificate_from_an_untrusted_ca() -> None:
    with Sink(tls=True) as sink:  # the system's CAs do not know the sink's private CA
        result = send(sink, security={"tls": "verified"})
        assert result.connect_error is not None
        assert result.connect_error.startswith("4.7.5 verified TLS handshake")
        assert "certificate verify failed" in result.connect_error
        assert sink.messages == []


@pytest.mark.parametrize(
    ("method", "offered"),
    [
        ("basic", ("PLAIN", "LOGIN")),
        ("basic", ("LOGIN",)),
        ("integrated", ("PLAIN", "CRAM-MD5")),
        ("integrated", ("CRAM-MD5", "SCRAM-SHA-256")),
    ],
)
def test_auth_with_stored_credentials(method: str, offered: tuple[str, ...]) -> None:
    with Sink(tls=True, auth=("relay", "s3cret \u00e9"), auth_mechanisms=offered) as sink:
        security = {"auth_method": method, "username": "relay"}
        conn = connection(sink, security=security, password="s3cret \u00e9")
        assert codes(conn.send("a@example.org", ["b@example.test"], MESSAGE)) == [250]
        assert conn.authenticated and conn.tls
        conn.close()
        assert sink.wait_for(1)[0].auth_user == "relay"


def test_auth_after_starttls() -> None:
    with Sink(tls=True, auth=("relay", "pw")) as sink:
        security = {"tls": "required", "auth_method": "basic", "username": "relay"}
        assert codes(send(sink, security=security, password="pw")) == [250]
        got = sink.wait_for(1)[0]
        assert got.tls and got.auth_user == "relay"


@pytest.mark.parametrize(
    ("method", "mechanism"),
    [
        ("basic", "PLAIN"),
        ("basic", "LOGIN"),
        ("integrated", "CRAM-MD5"),
        ("integrated", "SCRAM-SHA-256"),
    ],
)
def test_wrong_credentials_are_temporary_and_send_nothing(method: str, mechanism: str) -> None:
    with Sink(tls=True, auth=("relay", "pw"), auth_mechanisms=(mechanism,)) as sink:
        security = {"auth_method": method, "username": "relay"}
        result = send(sink, security=security, password="wrong")
        assert codes(result) == [421]
        assert result.connect_error is not None
        assert f"refused AUTH {mechanism} as 'relay': 535" in result.connect_error
        assert sink.messages == []


def test_integrated_auth_never_falls_back_to_a_clear_text_password() -> None:
    with Sink(tls=True, auth=("relay", "pw"), auth_mechanisms=("PLAIN", "LOGIN")) as sink:
        security = {"auth_method": "integrated", "username": "relay"}
        result = send(sink, security=security, password="pw")
        assert result.connect_error is not None
        assert "offers no SCRAM-SHA-256 or CRAM-MD5" in result.connect_error
        assert sink.messages == []


def test_a_password_scram_cannot_prepare_is_a_temporary_failure_not_a_crash() -> None:
    # SASLprep (RFC 4013) refuses control characters: the session must end as any other
    # AUTH failure (4.7.0, retried later), not raise out of the pool into the task.
    with Sink(tls=True, auth=("relay", "pw"), auth_mechanisms=("SCRAM-SHA-256",)) as sink:
        security = {"auth_method": "integrated", "username": "relay"}
        result = send(sink, security=security, password="p\x07w")
        assert codes(result) == [421]
        assert result.connect_error is not None
        assert result.connect_error.startswith("4.7.0 AUTH SCRAM-SHA-256")
        assert sink.messages == []


# --- connection reuse --------------------------------------------------------------------


@pytest.fixture
def make_pool() -> Iterator[PoolFactory]:
    pools: list[ConnectionPool] = []

    def make(**kw: Any) -> ConnectionPool:
        pools.append(ConnectionPool(**kw))
        return pools[-1]

    yield make
    for pool in pools:
        pool.close_all()


def pooled(pool: ConnectionPool, sink: Sink, **kw: Any) -> Connection:
    kw.setdefault("timeout", 5.0)
    return pool.get(
        target(sink), helo_name=HELO, use_helo=False, security=NO_SECURITY, password="", **kw
    )


def pooled_connection(pool: ConnectionPool, sink: Sink) -> AbstractContextManager[Connection]:
    """:meth:`ConnectionPool.connection` to ``sink``: a pooled connection, released after."""
    return pool.connection(
        target(sink), helo_name=HELO, use_helo=False, security=NO_SECURITY, password="", timeout=5.0
    )


def test_two_messages_share_one_pooled_connection(sink: Sink, make_pool: PoolFactory) -> None:
    pool = make_pool()
    for recipient in ("b@example.test", "c@example.test"):
        with pooled_connection(pool, sink) as conn:
            assert codes(conn.send("a@example.org", [recipient], MESSAGE)) == [250]
    pool.close_all()
    first, second = sink.wait_for(2)
    assert first.peer == second.peer
    assert len(sink.connections) == 1


def test_a_pooled_connection_the_server_dropped_is_reopened(
    sink: Sink, make_pool: PoolFactory
) -> None:
    pool = make_pool()
    conn = pooled(pool, sink)
    assert codes(conn.send("a@example.org", ["b@example.test"], MESSAGE)) == [250]
    pool.release(conn)
    sink.mode = "refuse"  # restarting the sink closes every session it had
    sink.mode = "accept"
    again = pooled(pool, sink)
    assert again is conn
    assert codes(again.send("a@example.org", ["c@example.test"], MESSAGE)) == [250]
    pool.release(again)
    pool.close_all()
    first, second = sink.wait_for(2)
    assert first.peer != second.peer


def test_idle_connections_expire(sink: Sink, make_pool: PoolFactory) -> None:
    now = [0.0]
    pool = make_pool(idle_timeout=10, clock=lambda: now[0])
    conn = pooled(pool, sink)
    conn.send("a@example.org", ["b@example.test"], MESSAGE)
    pool.release(conn)
    now[0] = 11.0
    assert pool.prune() == 1
    assert not conn.usable
    fresh = pooled(pool, sink)
    assert fresh is not conn
    pool.release(fresh)


def test_a_session_is_closed_after_max_messages(sink: Sink, make_pool: PoolFactory) -> None:
    pool = make_pool(max_messages=2)
    for recipient in ("b@example.test", "c@example.test", "d@example.test"):
        conn = pooled(pool, sink)
        assert codes(conn.send("a@example.org", [recipient], MESSAGE)) == [250]
        pool.release(conn)
    pool.close_all()
    peers = [m.peer for m in sink.wait_for(3)]
    assert peers[0] == peers[1] != peers[2]


def test_a_broken_session_is_not_kept(sink: Sink, make_pool: PoolFactory) -> None:
    pool = make_pool()
    sink.mode, sink.stage = "421", "data"
    conn = pooled(pool, sink)
    conn.send("a@example.org", ["b@example.test"], MESSAGE)
    pool.release(conn)
    fresh = pooled(pool, sink)
    assert fresh is not conn
    pool.release(fresh)


def test_the_pool_limits_connections_per_host(sink: Sink, make_pool: PoolFactory) -> None:
    pool = make_pool(max_per_key=1)
    held = pooled(pool, sink)
    assert codes(held.send("a@example.org", ["b@example.test"], MESSAGE)) == [250]
    with pytest.raises(PoolExhausted):
        pooled(pool, sink, wait=0.1)
    threading.Timer(0.2, pool.release, args=(held,)).start()
    again = pooled(pool, sink, wait=5)
    assert again is held  # handed over as soon as it came back
    pool.release(again)


def test_a_connection_that_never_opened_frees_its_slot(sink: Sink, make_pool: PoolFactory) -> None:
    pool = make_pool(max_per_key=1)
    unopened = pooled(pool, sink, wait=0)
    pool.release(unopened)
    fresh = pooled(pool, sink, wait=0)
    assert fresh is not unopened
    pool.release(fresh)


def test_the_pool_is_thread_safe(sink: Sink, make_pool: PoolFactory) -> None:
    pool = make_pool(max_per_key=2)
    failures: list[TransactionResult] = []

    def worker(n: int) -> None:
        for i in range(5):
            with pooled_connection(pool, sink) as conn:
                result = conn.send("a@example.org", [f"u{n}.{i}@example.test"], MESSAGE)
                if codes(result) != [250]:
                    failures.append(result)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    pool.close_all()
    assert failures == []
    assert len(sink.wait_for(20)) == 20
    assert len(sink.connections) <= 2


def test_pool_send_is_one_pooled_transaction(sink: Sink, make_pool: PoolFactory) -> None:
    pool = make_pool(max_per_key=1)
    kw: dict[str, Any] = {
        "helo_name": HELO,
        "use_helo": False,
        "security": NO_SECURITY,
        "password": "",
        "timeout": 5.0,
    }
    for recipient in ("b@example.test", "c@example.test"):
        result = pool.send(
            target(sink), sender="a@example.org", recipients=[recipient], data=MESSAGE, **kw
        )
        assert codes(result) == [250]
    first, second = sink.wait_for(2)
    assert first.peer == second.peer
    held = pool.get(target(sink), **kw)
    busy = pool.send(
        target(sink),
        sender="a@example.org",
        recipients=["d@example.test"],
        data=MESSAGE,
        wait=0,
        **kw,
    )
    pool.release(held)
    assert codes(busy) == [421] and busy.connect_error is not None
    assert busy.connect_error.startswith("4.4.5")


def test_a_forked_child_does_not_reuse_its_parents_sessions(
    sink: Sink, make_pool: PoolFactory
) -> None:
    pool = make_pool()
    conn = pooled(pool, sink)
    conn.send("a@example.org", ["b@example.test"], MESSAGE)
    pool.release(conn)
    pool._after_fork()  # what os.register_at_fork runs in the child for POOL
    fresh = pooled(pool, sink)
    assert fresh is not conn
    pool.release(fresh)
    conn.close()  # in a real child the parent still owns it
