"""Mail acceptance under an AUTH flood: an unrelated client's accept rate, idle vs flooded.

Run ``python bench/authflood.py`` from the repository (venv active; about three minutes;
``--seconds`` and ``--rounds`` shorten it). Everything runs on loopback and is stopped by PID:

* a private Redis (``bin/devredis.py``), or database 14 of ``REDIS_URL`` when it answers;
* the product's SMTP node in a child process, built as ``python -m smtpworker`` builds it
  (the 8-thread spool pool, the AUTH brake on Redis, the password pool), with one virtual
  server taking AUTH (basic) and anonymous mail for its local domain, and one user whose
  password hash has the product's 600,000 PBKDF2 rounds;
* a flood process: ``--parallel`` (200) sessions that send ``AUTH PLAIN`` with wrong
  passwords, again and again, from one address or each from its own (127.1.x.y);
* the probe, an unrelated client on 127.0.0.10: ``--probes`` sessions in parallel, each
  sending one message per connection (connect, EHLO, MAIL, RCPT, DATA, QUIT).

Each scenario starts a fresh node and measures the probe's accepted messages per second
for ``--seconds`` with no flood (idle), then again while the flood runs, ``--rounds``
times in turn; it prints the medians and their ratio.
The last scenario is the arrangement before issue 10.4 (guesses on the spool's thread pool,
no caps, no brake) for contrast. The target: flooded within 20 % of idle.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import os
import resource
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bin")]

HOST, PROBE_SOURCE = "127.0.0.2", "127.0.0.10"
DOMAIN = "bench.test"
REDIS_DB = 14
MESSAGE = b"Subject: probe\r\n\r\nHello.\r\n.\r\n"


@dataclass(frozen=True)
class Scenario:
    name: str
    sources: int  # distinct flood addresses
    brake: bool = True
    legacy: bool = False  # guesses on the spool pool, uncapped (before issue 10.4)


SCENARIOS = (
    Scenario("200 guessers, 1 address, defaults", 1),
    Scenario("200 guessers, 200 addresses, defaults", 200),
    Scenario("200 guessers, 200 addresses, brake off (pool caps only)", 200, brake=False),
    Scenario("as before 10.4: spool pool, no caps, no brake", 200, brake=False, legacy=True),
)


# --- the node (child process) ---------------------------------------------------------------


def site_body(port: int, brake: bool) -> str:
    """One server (the test factory's IIS defaults) taking AUTH and anonymous local mail."""
    from smtpworker.core import credentials
    from smtpworker.core.config import UserConfig, dump_site
    from smtpworker.tests.factories import server, site

    cfg = server(
        "Bench",  # its default local domain is bench.test
        f"{HOST}:{port}",
        auth={"basic": True},
        messages={"max_messages_per_connection": None},
        client_connection_limit=None,  # the 200 guessers of one address all get in
        auth_brake={"enabled": brake},
    )
    account = UserConfig("alice", True, credentials.hash_password("right"), "", "", ())
    return dump_site(site(cfg, users=(account,)))


async def serve(site_file: Path, mailroot: Path, redis_url: str, legacy: bool) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from smtpworker.core.config import load_site
    from smtpworker.core.secretbox import SecretBox
    from smtpworker.inbound.authbrake import AuthBrake
    from smtpworker.inbound.authpool import VerifyPool
    from smtpworker.inbound.runtime import Node, NodeOptions

    # The node's warning per new block (one per flood address) would bury the table.
    logging.getLogger("smtpworker").setLevel(logging.ERROR)
    executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="smtp-io")
    verifier = VerifyPool()
    if legacy:
        verifier = VerifyPool(per_client=10**9, total=10**9)
        verifier.executor = executor
    key = secrets.token_urlsafe(32)
    options = NodeOptions(
        name="bench",
        mailroot=mailroot,
        box=SecretBox(key),
        mock_key=b"bench",
        hostname="bench.example.test",
        executor=executor,
        brake=AuthBrake(redis_url),
        verifier=verifier,
    )
    node = Node(options)
    await node.apply(load_site(site_file.read_text()))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await node.close(grace=1)
    executor.shutdown(wait=False, cancel_futures=True)


