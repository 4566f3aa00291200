from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import resource
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from smtpworker.inbound.w3clog import FIELDS, RETRY_SECONDS, WARN_SECONDS, LogRecord, W3CLog, escape

WHEN = datetime(2024, 3, 9, 17, 5, 42, tzinfo=UTC)  # a Saturday
DEFAULT_FIELDS = ("date", "time", "c-ip", "cs-method", "cs-uri-query", "sc-status")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def record(**changes: object) -> LogRecord:
    fields: dict[str, object] = {
        "when": WHEN,
        "client_ip": "192.0.2.10",
        "username": None,
        "server_name": "SMTPSVC1",
        "computer_name": "MAIL01",
        "server_ip": "192.0.2.1",
        "server_port": 25,
        "method": "MAIL",
        "argument": "FROM:<alice@example.com>",
        "status": 250,
        "bytes_sent": 42,
        "bytes_received": 31,
        "time_taken_ms": 3,
        "helo": "client.example.com",
    }
    fields.update(changes)
    return LogRecord(**fields)  # type: ignore[arg-type]


def make_log(tmp_path: Path, **kwargs: object) -> W3CLog:
    options: dict[str, object] = {"period": "daily", "fields": DEFAULT_FIELDS}
    options.update(kwargs)
    return W3CLog(tmp_path / "LogFiles", **options)  # type: ignore[arg-type]


def lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def body(path: Path) -> list[str]:
    return [line for line in lines(path) if not line.startswith("#")]


def header(fields: tuple[str, ...], when: datetime = WHEN) -> list[str]:
    return [
        "#Software: mailadmin SMTP",
        "#Version: 1.0",
        f"#Date: {when:%Y-%m-%d %H:%M:%S}",
        "#Fields: " + " ".join(fields),
    ]


# --- file names -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("period", "name"),
    [
        ("hourly", "ex24030917.log"),
        ("daily", "ex240309.log"),
        ("weekly", "ex240302.log"),
        ("monthly", "ex2403.log"),
    ],
)
def test_file_name_per_period(period: str, name: str) -> None:
    assert W3CLog.file_name(period, WHEN) == name


@pytest.mark.parametrize(
    ("day", "week"),
    [
        # March 2024 starts on a Friday; weeks start on Sunday.
        (datetime(2024, 3, 1), "01"),
        (datetime(2024, 3, 2, 23, 59, 59), "01"),
        (datetime(2024, 3, 3), "02"),
        (datetime(2024, 3, 31), "06"),
        # September 2024 starts on a Sunday.
        (datetime(2024, 9, 1), "01"),
        (datetime(2024, 9, 7), "01"),
        (datetime(2024, 9, 8), "02"),
    ],
)
def test_weekly_name_is_week_of_month(day: datetime, week: str) -> None:
    when = day.replace(tzinfo=UTC)
    assert W3CLog.file_name("weekly", when) == f"ex{when:%y%m}{week}.log"


def test_file_name_uses_utc() -> None:
    # 01:30 in UTC+02:00 is 23:30 the day before in UTC.
    when = datetime(2024, 3, 10, 1, 30, tzinfo=timezone(timedelta(hours=2)))
    assert W3CLog.file_name("hourly", when) == "ex24030923.log"


def test_file_name_rejects_naive_datetime_and_unknown_period() -> None:
    with pytest.raises(ValueError, match="aware"):
        W3CLog.file_name("daily", datetime(2024, 3, 9))
    with pytest.raises(ValueError, match="period"):
        W3CLog.file_name("yearly", WHEN)


def test_constructor_rejects_unknown_period_and_fields(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="period"):
        make_log(tmp_path, period="fortnightly")
    with pytest.raises(ValueError, match="cs-bogus"):
        make_log(tmp_path, fields=("date", "cs-bogus"))


# --- header and rotation ------------------------------------------------------------------


def test_header_written_once_per_file(tmp_path: Path) -> None:
    log = make_log(tmp_path)
    log.write(record())
    log.write(record(when=WHEN + timedelta(minutes=1), method="RCPT", argument="TO:<b@c>"))
    log.close()

    assert lines(tmp_path / "LogFiles" / "ex240309.log") == [
        *header(DEFAULT_FIELDS),
        "2024-03-09 17:05:42 192.0.2.10 MAIL +FROM:<alice@example.com> 250",
        "2024-03-09 17:06:42 192.0.2.10 RCPT +TO:<b@c> 250",
    ]


