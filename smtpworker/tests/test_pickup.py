"""The Pickup directory: envelope sources, normalisation, Badmail, claims and crashes."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path

import pytest

from smtpworker.core.spool import Envelope, Spool, new_queue_id
from smtpworker.inbound.pickup import STALE_CLAIM_AGE, PickupResult, process_pickup

SERVER = "Default SMTP Virtual Server"
NOW = 1_750_000_000.0
OLD = NOW - 3600  # mtime of a file that has long finished being written


class Box:
    """A virtual server's home directory with a real spool, and a recording enqueue."""

    def __init__(self, root: Path) -> None:
        self.pickup = root / "Pickup"
        self.badmail = root / "Badmail"
        self.pickup.mkdir()
        self.badmail.mkdir()
        self.spool = Spool(root / "Queue")
        self.enqueued: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def enqueue(self, queue_id: str, server: str) -> None:
        with self.lock:
            self.enqueued.append((queue_id, server))

    def drop(self, name: str, data: bytes, mtime: float = OLD) -> Path:
        path = self.pickup / name
        path.write_bytes(data)
        os.utime(path, (mtime, mtime))
        return path

    def run(self, **options: object) -> PickupResult:
        kwargs: dict[str, object] = {
            "server": SERVER,
            "enqueue": self.enqueue,
            "max_message_size": 2_048 * 1024,
            "now": NOW,
            "hostname": "mail.example.com",
        }
        kwargs.update(options)
        return process_pickup(self.pickup, self.badmail, self.spool, **kwargs)  # type: ignore[arg-type]

    def only_message(self) -> tuple[Envelope, bytes]:
        ids = self.spool.ids()
        assert len(ids) == 1
        return self.spool.load(ids[0])

    def pickup_names(self) -> list[str]:
        return sorted(os.listdir(self.pickup))


@pytest.fixture
def box(tmp_path: Path) -> Box:
    return Box(tmp_path)


def split_received(data: bytes) -> tuple[bytes, bytes]:
    """Our Received field (with its continuation lines) and the rest of the stored message."""
    assert data.startswith(b"Received: from pickup ")
    end = data.index(b"\r\n") + 2
    while data[end : end + 1] == b"\t":
        end = data.index(b"\r\n", end) + 2
    return data[:end], data[end:]


# --- envelopes ----------------------------------------------------------------------------


def test_the_iis_drop_format_gives_the_envelope_and_its_lines_are_removed(box: Box) -> None:
    box.drop(
        "iis.eml",
        b"x-sender: alice@Example.COM\n"
        b"X-Receiver: <bob@example.org>\n"
        b"x-receiver: carol@EXAMPLE.net\n"
        b"x-receiver: bob@example.org\n"
        b"From: Someone Else <other@example.com>\n"
        b"To: nobody@example.com\n"
        b"Subject: hello\n"
        b"\n"
        b"body\n",
    )
    result = box.run()

    envelope, data = box.only_message()
    assert result == PickupResult(queued=(envelope.queue_id,), bad=())
    assert box.enqueued == [(envelope.queue_id, SERVER)]
    assert envelope.sender == "alice@example.com"
    assert envelope.recipients == ("bob@example.org", "carol@example.net")
    assert (envelope.server, envelope.received_at, envelope.size) == (SERVER, NOW, len(data))
    assert (envelope.client_ip, envelope.client_helo, envelope.auth_user) == (
        "127.0.0.1",
        "pickup",
        None,
    )
    assert not envelope.smtputf8 and not envelope.body_8bit
    received, message = split_received(data)
    assert f"id {envelope.queue_id};".encode() in received
    assert b"by mail.example.com (mailadmin Default SMTP Virtual Server)" in received
    assert message == (
        b"From: Someone Else <other@example.com>\r\n"
        b"To: nobody@example.com\r\n"
        b"Subject: hello\r\n"
        b"\r\n"
        b"body\r\n"
    )
    assert box.pickup_names() == [] and os.listdir(box.badmail) == []


