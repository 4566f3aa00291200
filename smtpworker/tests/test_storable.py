"""smtpworker.core.storable: what the network sends, made storable on every database."""

from __future__ import annotations

import sqlite3

import pytest

from smtpworker.core.storable import ELLIPSIS, storable

CASES = [
    # (what came from the network, max_length, what is stored)
    ("a\x00b", None, "a\u2400b"),  # NUL: PostgreSQL's DataError
    ("\x00", None, "\u2400"),
    ("\x01\x07\x08\x0b\x0c\x1b\x1f", None, "\u2401\u2407\u2408\u240b\u240c\u241b\u241f"),
    ("tab\there\r\nnext line\n", None, "tab\there\r\nnext line\n"),  # kept: multi-line replies
    ("del\x7f c1\x85\x9f", None, "del\ufffd c1\ufffd\ufffd"),
    ("caf\udce9 \udcff", None, "caf\ufffd \ufffd"),  # surrogateescape'd bytes
    ("\ud800 lone high, lone low \udfff", None, "\ufffd lone high, lone low \ufffd"),
    ("x" * 300, 255, "x" * 254 + ELLIPSIS),
    ("x" * 255, 255, "x" * 255),  # at the limit: untouched
    ("\x00" * 10, 4, "\u2400" * 3 + ELLIPSIS),  # replaced, then cut: one for one
    ("", 10, ""),
    ("ascii only <user@example.com>", 320, "ascii only <user@example.com>"),
    ("Grüße, 日本語, עברית, 🐀 \u00a0nbsp \u200bzwsp \ufeff", None, None),  # untouched
    ("déjà vu \u2400 already a picture", 100, None),
]


@pytest.mark.parametrize(("value", "max_length", "expected"), CASES)
def test_storable(value: str, max_length: int | None, expected: str | None) -> None:
    expected = value if expected is None else expected
    stored = storable(value, max_length)
    assert stored == expected
    assert storable(stored, max_length) == stored  # idempotent
    stored.encode("utf-8")  # no lone surrogate left: both databases' drivers encode UTF-8
    assert "\x00" not in stored
    assert max_length is None or len(stored) <= max_length


@pytest.mark.parametrize(("value", "max_length", "expected"), CASES)
def test_what_storable_returns_round_trips_through_sqlite(
    value: str, max_length: int | None, expected: str | None
) -> None:
    with sqlite3.connect(":memory:") as db:
        stored = storable(value, max_length)
        assert db.execute("SELECT ?", (stored,)).fetchone() == (stored,)


def test_an_unchanged_value_is_the_same_object() -> None:
    value = "Quarterly numbers"
    assert storable(value, 255) is value


def test_a_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        storable("x", 0)