def test_header_written_again_when_fields_change(tmp_path: Path) -> None:
    log = make_log(tmp_path)
    log.write(record())
    log.reconfigure(period="daily", fields=DEFAULT_FIELDS)  # unchanged: no new header
    log.write(record())
    later = WHEN + timedelta(minutes=5)
    log.reconfigure(period="daily", fields=("time", "cs-method"))
    log.write(record(when=later, method="QUIT", argument=""))
    log.close()

    assert lines(tmp_path / "LogFiles" / "ex240309.log") == [
        *header(DEFAULT_FIELDS),
        "2024-03-09 17:05:42 192.0.2.10 MAIL +FROM:<alice@example.com> 250",
        "2024-03-09 17:05:42 192.0.2.10 MAIL +FROM:<alice@example.com> 250",
        *header(("time", "cs-method"), later),
        "17:10:42 QUIT",
    ]


def test_reopening_an_existing_file_writes_a_header(tmp_path: Path) -> None:
    # A restarted worker appends to today's file; IIS also wrote a header on startup.
    for _ in range(2):
        log = make_log(tmp_path)
        log.write(record())
        log.close()

    text = lines(tmp_path / "LogFiles" / "ex240309.log")
    assert text.count("#Version: 1.0") == 2
    assert len(body(tmp_path / "LogFiles" / "ex240309.log")) == 2


def test_rotation_at_the_hour(tmp_path: Path) -> None:
    log = make_log(tmp_path, period="hourly")
    before = datetime(2024, 3, 9, 10, 59, 59, tzinfo=UTC)
    after = datetime(2024, 3, 9, 11, 0, 0, tzinfo=UTC)
    log.write(record(when=before))
    log.write(record(when=after))
    log.close()

    directory = tmp_path / "LogFiles"
    assert sorted(p.name for p in directory.iterdir()) == ["ex24030910.log", "ex24030911.log"]
    assert lines(directory / "ex24030910.log")[:4] == header(DEFAULT_FIELDS, before)
    assert body(directory / "ex24030910.log") == [
        "2024-03-09 10:59:59 192.0.2.10 MAIL +FROM:<alice@example.com> 250"
    ]
    assert lines(directory / "ex24030911.log")[:4] == header(DEFAULT_FIELDS, after)
    assert body(directory / "ex24030911.log") == [
        "2024-03-09 11:00:00 192.0.2.10 MAIL +FROM:<alice@example.com> 250"
    ]


def test_rotation_at_utc_midnight(tmp_path: Path) -> None:
    log = make_log(tmp_path, period="daily")
    log.write(record(when=datetime(2024, 3, 9, 23, 59, 59, tzinfo=UTC)))
    # 01:00 at UTC+02:00 is still the 9th in UTC: same file.
    log.write(record(when=datetime(2024, 3, 10, 1, 0, tzinfo=timezone(timedelta(hours=2)))))
    log.write(record(when=datetime(2024, 3, 10, 0, 0, tzinfo=UTC)))
    log.close()

    directory = tmp_path / "LogFiles"
    assert [line[:19] for line in body(directory / "ex240309.log")] == [
        "2024-03-09 23:59:59",
        "2024-03-09 23:00:00",
    ]
    assert [line[:19] for line in body(directory / "ex240310.log")] == ["2024-03-10 00:00:00"]


def test_period_change_moves_to_the_new_file(tmp_path: Path) -> None:
    log = make_log(tmp_path, period="daily")
    log.write(record())
    log.reconfigure(period="monthly", fields=DEFAULT_FIELDS)
    log.write(record())
    log.close()

    directory = tmp_path / "LogFiles"
    assert len(body(directory / "ex240309.log")) == 1
    assert len(body(directory / "ex2403.log")) == 1


def test_write_after_close_reopens(tmp_path: Path) -> None:
    log = make_log(tmp_path)
    log.write(record())
    log.close()
    log.write(record())
    log.close()
    assert len(body(tmp_path / "LogFiles" / "ex240309.log")) == 2


# --- line format ----------------------------------------------------------------------------