def test_the_null_sender_comes_through_the_drop_format(box: Box) -> None:
    box.drop("null.eml", b"x-sender: <>\r\nx-receiver: bob@example.org\r\nSubject: x\r\n\r\nb\r\n")
    box.run()
    envelope, data = box.only_message()
    assert envelope.sender == ""
    assert b"for <bob@example.org>;" in split_received(data)[0]


def test_a_plain_message_uses_from_to_cc_bcc_and_loses_its_bcc(box: Box) -> None:
    original = (
        b'From: "Doe, Alice" <alice@example.com>\r\n'
        b"To: Bob <bob@EXAMPLE.org>, carol@example.net\r\n"
        b"Bcc: secret@example.com,\r\n"
        b"  Another <secret2@example.com>\r\n"
        b"Cc: team: bob@example.org, dave@example.net;\r\n"
        b"Subject: plain\r\n"
        b"bcc: secret@example.com\r\n"
        b"\r\n"
        b"Bcc: this is body text, not a field\r\n"
    )
    box.drop("plain.eml", original)
    result = box.run()

    envelope, data = box.only_message()
    assert result.queued == (envelope.queue_id,)
    assert envelope.sender == "alice@example.com"
    assert envelope.recipients == (
        "bob@example.org",
        "carol@example.net",
        "dave@example.net",
        "secret@example.com",
        "secret2@example.com",
    )
    assert split_received(data)[1] == (
        b'From: "Doe, Alice" <alice@example.com>\r\n'
        b"To: Bob <bob@EXAMPLE.org>, carol@example.net\r\n"
        b"Cc: team: bob@example.org, dave@example.net;\r\n"
        b"Subject: plain\r\n"
        b"\r\n"
        b"Bcc: this is body text, not a field\r\n"
    )


def test_sender_field_wins_over_from(box: Box) -> None:
    box.drop(
        "s.eml",
        b"From: a@example.com, b@example.com\r\nSender: sec@example.com\r\n"
        b"To: bob@example.org\r\n\r\nx\r\n",
    )
    box.run()
    assert box.only_message()[0].sender == "sec@example.com"


def test_lf_only_and_bare_cr_are_normalised_to_crlf(box: Box) -> None:
    box.drop(
        "unix.eml",
        b"From: a@example.com\nTo: b@example.org\nSubject: caf\xc3\xa9\n\nline 1\rline 2\n"
        b"last line without newline",
    )
    box.run()
    envelope, data = box.only_message()
    message = split_received(data)[1]
    assert message == (
        b"From: a@example.com\r\nTo: b@example.org\r\nSubject: caf\xc3\xa9\r\n\r\n"
        b"line 1\r\nline 2\r\nlast line without newline\r\n"
    )
    assert message.count(b"\n") == message.count(b"\r\n") == message.count(b"\r")
    assert envelope.body_8bit


def test_a_message_of_headers_only_is_fine(box: Box) -> None:
    box.drop("headers.eml", b"From: a@example.com\nTo: b@example.org\nSubject: no body")
    result = box.run()
    assert len(result.queued) == 1 and result.bad == ()
    assert split_received(box.only_message()[1])[1] == (
        b"From: a@example.com\r\nTo: b@example.org\r\nSubject: no body\r\n"
    )


def test_received_fields_up_to_the_hop_limit_are_fine(box: Box) -> None:
    hops = b"Received: from a by b; Mon, 1 Jan 2024 00:00:00 +0000\r\n" * 3
    box.drop("hops.eml", hops + b"From: a@example.com\r\nTo: b@example.org\r\n\r\nx\r\n")
    assert len(box.run(max_hop_count=3).queued) == 1


