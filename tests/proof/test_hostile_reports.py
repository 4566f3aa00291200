"""Issue 10 item 8: bounded work for hostile content.

- A delivery report on a crafted 2 MB message is built in linear time and is correct (the
  time itself is measured by ``bench/dsn.py``; no test here asserts a duration).
- NDRs quote at most ``dsn.QUOTE_LIMIT`` octets of the original header section, cut at a
  field boundary.
- An MX host whose name is no host name (``mx/1.example``, ``*.example``, odd octets, very
  long labels) still gets its message bounced with an NDR, not retried for ever.
- ESMTP parameters are parsed as ASCII: ``SIZE=²`` (which ``str.isdigit`` takes and
  ``int`` refuses) and friends get ``501 5.5.4``, over a socket and in memory.
"""

from __future__ import annotations

import email
import email.policy
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any

import pytest
from rest_framework.test import APIClient

from smtpworker.outbound import dsn
from smtpworker.tests.harness import LiveNode
from smtpworker.tests.sink import Sink
from smtpworker.tests.transcript import transcript
from tests.proof.conftest import Wire, internet_relay, serve

NOW = datetime(2026, 12, 7, 20, 0, tzinfo=UTC)
MB2 = 2_000_000


def report_on(original: bytes, *, headers_only: bool = True, **changes: Any) -> bytes:
    options: dict[str, Any] = {
        "original": original,
        "envelope_sender": "alice@example.com",
        "reporting_mta": "mail.example.com",
        "postmaster": "postmaster@example.com",
        "recipients": [
            dsn.RecipientStatus(
                "bob@example.test", "failed", "5.1.1", "mx.example.test", "550 5.1.1 No such user"
            )
        ],
        "arrival": NOW - timedelta(hours=1),
        "now": NOW,
        "queue_id": "Q0001",
        "kind": "failure",
        "headers_only": headers_only,
    }
    options.update(changes)
    return dsn.build_report(**options)


def parsed(report: bytes) -> EmailMessage:
    lines = report.split(b"\r\n")
    assert lines[-1] == b"" and all(len(line) <= 998 for line in lines)
    assert b"\r" not in report.replace(b"\r\n", b"") and b"\n" not in report.replace(b"\r\n", b"")
    msg = email.message_from_bytes(report, policy=email.policy.default)
    assert isinstance(msg, EmailMessage) and not msg.defects
    return msg


def third_part(msg: EmailMessage) -> EmailMessage:
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts][:2] == ["text/plain", "message/delivery-status"]
    assert isinstance(parts[2], EmailMessage)
    return parts[2]


def quoted_headers(msg: EmailMessage) -> bytes:
    part = third_part(msg)
    assert part.get_content_type() == "text/rfc822-headers"
    payload = part.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload


# --- crafted messages: linear, and still a correct report ------------------------------------

