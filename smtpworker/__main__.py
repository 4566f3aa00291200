"""``python -m smtpworker --node NAME``: run the SMTP virtual servers assigned to a node.

Configuration comes from Redis (``REDIS_URL``), falling back to the last good snapshot in
``$MAILADMIN_DATA_DIR/smtpworker-<node>.json``. Secrets are opened with
``MAILADMIN_ENCRYPTION_KEY`` (or ``SECRET_KEY``), the same value the web side uses.
SIGTERM or SIGINT: stop accepting, let open sessions finish (``--grace`` seconds), report
the node stopped, exit.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from smtpworker.auth import mock_key_for
from smtpworker.control import ControlPlane
from smtpworker.dnscheck import ReverseResolver
from smtpworker.runtime import Node, NodeOptions
from smtpworker.secretbox import SecretBox
from smtpworker.watcher import Follower

log = logging.getLogger("smtpworker")

DEV_KEY = "dev-insecure-mailadmin-secret-key-change-me"  # matches mailadmin.settings' default


def env(name: str, default: str = "") -> str:
    """``$name``, or the contents of the file named by ``$name_FILE`` (container secrets),
    as mailadmin.settings reads them."""
    file_name = os.environ.get(f"{name}_FILE")
    if file_name:
        try:
            return Path(file_name).read_text().strip()
        except OSError as exc:
            raise SystemExit(f"{name}_FILE={file_name!r} cannot be read: {exc}") from exc
    return os.environ.get(name, default)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    base = Path(__file__).resolve().parent.parent
    data_dir = Path(env("MAILADMIN_DATA_DIR") or base / "var")
    parser = argparse.ArgumentParser(prog="python -m smtpworker", description=__doc__)
    parser.add_argument(
        "--node", default=env("MAILADMIN_NODE") or socket.gethostname().split(".")[0]
    )
    parser.add_argument("--redis", default=env("REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--broker", default=env("CELERY_BROKER_URL") or None)
    parser.add_argument(
        "--mailroot",
        type=Path,
        default=Path(env("MAILADMIN_MAILROOT") or data_dir / "mailroot"),
    )
    parser.add_argument("--data-dir", type=Path, default=data_dir)
    parser.add_argument("--hostname", default=socket.getfqdn(), help="FQDN for servers without one")
    parser.add_argument(
        "--grace", type=float, default=10.0, help="seconds open sessions get at shutdown"
    )
    parser.add_argument(
        "--poll", type=float, default=1.0, help="seconds between config version checks"
    )
    parser.add_argument("--log-level", default=env("LOG_LEVEL", "INFO"))
    return parser.parse_args(argv)


def encryption_key() -> str:
    return env("MAILADMIN_ENCRYPTION_KEY") or env("SECRET_KEY") or DEV_KEY


async def serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    key = encryption_key()
    executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="smtp-io")
    node = Node(
        NodeOptions(
            name=args.node,
            mailroot=args.mailroot.resolve(),
            box=SecretBox(key),
            mock_key=mock_key_for(key),
            hostname=args.hostname,
            executor=executor,
            reverse_names=ReverseResolver().names,
        )
    )
    cache = args.data_dir / f"smtpworker-{args.node}.json"
    follower = Follower(node, args.redis, cache, poll_interval=args.poll)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await follower.start()
    control = ControlPlane(args.broker or args.redis, follower, loop)
    control.start()
    runner = asyncio.gather(follower.run(), node.pickup_loop())
    log.info("node %s running (config v%s)", args.node, node.site.version if node.site else 0)
    await stop.wait()
    log.info("node %s stopping: closing listeners, letting sessions finish", args.node)
    runner.cancel()
    control.stop()
    await node.close(grace=args.grace)
    await follower.publish_status(final=True)
    await follower.close()
    executor.shutdown(wait=True)
    log.info("node %s stopped", args.node)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # aiosmtpd logs every connection and command at INFO; our own logs say what matters.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
