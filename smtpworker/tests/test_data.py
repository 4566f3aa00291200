"""The DATA fast path: terminator, transparency, bare line endings, limits."""

from __future__ import annotations

import pytest

from smtpworker.inbound.data import DataReader, count_received, has_long_line


def read(*chunks: bytes, limit: int | None = None) -> DataReader:
    reader = DataReader(limit)
    for chunk in chunks:
        if reader.feed(chunk):
            break
    return reader


def test_it_ends_only_at_crlf_dot_crlf() -> None:
    reader = read(b"Subject: x\r\n\r\nhello\r\n.\r\n")
    assert reader.done
    assert reader.message().content == b"Subject: x\r\n\r\nhello\r\n"


def test_an_empty_message_is_just_the_dot() -> None:
    reader = read(b".\r\n")
    assert reader.done and reader.message().content == b""


@pytest.mark.parametrize("split", range(1, 12))
def test_a_terminator_split_across_reads_is_found(split: int) -> None:
    wire = b"body line\r\n.\r\nQUIT\r\n"
    reader = read(wire[:split], wire[split:])
    assert reader.done
    assert reader.message().content == b"body line\r\n"
    assert reader.leftover == b"QUIT\r\n"


@pytest.mark.parametrize("trick", [b"\n.\n", b"\r\n.\n", b"\n.\r\n", b"\r.\r", b"\r\n.\r"])
def test_smuggling_sequences_are_content_and_get_crlf(trick: bytes) -> None:
    wire = b"a" + trick + b"MAIL FROM:<evil@x>\r\n.\r\n"
    reader = read(wire)
    assert reader.done and reader.leftover == b""
    result = reader.message()
    assert b"MAIL FROM:<evil@x>" in result.content
    # every line ending is CRLF now: a relay dot-stuffs the "." line and nothing ends early
    assert result.content.count(b"\n") == result.content.count(b"\r\n")
    assert result.content.count(b"\r") == result.content.count(b"\r\n")


def test_dot_stuffing_is_removed() -> None:
    reader = read(b"..leading\r\nmid\r\n...two\r\n.\r\n")
    assert reader.message().content == b".leading\r\nmid\r\n..two\r\n"


def test_it_stops_keeping_data_past_the_limit_but_finds_the_end() -> None:
    reader = read(b"x" * 600, b"y" * 600, b"\r\n.\r\nRSET\r\n", limit=1000)
    assert reader.done and reader.too_big
    assert reader.leftover == b"RSET\r\n"
    assert reader.received >= 1200


def test_long_lines_and_8bit_are_reported() -> None:
    result = read(b"a" * 999 + b"\r\n\xc3\xa9\r\n.\r\n").message()
    assert result.line_too_long and result.eight_bit
    assert not read(b"a" * 998 + b"\r\n.\r\n").message().line_too_long


def test_received_headers_are_counted_in_the_header_section_only() -> None:
    message = b"Received: a\r\nreceived: b\r\nSubject: s\r\n\r\nReceived: in body\r\n"
    assert count_received(message) == 2


def test_a_message_over_the_limit_in_one_read_is_too_big() -> None:
    reader = read(b"x" * 2000 + b"\r\n.\r\n", limit=1000)
    assert reader.done and reader.too_big


@pytest.mark.parametrize(
    ("content", "too_long"),
    [
        (b"", False),
        (b"a" * 998 + b"\r\n", False),
        (b"a" * 999 + b"\r\n", True),
        (b"a" * 998, False),  # no final CRLF: 998 characters still fit
        (b"a" * 999, True),
        ((b"b" * 500 + b"\r\n") * 10 + b"c" * 998 + b"\r\n", False),
        ((b"b" * 500 + b"\r\n") * 10 + b"c" * 999 + b"\r\nd\r\n", True),
    ],
)
def test_has_long_line_matches_a_plain_split(content: bytes, too_long: bool) -> None:
    assert has_long_line(content) is too_long
    longest = max(map(len, content.split(b"\r\n"))) + 2 if content else 0
    assert too_long is (longest > 1000)
