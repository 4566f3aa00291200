"""How the relay and accept rates grow with processes and nodes on this machine (issue 7).

Run ``python bench/scale.py`` from the repository (with the venv active); ``--quick`` is a
smoke run of about a minute. It reuses the machinery of ``bench/relay.py`` (end to end: a
private Redis, a database, the sink, the epoll generator whose sessions stay open) and of
``bench/accept.py`` (accept only: one message per connection, durable spool, no delivery),
on loopback only, and stops everything it started by PID.

End to end, one site with two virtual servers, ``Bench`` assigned to node ``bench`` and
``Bench2`` to node ``bench2``, each on its own port and relaying to the same sink; then,
one configuration after another, each in fresh spool directories:

* (a) node ``bench``: one SMTP worker, one Celery worker (``--concurrency 2``), beat;
* (b) node ``bench``: one SMTP worker, two Celery workers (``--concurrency 2`` each);
* (c) nodes ``bench`` and ``bench2``: an SMTP worker each (``--node``), and for each its
  own Celery worker (``--concurrency 2``, ``MAILADMIN_NODE`` = the node, so it consumes
  ``delivery.<node>``); one beat for the site.

The generator's connections are dealt out in turn to the configuration's servers (5 and 5
of 10); messages are not dealt out in advance, so each server takes what it can. Besides
msg/s and CPU per process group (relay.py's), each run reads the shared services'
counters: Redis commands (``INFO commandstats``, less this script's own), and with
PostgreSQL the transaction ids assigned (one per writing transaction, cluster-wide) and
the WAL written.

Accept only (accept.py's method and generators): one node with one process, two nodes
with one process each (one server each), and one node with ``--processes 2``.

Options: ``--quick``, ``--json FILE``, ``--cells 1x10,1x50:2400``, ``--configs a,c``,
``--no-accept``, ``--work-dir``. ``DATABASE_URL`` naming PostgreSQL uses a throwaway
database on that server (several nodes need a database server; SQLite is the default, as
in relay.py). bench/README.md ("Scale") explains the output and keeps the latest table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bin"), str(ROOT / "bench")]

import accept  # noqa: E402 - bench/accept.py
import relay  # noqa: E402 - bench/relay.py
from relay import KB, POOL, Node  # noqa: E402

# Configurations end to end: label -> (node name, Celery workers) per node.
CONFIGS: dict[str, tuple[str, list[tuple[str, int]]]] = {
    "a": ("(a) 1 node, 1 Celery worker", [("bench", 1)]),
    "b": ("(b) 1 node, 2 Celery workers", [("bench", 2)]),
    "c": ("(c) 2 nodes, 1 Celery worker each", [("bench", 1), ("bench2", 1)]),
}
SERVERS = {"bench": "Bench", "bench2": "Bench2"}
CELLS = {(1 * KB, 10): 2400, (1 * KB, 50): 2400}
WARMUP = 300
CONCURRENCY = 2
ACCEPT_CELLS = ((1 * KB, 10), (1 * KB, 50))
# Columns of the CPU breakdown: label -> groups of relay.Product.groups() summed.
COLUMNS = {
    "SMTP worker(s)": ("SMTP worker",),
    "Celery consumer(s)": ("Celery worker, main (consumer)",),
    "Celery pool": (POOL,),
    "beat": ("Celery beat",),
    "Redis": ("Redis (broker, config, slots)",),
    "PostgreSQL": (relay.PG_GROUP,),
}


@dataclass
class Row:
    config: str
    kind: str  # "relay" (end to end) or "accept"
    size: int
    sessions: int
    rate: float
    runs: list[float]
    cpu_ms: float  # the product's CPU per message
    groups: dict[str, float]  # COLUMNS label -> ms per message
    all_ms: float  # every process measured (product, Redis, PostgreSQL, sink, generator)
    accept_rate: float | None = None
    per_task: float | None = None
    redis_calls: float | None = None  # per message
    pg_xacts: float | None = None
    wal_bytes: float | None = None
    split: list[int] | None = None
    foreign: float = 0.0
    baseline: float | None = None

    @property
    def per_baseline(self) -> float | None:
        return self.rate / self.baseline if self.baseline else None


def relay_row(label: str, cell: relay.Cell) -> Row:
    run = cell.median_run()
    per_msg = {n: (u + s) / cell.count * 1000 for n, (u, s) in run.cpu.items()}
    counters = {k: v / cell.count for k, v in run.counters.items()}
    return Row(
        config=label,
        kind="relay",
        size=cell.size,
        sessions=cell.sessions,
        rate=cell.median("rate"),
        runs=[r.rate for r in cell.runs],
        cpu_ms=cell.product_ms(run),
        groups={
            col: sum(per_msg.get(g, 0.0) for g in gs)
            for col, gs in COLUMNS.items()
            if any(g in per_msg for g in gs)
        },
        all_ms=sum(per_msg.values()),
        accept_rate=cell.median("accept_rate"),
        per_task=cell.count / max(1, relay.relay_tasks(run)),
        redis_calls=counters.get("redis_calls"),
        pg_xacts=counters.get("pg_xids"),
        wal_bytes=counters.get("wal_bytes"),
        split=run.split,
        foreign=max(r.foreign for r in cell.runs),
    )


def run_config(
    key: str,
    setup: dict[str, Any],
    sink: relay.SinkProcess,
    gen: relay.Generator,
    app: Any,
    cells: dict[tuple[int, int], int],
    repeats: int,
    quiet: accept.Quiet,
) -> list[Row]:
    label, spec = CONFIGS[key]
    ports = setup["ports"]
    nodes = [Node(name, SERVERS[name], ports[name], workers) for name, workers in spec]
    spool = setup["work"] / f"spool-{key}"  # fresh inodes: see accept.spread_subdirectories
    spool.mkdir()
    product = relay.Product(
        setup["env"],
        setup["work"],
        nodes,
        setup["redis_url"],
        setup["redis_pid"],
        CONCURRENCY,
        postgres=setup["db_url"].startswith("postgres"),
        db_url=setup["db_url"],
        spool_base=spool,
    )
    rows = []
    try:
        product.start()
        print(f"  {label}: started", file=sys.stderr)
        for (size, sessions), count in cells.items():
            cell = relay.measure(product, sink, gen, app, size, sessions, count, repeats, quiet)
            rows.append(relay_row(label, cell))
        relay.wait_drained(product)
    finally:
        product.stop()
    return rows


def end_to_end(
    args: argparse.Namespace,
    work: Path,
    cells: dict[tuple[int, int], int],
    repeats: int,
    quiet: accept.Quiet,
) -> tuple[list[Row], str, str]:
    """The end-to-end rows, the database's description, and the final check."""
    from celery import Celery

    rows: list[Row] = []
    sink = relay.SinkProcess(work)
    gen = relay.Generator()
    try:
        with (
            relay.bench_redis(work) as (redis_url, redis_pid),
            relay.bench_database(work) as (db_url, db),
        ):
            env = relay.product_env(work, db_url, redis_url, MAILADMIN_NODE="bench")
            (work / "data").mkdir()
            ports = {name: relay.free_port() for name in SERVERS}
            site = [Node(name, server, ports[name]) for name, server in SERVERS.items()]
            admin = relay.Product(env, work, site, redis_url, redis_pid)
            admin.run("manage.py", "migrate", "--noinput", timeout=300)
            doc = work / "site.json"
            doc.write_text(json.dumps(relay.site_document(site, sink.port), indent=2))
            admin.run("manage.py", "config", "import", str(doc))
            admin.run(
                "-c",
                "import django; django.setup(); "
                "from mailadmin.services.config.versions import config_republish; "
                "print(config_republish())",
            )
            setup = {
                "env": env,
                "work": work,
                "ports": ports,
                "redis_url": redis_url,
                "redis_pid": redis_pid,
                "db_url": db_url,
            }
            app = Celery("bench-scale", broker=redis_url, set_as_current=False)
            try:
                for key in args.configs.split(","):
                    rows += run_config(key, setup, sink, gen, app, cells, repeats, quiet)
            finally:
                app.close()
            states = admin.run(
                "-c",
                "import django, json; django.setup(); "
                "from collections import Counter; "
                "from mailadmin.models import Message; "
                "print(json.dumps(Counter(Message.objects.values_list('state', flat=True))))",
            ).strip()
            at_sink = sink.total()
            check = (
                f"the generator had {relay.SENT[0]} messages accepted; the database has them "
                f"as {json.loads(states)}; the sink received {at_sink}"
                + (f" ({at_sink - relay.SENT[0]} more)" if at_sink != relay.SENT[0] else "")
            )
    finally:
        gen.stop()
        sink.stop()
    return rows, db, check


