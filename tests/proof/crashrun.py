"""The crash run of proof suite 5: a steady SMTP load, faults at random moments, an audit.

:func:`crash_run` takes an :class:`Environment` (private PostgreSQL and Redis, a sink as
the smart host, the product's SMTP worker, Celery worker and beat, all started for the
run) and a :class:`Plan`, and returns a :class:`~tests.proof.crashaudit.CrashReport`:

1. **Control**: ``plan.control`` messages with no fault, drained completely. Nothing may
   be lost and nothing duplicated.
2. **Chaos**: ``plan.messages`` more under a steady load while the plan's faults happen,
   each once the load has reached a random point (seeded; the plan is printed): SIGKILL
   and restart of the SMTP worker, the Celery worker and beat; Redis emptied (FLUSHALL,
   or killed and restarted without persistence); PostgreSQL stopped (fast or immediate)
   and started again; the smart host answering 421 or 451, or refusing connections.
3. **Audit** (:mod:`tests.proof.crashaudit`) after a bounded wait for the queue to
   drain. A message counts as accepted only if its client read the 250 after DATA.

The retry schedule is shortened through the product's own settings, nothing is mocked:
the server's retry intervals are 1, 1, 2, 2 "minutes" and MAILADMIN_DELIVERY_MINUTE is
one second (Stack also shortens the sweep and the delivery lease).
"""

from __future__ import annotations

import contextlib
import json
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import redis

from mailadmin.tests.stack import ROOT, Stack
from smtpworker.tests.factories import free_port
from tests.proof.crashaudit import (
    BAD,
    CRASH_ID,
    OPEN_STATES,
    CrashReport,
    Evidence,
    Fault,
    PhaseReport,
    Row,
    SinkLedger,
    audit,
)
from tests.proof.crashinfra import PrivatePostgres, PrivateRedis, Product, TimedSink, wait_greeting
from tests.proof.crashload import Load

SERVER = "Crash"
MINUTE = 1.0  # seconds per "minute" of the delivery schedule (MAILADMIN_DELIVERY_MINUTE)
RETRY_MINUTES = [1, 1, 2, 2]  # the server's retry schedule, in those minutes

# fault kind -> range of seconds it lasts (process down, Redis/PostgreSQL down, sink off).
FAULTS: dict[str, tuple[float, float]] = {
    "smtp": (0.0, 1.5),
    "worker": (0.0, 2.0),
    "beat": (0.0, 2.0),
    "redis-flush": (0.0, 0.0),
    "redis-restart": (0.5, 3.0),
    "pg-fast": (0.5, 3.0),
    "pg-immediate": (0.5, 3.0),
    "sink-451": (2.0, 6.0),
    "sink-421": (2.0, 6.0),
    "sink-refuse": (2.0, 6.0),
}


@dataclass(frozen=True)
class Plan:
    """What one crash run does. ``faults`` are kinds of :data:`FAULTS`; ``seed`` decides
    their order, the load level at which each happens, and how long each lasts."""

    variant: str
    messages: int
    control: int
    rate: float  # messages per second offered by all sessions together
    sessions: int
    faults: tuple[str, ...]
    seed: int
    load_timeout: float = 600.0  # for both phases' loads together
    drain_timeout: float = 240.0  # for each phase's drain


def plan_faults(plan: Plan) -> list[Fault]:
    rng = random.Random(plan.seed)
    kinds = list(plan.faults)
    rng.shuffle(kinds)
    points = sorted(rng.uniform(0.05, 0.85) for _ in kinds)
    return [
        Fault(kind, max(1, int(point * plan.messages)), round(rng.uniform(*FAULTS[kind]), 2))
        for kind, point in zip(kinds, points, strict=True)
    ]


def site_document(port: int, sink_port: int) -> dict[str, Any]:
    """One virtual server relaying everything from loopback to the sink, retrying fast."""
    return {
        "servers": [
            {
                "name": SERVER,
                "state": "started",
                "bindings": [f"127.0.0.1:{port}"],
                "fqdn": "relay.crash.test",
                "default_domain": "crash.local",
                "authentication": {"anonymous": True},
                "relay": {"mode": "only_list", "list": ["127.0.0.0/8"]},
                "messages": {"max_messages_per_connection": None, "max_session_size_kb": None},
                "delivery": {
                    "smart_host": f"[127.0.0.1]:{sink_port}",
                    "retry_minutes": RETRY_MINUTES,
                    # Longer than any run: no delay notices, no expiry; bounces are 550s.
                    "delay_notification_minutes": 10080,
                    "expiration_minutes": 10080,
                },
            }
        ],
        "users": [],
    }