# --- the flood (child process) --------------------------------------------------------------


async def guesser(port: int, source: str, until: float, counts: Counter[str]) -> None:
    wrong = "AUTH PLAIN " + base64.b64encode(b"\0alice\0wrong").decode() + "\r\n"
    while time.monotonic() < until:
        try:
            reader, writer = await asyncio.open_connection(HOST, port, local_addr=(source, 0))
        except OSError:
            counts["connect failed"] += 1
            await asyncio.sleep(0.05)
            continue
        try:
            await reader.readline()
            writer.write(b"EHLO flood.test\r\n")
            while not (await reader.readline())[3:4] == b" ":
                pass
            while time.monotonic() < until:
                writer.write(wrong.encode())
                line = await asyncio.wait_for(reader.readline(), max(0.1, until - time.monotonic()))
                if not line:
                    break
                counts[line[:3].decode()] += 1
        except (OSError, TimeoutError):
            pass
        finally:
            writer.close()


async def flood(port: int, parallel: int, sources: int, seconds: float) -> dict[str, int]:
    counts: Counter[str] = Counter()
    until = time.monotonic() + seconds
    addresses = [f"127.1.{(i + 1) >> 8}.{(i + 1) & 255}" for i in range(sources)]
    await asyncio.gather(
        *(guesser(port, addresses[i % sources], until, counts) for i in range(parallel))
    )
    return dict(counts)


# --- the probe (threads of this process) ----------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def probe_once(port: int) -> bool:
    with socket.create_connection((HOST, port), 10, source_address=(PROBE_SOURCE, 0)) as sock:
        file = sock.makefile("rb")

        def reply() -> bytes:
            while True:
                line = file.readline()
                if not line or line[3:4] != b"-":
                    return line

        if not reply().startswith(b"220"):
            return False
        for command in (b"EHLO probe.test", b"MAIL FROM:<p@probe.test>", b"RCPT TO:<b@bench.test>"):
            sock.sendall(command + b"\r\n")
            if not reply().startswith(b"250"):
                return False
        sock.sendall(b"DATA\r\n")
        if not reply().startswith(b"354"):
            return False
        sock.sendall(MESSAGE)
        ok = reply().startswith(b"250")
        sock.sendall(b"QUIT\r\n")
        return ok