def accept_only(work: Path, quiet: accept.Quiet, cells: list[tuple[int, int]]) -> list[Row]:
    # label -> (nodes, processes per node)
    starters = [
        ("accept: 1 node, 1 process", 1, 1),
        ("accept: 2 nodes, 1 process each", 2, 1),
        ("accept: 1 node, --processes 2", 1, 2),
    ]
    rows = []
    gen = accept.Generators(2)
    try:
        with accept.bench_redis(work) as redis_url:
            for label, nodes, processes in starters:
                if nodes > 1:
                    target = accept.start_nodes(redis_url, work, nodes)
                else:
                    target = accept.start_product(redis_url, work, processes)
                try:
                    for size, sessions in cells:
                        cell = accept.measure(target, gen, size, sessions, quiet)
                        print(
                            f"  {label}: {size // KB} KB x {sessions}: {cell.rate:.0f} msg/s, "
                            f"{cell.cpu_ms:.2f} ms CPU/msg, other programs {cell.foreign:.2f}",
                            file=sys.stderr,
                        )
                        rows.append(
                            Row(
                                config=label,
                                kind="accept",
                                size=size,
                                sessions=sessions,
                                rate=cell.rate,
                                runs=cell.rates,
                                cpu_ms=cell.cpu_ms,
                                groups={"SMTP worker(s)": cell.cpu_ms},
                                all_ms=cell.cpu_ms + cell.gen_cpu_ms,
                                foreign=cell.foreign,
                            )
                        )
                finally:
                    target.stop()
    finally:
        gen.close()
    return rows


