from __future__ import annotations

import errno
import json
import os
import random
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from smtpworker.core.spool import Envelope, MessageNotFound, Spool, SpoolError, new_queue_id
from smtpworker.tests import spool_crash_child as child

ROOT = Path(__file__).resolve().parents[2]
NOW = 1_750_000_000.0


def make_envelope(data: bytes, **changes: object) -> Envelope:
    fields: dict[str, object] = {
        "queue_id": new_queue_id(),
        "server": "Default SMTP Virtual Server",
        "sender": "alice@example.com",
        "recipients": ("bob@example.org", "carol@example.net"),
        "received_at": 1_750_000_000.123456,
        "client_ip": "192.0.2.10",
        "client_helo": "client.example.com",
        "auth_user": "alice",
        "size": len(data),
        "smtputf8": False,
        "body_8bit": False,
    }
    fields.update(changes)
    return Envelope(**fields)  # type: ignore[arg-type]


def store(spool: Spool, data: bytes = b"Subject: hi\r\n\r\nhello\r\n", **changes: object) -> str:
    envelope = make_envelope(data, **changes)
    spool.store(envelope, data)
    return envelope.queue_id


def all_files(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


# --- queue ids ---------------------------------------------------------------------------


def test_queue_ids_are_unique() -> None:
    ids = {new_queue_id() for _ in range(100_000)}
    assert len(ids) == 100_000


def test_queue_ids_are_filename_safe() -> None:
    for queue_id in (new_queue_id(), new_queue_id(0.0), new_queue_id(4_000_000_000.0)):
        assert len(queue_id) == 24
        assert queue_id.isascii() and queue_id.isalnum() and queue_id.isupper()


def test_queue_ids_sort_by_time_to_the_microsecond() -> None:
    times = [NOW + i / 1_000_000 for i in range(1000)] + [NOW + 86_400 * 365 * 50]
    made = [new_queue_id(t) for t in times]
    assert sorted(made) == made
    assert len({queue_id[:14] for queue_id in made}) == len(times)


# --- envelope ----------------------------------------------------------------------------


def test_envelope_json_round_trips_exactly() -> None:
    envelope = make_envelope(
        b"x",
        sender="",
        recipients=("ü@bücher.example", "x@y.test"),
        auth_user=None,
        smtputf8=True,
        client_helo="\udcff odd helo",  # undecodable input kept as a surrogate escape
    )
    text = envelope.to_json()
    assert ", " not in text and '": ' not in text  # compact
    assert json.loads(text)["v"] == 1
    assert Envelope.from_json(text) == envelope
    assert Envelope.from_json(text.encode()) == envelope


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"v": 2}, "schema version"),
        ({"size": True}, "size"),
        ({"size": "12"}, "size"),
        ({"recipients": "bob@example.org"}, "recipients"),
        ({"recipients": ["ok@x.test", 7]}, "recipients"),
        ({"received_at": "yesterday"}, "received_at"),
        ({"smtputf8": 0}, "smtputf8"),
        ({"auth_user": 5}, "auth_user"),
        ({"sender": None}, "sender"),
        ({"extra": 1}, "fields differ"),
        ({"queue_id": "../../etc/passwd"}, "invalid queue id"),
        ({"recipients": []}, "at least one recipient"),
        ({"size": -1}, "negative"),
    ],
)
def test_envelope_json_is_validated(change: dict[str, object], message: str) -> None:
    doc = json.loads(make_envelope(b"x").to_json())
    doc.update(change)
    with pytest.raises(ValueError, match=message):
        Envelope.from_json(json.dumps(doc))


def test_envelope_json_needs_every_field() -> None:
    doc = json.loads(make_envelope(b"x").to_json())
    del doc["client_ip"]
    with pytest.raises(ValueError, match="fields differ: \\['client_ip'\\]"):
        Envelope.from_json(json.dumps(doc))
    for text in ("[]", "not json", "NaN"):
        with pytest.raises(ValueError):
            Envelope.from_json(text)


# --- store and load ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"Subject: plain\r\n\r\nline one\r\nline two\r\n.\r\n",
        "Subject: =?utf-8?q?x?=\r\n\r\nÄrger mit Umlauten und 漢字\r\n".encode(),
        bytes(range(1, 256)) * 300,  # every byte but NUL, lone CR and LF included
        b"",
    ],
)
def test_it_round_trips_messages(tmp_path: Path, data: bytes) -> None:
    spool = Spool(tmp_path / "Queue")
    envelope = make_envelope(data, body_8bit=True)
    spool.store(envelope, data)
    assert spool.load(envelope.queue_id) == (envelope, data)
    assert spool.envelope(envelope.queue_id) == envelope
    assert spool.message_path(envelope.queue_id).read_bytes() == data
    assert Spool(tmp_path / "Queue").load(envelope.queue_id) == (envelope, data)


