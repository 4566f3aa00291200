"""The crash run's audit: what reached the smart host, what the database says, the verdict.

For every accepted message (its client read the 250 after DATA):

* **delivered**: each good recipient has a copy at the sink;
* **bounced**: as delivered, and the NDR for the refused recipient reached the sender
  (at the sink too, naming the message by the headers it quotes);
* **stuck**: not there yet, but the product still holds it (the message, or its NDR, is
  still open in the queue when the bounded wait ends);
* **lost**: not there, and the product no longer holds it (a final state without
  delivery, no record at all).

The database must agree (``delivered`` / ``bounced``), else the message is
**misrecorded**. A recipient that got a message more than once is a **duplicate**: each
copy but the last must lie next to a fault that can cut a delivery between the smart
host's 250 and its record (:data:`REPEATABLE`), and a recipient may get at most one extra
copy per such fault.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

from tests.proof.crashinfra import TimedSink

DEST = "example.test"
BAD = f"nobody@{DEST}"  # the smart host refuses it: the message bounces
OPEN_STATES = ("queued", "active", "retry", "suspended")
CRASH_ID = re.compile(rb"^X-Crash-Id: (\S+)\r?$", re.MULTILINE)

# Faults that can cut a delivery run after the smart host's 250 and before its record,
# so that the next run sends that recipient again: a killed delivery worker; PostgreSQL
# gone (the record cannot be written); Redis gone (the run's Redis calls fail after the
# send); the smart host dropping connections (it may have taken the message before the
# 250 was sent). A kill of the SMTP worker or beat, a FLUSHALL and a 421/451 cannot.
REPEATABLE = frozenset({"worker", "redis-restart", "pg-fast", "pg-immediate", "sink-refuse"})
# A copy is "next to" a fault if it reached the sink within this window around it.
BEFORE_FAULT, AFTER_FAULT = 3.0, 1.0


@dataclass(frozen=True)
class Accepted:
    crash_id: str
    queue_id: str
    recipients: tuple[str, ...]
    at: float  # monotonic time of the 250


@dataclass(frozen=True)
class Row:
    """A message as the database records it."""

    state: str
    last_error: str
    is_report: bool
    attempts: int


@dataclass
class Fault:
    kind: str
    threshold: int  # happens once this many messages of the phase were accepted
    down: float
    start: float = 0.0  # monotonic; start == end for an instant fault
    end: float = 0.0
    detail: str = ""
    explains: int = 0  # duplicates attributed to it

    @property
    def repeatable(self) -> bool:
        return self.kind in REPEATABLE


class SinkLedger:
    """Copies per (crash id, recipient) and NDRs per crash id, with the times they
    arrived; updated incrementally from the sink."""

    def __init__(self, sink: TimedSink) -> None:
        self.sink = sink
        self.seen = 0
        self.copies: dict[tuple[str, str], list[float]] = defaultdict(list)
        self.ndrs: dict[str, list[float]] = defaultdict(list)
        self.delays: Counter[str] = Counter()
        self.strays = 0  # messages naming no crash id (there should be none)

    def update(self) -> None:
        batch = self.sink.snapshot(self.seen)
        self.seen += len(batch)
        for at, message in batch:
            ids = [m.decode() for m in CRASH_ID.findall(message.data)]
            if not ids:
                self.strays += 1
            elif message.sender == "":  # a delivery report quoting the original headers
                for crash_id in ids:
                    if b"Action: failed" in message.data:
                        self.ndrs[crash_id].append(at)
                    else:
                        self.delays[crash_id] += 1
            else:
                for recipient in message.recipients:
                    self.copies[(ids[0], recipient.lower())].append(at)

    def missing(self, item: Accepted) -> list[str]:
        """What has not arrived: good recipients without a copy, and "NDR" if due."""
        gone = []
        for recipient in item.recipients:
            if recipient == BAD:
                if not self.ndrs.get(item.crash_id):
                    gone.append("NDR")
            elif not self.copies.get((item.crash_id, recipient)):
                gone.append(recipient)
        return gone


@dataclass
class PhaseReport:
    """Counts of one phase (see the module docstring). ``duplicated`` counts extra copies
    per recipient, ``unexplained`` those next to no fault, ``over`` recipients given more
    extra copies than faults around them."""

    accepted: int = 0
    delivered: int = 0
    bounced: int = 0
    lost: int = 0
    stuck: int = 0
    misrecorded: int = 0
    duplicated: int = 0
    unexplained: int = 0
    over: int = 0
    ndr_duplicated: int = 0
    ndr_repeats: list[str] = field(default_factory=list)
    delivered_without_250: int = 0
    attempts_failed: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    seconds_load: float = 0.0
    seconds_drain: float = 0.0
    drained: bool = False


@dataclass
class Evidence:
    """The inputs of one phase's audit."""

    prefix: str
    accepted: dict[str, Accepted]
    rows: dict[str, Row]
    queued_reports: set[str]  # crash ids whose NDR is still open in the queue
    ledger: SinkLedger
    faults: list[Fault]
    t0: float


