from __future__ import annotations

import email
import email.policy
import random
import re
import secrets
from datetime import UTC, datetime, timedelta, timezone
from email.message import EmailMessage, Message
from email.utils import parsedate_to_datetime

import pytest

from smtpworker.outbound.dsn import RecipientStatus, build_report, parse_reply, should_notify

NOW = datetime(2024, 3, 9, 17, 5, 42, tzinfo=UTC)
ARRIVAL = NOW - timedelta(hours=12, minutes=3)
UNTIL = ARRIVAL + timedelta(days=2)
BODY = b"The secret plans are in the second drawer.\r\n"
ORIGINAL = (
    b"Received: from client.example.com (client.example.com [192.0.2.10])\r\n"
    b"\tby mail.example.com with ESMTP; Sat, 9 Mar 2024 05:02:42 +0000\r\n"
    b"From: Alice <alice@example.com>\r\n"
    b"To: Bob <bob@example.test>\r\n"
    b"Subject: Quarterly figures\r\n"
    b"Message-ID: <orig.1@example.com>\r\n"
    b"Date: Sat, 9 Mar 2024 05:02:40 +0000\r\n"
    b"\r\n" + BODY
)
STATUS_CODE = re.compile(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}")


def failed(recipient: str = "bob@example.test", **changes: object) -> RecipientStatus:
    fields: dict[str, object] = {
        "recipient": recipient,
        "action": "failed",
        "status": "5.1.1",
        "remote_mta": "mx.example.test",
        "diagnostic": "550 5.1.1 User unknown",
        "last_attempt": NOW,
        "will_retry_until": None,
    }
    fields.update(changes)
    return RecipientStatus(**fields)  # type: ignore[arg-type]


def delayed(recipient: str = "bob@example.test", **changes: object) -> RecipientStatus:
    fields: dict[str, object] = {
        "action": "delayed",
        "status": "4.4.1",
        "diagnostic": "451 4.4.1 Try again later",
        "will_retry_until": UNTIL,
    }
    fields.update(changes)
    return failed(recipient, **fields)


def build(**changes: object) -> bytes:
    options: dict[str, object] = {
        "original": ORIGINAL,
        "envelope_sender": "alice@example.com",
        "reporting_mta": "mail.example.com",
        "postmaster": "postmaster@example.com",
        "recipients": [failed()],
        "arrival": ARRIVAL,
        "now": NOW,
        "queue_id": "0006132E1A2B3CABCDEFGHIJ",
        "kind": "failure",
    }
    options.update(changes)
    return build_report(**options)  # type: ignore[arg-type]


