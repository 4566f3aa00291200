"""The worker's side of the contract (``smtpworker.core.contract``): what a running node
reports has exactly the keys and types of the TypedDicts the web side reads it with, and
the environment is read as the web side reads it."""

from __future__ import annotations

import asyncio
import smtplib
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from smtpworker.core import contract
from smtpworker.core.config import ServerConfig
from smtpworker.inbound.main import Member, MemberNode, encryption_key, parse_args
from smtpworker.inbound.watcher import Follower
from smtpworker.tests.factories import free_port, server, site
from smtpworker.tests.harness import LiveNode

ROOT = Path(__file__).resolve().parents[2]


def assert_shape(value: Any, hint: Any, path: str = "status") -> None:
    """``value`` is what ``hint`` (a TypedDict, list, dict, union or plain type) says:
    every required key, no key the TypedDict does not name, each value of its type."""
    origin = typing.get_origin(hint)
    if typing.is_typeddict(hint):
        assert isinstance(value, dict), path
        keys = set(value)
        assert hint.__required_keys__ <= keys, f"{path}: {hint.__required_keys__ - keys} missing"
        allowed = hint.__required_keys__ | hint.__optional_keys__
        assert keys <= allowed, f"{path}: {keys - allowed} not in {hint.__name__}"
        hints = typing.get_type_hints(hint)
        for key in keys:
            assert_shape(value[key], hints[key], f"{path}.{key}")
    elif origin is list:
        assert isinstance(value, list), path
        for i, item in enumerate(value):
            assert_shape(item, typing.get_args(hint)[0], f"{path}[{i}]")
    elif origin is dict:
        assert isinstance(value, dict), path
        key_type, value_type = typing.get_args(hint)
        for key, item in value.items():
            assert isinstance(key, key_type), path
            assert_shape(item, value_type, f"{path}[{key!r}]")
    elif origin is types.UnionType:
        assert any(_fits(value, arg) for arg in typing.get_args(hint)), f"{path}: {value!r}"
    elif hint is float:
        assert isinstance(value, int | float) and not isinstance(value, bool), path
    else:
        assert type(value) is hint, f"{path}: {value!r} is not {hint}"


def _fits(value: Any, hint: Any) -> bool:
    try:
        assert_shape(value, hint)
    except AssertionError:
        return False
    return True


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveNode]:
    node = LiveNode(tmp_path)
    yield node
    node.close()


def busy(live: LiveNode) -> tuple[ServerConfig, smtplib.SMTP]:
    """A node running two servers (one stopped), with one open session that has counted."""
    port = free_port()
    running = server("Relay", f"127.0.0.1:{port}")
    stopped = server("Idle", f"127.0.0.1:{free_port()}", id=2, state="stopped")
    live.apply(site(running, stopped))
    client = smtplib.SMTP("127.0.0.1", port, timeout=10)
    client.ehlo("client.example.test")
    return running, client


def test_a_running_node_reports_exactly_the_node_status_shape(live: LiveNode) -> None:
    _cfg, client = busy(live)
    try:
        status = live.run(_call(live.node.status))
    finally:
        client.quit()
    assert set(status) == contract.NodeStatus.__required_keys__  # no "process": one process
    assert_shape(status, contract.NodeStatus)
    assert set(status["servers"]) == {"Relay", "Idle"}
    relay = status["servers"]["Relay"]
    assert relay["listening"] and relay["sessions"] == 1 and relay["counters"]["connections"] == 1
    assert not status["servers"]["Idle"]["listening"]
    [session] = status["sessions"]
    assert set(session) == contract.SessionStatus.__required_keys__
    assert session["helo"] == "client.example.test"


def test_a_process_of_a_multi_process_node_adds_only_process(tmp_path: Path) -> None:
    live = LiveNode(tmp_path, name="multi.1")
    live.node = MemberNode(live.node.options, Member("multi", 1, 2))
    try:
        live.apply(site(server("Relay", f"127.0.0.1:{free_port()}")))
        status = live.run(_call(live.node.status))
    finally:
        live.close()
    assert set(status) == contract.NodeStatus.__required_keys__ | {"process"}
    assert_shape(status, contract.NodeStatus)
    assert status["process"]["node"] == "multi" and status["node"] == "multi.1"


