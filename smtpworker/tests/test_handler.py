"""SMTP sessions over real loopback sockets: policy on the wire, exact replies."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import smtplib
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pytest
import trustme

from smtpworker.core import credentials
from smtpworker.core.config import ServerConfig, SiteConfig
from smtpworker.core.spool import Spool
from smtpworker.tests.factories import (
    free_port,
    remote,
    server,
    site,
    tls_identity,
    tls_with,
    user,
)
from smtpworker.tests.harness import LiveNode
from smtpworker.tests.transcript import transcript

MESSAGE = b"From: a@sender.test\r\nTo: b@test.test\r\nSubject: hi\r\n\r\nHello.\r\n"


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveNode]:
    node = LiveNode(tmp_path)
    yield node
    node.close()


def serve(
    live: LiveNode, cfg: ServerConfig, users: tuple[Any, ...] = (), **kw: Any
) -> tuple[str, int]:
    live.apply(site(cfg, users=users, **kw))
    binding = cfg.bindings[0]
    return binding.host or "127.0.0.1", binding.port


def one(**overrides: Any) -> ServerConfig:
    return server("Test", f"127.0.0.1:{free_port()}", **overrides)


def connect(address: tuple[str, int], **kw: Any) -> smtplib.SMTP:
    client = smtplib.SMTP(timeout=10, **kw)
    client.connect(*address)
    client._host = "test.example.test"  # type: ignore[attr-defined]  # the name TLS checks
    return client


def greeted(live: LiveNode) -> tuple[socket.socket, BinaryIO]:
    """A raw connection to a default server, its greeting read: for bytes smtplib won't send."""
    sock = socket.create_connection(serve(live, one()), timeout=5)
    reader = sock.makefile("rb")
    reader.readline()
    return sock, reader


def spooled(live: LiveNode, name: str = "Test") -> Spool:
    return Spool(live.node.home(live.node.contexts[name].cfg) / "Queue")


def test_it_greets_and_advertises_what_is_configured(live: LiveNode) -> None:
    address = serve(live, one(auth={"basic": True, "integrated": True}))
    with connect(address) as client:
        code, banner = client.ehlo("client.test")
        assert code == 250
        lines = banner.decode().splitlines()
        assert lines[0] == "test.example.test Hello [127.0.0.1]"
        assert lines[1:] == [
            "SIZE 2097152",
            "8BITMIME",
            "PIPELINING",
            "ENHANCEDSTATUSCODES",
            "SMTPUTF8",
            "AUTH PLAIN LOGIN SCRAM-SHA-256",
        ]


def test_it_accepts_local_mail_and_spools_it_before_250(live: LiveNode) -> None:
    address = serve(live, one())
    with connect(address) as client:
        client.ehlo("client.test")
        assert client.mail("a@sender.test") == (250, b"2.1.0 Sender OK")
        assert client.rcpt("b@Test.Test.") == (250, b"2.1.5 Recipient OK")
        code, reply = client.data(MESSAGE)
    assert code == 250
    queue_id = reply.decode().removeprefix("2.0.0 Queued as ")
    envelope, data = spooled(live).load(queue_id)
    assert envelope.recipients == ("b@test.test",)
    assert envelope.sender == "a@sender.test" and envelope.client_ip == "127.0.0.1"
    assert data.endswith(MESSAGE)
    assert data.startswith(b"Received: from client.test ([127.0.0.1])\r\n\tby test.example.test")
    assert f"with ESMTP id {queue_id}".encode() in data
    assert live.enqueued == [(queue_id, "Test")]


def test_an_anonymous_client_cannot_relay(live: LiveNode) -> None:
    address = serve(live, one())
    with connect(address) as client:
        client.ehlo("client.test")
        client.mail("a@sender.test")
        assert client.rcpt("victim@foreign.test") == (
            550,
            b"5.7.1 Unable to relay for victim@foreign.test",
        )
        for trick in (
            "victim%foreign.test@test.test",
            "@test.test:victim@foreign.test",
            "victim@[127.0.0.1]",
        ):
            code, _ = client.rcpt(trick)
            assert code in (501, 550), trick
        assert client.docmd("DATA") == (554, b"5.5.1 No valid recipients")