def set_baselines(rows: list[Row]) -> None:
    """Each row against the first configuration of its kind, same cell."""
    first: dict[tuple[str, int, int], float] = {}
    for row in rows:
        key = (row.kind, row.size, row.sessions)
        first.setdefault(key, row.rate)
        row.baseline = first[key]


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def table(rows: list[Row]) -> str:
    head = (
        "| configuration | cell | msg/s | runs | ratio to (a) / to 1 node "
        "| accepted by the SMTP workers msg/s | product CPU ms/msg | "
        + " | ".join(f"{c} ms/msg" for c in COLUMNS)
        + " | cores busy (all measured) | Redis commands/msg | PostgreSQL write xacts/msg "
        "| WAL bytes/msg | messages per relay task |"
    )
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in rows:
        mark = "*" if r.foreign > relay.FOREIGN_LIMIT else ""
        groups = [fmt(r.groups.get(c)) if c in r.groups else "-" for c in COLUMNS]
        cells = [
            r.config,
            f"{r.size // KB} KB x {r.sessions}",
            f"{r.rate:,.0f}{mark}",
            ", ".join(f"{x:.0f}" for x in r.runs),
            fmt(r.per_baseline),
            fmt(r.accept_rate, 0),
            fmt(r.cpu_ms),
            *groups,
            fmt(r.rate * r.all_ms / 1000),
            fmt(r.redis_calls, 1),
            fmt(r.pg_xacts),
            fmt(r.wal_bytes, 0),
            fmt(r.per_task, 1),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary(rows: list[Row], *, quick: bool) -> dict[str, Any]:
    """The table as data, relay.py's shape plus the configuration and the ratio to the
    first configuration of the same kind and cell."""
    cells = []
    for r in rows:
        cells.append(
            {
                "config": r.config,
                "kind": r.kind,
                "size_kb": r.size // KB,
                "sessions": r.sessions,
                "rate": round(r.rate, 1),
                "cpu_ms": round(r.cpu_ms, 3),
                "per_baseline": None if r.per_baseline is None else round(r.per_baseline, 3),
                "cpu_ms_by_group": {k: round(v, 3) for k, v in r.groups.items()},
                "redis_calls_per_msg": None if r.redis_calls is None else round(r.redis_calls, 2),
                "pg_write_xacts_per_msg": None if r.pg_xacts is None else round(r.pg_xacts, 3),
                "wal_bytes_per_msg": None if r.wal_bytes is None else round(r.wal_bytes),
            }
        )
    return {"benchmark": "scale", "quick": quick, "cells": cells}


def parse_cells(spec: str) -> dict[tuple[int, int], int]:
    cells = {}
    for part in spec.split(","):
        shape, _, messages = part.partition(":")
        kb, _, sessions = shape.partition("x")
        key = (int(kb) * KB, int(sessions))
        cells[key] = int(messages) if messages else CELLS.get(key, 2400)
    return cells


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run, about a minute")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--cells", help="end-to-end cells as KBxSESSIONS[:MESSAGES], e.g. 1x10")
    parser.add_argument("--configs", default="a,b,c", help="end-to-end configurations (a,b,c)")
    parser.add_argument("--no-accept", action="store_true", help="skip the accept-only rows")
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=ROOT / "var" / "bench",
        help="where the run's temporary directory goes (removed at the end)",
    )
    args = parser.parse_args()
    if any(key not in CONFIGS for key in args.configs.split(",")):
        parser.error(f"--configs: choose among {','.join(CONFIGS)}")

    cells = dict(CELLS)
    accept_cells = list(ACCEPT_CELLS)
    repeats = relay.REPEATS
    relay.WARMUP[1 * KB] = WARMUP
    if args.quick:
        cells = {(1 * KB, 10): 400}
        accept_cells = [(1 * KB, 10)]
        relay.WARMUP[1 * KB] = 100
        repeats = accept.REPEATS = 1
        relay.RETRIES[0] = accept.RETRIES = 0
        accept.MESSAGES[1 * KB], accept.WARMUP[1 * KB] = 400, 200
    if args.cells:
        cells = parse_cells(args.cells)
        for size, _ in cells:
            relay.WARMUP.setdefault(size, WARMUP)

    started = time.monotonic()
    facts = accept.machine_facts()
    base = args.work_dir.resolve()
    base.mkdir(parents=True, exist_ok=True)
    accept.spread_subdirectories(base)
    work = Path(tempfile.mkdtemp(prefix="scale-", dir=base))
    accept.spread_subdirectories(work)  # each configuration's spool in fresh block groups
    fs_kind, fs_device = accept.filesystem_of(work)
    create_us = accept.create_cost(work)
    quiet = accept.Quiet(5.0 if args.quick else 120.0)
    try:
        rows, db, check = end_to_end(args, work, cells, repeats, quiet)
        if not args.no_accept:
            rows += accept_only(work, quiet, accept_cells)
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    set_baselines(rows)
    elapsed = time.monotonic() - started

    print(
        "Scale: end to end (relay.py's method: msg/s from the first MAIL FROM to the N-th "
        "message at the sink; sessions stay open) and accept only (accept.py's method: one "
        f"message per connection, no delivery); median of {repeats} run(s) per cell."
    )
    print(
        f"Machine: {facts['cpus']} CPUs, {facts['cpu']}; Python {facts['python']}; Linux "
        f"{facts['kernel']}. Database: {db}. Spool on {fs_kind}"
        f"{accept.journal_of(fs_kind, fs_device)} (creating a file: {create_us:.0f} us)."
    )
    print(
        "Messages per run: "
        + ", ".join(f"{s // KB} KB x {n}: {c}" for (s, n), c in cells.items())
        + f" end to end; {accept.MESSAGES[1 * KB]} accept only. Celery workers: "
        f"--concurrency {CONCURRENCY} each."
    )
    print()
    print(table(rows))
    print()
    splits = [f"{r.config} {r.size // KB}x{r.sessions}: {r.split}" for r in rows if r.split]
    print("Messages accepted per server in the median run: " + "; ".join(splits))
    print(
        "Ratio: end-to-end rows to (a), accept rows to one node with one process, same cell. "
        "Product CPU: SMTP worker(s), Celery workers (consumers and pools) and beat; Redis, "
        "PostgreSQL (this database's backends, shared processes, ended backends), sink and "
        "generator are not in it. Cores busy: rate x CPU per message of every measured process (the machine has "
        f"{facts['cpus']}). Redis commands: INFO commandstats, all clients (Celery's "
        "inspect replies included). PostgreSQL write transactions: transaction ids "
        "assigned, cluster-wide."
    )
    worst = max((r.foreign for r in rows), default=0.0)
    print(
        f"Other programs used at most {worst:.2f} cores during kept runs (rows marked * kept "
        f"a run above {relay.FOREIGN_LIMIT}). Check: {check}. Benchmark time: {elapsed:.0f} s."
    )
    if args.json:
        args.json.write_text(json.dumps(summary(rows, quick=args.quick), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
