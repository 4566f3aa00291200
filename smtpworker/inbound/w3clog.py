"""The IIS 6 SMTP activity log in W3C Extended format, one per virtual server.

IIS wrote ``%WINDIR%\\System32\\LogFiles\\SMTPSVC<n>\\ex*.log``; we keep the files under
the server's home directory, in ``LogFiles/`` (:mod:`smtpworker.core.mailroot`). As in
IIS, file names and rollover follow UTC, one line is written per SMTP command, and every
new file (or a change of the field list) starts with a ``#Software/#Version/#Date/#Fields``
header block.

The log is not the truth (the spool is), so it is written for speed and never allowed to
hurt a session: an append-mode buffered file kept open, no fsync, and an I/O error only
drops lines and logs a rate-limited warning.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from smtpworker.core import safefile
from smtpworker.core.contract import LogPeriod

logger = logging.getLogger(__name__)

PERIODS = tuple(p.value for p in LogPeriod)

SOFTWARE = "mailadmin SMTP"
RETRY_SECONDS = 10.0  # after an I/O error, drop lines this long before reopening
WARN_SECONDS = 60.0  # at most one warning per log this often
_BUFFER_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One SMTP command and its reply, as the handler saw it.

    ``when`` must be timezone-aware; it is normalized to UTC. ``argument`` is the text
    after the verb (without the separating space); it is logged IIS-style with a leading
    ``+`` and is never logged for ``AUTH``. ``username`` is None before authentication.
    """

    when: datetime
    client_ip: str
    username: str | None
    server_name: str
    computer_name: str
    server_ip: str
    server_port: int
    method: str
    argument: str
    status: int
    bytes_sent: int
    bytes_received: int
    time_taken_ms: int
    helo: str

    def __post_init__(self) -> None:
        offset = self.when.utcoffset()
        if offset is None:
            raise ValueError("LogRecord.when must be timezone-aware")
        if offset:
            object.__setattr__(self, "when", self.when.astimezone(UTC))


def escape(value: str) -> str:
    """Render one value as a W3C token that cannot break the line or forge another.

    Empty becomes ``-``, a space ``+`` (as IIS did), a backslash ``\\\\``, and any
    non-printable character (CR, LF, NUL, TAB, DEL, U+2028, lone surrogates...) a
    ``\\xNN``/``\\uNNNN``/``\\UNNNNNNNN`` escape. Printable non-ASCII is kept.
    """
    if not value:
        return "-"
    if value.isprintable() and "\\" not in value:  # the common case, done in C
        return value.replace(" ", "+")
    return "".join(map(_escape_char, value))


def _escape_char(ch: str) -> str:
    if ch == " ":
        return "+"
    if ch == "\\":
        return "\\\\"
    if ch.isprintable():
        return ch
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _dash(record: LogRecord) -> str:
    return "-"


def _date(record: LogRecord) -> str:
    w = record.when
    return f"{w.year:04d}-{w.month:02d}-{w.day:02d}"


def _time(record: LogRecord) -> str:
    w = record.when
    return f"{w.hour:02d}:{w.minute:02d}:{w.second:02d}"


def _query(record: LogRecord) -> str:
    # AUTH's argument can carry an initial SASL response, i.e. a password.
    if not record.argument or record.method.upper() == "AUTH":
        return "-"
    return "+" + escape(record.argument)


# IIS 6's W3C Extended fields that mean something for SMTP, in the order IIS lists them.
_GETTERS: dict[str, Callable[[LogRecord], str]] = {
    "date": _date,
    "time": _time,
    "c-ip": lambda r: escape(r.client_ip),
    "cs-username": lambda r: escape(r.username or ""),
    "s-sitename": lambda r: escape(r.server_name),
    "s-computername": lambda r: escape(r.computer_name),
    "s-ip": lambda r: escape(r.server_ip),
    "s-port": lambda r: str(r.server_port),
    "cs-method": lambda r: escape(r.method),
    "cs-uri-stem": _dash,
    "cs-uri-query": _query,
    "sc-status": lambda r: str(r.status),
    "sc-win32-status": lambda r: "0",
    "sc-bytes": lambda r: str(r.bytes_sent),
    "cs-bytes": lambda r: str(r.bytes_received),
    "time-taken": lambda r: str(r.time_taken_ms),
    "cs-version": lambda r: "SMTP",
    "cs-host": lambda r: escape(r.helo),
    "cs(User-Agent)": _dash,
    "cs(Cookie)": _dash,
    "cs(Referer)": _dash,
}
FIELDS = tuple(_GETTERS)