def test_the_relay_list_and_remote_domains_open_relay_selectively(live: LiveNode) -> None:
    cfg = one(relay={"entries": ("127.0.0.1",)}, domains=(remote("*.partner.test"),))
    address = serve(live, cfg)
    with connect(address) as client:
        client.ehlo("client.test")
        client.mail("a@sender.test")
        assert client.rcpt("x@foreign.test")[0] == 250
        assert client.rcpt("x@mx.partner.test")[0] == 250
    other = one(relay={"mode": "all_except_list", "entries": ("127.0.0.0/8",)})
    with connect(serve(live, other)) as client:
        client.ehlo("client.test")
        client.mail("a@sender.test")
        assert client.rcpt("x@foreign.test")[0] == 550


def test_authenticated_users_relay_with_each_mechanism(live: LiveNode) -> None:
    cfg = one(auth={"basic": True, "integrated": True, "cram_md5": True})
    address = serve(live, cfg, users=(user("alice", "s3cret", cram=True),))
    for mechanism in ("PLAIN", "LOGIN", "CRAM-MD5"):
        with connect(address) as client:
            client.ehlo("client.test")
            client.user, client.password = "alice", "s3cret"
            method: dict[str, Any] = {
                "PLAIN": client.auth_plain,
                "LOGIN": client.auth_login,
                "CRAM-MD5": client.auth_cram_md5,
            }
            code, reply = client.auth(
                mechanism, method[mechanism], initial_response_ok=mechanism != "LOGIN"
            )
            assert (code, reply) == (235, b"2.7.0 Authentication successful"), mechanism
            client.mail("alice@corp.test")
            assert client.rcpt("x@foreign.test")[0] == 250
    with connect(address) as client:
        client.ehlo("client.test")
        assert scram_login(client, "alice", "s3cret") == (235, b"2.7.0 Authentication successful")


def test_an_auth_exchange_the_client_cancels_or_garbles_is_answered_and_the_session_goes_on(
    live: LiveNode,
) -> None:
    cfg = one(auth={"basic": True})
    serve(live, cfg, users=(user("alice", "s3cret"),))
    plain = base64.b64encode(b"\0alice\0s3cret")
    client = b"EHLO c\r\nAUTH LOGIN\r\n*\r\nAUTH PLAIN\r\n!!\r\nAUTH PLAIN\r\n%s\r\nQUIT\r\n"
    replies = live.run(transcript(live.node.contexts["Test"], client % plain))
    ehlo_end = next(i for i, reply in enumerate(replies) if reply.startswith("250 "))
    after_ehlo = replies[ehlo_end + 1 :]
    assert after_ehlo == [
        "334 VXNlcm5hbWU6",  # base64("Username:")
        "501 5.7.0 Auth aborted",
        "334 ",
        "501 5.5.2 Can't decode base64",
        "334 ",
        "235 2.7.0 Authentication successful",
        "221 2.0.0 test.example.test Service closing transmission channel",
    ]


