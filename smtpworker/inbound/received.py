"""The Received trace field (RFC 5321 4.4) put on top of every message this server queues,
whether it came over SMTP (``handler``) or through the Pickup directory (``pickup``).

One builder, so both give the shape the hop count (``data.count_received``), the message
tracker and an administrator reading headers expect::

    Received: from client.example ([192.0.2.7])
    \tby mx.example.net (mailadmin CorpServer) with ESMTPSA id 0123abcd
    \t(authenticated as alice)
    \tfor <bob@example.org>;
    \tTue, 3 Mar 2026 10:00:00 +0100
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from email.utils import format_datetime

__all__ = ["received_header", "smtp_protocol"]


def received_header(
    *,
    queue_id: str,
    from_name: str,
    from_comment: str,
    host: str,
    server: str,
    recipients: Sequence[str],
    when: datetime,
    protocol: str | None = None,
    user: str | None = None,
) -> str:
    """The field, CRLF-terminated, folded over several lines.

    ``from_name`` is the client's HELO name (or a name for the source, "pickup");
    ``from_comment`` what is known of it ("[client IP]"); ``host`` this server's name and
    ``server`` its virtual server's. ``protocol`` (:func:`smtp_protocol`) adds a "with"
    clause, ``user`` an "(authenticated as ...)" comment, and a single recipient a "for"
    clause (several are not listed: that would disclose Bcc recipients to the others).
    ``when`` must be timezone-aware. Names and comments are made safe for a header
    comment (no line breaks, parentheses or backslashes; ASCII only); the names
    (``from_name``, ``host``, ``user``) are single words, so a space in one becomes "_".
    """
    with_clause = f" with {protocol}" if protocol else ""
    auth = f"\r\n\t(authenticated as {_clean(user, word=True)})" if user else ""
    rcpt = f"\r\n\tfor <{recipients[0]}>" if len(recipients) == 1 else ""
    return (
        f"Received: from {_clean(from_name, word=True)} ({_clean(from_comment)})\r\n"
        f"\tby {_clean(host, word=True)} (mailadmin {_clean(server)}){with_clause} id {queue_id}"
        f"{auth}{rcpt};\r\n"
        f"\t{format_datetime(when)}\r\n"
    )


def smtp_protocol(*, extended: bool, smtputf8: bool, tls: bool, authenticated: bool) -> str:
    """The "with" protocol name of RFC 3848 (and RFC 6531's UTF8 prefix): SMTP, ESMTP,
    ESMTPS, ESMTPA, ESMTPSA, UTF8ESMTPSA..."""
    name = ("UTF8" if smtputf8 else "") + ("ESMTP" if extended else "SMTP")
    return name + ("S" if tls else "") + ("A" if authenticated else "")


def _clean(text: str, *, word: bool = False) -> str:
    # Inside a header comment: no line breaks, parentheses or backslashes, ASCII only.
    lowest = 33 if word else 32
    return "".join(c if lowest <= ord(c) < 127 and c not in "()\\" else "_" for c in text)[:200]
