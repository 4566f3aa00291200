"""DATA without per-line Python work: find the end, unstuff, normalise, in C-level calls.

aiosmtpd reads DATA one line at a time in Python, which caps throughput for large messages.
:class:`DataReader` takes whole socket reads instead and looks for ``CRLF.CRLF`` with
``bytes.find``; unstuffing and line-ending repair are single ``replace``/``sub`` calls.

Only ``CRLF.CRLF`` ends DATA (RFC 5321 4.1.1.4). ``LF.LF``, ``CRLF.LF`` and ``LF.CRLF``
are message content: bare LF and bare CR are rewritten to CRLF before the message is
stored, so when we relay it our client dot-stuffs those lines and no downstream server
can be tricked into seeing an early end of data (SMTP smuggling).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

TERMINATOR = b"\r\n.\r\n"
# RFC 5322 2.1.1: at most 998 characters plus CRLF on a line.
MAX_LINE = 1000
_BARE_EOL = re.compile(rb"\r\n|\r|\n")
_HEADER_END = re.compile(rb"\r\n\r\n")
_RECEIVED = re.compile(rb"^received:", re.IGNORECASE | re.MULTILINE)


class DataReader:
    """Accumulate the bytes after ``354`` until the end-of-data line.

    ``limit`` is the largest message kept, in bytes (None: no limit). Past it the reader
    keeps counting and scanning for the terminator but stores nothing more, so a client
    cannot make the server hold more than ``limit`` bytes (plus one read).
    """

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        # A CRLF in front makes an empty message (".\r\n" first) match the terminator
        # and lets one replace() unstuff the first line like every other.
        self._buf = bytearray(b"\r\n")
        self._scan = 0
        self.received = 0  # bytes of the wire form, terminator excluded
        self.too_big = False
        self.done = False
        self.leftover = b""  # pipelined commands after the terminator

    def feed(self, chunk: bytes) -> bool:
        """Add bytes read from the socket; return True once the terminator was seen."""
        before = len(self._buf)
        self._buf += chunk
        end = self._buf.find(TERMINATOR, self._scan)
        if end >= 0:
            self.leftover = bytes(self._buf[end + len(TERMINATOR) :])
            self.received += max(0, end + 2 - before)
            del self._buf[end + 2 :]  # keep the CRLF that ends the last line
            if self.limit is not None and len(self._buf) - 2 > self.limit:
                self.too_big = True
                self._buf = bytearray()
            self.done = True
            return True
        self.received += len(chunk)
        # The terminator may straddle two reads: rescan the last four bytes next time.
        self._scan = max(0, len(self._buf) - len(TERMINATOR) + 1)
        if self.limit is not None and len(self._buf) - 2 > self.limit:
            self.too_big = True
            tail = bytes(self._buf[-(len(TERMINATOR) - 1) :])
            self._buf = bytearray(tail)
            self._scan = 0
        return False

    def message(self) -> DataResult:
        """The message as it will be stored: unstuffed, with CRLF line endings."""
        assert self.done and not self.too_big
        wire = bytes(self._buf)
        content = wire.replace(b"\r\n.", b"\r\n")[2:]  # RFC 5321 4.5.2 transparency
        crlf = content.count(b"\r\n")
        bare_eol = content.count(b"\n") != crlf or content.count(b"\r") != crlf
        if bare_eol:
            content = _BARE_EOL.sub(b"\r\n", content)
        return DataResult(
            content=content,
            bare_eol_fixed=bare_eol,
            line_too_long=has_long_line(content),
            received_headers=count_received(content),
            eight_bit=not content.isascii(),
        )


@dataclass(frozen=True, slots=True)
class DataResult:
    content: bytes
    bare_eol_fixed: bool
    line_too_long: bool
    received_headers: int
    eight_bit: bool


def has_long_line(content: bytes, limit: int = MAX_LINE) -> bool:
    """Whether a line (CRLF included) is longer than ``limit``, in C-level searches: from
    each line start, look for the next LF within the window instead of splitting."""
    start, end = 0, len(content)
    while end - start > limit - 2:
        lf = content.find(b"\n", start, start + limit)
        if lf < 0:
            return True
        start = lf + 1
    return False


def count_received(content: bytes) -> int:
    """Number of Received: header fields (the hop count), header section only."""
    match = _HEADER_END.search(content)
    headers = content[: match.start() + 2] if match else content
    return len(_RECEIVED.findall(headers))