def scram_login(client: smtplib.SMTP, username: str, password: str) -> tuple[int, bytes]:
    """A client-side SCRAM-SHA-256 exchange (RFC 5802), independent of the server code."""
    nonce = base64.b64encode(b"client-nonce-123").decode()
    bare = f"n={username},r={nonce}"
    code, reply = client.docmd(
        "AUTH", "SCRAM-SHA-256 " + base64.b64encode(("n,," + bare).encode()).decode()
    )
    assert code == 334, reply
    server_first = base64.b64decode(reply).decode()
    fields = dict(item.split("=", 1) for item in server_first.split(","))
    salted = hashlib.pbkdf2_hmac(
        "sha256", password.encode(), base64.b64decode(fields["s"]), int(fields["i"])
    )
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored = hashlib.sha256(client_key).digest()
    without_proof = f"c=biws,r={fields['r']}"
    auth_message = f"{bare},{server_first},{without_proof}".encode()
    signature = hmac.new(stored, auth_message, "sha256").digest()
    proof = base64.b64encode(
        bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    ).decode()
    final = f"{without_proof},p={proof}"
    code, reply = client.docmd(base64.b64encode(final.encode()).decode())
    if code != 334:
        return code, reply
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    expected = base64.b64encode(hmac.new(server_key, auth_message, "sha256").digest()).decode()
    assert base64.b64decode(reply).decode() == f"v={expected}"
    return client.docmd("")


def test_wrong_passwords_are_refused_then_braked_but_mail_goes_on(live: LiveNode) -> None:
    cfg = one(auth={"basic": True}, auth_brake={"block_after_failures": 4})
    address = serve(live, cfg, users=(user("alice", "s3cret"),))
    blocked = (454, b"4.7.0 Too many failed authentication attempts, try again later")

    def plain(password: str) -> str:
        return "PLAIN " + base64.b64encode(f"\0alice\0{password}".encode()).decode()

    with connect(address) as client:
        client.ehlo("client.test")
        replies = [client.docmd("AUTH", plain("wrong")) for _ in range(5)]
        assert replies[:4] == [(535, b"5.7.8 Authentication credentials invalid")] * 4
        assert replies[4] == blocked
        # The session goes on: mail that needs no AUTH is still taken.
        client.sendmail("a@sender.test", ["b@test.test"], MESSAGE)
    # A new connection is greeted as ever; only its AUTH is refused, right password or not.
    with connect(address) as client:
        client.ehlo("client.test")
        assert client.docmd("AUTH", plain("s3cret")) == blocked


def test_an_unknown_user_and_a_user_of_another_server_are_refused(live: LiveNode) -> None:
    cfg = one(auth={"basic": True})
    address = serve(live, cfg, users=(user("bob", "pw", "OtherServer"),))
    with connect(address) as client:
        client.ehlo("client.test")
        with pytest.raises(smtplib.SMTPAuthenticationError):
            client.login("bob", "pw")


def test_anonymous_off_requires_authentication(live: LiveNode) -> None:
    address = serve(live, one(auth={"anonymous": False, "basic": True}))
    with connect(address) as client:
        client.ehlo("client.test")
        assert client.mail("a@sender.test") == (530, b"5.7.0 Authentication required")


@pytest.fixture(scope="module")
def certificate() -> tuple[str, str, trustme.CA]:
    return tls_identity("test.example.test")


def tls_server(certificate: tuple[str, str, Any], **kw: Any) -> ServerConfig:
    return one(tls=tls_with(certificate, **kw.pop("tls", {})), **kw)


def client_context(certificate: tuple[str, str, trustme.CA]) -> ssl.SSLContext:
    context = ssl.create_default_context()
    certificate[2].configure_trust(context)
    return context


def test_starttls_and_require_tls(live: LiveNode, certificate: Any) -> None:
    address = serve(
        live,
        tls_server(certificate, tls={"require": True}, auth={"basic": True}),
        users=(user("alice", "pw"),),
    )
    with connect(address) as client:
        client.ehlo("client.test")
        assert client.has_extn("starttls") and not client.has_extn("auth")
        assert client.mail("a@sender.test") == (530, b"5.7.0 Must issue a STARTTLS command first")
        client.rset()
        assert client.starttls(context=client_context(certificate))[0] == 220
        client.ehlo("client.test")
        assert not client.has_extn("starttls") and client.has_extn("auth")
        client.login("alice", "pw")
        client.mail("alice@sender.test")
        client.rcpt("x@test.test")
        code, _ = client.data(MESSAGE)
        assert code == 250
    queue_id = spooled(live).ids()[0]
    assert b"with ESMTPSA id" in spooled(live).load(queue_id)[1]