FIELD_998 = b"X-Filler: " + b"a" * 988  # a whole line of 998 octets, the most RFC 5322 allows
CRAFTED = {
    # 998-octet lines: a search for a 999-octet run restarted at every octet (seconds).
    "header-of-998-octet-lines": b"Subject: crafted\r\n" + (FIELD_998 + b"\r\n") * (MB2 // 1000),
    # One field folded over 500,000 lines: unfolding copied the value once per line.
    "one-field-folded-500000-times": b"Subject: crafted\r\nX-Fold: a\r\n" + b" b\r\n" * (MB2 // 4),
    # 333,000 fields with bare CR line ends.
    "bare-cr-fields": b"Subject: crafted\r" + b"X: y\r" * (MB2 // 5) + b"\r",
    # A Subject of 100,000 encoded words: one field longer than the cap, so not quoted.
    "encoded-word-subject": b"Subject: " + b"=?utf-8?q?=C3=A9?= " * (MB2 // 19) + b"\r\n\r\nx\r\n",
}
SUBJECTS = {name: "Undeliverable: crafted" for name in CRAFTED}
SUBJECTS["encoded-word-subject"] = "Undeliverable: (no subject)"


@pytest.mark.parametrize("name", list(CRAFTED))
def test_a_crafted_2_mb_message_gets_a_correct_report(name: str) -> None:
    original = CRAFTED[name]
    msg = parsed(report_on(original))
    headers = quoted_headers(msg)
    assert len(headers) <= dsn.QUOTE_LIMIT
    # What is quoted is the original's start, unchanged but for line ends, whole fields only.
    normalised = original.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    assert normalised.startswith(headers) and headers.endswith(b"\r\n") or headers == b""
    following = normalised[len(headers) : len(headers) + 1]
    assert following not in (b" ", b"\t"), "a folded field was cut in two"
    assert msg["Subject"] == SUBJECTS[name]
    text = list(msg.iter_parts())[0].get_content()
    assert "The first 65536 octets of the original message's headers are attached." in text


def test_a_subject_of_thousands_of_words_is_shortened() -> None:
    original = b"Subject: " + b"=?utf-8?q?=C3=A9?= " * 3000 + b"\r\n\r\nx\r\n"
    subject = parsed(report_on(original))["Subject"]
    assert subject == "Undeliverable: " + "\u00e9" * 253 + "..."


def test_a_crafted_message_returned_whole_falls_back_to_its_headers() -> None:
    original = b"Subject: crafted\r\n\r\n" + (b"a" * 998 + b"\r\n") * (MB2 // 1000)
    msg = parsed(report_on(original, headers_only=False))
    assert quoted_headers(msg) == b"Subject: crafted\r\n"
    small = b"Subject: small\r\n\r\n" + (b"a" * 998 + b"\r\n") * 10
    whole = third_part(parsed(report_on(small, headers_only=False)))
    assert whole.get_content_type() == "message/rfc822"


# --- the quoted header section is capped -----------------------------------------------------


def test_a_huge_header_block_is_quoted_up_to_the_cap_at_a_field_boundary() -> None:
    fields = [f"X-Field-{i}: {'v' * 60}\r\n".encode() for i in range(20_000)]  # ~1.5 MB
    original = b"Subject: big\r\nMessage-ID: <big@example.com>\r\n" + b"".join(fields)
    original += b"\r\nbody\r\n"
    report = report_on(original)
    assert len(report) < dsn.QUOTE_LIMIT + 8 * 1024
    msg = parsed(report)
    headers = quoted_headers(msg)
    assert dsn.QUOTE_LIMIT - 100 < len(headers) <= dsn.QUOTE_LIMIT
    assert original.startswith(headers)
    assert msg["In-Reply-To"] == "<big@example.com>"


def test_a_field_that_crosses_the_cap_is_left_out_whole() -> None:
    head = b"Subject: s\r\nX-Before: 1\r\n"
    folded = b"X-Long: start\r\n" + b"\tcontinued line\r\n" * (2 * dsn.QUOTE_LIMIT // 17)
    headers = quoted_headers(parsed(report_on(head + folded + b"X-After: 2\r\n\r\nbody\r\n")))
    assert headers == head


def test_a_report_on_a_normal_message_quotes_all_its_headers() -> None:
    original = b"Subject: hello\r\nFrom: a@example.com\r\n\r\nbody\r\n"
    msg = parsed(report_on(original))
    assert quoted_headers(msg) == b"Subject: hello\r\nFrom: a@example.com\r\n"
    text = list(msg.iter_parts())[0].get_content()
    assert "The headers of the original message are attached." in text


# --- unusual MX host names: bounced with an NDR -------------------------------------------

# MX host names as the DNS test server serves them (zone-file text: \DDD is one octet).
ODD_MX = {
    "slash": "mx/1.example",
    "wildcard": "*.example",
    "odd-octets": "\\001mx\\032\\255.example",
    "long-labels": ".".join(["\\255" * 63] * 3) + ".example",
}


@pytest.mark.parametrize("name", list(ODD_MX))
def test_an_unusual_mx_name_makes_a_report(name: str) -> None:
    host = ODD_MX[name]
    status = dsn.RecipientStatus("bob@example.test", "failed", "5.1.1", host, "550 5.1.1 Gone")
    assert status.remote_mta is not None and status.remote_mta.isprintable()
    assert status.remote_mta.isascii() and " " not in status.remote_mta
    msg = parsed(report_on(b"Subject: s\r\n\r\nb\r\n", recipients=[status]))
    [block] = list(list(msg.iter_parts())[1].iter_parts())[1:]
    remote = block["Remote-MTA"].replace(" ", "")
    assert remote == f"dns;{host}"


@pytest.fixture(params=[False, True], ids=["plain", "starttls"])
def sink(request: pytest.FixtureRequest) -> Iterator[Sink]:
    # With STARTTLS offered, the MX name is also the TLS server name, which the ssl module
    # refuses for a label of 63 escaped octets: opportunistic TLS must fall back to clear.
    with Sink(tls=request.param) as server:
        yield server


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("mailroot")
def test_mail_to_unusual_mx_names_is_bounced_with_an_ndr(api: APIClient, sink: Sink) -> None:
    from mailadmin.models import Message, MessageState, Recipient, RecipientState
    from mailadmin.services.delivery.queue import spool_for
    from mailadmin.tests.factories import make_relay, run, spool
    from smtpworker.tests.dnsserver import DnsServer

    zone: dict[str, dict[str, list[Any]]] = {}
    for index, host in enumerate(ODD_MX.values()):
        zone[f"d{index}.test"] = {"MX": [(10, host)]}
        zone[host.lower()] = {"A": ["127.0.0.1"]}
        sink.rcpt_replies[f"b@d{index}.test"] = "550 5.1.1 No such user"
    with DnsServer(zone) as dns_server:
        make_relay(
            api, delivery={"dns_servers": [dns_server.address], "outbound": {"port": sink.port}}
        )
        for index, host in enumerate(ODD_MX.values()):
            queue_id = spool("a@corp.test", f"b@d{index}.test")
            assert run(queue_id) == "bounced", host
            message = Message.objects.get(queue_id=queue_id)
            assert message.state == MessageState.BOUNCED
            recipient = Recipient.objects.get(message=message)
            assert (recipient.state, recipient.last_code) == (RecipientState.FAILED, 550)
            [ndr] = Message.objects.filter(queue_id=f"{queue_id}N", is_report=True)
            _envelope, data = spool_for("Relay").load(ndr.queue_id)
            report = parsed(data)
            [block] = list(list(report.iter_parts())[1].iter_parts())[1:]
            # The host as delivery records it: the MX name, then the address and port (all
            # of it but for "long-labels", whose 766 characters Recipient.last_host cuts).
            remote = block["Remote-MTA"].replace(" ", "")
            assert remote.isascii() and remote.isprintable()
            assert f"dns;{host}[127.0.0.1]:{sink.port}".startswith(remote[:290])
            assert block["Action"] == "failed" and block["Status"] == "5.1.1"


# --- ESMTP parameters: ASCII only, 501 for a bad value -------------------------------------

BAD_SYNTAX = "501 5.5.4"
UNSUPPORTED = "555 5.5.4"
MAIL_PARAMETERS = [
    ("SIZE=100", "250 2.1.0"),
    ("SIZE=\u00b2", BAD_SYNTAX),  # superscript two: isdigit() yet int() raises
    ("SIZE=\uff11\uff12", BAD_SYNTAX),  # full-width digits: int() takes them as 12
    ("SIZE=\u0663", BAD_SYNTAX),  # Arabic-Indic three
    ("SIZE=1_000", BAD_SYNTAX),  # int() takes underscores
    ("SIZE=+5", BAD_SYNTAX),
    ("SIZE=-1", BAD_SYNTAX),
    ("SIZE=", BAD_SYNTAX),
    ("SIZE", BAD_SYNTAX),
    ("SIZE=" + "9" * 20, BAD_SYNTAX),
    ("\u017fIZE=10", BAD_SYNTAX),  # long s: "\u017fize".upper() == "SIZE"
    ("BODY=8BITMIME", "250 2.1.0"),
    ("BODY=7bit", "250 2.1.0"),
    ("BODY=8B\u0131TMIME", BAD_SYNTAX),  # dotless i upper-cases to I
    ("BODY=BINARYMIME", BAD_SYNTAX),
    ("BODY", BAD_SYNTAX),
    ("SMTPUTF8", "250 2.1.0"),
    ("SMTPUTF8=yes", BAD_SYNTAX),
    ("\u017fMTPUTF8", BAD_SYNTAX),
    ("\u00b2=1", BAD_SYNTAX),
    ("RET=FULL", UNSUPPORTED),
    ("RET=\u00b2", UNSUPPORTED),
    ("ENVID=QQ314159", UNSUPPORTED),
    ("NOTIFY=NEVER", UNSUPPORTED),
    ("ORCPT=rfc822;b@example.com", UNSUPPORTED),
    ("AUTH=<>", "250 2.1.0"),
]
RCPT_PARAMETERS = [
    ("NOTIFY=SUCCESS,FAILURE", UNSUPPORTED),
    ("NOTIFY=\u00b2", UNSUPPORTED),
    ("ORCPT=rfc822;\u00b2@example.com", UNSUPPORTED),
    ("\u017fIZE=1", UNSUPPORTED),
]


@pytest.fixture
def no_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.INFO)
    yield
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, [r.getMessage() for r in bad]


def session_bytes(mail_parameter: str, rcpt_parameter: str = "") -> bytes:
    rcpt = f"RCPT TO:<b@bogus2> {rcpt_parameter}".rstrip()
    lines = [
        "EHLO client.test",
        f"MAIL FROM:<a@b> {mail_parameter}",
        "RSET",
        "MAIL FROM:<a@b>",
        rcpt,
        "QUIT",
    ]
    return "".join(line + "\r\n" for line in lines).encode()


def final_replies(lines: list[str]) -> list[str]:
    """The last line of each reply (greeting and EHLO included)."""
    return [line for line in lines if line[3:4] == " "]


@pytest.mark.usefixtures("no_errors")
@pytest.mark.parametrize(("parameter", "expected"), MAIL_PARAMETERS)
def test_mail_parameters_in_memory(live: LiveNode, parameter: str, expected: str) -> None:
    serve(live, internet_relay())
    lines = live.run(transcript(live.node.contexts["InternetRelay"], session_bytes(parameter)))
    replies = final_replies(lines)
    assert replies[0].startswith("220 ") and replies[1].startswith("250 "), lines
    assert replies[2].startswith(expected + " "), replies
    # The session goes on normally: RSET, MAIL, RCPT, QUIT.
    assert [r[:9] for r in replies[3:]] == ["250 2.0.0", "250 2.1.0", "250 2.1.5", "221 2.0.0"]


@pytest.mark.usefixtures("no_errors")
@pytest.mark.parametrize(("parameter", "expected"), RCPT_PARAMETERS)
def test_rcpt_parameters_in_memory(live: LiveNode, parameter: str, expected: str) -> None:
    serve(live, internet_relay())
    data = session_bytes("SIZE=10", parameter)
    replies = final_replies(live.run(transcript(live.node.contexts["InternetRelay"], data)))
    assert replies[4].startswith("250 2.1.0") and replies[5].startswith(expected), replies


@pytest.mark.usefixtures("no_errors")
def test_esmtp_parameters_over_a_socket(live: LiveNode) -> None:
    address = serve(live, internet_relay())
    with Wire(address) as wire:
        wire.hello()
        for parameter, expected in MAIL_PARAMETERS:
            reply = wire.command(f"MAIL FROM:<a@b> {parameter}".encode())
            assert f"{reply.code} {reply.enhanced}" == expected, (parameter, str(reply))
            assert wire.command("RSET").code == 250
        assert wire.command("MAIL FROM:<a@b>").code == 250
        for parameter, expected in RCPT_PARAMETERS:
            reply = wire.command(f"RCPT TO:<b@bogus2> {parameter}".encode())
            assert f"{reply.code} {reply.enhanced}" == expected, (parameter, str(reply))
        assert wire.command("RCPT TO:<b@bogus2>").code == 250
        assert wire.command("QUIT").code == 221