def audit(ev: Evidence) -> tuple[PhaseReport, list[str]]:
    """Count one phase's outcome and list every problem found (empty: the phase holds)."""
    report = PhaseReport(accepted=len(ev.accepted))
    problems: list[str] = []
    for item in ev.accepted.values():
        _audit_message(ev, item, report, problems)
    mine = {crash_id for crash_id, _ in ev.ledger.copies if crash_id.startswith(ev.prefix)}
    report.delivered_without_250 = len(mine - set(ev.accepted))
    for (crash_id, recipient), times in sorted(ev.ledger.copies.items()):
        if crash_id in ev.accepted and len(times) > 1:
            _audit_duplicate(ev, crash_id, recipient, sorted(times), report, problems)
    for crash_id, times in sorted(ev.ledger.ndrs.items()):
        if crash_id in ev.accepted and len(times) > 1:
            report.ndr_duplicated += len(times) - 1
            report.ndr_repeats.append(
                f"the NDR for {crash_id} reached the sender {len(times)} times, at "
                + ", ".join(f"+{t - ev.t0:.1f}" for t in sorted(times))
                + " s (a run cut short after spooling it and before recording the bounce)"
            )
    return report, problems


def _audit_message(ev: Evidence, item: Accepted, report: PhaseReport, problems: list[str]) -> None:
    row = ev.rows.get(item.queue_id)
    bounce = BAD in item.recipients
    missing = ev.ledger.missing(item)
    said = (
        f"database: {row.state}, {row.attempts} attempt(s), last error {row.last_error[:100]!r}"
        if row
        else "database: no record"
    )
    name = f"{item.crash_id} (queue id {item.queue_id}, 250 at +{item.at - ev.t0:.1f} s)"
    if missing:
        held = (row is not None and row.state in OPEN_STATES) or (
            missing == ["NDR"] and item.crash_id in ev.queued_reports
        )
        if held:
            report.stuck += 1
            problems.append(f"STUCK {name}: still queued for {', '.join(missing)}; {said}")
        else:
            report.lost += 1
            problems.append(f"LOST {name}: {', '.join(missing)} never arrived; {said}")
        return
    if bounce:
        report.bounced += 1
    else:
        report.delivered += 1
    expected = "bounced" if bounce else "delivered"
    if row is None or row.state != expected:
        report.misrecorded += 1
        problems.append(f"MISRECORDED {name}: {expected} at the smart host; {said}")


def _audit_duplicate(
    ev: Evidence,
    crash_id: str,
    recipient: str,
    times: list[float],
    report: PhaseReport,
    problems: list[str],
) -> None:
    report.duplicated += len(times) - 1
    allowed: set[int] = set()
    explained = 0
    copies = ", ".join(f"+{t - ev.t0:.1f}" for t in times)
    for at in times[:-1]:  # each copy but the last was followed by a repeat
        near = [
            i
            for i, f in enumerate(ev.faults)
            if f.repeatable and f.start - BEFORE_FAULT <= at <= f.end + AFTER_FAULT
        ]
        if not near:
            report.unexplained += 1
            problems.append(
                f"DUPLICATE {crash_id} to {recipient}: copies at {copies} s; no fault that can "
                f"repeat a delivery from {BEFORE_FAULT:g} s before to {AFTER_FAULT:g} s after "
                f"the copy at +{at - ev.t0:.1f} s"
            )
            continue
        explained += 1
        ev.faults[near[0]].explains += 1
        allowed.update(near)
    if explained > len(allowed):
        report.over += 1
        problems.append(
            f"OVER-DUPLICATED {crash_id} to {recipient}: copies at {copies} s, {explained} "
            f"repeats next to {len(allowed)} fault(s): at most one per fault"
        )


@dataclass
class CrashReport:
    variant: str
    seed: int
    ok: bool
    seconds: float
    control: PhaseReport
    chaos: PhaseReport
    faults: list[dict[str, Any]]
    defects: list[str]
    notes: list[str]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def text(self, examples: int = 5) -> str:
        """The report for people: counts, the faults, and the defects by kind (the first
        ``examples`` of each kind in full)."""
        c, k = self.chaos, self.control
        lines = [
            f"crash run ({self.variant}), seed {self.seed}: {'PASSED' if self.ok else 'FAILED'} "
            f"in {self.seconds:.0f} s",
            f"  control (no faults): accepted {k.accepted}, delivered {k.delivered}, "
            f"bounced {k.bounced}, lost {k.lost}, stuck {k.stuck}, duplicated {k.duplicated}",
            f"  under faults:        accepted {c.accepted}, delivered {c.delivered}, "
            f"bounced {c.bounced}, lost {c.lost}, stuck {c.stuck}, duplicated {c.duplicated} "
            f"(next to no fault {c.unexplained}, over the limit {c.over}), "
            f"misrecorded {c.misrecorded}",
            f"  also: {c.delivered_without_250} delivered without a 250 seen by the client "
            f"(the SMTP worker killed after the spool write); {c.ndr_duplicated} NDR(s) sent "
            f"twice; {c.attempts_failed} client attempts failed; load {c.seconds_load:.0f} s, "
            f"drain {c.seconds_drain:.0f} s",
            "  faults:",
        ]
        for f in self.faults:
            explains = f"; explains {f['explains']} duplicate(s)" if f["explains"] else ""
            lines.append(
                f"    +{f['at']:6.1f} s  {f['kind']:<13} at {f['threshold']:>5} accepted: "
                f"{f['detail']}{explains}"
            )
        lines += [f"  note: {n}" for n in self.notes]
        lines += [f"  note: {n}" for n in self.control.ndr_repeats + self.chaos.ndr_repeats]
        kinds = Counter(d.split(" ", 1)[0] for d in self.defects)
        shown: Counter[str] = Counter()
        for defect in self.defects:
            kind = defect.split(" ", 1)[0]
            shown[kind] += 1
            if shown[kind] <= examples:
                lines.append(f"  DEFECT: {defect}")
            elif shown[kind] == examples + 1:
                lines.append(f"  ... {kinds[kind] - examples} more {kind} defect(s)")
        return "\n".join(lines)