def test_it_lists_messages_oldest_first(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "Queue")
    assert spool.ids() == [] and len(spool) == 0
    made = [new_queue_id(NOW + seconds) for seconds in (30, 10, 20, 40)]
    for queue_id in made:
        store(spool, queue_id=queue_id)
    assert spool.ids() == sorted(made)
    assert spool.ids()[0] == made[1]
    assert len(spool) == spool.count() == 4


def test_it_creates_private_files_and_directories(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "site" / "Queue")
    assert (tmp_path / "site" / "Queue" / "tmp").is_dir()
    queue_id = store(spool)
    assert all_files(spool.directory) == [f"{queue_id}.eml", f"{queue_id}.env"]
    for path in spool.directory.iterdir():
        mode = path.stat().st_mode & 0o777
        assert mode == (0o700 if path.is_dir() else 0o600), path


def test_it_refuses_a_duplicate_id_and_keeps_the_original(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "Queue")
    original = make_envelope(b"original")
    spool.store(original, b"original")
    with pytest.raises(SpoolError, match=f"queue id {original.queue_id} already exists"):
        spool.store(make_envelope(b"impostor", queue_id=original.queue_id), b"impostor")
    assert spool.load(original.queue_id) == (original, b"original")
    assert spool.ids() == [original.queue_id]
    assert all_files(spool.directory) == [f"{original.queue_id}.eml", f"{original.queue_id}.env"]


def test_a_store_cut_short_does_not_block_storing_the_same_id_again(tmp_path: Path) -> None:
    # Found by the crash run: a worker killed after writing a delivery report's tmp files,
    # before linking them, left tmp/<id>.eml behind; the retry of that report (its id
    # derives from its message's) was refused as "already exists" and the NDR never went.
    spool = Spool(tmp_path / "Queue")
    envelope = make_envelope(b"report")
    for suffix, content in ((".eml", b"report"), (".env", b"{}")):
        (spool.tmp / f"{envelope.queue_id}{suffix}").write_bytes(content)
    spool.store(envelope, b"report")
    assert spool.load(envelope.queue_id) == (envelope, b"report")
    with pytest.raises(SpoolError, match="already exists"):
        spool.store(envelope, b"report")  # a committed id is still never taken twice


def test_it_refuses_a_size_that_does_not_match_the_data(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "Queue")
    with pytest.raises(ValueError, match="envelope size 3 != 4 bytes"):
        spool.store(make_envelope(b"abc"), b"abcd")
    assert all_files(spool.directory) == []


def test_it_refuses_ids_that_are_not_file_names(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "Queue")
    for bad in ("../Queue/X", "abc", "", "A/B", "A" * 65):
        with pytest.raises(ValueError, match="invalid queue id"):
            spool.load(bad)
        with pytest.raises(ValueError, match="invalid queue id"):
            spool.remove(bad)


def test_load_reports_missing_and_damaged_messages(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "Queue")
    with pytest.raises(MessageNotFound):
        spool.load(new_queue_id())
    queue_id = store(spool, b"0123456789")
    spool.message_path(queue_id).write_bytes(b"01234")
    with pytest.raises(ValueError, match="5 bytes, envelope says 10"):
        spool.load(queue_id)
    other = store(spool)
    os.replace(spool.directory / f"{other}.env", spool.directory / f"{queue_id}.env")
    with pytest.raises(ValueError, match=f"envelope belongs to {other}"):
        spool.envelope(queue_id)


def test_threads_store_concurrently(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "Queue")
    made: list[str] = []
    lock = threading.Lock()

    def work(n: int) -> None:
        for i in range(25):
            queue_id = store(spool, f"thread {n} message {i}\r\n".encode())
            with lock:
                made.append(queue_id)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert spool.ids() == sorted(made) and len(made) == 200
    assert {spool.load(queue_id)[1] for queue_id in made} == {
        f"thread {n} message {i}\r\n".encode() for n in range(8) for i in range(25)
    }


# --- durability --------------------------------------------------------------------------