def probe(port: int, sessions: int, seconds: float) -> float:
    """Messages per second the unrelated client got accepted."""
    accepted = [0] * sessions
    until = time.monotonic() + seconds

    def run(index: int) -> None:
        while time.monotonic() < until:
            with contextlib.suppress(OSError):
                accepted[index] += probe_once(port)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(sessions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(accepted) / seconds


# --- the run --------------------------------------------------------------------------------


def run_scenario(
    scenario: Scenario, args: argparse.Namespace, redis_url: str, work: Path
) -> dict[str, Any]:
    from smtpworker.tests.factories import free_port

    port = free_port(HOST)
    site_file = work / "site.json"
    site_file.write_text(site_body(port, scenario.brake))
    mailroot = Path(tempfile.mkdtemp(dir=work))
    me = [sys.executable, __file__]
    node = subprocess.Popen(
        [*me, "--serve", str(site_file), str(mailroot), redis_url]
        + (["--legacy"] if scenario.legacy else []),
        stdout=subprocess.PIPE,
    )
    idle: list[float] = []
    flooded: list[float] = []
    replies: Counter[str] = Counter()
    cpu = {"idle": 0.0, "flooded": 0.0, "generator": 0.0}
    try:
        assert node.stdout is not None and node.stdout.readline().strip() == b"ready"
        # Idle and flooded in turns, so that the other load of a shared machine falls on
        # both alike; the medians are compared.
        for _round in range(args.rounds):
            began = cpu_seconds(node.pid)
            idle.append(probe(port, args.probes, args.seconds))
            cpu["idle"] += cpu_seconds(node.pid) - began
            flood_seconds = args.seconds + 2
            guessers = subprocess.Popen(
                [*me, "--flood", str(port), str(args.parallel), str(scenario.sources)]
                + [str(flood_seconds)],
                stdout=subprocess.PIPE,
            )
            time.sleep(1.0)  # let the flood build up
            began = cpu_seconds(node.pid)
            flooded.append(probe(port, args.probes, args.seconds))
            cpu["flooded"] += cpu_seconds(node.pid) - began
            out, _ = guessers.communicate(timeout=flood_seconds + 30)
            report = json.loads(out)
            replies.update(report["replies"])
            cpu["generator"] += report["cpu"] / flood_seconds * args.seconds
    finally:
        node.send_signal(signal.SIGTERM)
        try:
            node.wait(15)
        except subprocess.TimeoutExpired:
            node.kill()
            node.wait()
    spent = args.rounds * args.seconds
    return {
        "cpu": {k: v / spent for k, v in cpu.items()},
        "idle": statistics.median(idle),
        "flooded": statistics.median(flooded),
        "replies": dict(replies),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="each measurement")
    parser.add_argument("--rounds", type=int, default=3, help="idle/flooded pairs")
    parser.add_argument("--parallel", type=int, default=200, help="guessing sessions")
    parser.add_argument("--probes", type=int, default=4, help="probe sessions in parallel")
    parser.add_argument("--serve", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--legacy", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--flood", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        site_file, mailroot, redis_url = args.serve
        asyncio.run(serve(Path(site_file), Path(mailroot), redis_url, args.legacy))
        return
    if args.flood:
        port, parallel, sources, seconds = args.flood
        counts = asyncio.run(flood(int(port), int(parallel), int(sources), float(seconds)))
        usage = resource.getrusage(resource.RUSAGE_SELF)
        print(json.dumps({"replies": counts, "cpu": usage.ru_utime + usage.ru_stime}))
        return
    run(args)


def run(args: argparse.Namespace) -> None:
    import redis
    from devredis import ensure_redis, redis_reachable

    env_url = os.environ.get("REDIS_URL", "")
    with tempfile.TemporaryDirectory(prefix="authflood-") as tmp:
        work = Path(tmp)
        given = env_url if env_url and redis_reachable(env_url) else None
        with ensure_redis(given, work / "redis") as url:
            url = url.rsplit("/", 1)[0] + f"/{REDIS_DB}"
            client = redis.Redis.from_url(url)
            rows = []
            for scenario in SCENARIOS:
                client.flushdb()
                rows.append((scenario, run_scenario(scenario, args, url, work)))
            client.flushdb()
            client.close()
    print_table(rows, args)


def print_table(rows: list[tuple[Scenario, dict[str, Any]]], args: argparse.Namespace) -> None:
    print(
        f"\nAUTH flood: {args.parallel} parallel wrong-password sessions; probe: {args.probes}"
        f" sessions from {PROBE_SOURCE}, one message per connection; medians of {args.rounds}"
        f" turns of {args.seconds:g} s idle and {args.seconds:g} s flooded"
        f" (cpus: {os.cpu_count()}, load average at the end: {os.getloadavg()[0]:.1f})\n"
    )
    head = (
        f"{'scenario':<56} {'idle msg/s':>10} {'flooded':>9} {'ratio':>6}"
        f" {'node cpu idle/flooded':>22} {'flooder cpu':>11}  AUTH replies"
    )
    print(head)
    print("-" * (len(head) + 24))
    for scenario, result in rows:
        ratio = result["flooded"] / result["idle"] if result["idle"] else 0.0
        replies = ", ".join(f"{k} x{v}" for k, v in sorted(result["replies"].items()))
        cpu = result["cpu"]
        print(
            f"{scenario.name:<56} {result['idle']:>10.1f} {result['flooded']:>9.1f}"
            f" {ratio:>6.2f} {cpu['idle']:>10.0%} / {cpu['flooded']:<9.0%}"
            f" {cpu['generator']:>11.0%}  {replies}"
        )
    print(
        "\nTarget: ratio >= 0.80 (the flooded accept rate within 20 % of idle). CPU: of one"
        " core, the node's process (all threads) and the flood generator's, while probing."
    )


if __name__ == "__main__":
    main()
