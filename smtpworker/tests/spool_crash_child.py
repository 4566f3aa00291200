"""Crash-test helper: store messages in a loop until killed.

Usage: ``python -m smtpworker.tests.spool_crash_child SPOOL_DIR COUNT``

After each ``Spool.store()`` returns, the queue id is written to stdout and flushed: that
line stands for the ``250`` the SMTP server sends. Message data and envelope derive from the
id alone, so the parent test can check every acknowledged message after a ``kill -9``.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from smtpworker.core.spool import Envelope, Spool, new_queue_id

MAX_EXTRA = 256 * 1024  # big enough that a kill often lands in the middle of a write


def payload(queue_id: str) -> bytes:
    """Return the message data stored under ``queue_id`` (1 KB to 257 KB, 8-bit, CRLF)."""
    seed = hashlib.sha256(queue_id.encode()).digest()
    size = 1024 + int.from_bytes(seed[:4], "big") % MAX_EXTRA
    head = f"Message-ID: <{queue_id}@crash.test>\r\nSubject: crash\r\n\r\n".encode()
    return head + hashlib.shake_256(seed).digest(size)


def envelope(queue_id: str, data: bytes) -> Envelope:
    """Return the envelope stored with ``payload(queue_id)``."""
    return Envelope(
        queue_id=queue_id,
        server="crash",
        sender=f"{queue_id.lower()}@sender.test",
        recipients=("a@rcpt.test", "b@rcpt.test"),
        received_at=int(queue_id[:14], 16) / 1_000_000,
        client_ip="192.0.2.1",
        client_helo="client.test",
        auth_user=None,
        size=len(data),
        smtputf8=False,
        body_8bit=True,
    )


def main(argv: list[str]) -> None:
    spool = Spool(Path(argv[1]))
    out = sys.stdout.buffer
    for _ in range(int(argv[2])):
        queue_id = new_queue_id()
        data = payload(queue_id)
        spool.store(envelope(queue_id, data), data)
        out.write(queue_id.encode("ascii") + b"\n")
        out.flush()


if __name__ == "__main__":
    main(sys.argv)