def test_store_makes_each_file_durable_before_committing_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A kill -9 cannot show a missing fsync (the page cache survives it); a power cut
    # would. So this checks the order of the calls that matter against the contract.
    spool = Spool(tmp_path / "Queue")
    envelope = make_envelope(b"data")
    events: list[tuple[str, str]] = []
    real_fsync, real_link = os.fsync, os.link

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def link(src: str, dst: str, *, dst_dir_fd: int, **kwargs: Any) -> None:
        events.append(("link", os.path.join(os.readlink(f"/proc/self/fd/{dst_dir_fd}"), dst)))
        real_link(src, dst, dst_dir_fd=dst_dir_fd, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "link", link)
    spool.store(envelope, b"data")
    queue, queue_id = str(spool.directory.resolve()), envelope.queue_id
    tmp_eml, tmp_env = events[0][1], events[1][1]
    assert tmp_eml.startswith(f"{queue}/tmp/{queue_id}.") and tmp_eml.endswith(".eml")
    assert tmp_env == tmp_eml.removesuffix(".eml") + ".env"
    assert events == [
        ("fsync", tmp_eml),
        ("fsync", tmp_env),
        ("link", f"{queue}/{queue_id}.eml"),
        ("link", f"{queue}/{queue_id}.env"),  # the commit
        ("fsync", queue),  # makes both new names durable
    ]


def fail_on_call(real: object, call: int, error: int) -> object:
    calls = 0

    def fake(*args: object, **kwargs: object) -> object:
        nonlocal calls
        calls += 1
        if calls == call:
            raise OSError(error, os.strerror(error))
        return real(*args, **kwargs)  # type: ignore[operator]

    return fake


@pytest.mark.parametrize(
    ("function", "call", "error", "message"),
    [
        ("write", 1, errno.ENOSPC, "No space left on device"),  # the .eml
        ("write", 2, errno.ENOSPC, "No space left on device"),  # the .env
        ("fsync", 1, errno.EIO, "Input/output error"),
        ("fsync", 2, errno.EIO, "Input/output error"),
        ("link", 1, errno.EDQUOT, "Disk quota exceeded"),
        ("link", 2, errno.ENOSPC, "No space left on device"),  # the commit itself
        ("unlink", 1, errno.EACCES, "Permission denied"),  # after the commit
        ("fsync", 3, errno.EIO, "Input/output error"),  # the directory
        ("open", 1, errno.EMFILE, "Too many open files"),  # Queue/ itself
        ("open", 2, errno.EMFILE, "Too many open files"),  # its tmp/
        ("open", 3, errno.EACCES, "Permission denied"),  # the .eml
        ("open", 4, errno.EMFILE, "Too many open files"),  # the .env
    ],
)
def test_a_failed_store_leaves_nothing_behind(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    function: str,
    call: int,
    error: int,
    message: str,
) -> None:
    spool = Spool(tmp_path / "Queue")
    envelope = make_envelope(b"data")
    with monkeypatch.context() as patch:
        patch.setattr(os, function, fail_on_call(getattr(os, function), call, error))
        with pytest.raises(SpoolError, match=f"cannot spool {envelope.queue_id}: {message}"):
            spool.store(envelope, b"data")
    assert spool.ids() == [] and len(spool) == 0
    assert all_files(spool.directory) == []
    spool.store(envelope, b"data")  # the same id works once the disk recovers
    assert spool.load(envelope.queue_id) == (envelope, b"data")


# --- remove and recover ------------------------------------------------------------------


def test_remove_is_idempotent(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "Queue")
    kept, gone = store(spool), store(spool)
    spool.remove(gone)
    spool.remove(gone)
    spool.remove(new_queue_id())
    assert spool.ids() == [kept]
    with pytest.raises(MessageNotFound):
        spool.load(gone)
    assert all_files(spool.directory) == [f"{kept}.eml", f"{kept}.env"]


def age(path: Path, seconds: float) -> None:
    os.utime(path, (NOW - seconds, NOW - seconds))


def test_recover_removes_old_leftovers_only(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "Queue")
    committed = store(spool)
    for name in (f"{committed}.env", f"{committed}.eml"):
        age(spool.directory / name, 86_400)
    old, young = new_queue_id(NOW - 7200), new_queue_id(NOW - 60)
    for queue_id, seconds in ((old, 7200), (young, 60)):
        for path in (
            spool.tmp / f"{queue_id}.eml",
            spool.tmp / f"{queue_id}.env",
            spool.directory / f"{queue_id}.eml",  # crashed between the two links
        ):
            path.write_bytes(b"partial")
            age(path, seconds)
    (spool.directory / "README").write_text("not ours")
    age(spool.directory / "README", 86_400)

    removed = spool.recover(now=NOW)

    assert removed == [f"tmp/{old}.eml", f"tmp/{old}.env", f"{old}.eml"]
    assert spool.ids() == [committed] and spool.load(committed)
    assert all_files(spool.directory) == sorted(
        [
            f"{committed}.env",
            f"{committed}.eml",
            "README",
            f"{young}.eml",
            f"tmp/{young}.eml",
            f"tmp/{young}.env",
        ]
    )
    assert spool.recover(now=NOW) == []
    assert spool.recover(older_than=0) == [f"tmp/{young}.eml", f"tmp/{young}.env", f"{young}.eml"]
    assert spool.ids() == [committed]