def parse(report: bytes) -> EmailMessage:
    msg = email.message_from_bytes(report, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    assert not msg.defects
    return msg


def parts(msg: EmailMessage) -> list[EmailMessage]:
    found = list(msg.iter_parts())
    assert all(isinstance(part, EmailMessage) for part in found)
    return found  # type: ignore[return-value]


def status_blocks(msg: EmailMessage) -> list[Message]:
    part = parts(msg)[1]
    assert part.get_content_type() == "message/delivery-status"
    blocks = part.get_payload()
    assert isinstance(blocks, list)
    return blocks  # type: ignore[return-value]


def text(msg: EmailMessage) -> str:
    content = parts(msg)[0].get_content()
    assert isinstance(content, str)
    return content


def assert_wire_safe(report: bytes) -> None:
    """CRLF only, no line over 998 octets."""
    assert report.count(b"\n") == report.count(b"\r\n")
    assert report.count(b"\r") == report.count(b"\r\n")
    assert max(len(line) for line in report.split(b"\r\n")) <= 998


# -- structure -------------------------------------------------------------------------


def test_failure_report_is_a_three_part_multipart_report() -> None:
    report = build()
    assert_wire_safe(report)
    assert report.isascii()
    msg = parse(report)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert [p.get_content_type() for p in parts(msg)] == [
        "text/plain",
        "message/delivery-status",
        "text/rfc822-headers",
    ]
    assert msg["Subject"] == "Undeliverable: Quarterly figures"
    assert "Delivery has failed to these recipients or groups:" in text(msg)
    assert "550 5.1.1 User unknown" in text(msg)


def test_top_level_headers() -> None:
    report = build(message_id_domain="example.com")
    msg = parse(report)
    assert b'\r\nFrom: "Mail Delivery System" <postmaster@example.com>\r\n' in b"\r\n" + report
    assert msg["From"].addresses[0].display_name == "Mail Delivery System"
    assert msg["From"].addresses[0].addr_spec == "postmaster@example.com"
    assert msg["To"].addresses[0].addr_spec == "alice@example.com"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["MIME-Version"] == "1.0"
    assert parsedate_to_datetime(msg["Date"]) == NOW
    assert re.fullmatch(r"<[^<>@\s]+@example\.com>", msg["Message-ID"])
    assert msg["In-Reply-To"] == "<orig.1@example.com>"
    assert msg["References"] == "<orig.1@example.com>"
    # Headers end before the first blank line, which comes after them all.
    head = report.split(b"\r\n\r\n", 1)[0]
    assert b"Auto-Submitted: auto-replied\r\n" in head


def test_message_id_is_unique_and_defaults_to_the_reporting_mta() -> None:
    first, second = parse(build()), parse(build())
    assert first["Message-ID"] != second["Message-ID"]
    assert first["Message-ID"].endswith("@mail.example.com>")


def test_delivery_status_fields_have_rfc3464_syntax() -> None:
    msg = parse(build())
    per_message, per_recipient = status_blocks(msg)
    assert per_message["Reporting-MTA"] == "dns;mail.example.com"
    assert parsedate_to_datetime(per_message["Arrival-Date"]) == ARRIVAL
    assert per_recipient["Final-Recipient"] == "rfc822;bob@example.test"
    assert per_recipient["Action"] == "failed"
    assert STATUS_CODE.fullmatch(per_recipient["Status"])
    assert per_recipient["Status"] == "5.1.1"
    assert per_recipient["Remote-MTA"] == "dns;mx.example.test"
    assert per_recipient["Diagnostic-Code"] == "smtp;550 5.1.1 User unknown"
    assert parsedate_to_datetime(per_recipient["Last-Attempt-Date"]) == NOW
    assert per_recipient["Will-Retry-Until"] is None


def test_delay_report() -> None:
    report = build(kind="delay", recipients=[delayed()])
    assert_wire_safe(report)
    msg = parse(report)
    assert msg.get_content_type() == "multipart/report"
    assert msg["Subject"] == "Delayed: Quarterly figures"
    assert msg["Auto-Submitted"] == "auto-replied"
    block = status_blocks(msg)[1]
    assert block["Action"] == "delayed"
    assert block["Status"] == "4.4.1"
    assert block["Diagnostic-Code"] == "smtp;451 4.4.1 Try again later"
    assert parsedate_to_datetime(block["Will-Retry-Until"]) == UNTIL
    body = " ".join(text(msg).split())
    assert "Delivery to the following recipients has been delayed." in body
    assert "This is a warning message only." in body
    assert f"will keep trying to deliver it until {email.utils.format_datetime(UNTIL)}" in body
    assert "Subject: Quarterly figures" in body


def test_delay_notice_names_the_latest_retry_limit() -> None:
    later = UNTIL + timedelta(hours=5)
    msg = parse(
        build(
            kind="delay", recipients=[delayed(), delayed("c@example.test", will_retry_until=later)]
        )
    )
    assert f"until {email.utils.format_datetime(later)}" in " ".join(text(msg).split())


def test_several_recipients_each_get_a_block_in_order() -> None:
    recipients = [
        failed("a@example.test"),
        failed("b@example.net", status="5.7.1", diagnostic="550 5.7.1 Relaying denied"),
        failed("c@example.org", status="4.4.7", remote_mta=None, diagnostic=None),
        RecipientStatus("d@example.test", "delivered", "2.0.0", "mx.example.test", "250 OK"),
    ]
    msg = parse(build(recipients=recipients))
    blocks = status_blocks(msg)[1:]
    assert [b["Final-Recipient"] for b in blocks] == [
        "rfc822;a@example.test",
        "rfc822;b@example.net",
        "rfc822;c@example.org",
        "rfc822;d@example.test",
    ]
    assert [b["Action"] for b in blocks] == ["failed", "failed", "failed", "delivered"]
    assert [b["Status"] for b in blocks] == ["5.1.1", "5.7.1", "4.4.7", "2.0.0"]
    assert blocks[2]["Remote-MTA"] is None and blocks[2]["Diagnostic-Code"] is None
    human = text(msg)
    for address in ("a@example.test", "b@example.net", "c@example.org", "d@example.test"):
        assert address in human
    assert "550 5.7.1 Relaying denied" in human
    failed_section = human.split("Diagnostic information")[0]
    assert "d@example.test (delivered)" in failed_section


# -- the original message ----------------------------------------------------------------


def test_original_headers_included_and_body_not_by_default() -> None:
    report = build()
    assert b"The secret plans" not in report
    third = parts(parse(report))[2]
    assert third.get_content_type() == "text/rfc822-headers"
    assert third["Content-Transfer-Encoding"] == "7bit"
    headers = third.get_payload(decode=True)
    assert headers == ORIGINAL.split(b"\r\n\r\n")[0] + b"\r\n"
    # The attached headers parse back to the original's.
    again = email.message_from_bytes(headers, policy=email.policy.default)
    assert again["Message-ID"] == "<orig.1@example.com>"
    assert again["Subject"] == "Quarterly figures"


def test_whole_original_on_request() -> None:
    msg = parse(build(headers_only=False))
    third = parts(msg)[2]
    assert third.get_content_type() == "message/rfc822"
    inner = third.get_content()
    assert inner["Subject"] == "Quarterly figures"
    assert inner.get_content().encode() == BODY
    assert "The original message is attached." in text(msg)


def test_whole_original_with_8bit_body_is_declared_8bit() -> None:
    original = ORIGINAL.replace(BODY, "Grüße aus Köln\r\n".encode())
    report = build(headers_only=False, original=original)
    assert_wire_safe(report)
    assert "Grüße aus Köln\r\n".encode() in report
    msg = parse(report)
    assert msg["Content-Transfer-Encoding"] == "8bit"
    assert parts(msg)[2]["Content-Transfer-Encoding"] == "8bit"


def test_whole_original_with_overlong_line_falls_back_to_headers() -> None:
    original = ORIGINAL.replace(BODY, b"x" * 5000 + b"\r\n")
    report = build(headers_only=False, original=original)
    assert_wire_safe(report)
    msg = parse(report)
    assert parts(msg)[2].get_content_type() == "text/rfc822-headers"
    assert "The headers of the original message are attached." in text(msg)


def test_header_section_stops_at_a_line_that_is_no_header() -> None:
    # No blank line between headers and body, and bare LF line endings.
    original = b"Subject: hi\nFrom: a@example.com\nthis is the body, not a header\nX: y\n"
    report = build(original=original)
    assert_wire_safe(report)
    assert b"this is the body" not in report
    assert parts(parse(report))[2].get_payload(decode=True) == (
        b"Subject: hi\r\nFrom: a@example.com\r\n"
    )


def test_original_without_headers_or_subject() -> None:
    msg = parse(build(original=b"\r\njust a body\r\n"))
    assert msg["Subject"] == "Undeliverable: (no subject)"
    assert parts(msg)[2].get_payload(decode=True) == b""
    assert "In-Reply-To" not in msg


def test_non_ascii_original_headers_are_quoted_printable() -> None:
    # Raw UTF-8 in the original header section (RFC 6532), e.g. from an SMTPUTF8 client.
    original = ORIGINAL.replace(b"Quarterly figures", "Quartalszahlen für Köln".encode())
    report = build(original=original)
    assert report.isascii()
    assert_wire_safe(report)
    msg = parse(report)
    assert msg["Subject"] == "Undeliverable: Quartalszahlen für Köln"
    third = parts(msg)[2]
    assert third.get_content_type() == "text/rfc822-headers"
    assert third["Content-Transfer-Encoding"] == "quoted-printable"
    assert third.get_content_charset() == "utf-8"
    assert third.get_payload(decode=True) == original.split(b"\r\n\r\n")[0] + b"\r\n"


def test_non_utf8_original_headers_are_unknown_8bit() -> None:
    original = ORIGINAL.replace(b"Quarterly figures", "Köln".encode("latin-1"))
    report = build(original=original)
    assert report.isascii()
    msg = parse(report)
    third = parts(msg)[2]
    assert third.get_content_charset() == "unknown-8bit"
    assert third.get_payload(decode=True) == original.split(b"\r\n\r\n")[0] + b"\r\n"
    assert msg["Subject"] == "Undeliverable: K\ufffdln"


# -- subjects ------------------------------------------------------------------------------


def test_encoded_subject_is_decoded_and_encoded_again() -> None:
    original = ORIGINAL.replace(
        b"Subject: Quarterly figures",
        b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n =?iso-8859-1?b?S/ZsbiE=?= ok",
    )
    report = build(original=original)
    assert report.isascii()
    msg = parse(report)
    assert msg["Subject"] == "Undeliverable: GrüßeKöln! ok"
    assert "Grüße" not in report.decode("ascii")
    delay = parse(build(original=original, kind="delay", recipients=[delayed()]))
    assert delay["Subject"] == "Delayed: GrüßeKöln! ok"
    assert "Subject: GrüßeKöln! ok" in text(delay)  # the text part is UTF-8 then
    assert parts(delay)[0].get_content_charset() == "utf-8"


def test_undecodable_encoded_word_is_kept() -> None:
    original = ORIGINAL.replace(b"Quarterly figures", b"=?x-no-such-charset?q?abc?= rest")
    report = build(original=original)
    assert report.isascii()
    head = report.split(b"\r\n\r\n")[0]
    assert b"\r\nSubject: Undeliverable: =?x-no-such-charset?q?abc?= rest\r\n" in head


def test_undecodable_encoded_word_next_to_non_ascii() -> None:
    # The stdlib's own folding raises UnicodeEncodeError on this one.
    original = ORIGINAL.replace(b"Quarterly figures", "=?x-foo?q?=E9t=E9?= Köln".encode())
    report = build(original=original)
    assert report.isascii()
    assert_wire_safe(report)
    assert parse(report)["Subject"] == "Undeliverable: =?x-foo?q?=E9t=E9?= Köln"


def test_long_and_hostile_subjects_are_folded_safely() -> None:
    for subject in (
        b"word " * 400,
        b"y" * 3000,
        "日本語の件名".encode() * 100,
        b"evil\x00\x1b[31m\x7f Bcc: victim@example.net",
    ):
        original = ORIGINAL.replace(b"Quarterly figures", subject)
        report = build(original=original)
        assert_wire_safe(report)
        assert report.isascii()
        head = report.split(b"\r\n\r\n", 1)[0]
        assert max(len(line) for line in head.split(b"\r\n")) <= 78
        msg = parse(report)
        assert msg["Subject"].startswith("Undeliverable: ")
        assert "Bcc" not in msg
        assert not re.search(r"[\x00-\x1f\x7f]", msg["Subject"])


# -- long lines ----------------------------------------------------------------------------


def test_very_long_diagnostic_is_wrapped() -> None:
    words = [f"word{i}" for i in range(600)]
    diagnostic = "550-5.7.1 " + " ".join(words[:300]) + "\r\n550 5.7.1 " + " ".join(words[300:])
    token = "z" * 2500
    report = build(
        recipients=[
            failed(status="5.7.1", diagnostic=diagnostic),
            failed("c@example.test", diagnostic=f"550 5.1.1 {token}"),
        ]
    )
    assert_wire_safe(report)
    msg = parse(report)
    status_part = parts(msg)[1].as_bytes()
    assert max(len(line) for line in status_part.split(b"\n")) <= 100
    first, second = status_blocks(msg)[1:]
    code = first["Diagnostic-Code"]
    assert code.startswith("smtp;550-5.7.1 word0 word1 ")
    assert " ".join(words[300:]) in code  # multi-line replies are joined, not cut
    # A word with no place to fold is cut; its pieces come back with spaces between.
    assert second["Diagnostic-Code"].replace(" ", "") == f"smtp;5505.1.1{token}"
    assert all(len(line) <= 78 for line in text(msg).splitlines())


def test_non_smtp_diagnostic_gets_its_own_type() -> None:
    msg = parse(build(recipients=[failed(status="4.4.1", diagnostic="Connection refused")]))
    assert status_blocks(msg)[1]["Diagnostic-Code"] == "X-Mailadmin;Connection refused"


def test_diagnostic_cannot_inject_fields() -> None:
    hostile = "550 5.1.1 no\r\nAction: delivered\r\n\r\nFinal-Recipient: rfc822;x@y\x00\u00e9"
    report = build(recipients=[failed(diagnostic=hostile)])
    assert report.isascii()
    blocks = status_blocks(parse(report))
    assert len(blocks) == 2
    assert blocks[1]["Action"] == "failed"
    assert blocks[1]["Diagnostic-Code"].endswith("rfc822;x@y \\xe9")


# -- addresses -----------------------------------------------------------------------------


def test_non_ascii_recipient_is_an_rfc6533_utf8_address() -> None:
    report = build(recipients=[failed("pelé+x@exämple.test")])
    assert report.isascii()
    block = status_blocks(parse(report))[1]
    assert block["Final-Recipient"] == "utf-8;pel\\x{E9}\\x{2B}x@ex\\x{E4}mple.test"
    assert "pelé+x@exämple.test" in text(parse(report))


def test_non_ascii_sender_is_utf8_in_to() -> None:
    report = build(envelope_sender="δοκιμή@example.test")
    assert "To: <δοκιμή@example.test>\r\n".encode() in report
    assert_wire_safe(report)


# -- the boundary ---------------------------------------------------------------------------


def test_boundary_does_not_occur_in_content(monkeypatch: pytest.MonkeyPatch) -> None:
    taken = "0" * 32
    original = ORIGINAL.replace(b"Quarterly figures", f"see =_DSN_{taken}".encode())
    tokens = iter([taken, "1" * 32])
    real = secrets.token_hex

    def token_hex(nbytes: int) -> str:
        return next(tokens) if nbytes == 16 else real(nbytes)

    monkeypatch.setattr(secrets, "token_hex", token_hex)  # dsn uses the module's
    report = build(original=original)
    msg = parse(report)
    boundary = msg.get_boundary()
    assert boundary == "=_DSN_" + "1" * 32
    assert len(parts(msg)) == 3
    body = report.split(b"\r\n\r\n", 1)[1]
    lines = [line for line in body.split(b"\r\n") if boundary.encode() in line]
    assert lines == [f"--{boundary}".encode()] * 3 + [f"--{boundary}--".encode()]


def test_boundary_is_random() -> None:
    assert parse(build()).get_boundary() != parse(build()).get_boundary()


# -- refusals ------------------------------------------------------------------------------


@pytest.mark.parametrize("sender", ["", "<>"])
def test_null_sender_raises(sender: str) -> None:
    with pytest.raises(ValueError, match="null sender"):
        build(envelope_sender=sender)


def test_report_kind_must_fit_the_recipients() -> None:
    with pytest.raises(ValueError, match="failed recipient"):
        build(recipients=[delayed()])
    with pytest.raises(ValueError, match="delay report"):
        build(kind="delay", recipients=[delayed(), failed("c@example.test")])
    with pytest.raises(ValueError, match="delay report"):
        build(kind="delay", recipients=[failed()])
    with pytest.raises(ValueError, match="at least one recipient"):
        build(recipients=[])
    with pytest.raises(ValueError, match="unknown report kind"):
        build(kind="bounce")


@pytest.mark.parametrize(
    "changes",
    [
        {"now": NOW.replace(tzinfo=None)},
        {"arrival": ARRIVAL.replace(tzinfo=None)},
        {"reporting_mta": "mail example.com"},
        {"reporting_mta": "mail.example.com>\r\nBcc: x"},
        {"message_id_domain": "a@b"},
        {"postmaster": "post\r\nmaster@example.com"},
        {"envelope_sender": "<alice@example.com>"},
        {"envelope_sender": "a" * 250 + "@example.com"},
        {"queue_id": "../etc"},
    ],
)
def test_bad_arguments_raise(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        build(**changes)


@pytest.mark.parametrize(
    "changes",
    [
        {"status": "5.1"},
        {"status": "3.1.1"},
        {"status": "2.0.0"},  # a failure with a success code
        {"action": "bounced"},
        {"recipient": ""},
        {"recipient": "bob@example.test\r\nBcc: x"},
        {"remote_mta": 42},
        {"last_attempt": NOW.replace(tzinfo=None)},
    ],
)
def test_bad_recipient_status_raises(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        failed(**changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("mx.example.test", "mx.example.test"),
        ("[192.0.2.1]", "[192.0.2.1]"),
        ("mx/1.example", "mx/1.example"),
        ("*.example", "*.example"),
        ("mx example", "mx\\032example"),
        ("mx\r\nBcc: x", "mx\\013\\010Bcc:\\032x"),
        ("m\u00fcx.example", "m\\195\\188x.example"),
        ("\\255.example", "\\255.example"),  # dnspython's own escape is kept
        ("  ", None),
        ("x" * 2000, "x" * 1024),
    ],
)
def test_any_remote_mta_text_is_kept_printable(given: str, kept: str | None) -> None:
    # A remote MTA's name comes from DNS: whatever it is, the report must be built.
    status = failed(remote_mta=given)
    assert status.remote_mta == kept
    msg = parse(build(recipients=[status]))
    [block] = status_blocks(msg)[1:]
    assert (block["Remote-MTA"] or "").replace(" ", "") == ("" if kept is None else f"dns;{kept}")


def test_delayed_needs_a_4xx_status_and_delivered_a_2xx() -> None:
    with pytest.raises(ValueError):
        delayed(status="5.1.1")
    with pytest.raises(ValueError):
        RecipientStatus("b@example.test", "delivered", "4.0.0")
    assert RecipientStatus("b@example.test", "relayed", "2.0.0").remote_mta is None


def test_other_timezones_are_kept() -> None:
    cet = timezone(timedelta(hours=1))
    msg = parse(build(now=NOW.astimezone(cet)))
    assert msg["Date"].endswith("+0100")
    assert parsedate_to_datetime(msg["Date"]) == NOW


# -- should_notify ---------------------------------------------------------------------------


def test_should_notify_an_ordinary_message() -> None:
    assert should_notify("alice@example.com", ORIGINAL)
    assert should_notify("alice@example.com", b"")


@pytest.mark.parametrize("sender", ["", "<>"])
def test_should_not_notify_the_null_sender(sender: str) -> None:
    assert not should_notify(sender, ORIGINAL)


def test_should_not_answer_our_own_reports() -> None:
    assert not should_notify("alice@example.com", build())
    assert not should_notify("alice@example.com", build(kind="delay", recipients=[delayed()]))


@pytest.mark.parametrize(
    "header",
    [
        b"Auto-Submitted: auto-replied",
        b"Auto-Submitted: auto-generated",
        b"AUTO-SUBMITTED:\r\n  Auto-Notified; owner-email=x@example.com",
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=x",
        b'Content-Type: Multipart/Report;\r\n\tboundary="x"; report-type="Delivery-Status"',
        b"Content-Type: multipart/report; report-type*=''global-delivery-status; boundary=x",
    ],
)
def test_should_not_answer_automatic_reports(header: bytes) -> None:
    original = header + b"\r\n" + ORIGINAL
    assert not should_notify("mailer-daemon@example.net", original)


@pytest.mark.parametrize(
    "header",
    [
        b"Auto-Submitted: no",
        b"Auto-Submitted: No (a person sent this)",
        b"Content-Type: multipart/report; report-type=disposition-notification; boundary=x",
        b"Content-Type: multipart/mixed; boundary=x",
    ],
)
def test_should_notify_other_messages(header: bytes) -> None:
    assert should_notify("alice@example.com", header + b"\r\n" + ORIGINAL)


def test_should_notify_reads_only_the_header_section() -> None:
    original = ORIGINAL + b"Auto-Submitted: auto-replied\r\n"
    assert should_notify("alice@example.com", original)


# -- parse_reply -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "reply", "expected"),
    [
        (550, "5.1.1 User unknown", "5.1.1"),
        (550, "550 5.1.1 User unknown", "5.1.1"),
        (452, "4.2.2 Mailbox full", "4.2.2"),
        (554, "5.7.123 Blocked", "5.7.123"),
        (550, "User unknown", "5.0.0"),
        (421, "mx.example.test Service not available", "4.0.0"),
        (250, "2.1.5 Ok", "2.1.5"),
        (250, "Ok", "2.0.0"),
        (550, "4.1.1 wrong class", "5.0.0"),
        (550, "5.1.1.1 not a code", "5.0.0"),
        (550, "5.1.1User", "5.0.0"),
        (550, "", "5.0.0"),
        (550, "Hello\n550 5.7.1 Second line", "5.7.1"),
    ],
)
def test_parse_reply(code: int, reply: str, expected: str) -> None:
    assert parse_reply(code, reply) == expected


@pytest.mark.parametrize("code", [0, 199, 354, 600])
def test_parse_reply_refuses_non_final_codes(code: int) -> None:
    with pytest.raises(ValueError):
        parse_reply(code, "whatever")


def test_random_originals_always_give_a_safe_parseable_report() -> None:
    rnd = random.Random(20240309)
    pieces = [
        b"a", b" ", b"\r\n", b"\n", b"\r", b"\t", b":", b"=?", b"?=", b"=?utf-8?q?",
        b"=?utf-8?b?", b"=?iso-8859-1?q?=E9?=", b"\xc3\xa9", b"\xff", b"\x00", b"Subject: ",
        b"\r\n ", b"Content-Type: multipart/report; report-type=delivery-status", b"<", b">",
        b"x" * 1200, "日".encode(), b"Message-ID: <a@b>", b"--=_DSN_",
    ]  # fmt: skip
    replies = ["550 ", "5.1.1", " ", "\r\n", "é", "\udcff", "x" * 300, "\x00", "\u2028"]
    for _ in range(300):
        original = b"".join(rnd.choice(pieces) for _ in range(rnd.randint(0, 40)))
        if rnd.random() < 0.5:
            original = b"Subject: " + original
        diagnostic = "".join(rnd.choice(replies) for _ in range(rnd.randint(0, 10))) or None
        headers_only = rnd.random() < 0.5
        report = build(
            original=original, recipients=[failed(diagnostic=diagnostic)], headers_only=headers_only
        )
        assert_wire_safe(report)
        head = report.split(b"\r\n\r\n")[0]
        assert max(len(line) for line in head.split(b"\r\n")) <= 78
        if headers_only:
            assert report.isascii()
        msg = parse(report)
        assert msg["Subject"].startswith("Undeliverable: ")
        assert len(parts(msg)) == 3
        assert len(status_blocks(msg)) == 2
        assert not should_notify("alice@example.com", report)