def _check(period: str, fields: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    if period not in PERIODS:
        raise ValueError(f"Unknown log period {period!r}; expected one of {', '.join(PERIODS)}")
    unknown = [f for f in fields if f not in _GETTERS]
    if unknown:
        raise ValueError(f"Unknown W3C field(s): {', '.join(unknown)}")
    return period, tuple(fields)


def _week_of_month(when: datetime) -> int:
    """1 for the days up to the first Saturday, then +1 each Sunday (IIS's ``ww``)."""
    lead = (when.replace(day=1).weekday() + 1) % 7  # days of week 1 before the 1st
    return (when.day - 1 + lead) // 7 + 1


class W3CLog:
    """Appends W3C Extended lines for one virtual server to ``directory/ex*.log``.

    Not thread-safe: use it from the event loop only. Lines are buffered; they reach the
    file after ``flush_lines`` lines, at the first write ``flush_interval`` seconds after
    the last flush, on :meth:`flush`/:meth:`close`, or (inside a running event loop) by a
    timer ``flush_interval`` seconds after a write. No method raises ``OSError``: a failed
    open or write drops the buffered lines, logs a warning at most every
    :data:`WARN_SECONDS`, and drops further lines for :data:`RETRY_SECONDS` before the
    file is reopened. Every file this object opens (new or not, e.g. after a restart)
    starts with a header block, as IIS did when its service started. An empty field list
    logs nothing. The constructor raises ValueError for an unknown period or field.
    """

    def __init__(
        self,
        directory: Path,
        *,
        period: str,
        fields: Sequence[str],
        flush_interval: float = 1.0,
        flush_lines: int = 256,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.directory = directory
        self._period, self._fields = _check(period, fields)
        self._getters = [_GETTERS[f] for f in self._fields]
        self._flush_interval = flush_interval
        self._flush_lines = flush_lines
        self._clock = clock
        self._file: BinaryIO | None = None
        self._name = ""
        self._header_due = True
        self._pending = 0
        self._last_flush = clock()
        self._timer: asyncio.TimerHandle | None = None
        self._retry_at = float("-inf")
        self._dropped = 0
        self._warned_at = float("-inf")

    @property
    def fields(self) -> tuple[str, ...]:
        return self._fields

    @property
    def period(self) -> str:
        return self._period

    @staticmethod
    def file_name(period: str, when: datetime) -> str:
        """The IIS name of the file covering ``when`` (aware; taken in UTC).

        hourly ``exyymmddhh.log``, daily ``exyymmdd.log``, weekly ``exyymmww.log`` (``ww``
        the week of the month, weeks starting on Sunday), monthly ``exyymm.log``.
        Raises ValueError for an unknown period or a naive datetime.
        """
        if when.utcoffset() is None:
            raise ValueError("when must be timezone-aware")
        w = when.astimezone(UTC)
        ym = f"ex{w.year % 100:02d}{w.month:02d}"
        if period == LogPeriod.HOURLY:
            return f"{ym}{w.day:02d}{w.hour:02d}.log"
        if period == LogPeriod.DAILY:
            return f"{ym}{w.day:02d}.log"
        if period == LogPeriod.WEEKLY:
            return f"{ym}{_week_of_month(w):02d}.log"
        if period == LogPeriod.MONTHLY:
            return f"{ym}.log"
        raise ValueError(f"Unknown log period {period!r}; expected one of {', '.join(PERIODS)}")

    def reconfigure(self, *, period: str, fields: Sequence[str]) -> None:
        """Apply a new period and field list to the following lines.

        A changed field list gets a fresh header before the next line; a changed period
        takes effect through the file name. Raises ValueError like the constructor.
        """
        period, new_fields = _check(period, fields)
        if new_fields != self._fields:
            self._fields = new_fields
            self._getters = [_GETTERS[f] for f in new_fields]
            self._header_due = True
        self._period = period

    def format_line(self, record: LogRecord) -> str:
        """The line (with its newline) ``write`` would append for ``record``."""
        line = " ".join([get(record) for get in self._getters])
        if line.startswith("#"):  # a client-supplied first field must not read as a directive
            line = "\\x23" + line[1:]
        return line + "\n"

    def write(self, record: LogRecord) -> None:
        """Append one line for ``record``, opening or rotating the file as needed."""
        if not self._getters:
            return
        now = self._clock()
        if now < self._retry_at:
            self._dropped += 1
            return
        data = self.format_line(record).encode("utf-8", "backslashreplace")
        try:
            self._write(record.when, data)
        except OSError as exc:
            self._dropped += 1
            self._fail(exc, now)
            return
        if self._pending >= self._flush_lines or now - self._last_flush >= self._flush_interval:
            self.flush()
        elif self._timer is None:
            self._schedule()

    def flush(self) -> None:
        """Push buffered lines to the file (no fsync)."""
        self._last_flush = self._clock()
        if self._file is None:
            return
        try:
            self._file.flush()
        except OSError as exc:
            self._fail(exc, self._last_flush)
            return
        self._pending = 0
        if self._dropped:
            self._report(self._last_flush, "W3C log %s: writing again", self.directory / self._name)

    def close(self) -> None:
        """Flush and close the file; a later ``write`` reopens it (with a header)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.flush()
        self._discard()

    def _write(self, when: datetime, data: bytes) -> None:
        name = self.file_name(self._period, when)
        if self._file is None or name != self._name:
            self._open(name)
        assert self._file is not None
        if self._header_due:
            self._file.write(self._header(when))
            self._header_due = False
        self._file.write(data)
        self._pending += 1

    def _open(self, name: str) -> None:
        if self._file is not None:
            self._file.close()  # flushes; an error here is handled like any write error
            self._file = None
        # Never through a link nor a hard link planted by whoever may write to LogFiles/:
        # the worker would append client-chosen text (HELO, addresses) to another file.
        with safefile.directory(self.directory) as dir_fd:
            fd = safefile.open_append(dir_fd, name, mode=0o640)
        self._file = open(fd, "ab", buffering=_BUFFER_BYTES)
        self._name = name
        self._header_due = True

    def _header(self, when: datetime) -> bytes:
        stamp = f"{when:%Y-%m-%d %H:%M:%S}"
        return (
            f"#Software: {SOFTWARE}\n#Version: 1.0\n#Date: {stamp}\n"
            f"#Fields: {' '.join(self._fields)}\n"
        ).encode()

    def _fail(self, exc: OSError, now: float) -> None:
        self._dropped += self._pending  # what was buffered is lost with the file object
        self._discard()
        self._retry_at = now + RETRY_SECONDS
        self._report(
            now, "W3C log in %s: %s; dropping lines for %.0fs", self.directory, exc, RETRY_SECONDS
        )

    def _report(self, now: float, message: str, *args: object) -> None:
        # Rate-limited: a full disk must not turn every SMTP command into a warning.
        if now - self._warned_at < WARN_SECONDS:
            return
        self._warned_at = now
        dropped, self._dropped = self._dropped, 0
        logger.warning(message + " (%d line(s) dropped since the last report)", *args, dropped)

    def _discard(self) -> None:
        file, self._file, self._pending = self._file, None, 0
        if file is not None:
            with contextlib.suppress(OSError):
                file.close()

    def _schedule(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop: the count/age rule and flush()/close() apply
            return
        self._timer = loop.call_later(self._flush_interval, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.flush()