def test_basic_auth_only_under_tls(live: LiveNode, certificate: Any) -> None:
    cfg = tls_server(certificate, auth={"basic": True, "basic_requires_tls": True})
    address = serve(live, cfg, users=(user("alice", "pw"),))
    with connect(address) as client:
        client.ehlo("client.test")
        assert not client.has_extn("auth")
        assert client.docmd("AUTH", "PLAIN AGFsaWNlAHB3")[0] == 530
        client.starttls(context=client_context(certificate))
        client.ehlo("client.test")
        assert client.login("alice", "pw")[0] == 235


def test_size_limits_at_mail_and_during_data(live: LiveNode) -> None:
    address = serve(live, one(messages={"max_message_size": 1024}))
    with connect(address) as client:
        client.ehlo("client.test")
        assert client.mail("a@sender.test", ["SIZE=5000"])[0] == 552
        client.mail("a@sender.test")
        client.rcpt("b@test.test")
        code, reply = client.data(b"Subject: big\r\n\r\n" + (b"x" * 70 + b"\r\n") * 40)
        assert code == 552 and reply.startswith(b"5.3.4")
        assert client.noop()[0] == 250  # the session goes on
    assert spooled(live).ids() == []


def test_recipient_and_message_limits(live: LiveNode) -> None:
    cfg = one(messages={"max_recipients_per_message": 2, "max_messages_per_connection": 1})
    address = serve(live, cfg)
    with connect(address) as client:
        client.ehlo("client.test")
        client.mail("a@sender.test")
        assert client.rcpt("1@test.test")[0] == 250
        assert client.rcpt("2@test.test")[0] == 250
        assert client.rcpt("3@test.test") == (452, b"4.5.3 Too many recipients")
        assert client.data(MESSAGE)[0] == 250
        code, _ = client.mail("a@sender.test")
        assert code == 421


def test_hop_count(live: LiveNode) -> None:
    address = serve(live, one(delivery={"max_hop_count": 2}))
    looping = b"Received: a\r\nReceived: b\r\nReceived: c\r\nSubject: loop\r\n\r\nx\r\n"
    with connect(address) as client:
        client.ehlo("client.test")
        client.mail("a@sender.test")
        client.rcpt("b@test.test")
        assert client.data(looping) == (554, b"5.4.6 Too many hops")


def test_connection_control_and_limit(live: LiveNode) -> None:
    denied = one(connection={"entries": ("127.0.0.0/8",)})
    serve(live, denied)
    sock = socket.create_connection((denied.bindings[0].host, denied.bindings[0].port), timeout=5)
    assert sock.recv(200).startswith(b"554 test.example.test Access denied")
    sock.close()
    limited = one(connection_limit=1)
    address = serve(live, limited)
    with connect(address) as first:
        first.ehlo("a.test")
        sock = socket.create_connection(address, timeout=5)
        assert sock.recv(200).startswith(b"421 test.example.test Too many connections")
        sock.close()


def test_idle_time_out_says_421(live: LiveNode) -> None:
    address = serve(live, one(connection_timeout=1))
    sock = socket.create_connection(address, timeout=5)
    assert sock.recv(200).startswith(b"220 ")
    time.sleep(1.3)
    assert sock.recv(200) == b"421 4.4.2 test.example.test Timeout, closing connection\r\n"
    sock.close()


