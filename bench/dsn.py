"""Delivery reports on hostile messages: is building an NDR linear in the message?

`python bench/dsn.py [--repeat 5]` builds an NDR (``smtpworker.outbound.dsn.build_report``, headers
quoted, as the delivery service does; and the whole message returned, as an option of the
API allows) for a normal 2 MB message and for crafted 2 MB messages, and prints one table:
the median CPU milliseconds per report and the ratio of each crafted message to the normal
one in the same run. Before issue 10 a header section of 998-octet lines cost 4-7 s (a
regular expression search restarting at every octet) and one field folded over 500,000
lines about 11 s (the unfolded value copied once per line).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from smtpworker.outbound import dsn  # noqa: E402

SIZE = 2_000_000
NOW = datetime(2026, 12, 7, tzinfo=UTC)


def messages() -> dict[str, bytes]:
    """The normal message first: the baseline of the ratio column."""
    filler = b"X-Filler: " + b"a" * 988  # 998 octets, the longest line RFC 5322 allows
    return {
        "normal (2 MB body of 80-octet lines)": b"Subject: normal\r\nFrom: a@example.com\r\n\r\n"
        + (b"The quick brown fox jumps over the lazy dog, again and again and again.\r\n")
        * (SIZE // 74),
        "header of 998-octet lines": b"Subject: crafted\r\n" + (filler + b"\r\n") * (SIZE // 1000),
        "body of 998-octet lines": b"Subject: crafted\r\n\r\n"
        + (b"b" * 998 + b"\r\n") * (SIZE // 1000),
        "one field folded 500,000 times": b"Subject: crafted\r\nX-Fold: a\r\n"
        + b" b\r\n" * (SIZE // 4),
        "400,000 fields, bare CR line ends": b"Subject: crafted\r" + b"X: y\r" * (SIZE // 5),
        "Subject of 100,000 encoded words": b"Subject: "
        + b"=?utf-8?q?=C3=A9?= " * (SIZE // 19)
        + b"\r\n\r\nbody\r\n",
        "field name of 2 MB": b"Subject: crafted\r\n" + b"a" * SIZE + b"\r\n\r\n",
    }


def report(original: bytes, *, headers_only: bool) -> bytes:
    status = dsn.RecipientStatus(
        "bob@example.test", "failed", "5.1.1", "mx.example.test", "550 5.1.1 No such user"
    )
    return dsn.build_report(
        original=original,
        envelope_sender="alice@example.com",
        reporting_mta="mail.example.com",
        postmaster="postmaster@example.com",
        recipients=[status],
        arrival=NOW - timedelta(hours=1),
        now=NOW,
        queue_id="BENCH1",
        kind="failure",
        headers_only=headers_only,
    )


def cpu_ms(work: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.process_time()
        work()
        times.append((time.process_time() - started) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="reports per cell (median)")
    args = parser.parse_args()
    rows = []
    for name, original in messages().items():
        cells = []
        for headers_only in (True, False):
            ms = cpu_ms(functools.partial(report, original, headers_only=headers_only), args.repeat)
            cells.append(ms)
        rows.append((name, len(original), cells))
    base = rows[0][2]
    print(f"NDR build time, CPU ms per report (median of {args.repeat}), 2 MB messages\n")
    header = f"{'message':<38} {'bytes':>9}  {'headers':>8} {'ratio':>6}  {'whole':>8} {'ratio':>6}"
    print(header)
    print("-" * len(header))
    for name, size, (quoted, whole) in rows:
        print(
            f"{name:<38} {size:>9}  {quoted:>8.2f} {quoted / max(base[0], 0.001):>6.1f}"
            f"  {whole:>8.2f} {whole / max(base[1], 0.001):>6.1f}"
        )
    worst = max(max(cells) for _name, _size, cells in rows)
    print(f"\nslowest report: {worst:.1f} ms (issue 10 asks under 50 ms)")


if __name__ == "__main__":
    main()
