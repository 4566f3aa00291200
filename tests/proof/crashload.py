"""The crash run's load: SMTP clients sending unique messages at a steady rate.

Message mix (by sequence number): mostly one recipient, every tenth two, every 25th also
a recipient the smart host refuses with 550 (the message bounces, with an NDR to the
sender), every 50th only that one. Each message carries ``X-Crash-Id: <prefix><seq>``.
"""

from __future__ import annotations

import smtplib
import threading
import time
from collections import Counter

from tests.proof.crashaudit import BAD, DEST, Accepted

SENDER = "load@origin.test"  # a remote domain: NDRs go to the smart host as well


def recipients_for(seq: int) -> tuple[str, ...]:
    good = f"user{seq % 7}@{DEST}"
    if seq % 50 == 13:
        return (BAD,)
    if seq % 25 == 7:
        return (good, BAD)
    if seq % 10 == 3:
        return (good, f"user{(seq + 1) % 7}@{DEST}")
    return (good,)


def message_bytes(crash_id: str, recipients: tuple[str, ...]) -> bytes:
    filler = "".join(f"Line {n} of the crash run's steady load.\r\n" for n in range(8))
    return (
        f"From: Load <{SENDER}>\r\nTo: {', '.join(recipients)}\r\n"
        f"Subject: crash run {crash_id}\r\nMessage-ID: <{crash_id}@origin.test>\r\n"
        f"X-Crash-Id: {crash_id}\r\n\r\n{filler}"
    ).encode()


class _Refused(Exception):
    """The server answered something other than the expected code."""


class Load:
    """``sessions`` SMTP clients (threads) sending unique messages at ``rate`` per second
    in total until ``target`` of them got a 250 after DATA.

    A client that loses its connection or gets anything but 250 notes why and connects
    again; that message is not accepted and is never sent again (one with a new id takes
    its place). Threads are daemons and stop at :meth:`stop` or when the target is met.
    """

    def __init__(
        self, address: tuple[str, int], *, prefix: str, target: int, rate: float, sessions: int
    ) -> None:
        self.address, self.prefix, self.target = address, prefix, target
        self.interval = 1.0 / rate
        self.sessions = sessions
        self.accepted: dict[str, Accepted] = {}
        self.failures: Counter[str] = Counter()
        self.issued = 0
        self._in_flight = 0
        self._next_due = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.started = self.finished = 0.0

    def start(self) -> Load:
        self.started = self._next_due = time.monotonic()
        for n in range(self.sessions):
            thread = threading.Thread(target=self._session, name=f"load-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    @property
    def count(self) -> int:
        return len(self.accepted)

    @property
    def done(self) -> bool:
        return self.count >= self.target

    def wait(self, timeout: float) -> bool:
        """Wait until the target is met (True) or ``timeout`` passed (False)."""
        deadline = time.monotonic() + timeout
        while not self.done and time.monotonic() < deadline:
            time.sleep(0.1)
        return self.done

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
        with self._lock:
            self.finished = self.finished or time.monotonic()

    def _claim(self) -> tuple[int, float] | None:
        """The next sequence number and when to send it; None when enough are in hand."""
        with self._lock:
            if self._stop.is_set() or self.count + self._in_flight >= self.target:
                return None
            seq, self.issued, self._in_flight = self.issued, self.issued + 1, self._in_flight + 1
            # Steady: one message per interval. After an outage, catch up by half a
            # second's worth at most rather than in a burst.
            self._next_due = max(self._next_due + self.interval, time.monotonic() - 0.5)
            return seq, self._next_due

    def _session(self) -> None:
        while not self._stop.is_set() and not self.done:
            stage = "connect"
            try:
                with smtplib.SMTP(*self.address, timeout=20) as client:
                    stage = "EHLO"
                    client.ehlo("load.crash.test")
                    while (job := self._claim()) is not None:
                        seq, due = job
                        self._stop.wait(max(0.0, due - time.monotonic()))
                        stage = "transaction"
                        self._send(client, seq)
            except (OSError, smtplib.SMTPException, _Refused) as exc:
                self._failed(f"{stage}: {_reason(exc)}", 0.1)
            except Exception as exc:  # noqa: BLE001 - a load thread must not die silently
                self._failed(f"{stage}: unexpected {exc!r}", 0.5)
        with self._lock:
            if self.done and not self.finished:
                self.finished = time.monotonic()

    def _failed(self, reason: str, pause: float) -> None:
        with self._lock:
            self.failures[reason] += 1
        self._stop.wait(pause)

    def _send(self, client: smtplib.SMTP, seq: int) -> None:
        crash_id = f"{self.prefix}{seq}"
        recipients = recipients_for(seq)
        try:
            _expect(250, "MAIL", *client.mail(SENDER))
            for recipient in recipients:
                _expect(250, "RCPT", *client.rcpt(recipient))
            code, reply = client.data(message_bytes(crash_id, recipients))
            _expect(250, "DATA", code, reply)
            queue_id = reply.decode().rsplit(" ", 1)[-1]  # "2.0.0 Queued as <id>"
            with self._lock:
                self.accepted[crash_id] = Accepted(crash_id, queue_id, recipients, time.monotonic())
        finally:
            with self._lock:
                self._in_flight -= 1


def _expect(want: int, verb: str, code: int, reply: bytes) -> None:
    if code != want:
        raise _Refused(f"{verb} {code} {reply.decode(errors='replace')[:60]}")


def _reason(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, _Refused) else type(exc).__name__
