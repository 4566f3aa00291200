"""The one Received builder, byte for byte, in the shapes the SMTP session and the Pickup
directory give it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from smtpworker.inbound.data import count_received
from smtpworker.inbound.received import received_header, smtp_protocol

WHEN = datetime(2026, 3, 3, 10, 0, tzinfo=timezone(timedelta(hours=1)))


def test_an_smtp_session_gives_from_by_with_id_auth_for_and_date() -> None:
    header = received_header(
        queue_id="0123abcd",
        from_name="client.example",
        from_comment="[192.0.2.7]",
        host="mx.example.net",
        server="Default SMTP Virtual Server",
        recipients=["bob@example.org"],
        when=WHEN,
        protocol="ESMTPSA",
        user="alice",
    )
    assert header == (
        "Received: from client.example ([192.0.2.7])\r\n"
        "\tby mx.example.net (mailadmin Default SMTP Virtual Server) with ESMTPSA id 0123abcd\r\n"
        "\t(authenticated as alice)\r\n"
        "\tfor <bob@example.org>;\r\n"
        "\tTue, 03 Mar 2026 10:00:00 +0100\r\n"
    )


def test_the_pickup_directory_gives_no_with_and_no_auth_and_hides_several_recipients() -> None:
    header = received_header(
        queue_id="q1",
        from_name="pickup",
        from_comment="mailadmin pickup directory",
        host="mx.example.net",
        server="Corp",
        recipients=["a@example.org", "b@example.org"],
        when=datetime(2026, 3, 3, 9, 0, tzinfo=UTC),
    )
    assert header == (
        "Received: from pickup (mailadmin pickup directory)\r\n"
        "\tby mx.example.net (mailadmin Corp) id q1;\r\n"
        "\tTue, 03 Mar 2026 09:00:00 +0000\r\n"
    )
    assert count_received((header + "Subject: x\r\n\r\nbody\r\n").encode()) == 1


def test_names_and_comments_cannot_break_out_of_the_field() -> None:
    header = received_header(
        queue_id="q2",
        from_name="evil\r\nX-Injected: yes",
        from_comment="a (b)c\\",
        host="mx(1)",
        server="S",
        recipients=[],
        when=WHEN,
        user="jürgen\t(x)",
    )
    first, by, auth, date = header.split("\r\n\t")
    assert first == "Received: from evil__X-Injected:_yes (a _b_c_)"
    assert by == "by mx_1_ (mailadmin S) id q2"
    assert auth == "(authenticated as j_rgen__x_);"
    assert date == "Tue, 03 Mar 2026 10:00:00 +0100\r\n"
    assert header.isascii() and header.count("\r\n") == 4


def test_a_name_is_cut_at_200_characters() -> None:
    header = received_header(
        queue_id="q", from_name="h" * 300, from_comment="", host="mx", server="S",
        recipients=[], when=WHEN,
    )  # fmt: skip
    assert f"from {'h' * 200} ()\r\n" in header


@pytest.mark.parametrize(
    ("extended", "smtputf8", "tls", "authenticated", "expected"),
    [
        (False, False, False, False, "SMTP"),
        (True, False, False, False, "ESMTP"),
        (True, False, True, False, "ESMTPS"),
        (True, False, False, True, "ESMTPA"),
        (True, False, True, True, "ESMTPSA"),
        (True, True, True, True, "UTF8ESMTPSA"),
        (False, False, True, True, "SMTPSA"),
    ],
)
def test_the_with_protocol_follows_rfc_3848(
    extended: bool, smtputf8: bool, tls: bool, authenticated: bool, expected: str
) -> None:
    assert (
        smtp_protocol(extended=extended, smtputf8=smtputf8, tls=tls, authenticated=authenticated)
        == expected
    )