# --- a real kill -9 ----------------------------------------------------------------------


def read_ids(proc: subprocess.Popen[bytes], want: int, deadline: float) -> bytes:
    """Return what the child printed once it has printed ``want`` lines."""
    assert proc.stdout is not None
    fd, output = proc.stdout.fileno(), b""
    while (lines := output.count(b"\n")) < want:
        timeout = deadline - time.monotonic()
        assert timeout > 0, f"child too slow: {lines} of {want} ids"
        if select.select([fd], [], [], timeout)[0]:
            chunk = os.read(fd, 65536)
            assert chunk, f"child exited early: {proc.wait()}"
            output += chunk
    return output


def run_and_kill(spool_dir: Path, rng: random.Random) -> set[str]:
    """Run the child, SIGKILL it mid-stream; return every id it acknowledged."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "smtpworker.tests.spool_crash_child", str(spool_dir), "100000"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        bufsize=0,
    )
    try:
        output = read_ids(proc, rng.randint(20, 200), time.monotonic() + 10)
        time.sleep(rng.uniform(0, 0.004))  # land anywhere in the next store()
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=5) == -signal.SIGKILL
        assert proc.stdout is not None
        output += proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()
    # A line without its newline was never completely "sent", so it acknowledges nothing.
    return {line.decode("ascii") for line in output.split(b"\n")[:-1]}


def test_kill_9_loses_no_acknowledged_message(tmp_path: Path) -> None:
    rng = random.Random(20250101)
    spool_dir = tmp_path / "Queue"
    acknowledged: set[str] = set()
    for crash in range(1, 6):
        acknowledged |= run_and_kill(spool_dir, rng)
        spool = Spool(spool_dir)
        committed = set(spool.ids())
        assert acknowledged <= committed
        # Each crash may add one message stored but not yet acknowledged, no more.
        assert len(committed - acknowledged) <= crash
        for queue_id in committed:  # and none of them half-written
            data = child.payload(queue_id)
            assert spool.load(queue_id) == (child.envelope(queue_id, data), data)

        spool.recover(older_than=0)

        assert set(spool.ids()) == committed
        assert list(spool.tmp.iterdir()) == []
        names = {path.name for path in spool_dir.iterdir()}
        assert names == {"tmp"} | {f"{q}.env" for q in committed} | {f"{q}.eml" for q in committed}


# --- links -------------------------------------------------------------------------------


@pytest.mark.parametrize("linked", ["Queue", "Queue/tmp"])
def test_a_queue_directory_swapped_for_a_link_is_refused(tmp_path: Path, linked: str) -> None:
    # Whoever may write to the server's home must not redirect acknowledged mail elsewhere.
    spool = Spool(tmp_path / "Queue")
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "tmp").mkdir(parents=True)  # shaped like a queue, to take the message
    (tmp_path / linked).rename(tmp_path / "moved")
    (tmp_path / linked).symlink_to(elsewhere)
    envelope = make_envelope(b"data")
    with pytest.raises(SpoolError, match=f"cannot spool {envelope.queue_id}: .*link"):
        spool.store(envelope, b"data")
    assert all_files(elsewhere) == []


def test_a_link_planted_under_a_queue_name_is_never_written_nor_read(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "Queue")
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"precious")
    envelope = make_envelope(b"data")
    (spool.directory / f"{envelope.queue_id}.env").symlink_to(secret)
    with pytest.raises(SpoolError):  # a queue name is taken, even by a link
        spool.store(envelope, b"data")
    assert secret.read_bytes() == b"precious"
    (spool.directory / f"{envelope.queue_id}.env").unlink()
    # tmp/ names are the store's own, random: one planted under the queue id is not used.
    (spool.tmp / f"{envelope.queue_id}.eml").symlink_to(secret)
    spool.store(envelope, b"data")
    assert secret.read_bytes() == b"precious"
    assert spool.load(envelope.queue_id) == (envelope, b"data")
    other = make_envelope(b"precious")
    (spool.directory / f"{other.queue_id}.env").write_text(other.to_json())
    (spool.directory / f"{other.queue_id}.eml").symlink_to(secret)
    with pytest.raises(ValueError, match="symbolic link"):
        spool.load(other.queue_id)


def test_a_new_queue_and_its_new_parents_are_private(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "home" / "Queue")
    for path in (tmp_path / "home", spool.directory, spool.tmp):
        assert path.stat().st_mode & 0o777 == 0o700, path