def test_the_followers_report_is_a_node_report(live: LiveNode, tmp_path: Path) -> None:
    _cfg, client = busy(live)
    # status() reads no Redis: this URL is never contacted.
    follower = Follower(live.node, "redis://127.0.0.1:1/0", tmp_path / "c.json", mac_key=b"k")
    try:
        report = live.run(_call(follower.status))
    finally:
        client.quit()
        live.run(follower.close())
    assert set(report) == contract.NodeReport.__required_keys__
    assert_shape(report, contract.NodeReport)


async def _call(function: Any) -> Any:
    await asyncio.sleep(0)  # on the node's loop, as the control plane and reporter call it
    return function()


def test_the_shape_check_catches_a_key_too_many_or_missing() -> None:
    session = {
        "id": "a",
        "server": "S",
        "client_ip": "192.0.2.1",
        "client_port": 25,
        "since": 1.5,
        "helo": "",
        "user": None,
        "tls": False,
        "messages": 0,
        "bytes": 0,
    }
    assert_shape(session, contract.SessionStatus)
    with pytest.raises(AssertionError, match="not in SessionStatus"):
        assert_shape({**session, "extra": 1}, contract.SessionStatus)
    with pytest.raises(AssertionError, match="missing"):
        assert_shape({k: v for k, v in session.items() if k != "tls"}, contract.SessionStatus)
    with pytest.raises(AssertionError, match="client_port"):
        assert_shape({**session, "client_port": "25"}, contract.SessionStatus)


def test_names_on_the_wire_stay_what_running_nodes_use() -> None:
    # A rename here is a rolling-upgrade break between old and new nodes: make it on purpose.
    assert contract.CONFIG_CHANNEL == "mailadmin:config"
    assert contract.CONFIG_BODY_KEY == "mailadmin:config:body"
    assert contract.worker_key("mx.1") == "mailadmin:worker:mx.1"
    assert contract.control_hostname("mx.1") == "smtp@mx.1"
    assert [c.value for c in contract.Command] == [
        "smtp_reload",
        "smtp_status",
        "smtp_terminate",
        "smtp_ping",
    ]
    assert contract.delivery_queue("mx") == "delivery.mx"
    assert contract.delivery_queue("") == "celery"


def test_env_reads_name_or_name_file(tmp_path: Path) -> None:
    secret = tmp_path / "key"
    secret.write_text(" from-file \n")
    assert contract.env("K", "d", {"K": "plain"}) == "plain"
    assert contract.env("K", "d", {"K": "plain", "K_FILE": str(secret)}) == "from-file"
    assert contract.env("K", "d", {}) == "d"
    assert contract.env("K", "d", {"K": ""}) == ""
    with pytest.raises(contract.EnvFileError, match="K_FILE=.* cannot be read"):
        contract.env("K", "d", {"K_FILE": str(tmp_path / "missing")})
    assert contract.env_given("K", {"K_FILE": str(secret)})
    assert not contract.env_given("K", {"K": ""})


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"MAILADMIN_ENCRYPTION_KEY": "e", "SECRET_KEY": "s"}, ("MAILADMIN_ENCRYPTION_KEY", "e")),
        ({"SECRET_KEY": "s"}, ("SECRET_KEY", "s")),
        ({"MAILADMIN_ENCRYPTION_KEY": "", "SECRET_KEY": "s"}, ("SECRET_KEY", "s")),
        ({}, ("MAILADMIN_ENCRYPTION_KEY", "")),
    ],
)
def test_the_encryption_key_falls_back_to_secret_key(
    environ: dict[str, str], expected: tuple[str, str]
) -> None:
    assert contract.encryption_key_setting(lambda name: environ.get(name, "")) == expected


def test_the_worker_refuses_the_public_development_key(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (contract.ENCRYPTION_KEY_ENV, contract.SECRET_KEY_ENV):
        monkeypatch.delenv(f"{name}_FILE", raising=False)
    monkeypatch.delenv(contract.ENCRYPTION_KEY_ENV, raising=False)
    monkeypatch.setenv(contract.SECRET_KEY_ENV, contract.PUBLIC_DEVELOPMENT_KEY)
    with pytest.raises(SystemExit, match="SECRET_KEY is the public development key"):
        encryption_key()


def test_the_worker_keeps_its_data_in_the_checkouts_var_as_the_web_side_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("MAILADMIN_DATA_DIR", "MAILADMIN_MAILROOT"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(f"{name}_FILE", raising=False)
    args = parse_args(["--node", "n"])
    assert args.data_dir == ROOT / "var"  # mailadmin.settings: BASE_DIR / "var"
    assert args.mailroot == ROOT / "var" / "mailroot"