def test_pipelined_commands_get_replies_in_order(live: LiveNode) -> None:
    sock, reader = greeted(live)
    sock.sendall(
        b"EHLO c.test\r\nMAIL FROM:<a@sender.test>\r\nRCPT TO:<b@test.test>\r\n"
        b"RCPT TO:<c@foreign.test>\r\nDATA\r\n"
    )
    lines = [reader.readline() for _ in range(10)]
    codes = [line[:4] for line in lines if not line.startswith(b"250-")]
    assert codes == [b"250 ", b"250 ", b"250 ", b"550 ", b"354 "]
    sock.sendall(b"Subject: p\r\n\r\nbody\r\n.\r\nQUIT\r\n")
    assert reader.readline().startswith(b"250 2.0.0 Queued as ")
    assert reader.readline().startswith(b"221 2.0.0")
    sock.close()


def test_bare_lf_end_of_data_is_not_the_end(live: LiveNode) -> None:
    sock, reader = greeted(live)
    sock.sendall(b"HELO c.test\r\nMAIL FROM:<a@sender.test>\r\nRCPT TO:<b@test.test>\r\nDATA\r\n")
    [reader.readline() for _ in range(4)]
    sock.sendall(
        b"Subject: s\r\n\r\nbody\n.\nMAIL FROM:<evil@x.test>\r\nRCPT TO:<v@foreign.test>\r\n.\r\n"
    )
    assert reader.readline().startswith(b"250 2.0.0 Queued as ")
    sock.close()
    (queue_id,) = spooled(live).ids()
    envelope, data = spooled(live).load(queue_id)
    assert envelope.recipients == ("b@test.test",)
    assert b"body\r\n.\r\nMAIL FROM:<evil@x.test>" in data


def test_bad_commands_get_enhanced_codes(live: LiveNode) -> None:
    address = serve(live, one())
    with connect(address) as client:
        assert client.docmd("MAIL FROM:<a@sender.test>") == (503, b"5.5.1 Send HELO or EHLO first")
        client.ehlo("client.test")
        assert client.docmd("RCPT TO:<b@test.test>") == (503, b"5.5.1 Need MAIL command first")
        assert client.docmd("FOO") == (500, b"5.5.2 Command unrecognized")
        assert client.docmd("MAIL FROM:a@sender.test")[0] == 501
        assert client.docmd("MAIL", "FROM:<a@sender.test> RET=FULL")[0] == 555
        assert client.docmd("X" * 600)[0] == 500
        assert client.docmd("NOOP\x00")[0] == 500
        assert client.docmd("VRFY", "b")[0] == 252


def test_a_session_keeps_its_config_and_new_ones_get_the_change(live: LiveNode) -> None:
    cfg = one()
    address = serve(live, cfg)
    old = connect(address)
    old.ehlo("old.test")
    serve(live, _replace(cfg, relay_entries=("127.0.0.1",)), version=2)
    with connect(address) as new:
        new.ehlo("new.test")
        new.mail("a@sender.test")
        assert new.rcpt("x@foreign.test")[0] == 250
    old.mail("a@sender.test")
    assert old.rcpt("x@foreign.test")[0] == 550
    old.quit()


def test_pause_refuses_new_clients_and_lets_open_sessions_finish(live: LiveNode) -> None:
    cfg = one()
    address = serve(live, cfg)
    open_session = connect(address)
    open_session.ehlo("old.test")
    serve(live, _replace(cfg, state="paused"), version=2)
    sock = socket.create_connection(address, timeout=5)
    assert sock.recv(200).startswith(b"421 test.example.test Service not available")
    sock.close()
    open_session.mail("a@sender.test")
    open_session.rcpt("b@test.test")
    assert open_session.data(MESSAGE)[0] == 250
    open_session.quit()


def test_stop_and_rebind(live: LiveNode) -> None:
    cfg = one()
    address = serve(live, cfg)
    session = connect(address)
    session.ehlo("old.test")
    moved = server("Test", f"127.0.0.1:{free_port()}")
    serve(live, moved, version=2)
    with pytest.raises(OSError):
        socket.create_connection(address, timeout=2).close()
    with connect((moved.bindings[0].host or "", moved.bindings[0].port)) as client:
        assert client.ehlo("c.test")[0] == 250
    session.mail("a@sender.test")  # the old session survived the rebind
    session.rcpt("b@test.test")
    assert session.data(MESSAGE)[0] == 250
    session.quit()
    serve(live, _replace(moved, state="stopped"), version=3)
    assert live.node.listeners == {}