class Environment:
    """Everything a crash run needs, started on entry and stopped on exit (also when
    entering fails half-way), each part by the PID it was started with."""

    def __init__(self, work: Path, say: Callable[[str], None]) -> None:
        self.work = work
        self.say = say
        self._exit = contextlib.ExitStack()

    def __enter__(self) -> Environment:
        try:
            self._start()
        except BaseException:
            self._exit.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._exit.close()

    def _start(self) -> None:
        t = time.monotonic()
        self.pg = PrivatePostgres()
        self._exit.callback(self.pg.close)
        self.pg.create()
        self.redis = PrivateRedis(self.work / "redis")
        self._exit.callback(self.redis.stop)
        self.redis.start()
        self.sink = TimedSink()
        self.sink.rcpt_replies[BAD] = "550 5.1.1 No such user here"
        self._exit.callback(self.sink.stop)
        self.sink.start()
        logs = self.work / "logs"
        logs.mkdir()
        stack = Stack(
            redis_url=self.redis.url, mailroot=self.work / "mailroot", log_dir=logs, minute=MINUTE
        )
        stack.env.update(
            {
                "DATABASE_URL": self.pg.url(),
                "REDIS_URL": self.redis.url,
                "CELERY_BROKER_URL": self.redis.url,
            }
        )
        self.product = Product(stack)
        self._exit.callback(self.product.stop)
        self.address = ("127.0.0.1", free_port())
        self._manage("manage.py", "migrate", "--noinput")
        doc = self.work / "site.json"
        doc.write_text(json.dumps(site_document(self.address[1], self.sink.port), indent=2))
        self._manage("manage.py", "config", "import", str(doc))
        self._manage(
            "-c",
            "import django; django.setup(); "
            "from mailadmin.services.config.versions import config_republish; config_republish()",
        )
        for role in ("smtp", "worker", "beat"):
            self.product.start(role)
        if not wait_greeting(self.address, 60):
            raise RuntimeError(
                f"the SMTP worker does not answer:\n{self.product.last_words('smtp')}"
            )
        self.say(
            f"environment ready in {time.monotonic() - t:.1f} s: PostgreSQL :{self.pg.port} "
            f"(pid {self.pg.pid}), Redis :{self.redis.port}, sink :{self.sink.port}, "
            f"SMTP :{self.address[1]}; logs in {logs}"
        )

    def _manage(self, *argv: str) -> None:
        done = subprocess.run(
            [sys.executable, *argv],
            cwd=ROOT,
            env=self.product.stack.env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if done.returncode:
            raise RuntimeError(f"{' '.join(argv[:3])} failed:\n{done.stdout}\n{done.stderr}")

    @property
    def queue_dir(self) -> Path:
        return self.work / "mailroot" / SERVER / "Queue"

    def db_messages(self) -> dict[str, Row] | None:
        """Every message the database records, by queue id; None if PostgreSQL is away."""
        import psycopg

        try:
            with psycopg.connect(**self.pg.connect_kwargs()) as conn:
                rows = conn.execute(
                    "SELECT queue_id, state, last_error, is_report, attempts FROM mailadmin_message"
                ).fetchall()
        except psycopg.Error:
            return None
        return {r[0]: Row(r[1], r[2], r[3], r[4]) for r in rows}

    def queued_reports(self, rows: dict[str, Row]) -> set[str]:
        """Crash ids named by delivery reports still open in the queue (read from their
        spool files: the database does not link a report to its message)."""
        named: set[str] = set()
        for queue_id, row in rows.items():
            if row.is_report and row.state in OPEN_STATES:
                with contextlib.suppress(OSError):
                    data = (self.queue_dir / f"{queue_id}.eml").read_bytes()
                    named.update(m.decode() for m in CRASH_ID.findall(data))
        return named

    def diagnosis(self, rows: dict[str, Row]) -> str:
        """Where the queue stands: messages by state, the open ones by attempts and last
        error, and the Celery lists in Redis (tasks waiting; taken, not acknowledged)."""
        opened = [row for row in rows.values() if row.state in OPEN_STATES]
        states = Counter(row.state for row in rows.values())
        attempts = Counter(row.attempts for row in opened)
        errors = Counter((row.last_error or "(none)")[:100] for row in opened)
        client = redis.Redis.from_url(self.redis.url, socket_timeout=5)
        try:
            lists = {
                key.decode(): client.llen(key)
                for key in client.scan_iter(count=1000)
                if client.type(key) == b"list"
            }
            lists["unacked (hash)"] = client.hlen("unacked")
        except redis.RedisError as exc:
            lists = {f"Redis unreadable: {exc}": 0}
        finally:
            client.close()
        return (
            f"messages by state {dict(states)}; open ones by attempts {dict(attempts)}, "
            f"by last error {dict(errors.most_common(4))}; Redis lists {lists}"
        )


class Runner:
    """Runs the phases of one plan against an environment and gathers the defects (each
    a line starting with its kind: LOST, STUCK, DUPLICATE, EXITED...) and notes."""

    def __init__(self, env: Environment, plan: Plan) -> None:
        self.env, self.plan = env, plan
        self.t0 = time.monotonic()
        self.ledger = SinkLedger(env.sink)
        self.defects: list[str] = []
        self.notes: list[str] = []

    def phase(self, prefix: str, target: int, faults: list[Fault]) -> PhaseReport:
        """Send ``target`` messages while ``faults`` happen, drain, audit."""
        load = Load(
            self.env.address,
            prefix=prefix,
            target=target,
            rate=self.plan.rate,
            sessions=self.plan.sessions,
        ).start()
        try:
            self._chaos(load, faults)
            while not load.wait(0.5) and time.monotonic() < self.t0 + self.plan.load_timeout:
                self._check_processes()
            if not load.done:
                self.defects.append(
                    f"LOAD phase {prefix}: {load.count} of {target} accepted within "
                    f"{self.plan.load_timeout:.0f} s; client failures {dict(load.failures)}"
                )
        finally:
            load.stop()
        self.env.say(
            f"phase {prefix}: {load.count} accepted in {load.finished - load.started:.1f} s "
            f"({sum(load.failures.values())} client attempts failed); draining"
        )
        drain_start = time.monotonic()
        rows, drained = self._drain(load)
        report, problems = audit(
            Evidence(
                prefix=prefix,
                accepted=load.accepted,
                rows=rows,
                queued_reports=self.env.queued_reports(rows),
                ledger=self.ledger,
                faults=faults,
                t0=self.t0,
            )
        )
        report.seconds_load = load.finished - load.started
        report.seconds_drain = time.monotonic() - drain_start
        report.drained = drained
        report.attempts_failed = sum(load.failures.values())
        report.failures = dict(load.failures.most_common())
        if not drained:
            self.defects.append(
                f"UNDRAINED phase {prefix}: the queue did not empty within "
                f"{self.plan.drain_timeout:.0f} s: {self.env.diagnosis(rows)}"
            )
        self.defects += problems
        self._check_processes()
        return report

    def _drain(self, load: Load) -> tuple[dict[str, Row], bool]:
        """Wait until no message is open and every accepted one arrived (True), or the
        drain time-out passed (False); returns the last database snapshot too."""
        deadline = time.monotonic() + self.plan.drain_timeout
        rows: dict[str, Row] = {}
        while True:
            self.ledger.update()
            fresh = self.env.db_messages()
            if fresh is not None:
                rows = fresh
                settled = not any(row.state in OPEN_STATES for row in rows.values()) and all(
                    item.queue_id in rows and not self.ledger.missing(item)
                    for item in load.accepted.values()
                )
                if settled:
                    time.sleep(1.0)  # a late repeat would show now
                    self.ledger.update()
                    return rows, True
            if time.monotonic() > deadline:
                return rows, False
            self._check_processes()
            time.sleep(1.0)

    def _chaos(self, load: Load, faults: list[Fault]) -> None:
        deadline = self.t0 + self.plan.load_timeout
        for fault in faults:
            while load.count < fault.threshold and time.monotonic() < deadline:
                self._check_processes()
                time.sleep(0.05)
            if time.monotonic() >= deadline:
                self.defects.append(f"LOAD stalled: fault {fault.kind} never happened")
                continue
            self._apply(fault)
            self.env.say(f"+{fault.start - self.t0:.1f} s {fault.kind}: {fault.detail}")
            self._check_processes()

    def _apply(self, fault: Fault) -> None:
        env, kind = self.env, fault.kind
        fault.start = time.monotonic()
        if kind in ("smtp", "worker", "beat"):
            pid = env.product.kill(kind)
            fault.end = fault.start
            time.sleep(fault.down)
            env.product.start(kind)
            fault.detail = f"SIGKILL pid {pid}, started again after {fault.down:.1f} s"
        elif kind == "redis-flush":
            env.redis.flushall()
            fault.end = time.monotonic()
            fault.detail = "FLUSHALL"
        elif kind == "redis-restart":
            env.redis.kill()
            time.sleep(fault.down)
            env.redis.start()
            fault.end = time.monotonic()
            fault.detail = f"SIGKILL, started again empty after {fault.down:.1f} s"
        elif kind.startswith("pg-"):
            mode = kind.removeprefix("pg-")
            env.pg.stop(mode)
            time.sleep(fault.down)
            env.pg.start()
            fault.end = time.monotonic()
            fault.detail = f"pg_ctl stop -m {mode}, started again after {fault.down:.1f} s"
        else:
            mode = kind.removeprefix("sink-")
            env.sink.stage = "mail" if mode == "421" else "data"
            env.sink.mode = mode
            time.sleep(fault.down)
            env.sink.mode = "accept"
            env.sink.stage = "data"
            fault.end = time.monotonic()
            fault.detail = f"smart host {mode} for {fault.down:.1f} s"

    def _check_processes(self) -> None:
        """A product process that ended without being killed is a crash: report it with
        what its log said last, and start it again so the run goes on."""
        product = self.env.product
        for role, code in product.exited().items():
            words = product.last_words(role).replace("\n", " | ")
            self.defects.append(
                f"EXITED the {role} process ended by itself (exit code {code}), noticed at "
                f"+{time.monotonic() - self.t0:.1f} s; its log ({product.log_path(role)}) "
                f"ends with: {words}"
            )
            product.current.pop(role).stop()
            product.start(role)
            self.env.say(f"the {role} process had exited by itself; started again")

    def spool_leftovers(self, rows: dict[str, Row]) -> None:
        finished = {q for q, row in rows.items() if row.state not in OPEN_STATES}
        queue = self.env.queue_dir
        names = {p.stem for p in queue.glob("*.env")} if queue.is_dir() else set()
        left = names & finished
        if left:
            self.notes.append(
                f"{len(left)} finished message(s) still have spool files (removal happens "
                f"after the final record; a kill in between leaves them): "
                f"{', '.join(sorted(left)[:5])}"
            )


def crash_run(env: Environment, plan: Plan) -> CrashReport:
    """Run the control phase, then the faults under load, and audit both (see the module
    docstring). Bounded by ``plan.load_timeout`` plus twice ``plan.drain_timeout``."""
    runner = Runner(env, plan)
    faults = plan_faults(plan)
    env.say(
        f"crash run {plan.variant}, seed {plan.seed}: {plan.control} control + {plan.messages} "
        f"messages at {plan.rate:g}/s over {plan.sessions} sessions; faults: "
        + ", ".join(f"{f.kind}@{f.threshold}({f.down:g}s)" for f in faults)
    )
    control = runner.phase("k", plan.control, [])
    chaos = runner.phase("c", plan.messages, faults)
    runner.spool_leftovers(env.db_messages() or {})
    if runner.ledger.strays:
        runner.defects.append(f"STRAY {runner.ledger.strays} message(s) at the sink name none")
    if control.ndr_duplicated:
        runner.defects.append(f"DUPLICATE NDR without faults: {control.ndr_repeats}")
    if runner.ledger.delays:
        runner.notes.append(f"{len(runner.ledger.delays)} delay notice(s) arrived")
    return CrashReport(
        variant=plan.variant,
        seed=plan.seed,
        ok=not runner.defects,
        seconds=time.monotonic() - runner.t0,
        control=control,
        chaos=chaos,
        faults=[
            {**asdict(f), "at": round(f.start - runner.t0, 2), "start": None, "end": None}
            for f in faults
        ],
        defects=runner.defects,
        notes=runner.notes,
    )