def test_an_enqueue_failure_is_logged_and_the_message_stays_queued(
    box: Box, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(queue_id: str, server: str) -> None:
        raise ConnectionError("broker down")

    box.drop("m.eml", b"From: a@example.com\r\nTo: b@example.org\r\n\r\nx\r\n")
    with caplog.at_level(logging.ERROR):
        result = box.run(enqueue=broken)
    assert result.queued == tuple(box.spool.ids()) and len(result.queued) == 1
    assert "could not enqueue" in caplog.text
    assert box.pickup_names() == []


# --- Badmail ------------------------------------------------------------------------------

GOOD_HEAD = b"From: a@example.com\r\nTo: b@example.org\r\n"

MALFORMED = {
    "no recipients": b"From: a@example.com\r\nTo: undisclosed-recipients:;\r\n\r\nx\r\n",
    "percent hack": b"From: a@example.com\r\nTo: b@example.org, a%b@example.com\r\n\r\nx\r\n",
    "bang path in x-receiver": b"x-sender: a@example.com\r\nx-receiver: host!user@example.com\r\n"
    + GOOD_HEAD
    + b"\r\nx\r\n",
    "bad sender": b"From: a@b@example.com\r\nTo: b@example.org\r\n\r\nx\r\n",
    "no sender": b"To: b@example.org\r\n\r\nx\r\n",
    "x-receiver without x-sender": b"x-receiver: b@example.org\r\n" + GOOD_HEAD + b"\r\nx\r\n",
    "two x-senders": b"x-sender: a@example.com\r\nx-sender: c@example.com\r\n"
    b"x-receiver: b@example.org\r\n" + GOOD_HEAD + b"\r\nx\r\n",
    "non-ascii header address": b"From: a@example.com\r\nTo: b\xc3\xa9@example.org\r\n\r\nx\r\n",
    "non-ascii x-receiver": b"x-sender: a@example.com\r\nx-receiver: b\xc3\xa9@example.org\r\n"
    + GOOD_HEAD
    + b"\r\nx\r\n",
    "defective address list": b"From: a@example.com\r\nTo: b@example.org; c@example.net\r\n\r\nx\r\n",
    "garbage": bytes(range(256)) * 4,
    "empty": b"",
    "body without headers": b"\r\njust a body\r\n",
    "no blank line before body": GOOD_HEAD + b"this is body text\r\n",
    "too many hops": b"Received: from a by b; Mon, 1 Jan 2024 00:00:00 +0000\r\n" * 4
    + GOOD_HEAD
    + b"\r\nx\r\n",
    "line too long": GOOD_HEAD + b"\r\n" + b"x" * 999 + b"\r\n",
    "oversized": GOOD_HEAD + b"\r\n" + (b"x" * 98 + b"\r\n") * 20,
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_file_goes_to_badmail_with_a_reason(box: Box, case: str) -> None:
    original = MALFORMED[case]
    box.drop("bad.eml", original)
    result = box.run(max_message_size=1_000, max_hop_count=3)

    assert result == PickupResult(queued=(), bad=("bad.eml",))
    assert box.spool.count() == 0 and box.enqueued == []
    assert box.pickup_names() == []
    assert (box.badmail / "bad.BAD").read_bytes() == original  # untouched, for the operator
    reason = (box.badmail / "bad.BDR").read_text()
    assert reason.endswith("\n") and reason.count("\n") == 1 and len(reason) > 5
    assert not [name for name in os.listdir(box.badmail) if name.startswith(".")]


def test_the_reason_and_the_parsed_envelope_are_recorded(box: Box) -> None:
    box.drop("bad.eml", MALFORMED["percent hack"])
    box.run()
    assert "recipient refused" in (box.badmail / "bad.BDR").read_text()
    assert "percent hack" in (box.badmail / "bad.BDR").read_text()
    assert json.loads((box.badmail / "bad.BDP").read_text()) == {
        "server": SERVER,
        "file": "bad.eml",
        "sender": "a@example.com",
        "recipients": ["b@example.org"],
    }


def test_an_oversized_file_is_refused_without_being_read_whole(box: Box) -> None:
    box.drop("big.eml", GOOD_HEAD + b"\r\n" + b"x" * 2_000_000 + b"\r\n")
    box.run(max_message_size=1000)
    assert "exceeds the limit of 1000 bytes" in (box.badmail / "big.BDR").read_text()
    assert not (box.badmail / "big.BDP").exists()  # refused before anything was parsed


def test_the_size_limit_applies_to_the_message_as_stored(box: Box) -> None:
    # With LF line endings the file is within the limit; stored with CRLF it is not.
    message = b"From: a@example.com\nTo: b@example.org\n\n" + (b"x" * 99 + b"\n") * 9
    stored = len(message) + message.count(b"\n")
    box.drop("edge.eml", message)
    assert box.run(max_message_size=len(message)).bad == ("edge.eml",)
    assert f"message size {stored} bytes" in (box.badmail / "edge.BDR").read_text()
    box.drop("edge.eml", message)
    assert box.run(max_message_size=stored - 1).bad == ("edge.eml",)
    box.drop("edge.eml", message)
    assert len(box.run(max_message_size=stored).queued) == 1


def test_an_unreadable_file_goes_to_badmail(box: Box) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads everything")
    path = box.drop("locked.eml", GOOD_HEAD + b"\r\nx\r\n")
    path.chmod(0)
    assert box.run().bad == ("locked.eml",)
    assert "unreadable" in (box.badmail / "locked.BDR").read_text()
    assert box.pickup_names() == []


def test_an_older_badmail_file_of_the_same_name_is_kept(box: Box) -> None:
    (box.badmail / "bad.BAD").write_bytes(b"an earlier message")
    box.drop("bad.eml", MALFORMED["empty"])
    box.run()
    assert (box.badmail / "bad.BAD").read_bytes() == b"an earlier message"
    moved = sorted(name for name in os.listdir(box.badmail) if name.startswith("bad-"))
    assert [name.rsplit(".", 1)[1] for name in moved] == ["BAD", "BDR"]
    assert (box.badmail / moved[0]).read_bytes() == b""


def test_a_move_to_badmail_interrupted_by_a_crash_is_finished(box: Box) -> None:
    queue_id = new_queue_id()
    claimed = box.drop(f"bad.eml.processing-{queue_id}", b"garbage", mtime=NOW - 120)
    os.link(claimed, box.badmail / "bad.BAD")  # the crash came before the .BDR
    assert box.run().bad == ("bad.eml",)
    assert sorted(os.listdir(box.badmail)) == ["bad.BAD", "bad.BDR"]
    assert box.pickup_names() == []


# --- what is left alone -------------------------------------------------------------------


def test_a_file_younger_than_min_age_is_left_alone(box: Box) -> None:
    box.drop("new.eml", GOOD_HEAD + b"\r\nx\r\n", mtime=NOW - 0.5)
    assert box.run(min_age=1.0) == PickupResult((), ())
    assert box.pickup_names() == ["new.eml"]
    assert len(box.run(min_age=1.0, now=NOW + 1).queued) == 1


def test_other_names_and_kinds_of_file_are_left_alone(box: Box) -> None:
    for name in (".hidden.eml", "notes.txt", "message.eml.part", "eml", "x.processing-1"):
        box.drop(name, GOOD_HEAD + b"\r\nx\r\n")
    (box.pickup / "dir.eml").mkdir()
    target = box.drop("target.txt", GOOD_HEAD + b"\r\nx\r\n")
    (box.pickup / "link.eml").symlink_to(target)
    before = box.pickup_names()

    assert box.run() == PickupResult((), ())
    assert box.pickup_names() == before
    assert box.spool.count() == 0 and os.listdir(box.badmail) == []


def test_the_extension_is_matched_in_any_case(box: Box) -> None:
    box.drop("UPPER.EML", GOOD_HEAD + b"\r\nx\r\n")
    assert len(box.run().queued) == 1


# --- claims and crashes -------------------------------------------------------------------


def test_a_claim_already_in_the_spool_is_unlinked_not_queued_again(box: Box) -> None:
    data = GOOD_HEAD + b"\r\nx\r\n"
    queue_id = new_queue_id()
    box.drop(f"m.eml.processing-{queue_id}", data, mtime=NOW - STALE_CLAIM_AGE - 1)
    stored = Envelope(
        queue_id=queue_id,
        server=SERVER,
        sender="a@example.com",
        recipients=("b@example.org",),
        received_at=NOW - 100,
        client_ip="127.0.0.1",
        client_helo="pickup",
        auth_user=None,
        size=len(data),
        smtputf8=False,
        body_8bit=False,
    )
    box.spool.store(stored, data)  # the crash came after this and before the unlink

    assert box.run() == PickupResult((), ())
    assert box.spool.ids() == [queue_id] and box.enqueued == []
    assert box.pickup_names() == []


def test_a_stale_claim_not_in_the_spool_is_processed_once_under_its_id(box: Box) -> None:
    queue_id = new_queue_id()
    box.drop(f"m.eml.processing-{queue_id}", GOOD_HEAD + b"\r\nx\r\n", mtime=NOW - 61)

    assert box.run() == PickupResult((queue_id,), ())
    assert box.run() == PickupResult((), ())
    assert box.spool.ids() == [queue_id] and box.enqueued == [(queue_id, SERVER)]
    assert box.pickup_names() == []


def test_a_fresh_claim_belongs_to_a_live_worker_and_is_left_alone(box: Box) -> None:
    name = f"m.eml.processing-{new_queue_id()}"
    box.drop(name, GOOD_HEAD + b"\r\nx\r\n", mtime=NOW - 5)
    assert box.run() == PickupResult((), ())
    assert box.pickup_names() == [name]


def test_a_claim_gets_a_fresh_mtime_so_other_workers_leave_it(box: Box) -> None:
    # Spool.store fails (the queue directory is gone): the file stays claimed for a retry.
    box.drop("m.eml", GOOD_HEAD + b"\r\nx\r\n", mtime=NOW - 3600)
    (box.spool.directory / "tmp").rmdir()
    assert box.run() == PickupResult((), ())
    [claimed] = box.pickup_names()
    assert claimed.startswith("m.eml.processing-")
    assert (box.pickup / claimed).stat().st_mtime == NOW

    (box.spool.directory / "tmp").mkdir()
    assert box.run(now=NOW + 10) == PickupResult((), ())  # not stale yet
    result = box.run(now=NOW + STALE_CLAIM_AGE)
    assert result.queued == (claimed.rsplit("-", 1)[1],)
    assert box.pickup_names() == []


class RacingSpool(Spool):
    """A real spool in which another worker stores the same claim just before we do."""

    def store(self, envelope: Envelope, data: bytes) -> None:
        super().store(envelope, data)  # the other worker, which saw the claim as stale
        super().store(envelope, data)  # ours: refused, the id is taken


def test_losing_a_race_for_the_same_claim_queues_nothing_twice(tmp_path: Path) -> None:
    box = Box(tmp_path)
    box.spool = RacingSpool(tmp_path / "Queue")
    box.drop("m.eml", GOOD_HEAD + b"\r\nx\r\n")
    assert box.run() == PickupResult((), ())
    assert box.spool.count() == 1 and box.enqueued == []  # the winner reports and enqueues
    assert box.pickup_names() == [] and os.listdir(box.badmail) == []


@pytest.mark.parametrize("round_", range(3))
def test_two_concurrent_workers_queue_each_file_exactly_once(tmp_path: Path, round_: int) -> None:
    box = Box(tmp_path)
    # Older than STALE_CLAIM_AGE: until a claim's mtime is refreshed the other worker may
    # take it for stale, which is the interleaving the spool's refusal must make harmless.
    mtime = time.time() - 2 * STALE_CLAIM_AGE
    for i in range(50):
        box.drop(f"m{i:02}.eml", GOOD_HEAD + f"Subject: {i}\r\n\r\nx\r\n".encode(), mtime)
    start = threading.Barrier(2)
    results: list[PickupResult] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            start.wait()
            results.append(box.run(now=None))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    queued = [queue_id for result in results for queue_id in result.queued]
    assert sorted(queued) == box.spool.ids() and len(queued) == 50
    assert sorted(queue_id for queue_id, _ in box.enqueued) == sorted(queued)
    subjects = sorted(box.spool.load(q)[1].split(b"Subject: ")[1].split(b"\r\n")[0] for q in queued)
    assert subjects == sorted(str(i).encode() for i in range(50))
    assert box.pickup_names() == [] and os.listdir(box.badmail) == []
