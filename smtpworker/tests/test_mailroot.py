"""smtpworker.core.mailroot: one statement of where a server's mail files live."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from smtpworker.core.mailroot import server_layout
from smtpworker.tests.factories import free_port, server, site
from smtpworker.tests.harness import LiveNode


def test_a_server_without_directories_of_its_own_lives_under_the_mail_root() -> None:
    layout = server_layout("/srv/mailroot", "Relay", server("Relay"))
    assert layout.home == Path("/srv/mailroot/Relay")
    assert (layout.queue, layout.pickup, layout.drop, layout.badmail, layout.logs) == tuple(
        Path("/srv/mailroot/Relay") / name
        for name in ("Queue", "Pickup", "Drop", "Badmail", "LogFiles")
    )
    assert layout.mail_directories == (layout.queue, layout.pickup, layout.drop, layout.badmail)
    # A server the caller has no configuration for (deleted meanwhile): the same defaults.
    assert server_layout(Path("/srv/mailroot"), "Relay") == layout


def test_the_home_and_badmail_directories_are_the_servers_own() -> None:
    cfg = server("Relay", home_directory="/data/relay", messages={"badmail_directory": "/bad"})
    layout = server_layout("/srv/mailroot", "Relay", cfg)
    assert layout.home == Path("/data/relay")
    assert layout.queue == Path("/data/relay/Queue") and layout.drop == Path("/data/relay/Drop")
    assert layout.pickup == Path("/data/relay/Pickup")
    assert layout.logs == Path("/data/relay/LogFiles")
    assert layout.badmail == Path("/bad")
    assert layout.mail_directories[-1] == Path("/bad")


def test_another_servers_configuration_is_refused() -> None:
    with pytest.raises(ValueError, match="not that of 'Relay'"):
        server_layout("/srv/mailroot", "Relay", server("Corp"))


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveNode]:
    node = LiveNode(tmp_path / "mailroot")
    yield node
    node.close()


def test_the_worker_makes_and_uses_the_configured_directories(
    live: LiveNode, tmp_path: Path
) -> None:
    home, badmail = tmp_path / "homes" / "relay", tmp_path / "bad"
    cfg = server(
        "Relay",
        f"127.0.0.1:{free_port()}",
        home_directory=str(home),
        messages={"badmail_directory": str(badmail)},
    )
    live.apply(site(cfg))
    for directory in (home / "Queue", home / "Pickup", home / "Drop", badmail):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    assert not (home / "Badmail").exists() and not (tmp_path / "mailroot" / "Relay").exists()
    refused = home / "Pickup" / "junk.eml"
    refused.write_bytes(b"\x00\x01 not a message")
    old = time.time() - 5
    os.utime(refused, (old, old))
    live.run(live.node.pickup_once())
    assert sorted(os.listdir(badmail)) == ["junk.BAD", "junk.BDR"]