def test_a_failed_bind_is_that_servers_error_only(live: LiveNode) -> None:
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    taken = blocker.getsockname()[1]
    good = server("Good", f"127.0.0.1:{free_port()}")
    bad = server("Bad", f"127.0.0.1:{taken}")
    live.apply(site(good, bad))
    status = live.node.status()["servers"]
    assert status["Good"]["listening"] and status["Good"]["error"] == ""
    assert not status["Bad"]["listening"]
    assert "address already in use" in status["Bad"]["error"].lower()
    blocker.close()


def _replace(
    cfg: ServerConfig, relay_entries: tuple[str, ...] | None = None, **kw: Any
) -> ServerConfig:
    from dataclasses import replace

    from smtpworker.core.grammar import parse_access_entry

    if relay_entries is not None:
        kw["relay"] = replace(
            cfg.relay, entries=tuple(parse_access_entry(e) for e in relay_entries)
        )
    return replace(cfg, **kw)


def _unused(_: SiteConfig, __: Any = credentials) -> None:  # keep imports honest for mypy
    pass


def test_each_command_is_in_the_w3c_log_without_auth_secrets(live: LiveNode) -> None:
    cfg = one(
        logging={
            "enabled": True,
            "fields": ("c-ip", "cs-username", "cs-method", "cs-uri-query", "sc-status"),
        },
        auth={"basic": True},
    )
    address = serve(live, cfg, users=(user("alice", "s3cret"),))
    with connect(address) as client:
        client.ehlo("client.test")
        client.login("alice", "s3cret")
        client.mail("a@sender.test")
        client.rcpt("b@test.test")
        client.data(MESSAGE)
    live.run(_flush(live))
    (log_file,) = (live.node.home(cfg) / "LogFiles").glob("ex*.log")
    lines = [line for line in log_file.read_text().splitlines() if not line.startswith("#")]
    assert lines[:2] == ["127.0.0.1 - EHLO +client.test 250", "127.0.0.1 alice AUTH - 235"]
    assert lines[2:5] == [
        "127.0.0.1 alice MAIL +FROM:<a@sender.test> 250",
        "127.0.0.1 alice RCPT +TO:<b@test.test> 250",
        "127.0.0.1 alice DATA - 250",
    ]
    assert "s3cret" not in log_file.read_text() and "YWxpY2U" not in log_file.read_text()


async def _flush(live: LiveNode) -> None:
    for log in live.node._logs.values():
        log.flush()


def test_the_pickup_directory_is_queued_by_the_node(live: LiveNode) -> None:
    cfg = one()
    serve(live, cfg)
    home = live.node.home(cfg)
    dropped = home / "Pickup" / "note.eml"
    dropped.write_bytes(b"x-sender: app@sender.test\nx-receiver: b@test.test\nSubject: p\n\nhi\n")
    old = time.time() - 5  # writers rename finished files in; age marks them complete
    os.utime(dropped, (old, old))
    (home / "Pickup" / "bad.eml").write_bytes(b"\x00\x01 not a message")
    os.utime(home / "Pickup" / "bad.eml", (old, old))
    live.run(live.node.pickup_once())
    (queue_id,) = spooled(live).ids()
    envelope, data = spooled(live).load(queue_id)
    assert envelope.sender == "app@sender.test" and envelope.recipients == ("b@test.test",)
    assert data.endswith(b"Subject: p\r\n\r\nhi\r\n")
    assert live.enqueued == [(queue_id, "Test")]
    assert sorted(p.suffix for p in (home / "Badmail").iterdir()) == [".BAD", ".BDR"]
    assert list((home / "Pickup").iterdir()) == []