def test_every_field_in_configured_order(tmp_path: Path) -> None:
    log = make_log(tmp_path, fields=FIELDS)
    rec = record(
        username="alice",
        server_name="Default SMTP Virtual Server",
        method="MAIL",
        argument="FROM:<alice@example.com> SIZE=1000",
        bytes_sent=48,
        bytes_received=40,
        time_taken_ms=12,
    )
    assert log.format_line(rec) == (
        "2024-03-09 17:05:42 192.0.2.10 alice Default+SMTP+Virtual+Server MAIL01 192.0.2.1 25 "
        "MAIL - +FROM:<alice@example.com>+SIZE=1000 250 0 48 40 12 SMTP client.example.com "
        "- - -\n"
    )
    reordered = make_log(tmp_path, fields=("sc-status", "cs-host", "date", "s-port"))
    assert reordered.format_line(rec) == "250 client.example.com 2024-03-09 25\n"


def test_empty_values_are_dashes(tmp_path: Path) -> None:
    log = make_log(tmp_path, fields=("cs-username", "cs-method", "cs-uri-query", "cs-host"))
    assert log.format_line(record(username=None, argument="", helo="")) == "- MAIL - -\n"
    assert log.format_line(record(username="", method="", helo="a b")) == (
        "- - +FROM:<alice@example.com> a+b\n"
    )


def test_non_utc_when_is_logged_in_utc(tmp_path: Path) -> None:
    log = make_log(tmp_path, fields=("date", "time"))
    when = datetime(2024, 3, 10, 1, 30, 5, tzinfo=timezone(timedelta(hours=2)))
    assert log.format_line(record(when=when)) == "2024-03-09 23:30:05\n"


def test_naive_when_is_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        record(when=datetime(2024, 3, 9))


@pytest.mark.parametrize(
    ("raw", "logged"),
    [
        ("plain", "plain"),
        ("two words", "two+words"),
        ("", "-"),
        ("a\r\nb", "a\\x0d\\x0ab"),
        ("nul\x00tab\tdel\x7f", "nul\\x00tab\\x09del\\x7f"),
        ("back\\slash", "back\\\\slash"),
        ("line\u2028sep\x85", "line\\u2028sep\\x85"),
        ("surrogate\udcff", "surrogate\\udcff"),
        ("caf\u00e9 \U0001f600", "caf\u00e9+\U0001f600"),
    ],
)
def test_escape(raw: str, logged: str) -> None:
    assert escape(raw) == logged


def test_crlf_injection_cannot_forge_a_line(tmp_path: Path) -> None:
    forged = "2024-03-09 17:05:42 203.0.113.66 QUIT - 221"
    log = make_log(tmp_path)
    log.write(record(argument=f"FROM:<a@b>\r\n{forged}", helo=f"x\n{forged}"))
    log.write(record(method="NOOP\r\n#Fields: date", argument=""))
    log.close()

    path = tmp_path / "LogFiles" / "ex240309.log"
    assert lines(path)[:4] == header(DEFAULT_FIELDS)
    assert body(path) == [
        "2024-03-09 17:05:42 192.0.2.10 MAIL "
        "+FROM:<a@b>\\x0d\\x0a2024-03-09+17:05:42+203.0.113.66+QUIT+-+221 250",
        "2024-03-09 17:05:42 192.0.2.10 NOOP\\x0d\\x0a#Fields:+date - 250",
    ]
    assert len(path.read_bytes().splitlines()) == 6


def test_client_value_first_cannot_pose_as_a_directive(tmp_path: Path) -> None:
    log = make_log(tmp_path, fields=("cs-method", "sc-status"))
    assert log.format_line(record(method="#Fields:")) == "\\x23Fields: 250\n"


@pytest.mark.parametrize("method", ["AUTH", "auth", "Auth"])
def test_auth_argument_is_never_logged(tmp_path: Path, method: str) -> None:
    secret = "PLAIN AGFsaWNlAHMzY3IzdA=="
    log = make_log(tmp_path)
    log.write(record(method=method, argument=secret, status=235))
    log.close()

    path = tmp_path / "LogFiles" / "ex240309.log"
    assert body(path) == [f"2024-03-09 17:05:42 192.0.2.10 {method} - 235"]
    assert b"AGFsaWNl" not in path.read_bytes()


# --- buffering --------------------------------------------------------------------------------


