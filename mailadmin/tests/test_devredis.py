"""bin/devredis.py: the private Redis of ``make run`` and ``make test``, started for real."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bin"))

from devredis import ensure_redis, redis_reachable  # noqa: E402

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")

UNREACHABLE = "redis://127.0.0.1:1/0"


def redis_children() -> list[int]:
    """PIDs of redis-server processes whose parent is this test process."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited while we looked
        # The command name is in parentheses and may itself contain spaces or parentheses.
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 1 :].split()[1])
        if ppid == os.getpid() and name.startswith("redis-server"):
            found.append(int(entry.name))
    return found


def test_it_reports_an_unreachable_or_bad_url_as_unreachable():
    assert redis_reachable(UNREACHABLE) is False
    assert redis_reachable("not-a-redis-url") is False


@pytest.mark.parametrize("url", [None, UNREACHABLE])
def test_it_starts_a_private_server_and_stops_it_on_exit(url, tmp_path):
    assert redis_children() == []

    with ensure_redis(url, tmp_path) as private_url:
        assert private_url.startswith("redis://127.0.0.1:")
        assert private_url != url
        assert redis_reachable(private_url)
        assert len(redis_children()) == 1

    # Waited for, so not even a zombie is left, and nothing answers on its port.
    assert redis_children() == []
    assert not redis_reachable(private_url)


def test_it_passes_a_reachable_url_through_without_starting_anything(tmp_path):
    with ensure_redis(None, tmp_path / "private") as reachable:
        started = redis_children()

        with ensure_redis(reachable, tmp_path / "second") as url:
            assert url == reachable
            assert redis_children() == started

        # Leaving the inner context must not stop a server it did not start.
        assert redis_reachable(reachable)
    assert not (tmp_path / "second").exists()