def test_lines_are_buffered_until_the_line_count(tmp_path: Path) -> None:
    clock = FakeClock()
    log = make_log(tmp_path, flush_lines=3, clock=clock)
    path = tmp_path / "LogFiles" / "ex240309.log"
    log.write(record())
    log.write(record())
    assert path.read_bytes() == b""
    log.write(record())
    assert len(body(path)) == 3
    log.close()


def test_lines_are_flushed_by_age_on_the_next_write(tmp_path: Path) -> None:
    clock = FakeClock()
    log = make_log(tmp_path, flush_interval=1.0, clock=clock)
    path = tmp_path / "LogFiles" / "ex240309.log"
    log.write(record())
    assert path.read_bytes() == b""
    clock.now += 1.0
    log.write(record())
    assert len(body(path)) == 2
    log.close()


def test_timer_flushes_inside_an_event_loop(tmp_path: Path) -> None:
    path = tmp_path / "LogFiles" / "ex240309.log"

    async def scenario() -> list[str]:
        log = make_log(tmp_path, flush_interval=0.05)
        log.write(record())
        log.write(record())  # within the interval: buffered, the timer will flush it
        deadline = time.monotonic() + 5
        while len(body(path)) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        result = body(path)
        log.close()
        return result

    assert len(asyncio.run(scenario())) == 2


def test_no_fields_logs_nothing(tmp_path: Path) -> None:
    log = make_log(tmp_path, fields=())
    log.write(record())
    log.close()
    assert not (tmp_path / "LogFiles").exists()


# --- failures ---------------------------------------------------------------------------------


@contextlib.contextmanager
def file_size_limit(size: int) -> Iterator[None]:
    """Writes past ``size`` bytes fail with EFBIG, as a full disk fails them with ENOSPC
    (the log refuses a link to /dev/full, and mounting a small filesystem needs more)."""
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the signal kills us
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, old_limit[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)


def test_a_write_error_is_swallowed_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    log = make_log(tmp_path, clock=clock)

    with caplog.at_level(logging.WARNING, logger="smtpworker.inbound.w3clog"), file_size_limit(16):
        log.write(record())
        log.flush()
        clock.now += RETRY_SECONDS
        log.write(record())
        log.flush()  # fails again, within WARN_SECONDS: no second warning
        log.close()

    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "File too large" in warnings[0].getMessage()


def test_unopenable_directory_is_swallowed_and_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "LogFiles").write_text("not a directory")
    clock = FakeClock()
    log = make_log(tmp_path, clock=clock)

    with caplog.at_level(logging.WARNING, logger="smtpworker.inbound.w3clog"):
        log.write(record())  # open fails
        log.write(record())  # inside the retry window: dropped without a syscall
        (tmp_path / "LogFiles").unlink()
        log.write(record())  # still inside the window
        clock.now += max(RETRY_SECONDS, WARN_SECONDS)
        log.write(record(method="QUIT", argument=""))
        log.close()

    path = tmp_path / "LogFiles" / "ex240309.log"
    assert lines(path)[:4] == header(DEFAULT_FIELDS)
    assert body(path) == ["2024-03-09 17:05:42 192.0.2.10 QUIT - 250"]
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert "Errno" in messages[0]
    assert "writing again (2 line(s) dropped since the last report)" in messages[1]


def test_record_is_immutable() -> None:
    rec = record()
    with pytest.raises(dataclasses.FrozenInstanceError):
        rec.status = 500  # type: ignore[misc]


def test_a_link_planted_as_the_log_file_is_never_appended_to(tmp_path: Path) -> None:
    # Whoever may write to LogFiles/ must not make the worker append client-chosen text
    # (HELO names, addresses) to another file, e.g. a .pth file of the virtualenv.
    target = tmp_path / "precious.pth"
    target.write_bytes(b"precious\n")
    (tmp_path / "LogFiles").mkdir()
    (tmp_path / "LogFiles" / "ex240309.log").symlink_to(target)
    log = make_log(tmp_path)
    log.write(record(helo="import os; os.system('id')"))
    log.close()
    assert target.read_bytes() == b"precious\n"
    assert (tmp_path / "LogFiles" / "ex240309.log").is_symlink()


def test_log_files_are_created_for_the_owner_and_its_group_only(tmp_path: Path) -> None:
    log = make_log(tmp_path)
    log.write(record())
    log.close()
    assert (tmp_path / "LogFiles" / "ex240309.log").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "LogFiles").stat().st_mode & 0o777 == 0o700
