"""Files the product writes cannot be turned against it (issue 10, item 6).

Whoever may write to a directory the product writes in (Drop/ is read by a local mail
store, Pickup/ is written by applications, a server's home may be shared) plants symbolic
links there, under every name the product could choose, and swaps directories for links.
Nothing is ever written through them: the file they point at (here a ``.pth`` file, which
Python runs at start-up) stays as it was, and the mail is still written, under another
name, or waits in the queue with the reason. Every case here wrote through the link before.
"""

from __future__ import annotations

import os
import smtplib
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from rest_framework.test import APIClient

from mailadmin.models import ConfigSnapshot, Message, MessageState, Recipient, RecipientState
from mailadmin.tests import conftest as shared
from mailadmin.tests.factories import BODY, configure, make_relay, reports_to, run, spool
from mailadmin.tests.stack import Stack, until
from smtpworker.core.spool import Spool
from smtpworker.inbound.pickup import process_pickup
from smtpworker.tests.factories import free_port, local, server, site
from smtpworker.tests.harness import LiveNode
from smtpworker.tests.sink import Sink

pytestmark = pytest.mark.django_db(transaction=True)

# The queue suites' fixtures, by name: the API as an administrator, the recording SMTP sink,
# a private mail root with a short delivery minute, the test Redis.
api, mailroot, sink, test_redis = shared.api, shared.mailroot, shared.sink, shared.test_redis

PAYLOAD = b"import os; os.system('touch /tmp/owned')\n"
ORIGINAL = b"# a path configuration file of the virtualenv\n"


@pytest.fixture
def pth(tmp_path: Path) -> Path:
    """The file an attacker wants the product to overwrite: a .pth runs at every start."""
    path = tmp_path / "venv" / "site-packages" / "zz-victim.pth"
    path.parent.mkdir(parents=True)
    path.write_bytes(ORIGINAL)
    return path


def plant(directory: Path, names: list[str], target: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        (directory / name).symlink_to(target)


def regular_files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir() if stat.S_ISREG(p.lstat().st_mode)}


def swap_for_link(directory: Path, elsewhere: Path) -> None:
    """Replace ``directory`` (made if missing) by a link to ``elsewhere``."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.rename(directory.with_name(directory.name + ".old"))
    elsewhere.mkdir(parents=True, exist_ok=True)
    directory.symlink_to(elsewhere)


# --- Drop/ ---------------------------------------------------------------------------------


def test_links_planted_in_drop_under_every_name_are_never_followed(
    api: APIClient, mailroot: Path, pth: Path
) -> None:
    make_relay(api)
    queue_id = spool("a@outside.test", "boss@corp.test", data=PAYLOAD)
    drop = mailroot / "Relay" / "Drop"
    # The queue id is in the sender's 250 reply; the worker's pid is no secret either.
    names = [f"{queue_id}.eml", f".{queue_id}.eml.{os.getpid()}.tmp", f".{queue_id}.eml.tmp"]
    plant(drop, names, pth)
    assert run(queue_id) == "delivered"
    assert pth.read_bytes() == ORIGINAL
    assert all((drop / name).is_symlink() for name in names)
    (written,) = regular_files(drop).items()
    assert written[1] == b"x-sender: a@outside.test\r\nx-receiver: boss@corp.test\r\n" + PAYLOAD
    assert stat.S_IMODE((drop / written[0]).stat().st_mode) == 0o640
    recipient = Recipient.objects.get(message__queue_id=queue_id)
    assert recipient.last_reply == f"2.0.0 Written to the Drop directory as {written[0]}"


def test_a_drop_directory_that_is_a_link_defers_the_message_with_the_reason(
    api: APIClient, mailroot: Path, tmp_path: Path
) -> None:
    make_relay(api)
    queue_id = spool("a@outside.test", "boss@corp.test")
    elsewhere = tmp_path / "site-packages"
    swap_for_link(mailroot / "Relay" / "Drop", elsewhere)
    assert run(queue_id) == "retry"
    assert list(elsewhere.iterdir()) == []
    recipient = Recipient.objects.get(message__queue_id=queue_id)
    assert recipient.state == RecipientState.PENDING
    assert recipient.last_code == 451
    assert recipient.last_reply.startswith("4.3.0 Cannot write to the Drop directory")
    # Once the operator puts a real directory back, the message goes there.
    (mailroot / "Relay" / "Drop").unlink()
    assert run(queue_id) == "delivered"
    (content,) = regular_files(mailroot / "Relay" / "Drop").values()
    assert content.endswith(BODY)


# --- Badmail/ ------------------------------------------------------------------------------


def failed_ndr(api: APIClient, sink: Sink) -> str:
    """An NDR that the smart host refuses as well, so it is due to go to Badmail: its id."""
    make_relay(api, delivery={"smart_host": sink.smart_host})
    sink.mode = "550"
    assert run(spool("a@elsewhere.test", "b@example.test")) == "bounced"
    (ndr,) = reports_to("a@elsewhere.test")
    return ndr.queue_id


def test_links_planted_in_badmail_are_never_followed(
    api: APIClient, sink: Sink, mailroot: Path, pth: Path
) -> None:
    ndr = failed_ndr(api, sink)
    badmail = mailroot / "Relay" / "Badmail"
    plant(badmail, [f"{ndr}.BAD", f"{ndr}.BDR"], pth)
    assert run(ndr) == "bounced"
    assert pth.read_bytes() == ORIGINAL
    files = regular_files(badmail)
    (bad,) = [name for name in files if name.endswith(".BAD")]
    assert bad.startswith(f"{ndr}-") and b"Subject: Undeliverable: " in files[bad]
    assert b"could not be delivered" in files[bad[:-4] + ".BDR"]
    assert stat.S_IMODE((badmail / bad).stat().st_mode) == 0o600


def test_a_badmail_directory_that_is_a_link_is_refused(
    api: APIClient, sink: Sink, mailroot: Path, tmp_path: Path
) -> None:
    ndr = failed_ndr(api, sink)
    elsewhere = tmp_path / "site-packages"
    swap_for_link(mailroot / "Relay" / "Badmail", elsewhere)
    assert run(ndr) == "retry"
    assert list(elsewhere.iterdir()) == []
    # Not lost: the report waits in the queue with the reason, for when Badmail/ is fixed.
    message = Message.objects.get(queue_id=ndr)
    assert message.state == MessageState.RETRY
    assert message.last_error.startswith("cannot write to Badmail: ")
    assert "link" in message.last_error
    assert ndr in Spool(mailroot / "Relay" / "Queue").ids()
    (mailroot / "Relay" / "Badmail").unlink()
    assert run(ndr) == "bounced"
    assert (mailroot / "Relay" / "Badmail" / f"{ndr}.BAD").is_file()


def pickup_box(root: Path) -> tuple[Path, Path, Spool]:
    pickup, badmail = root / "Pickup", root / "Badmail"
    pickup.mkdir(parents=True)
    return pickup, badmail, Spool(root / "Queue")


def pick_up(pickup: Path, badmail: Path, spool: Spool, now: float) -> None:
    process_pickup(
        pickup,
        badmail,
        spool,
        server="Relay",
        enqueue=lambda _queue_id, _server: None,
        max_message_size=None,
        now=now,
        min_age=0,
    )


def test_a_pickup_badmail_directory_that_is_a_link_is_refused(tmp_path: Path) -> None:
    pickup, badmail, spool = pickup_box(tmp_path / "home")
    elsewhere = tmp_path / "site-packages"
    swap_for_link(badmail, elsewhere)
    (pickup / "junk.eml").write_bytes(b"\x00\x01 no header section\r\n")
    pick_up(pickup, badmail, spool, now=os.path.getmtime(pickup / "junk.eml") + 5)
    assert list(elsewhere.iterdir()) == []
    # The file stays claimed in Pickup/, for a retry once Badmail/ is a directory again.
    (left,) = os.listdir(pickup)
    assert left.startswith("junk.eml.processing-")


def test_a_pickup_directory_that_is_a_link_is_not_scanned(tmp_path: Path) -> None:
    # Else the worker would mail out, and then delete, another directory's .eml files.
    pickup, badmail, spool = pickup_box(tmp_path / "home")
    elsewhere = tmp_path / "someone-elses-mail"
    swap_for_link(pickup, elsewhere)
    (elsewhere / "private.eml").write_bytes(b"To: a@corp.test\r\nFrom: b@corp.test\r\n\r\nx\r\n")
    with pytest.raises(OSError, match="link"):
        pick_up(pickup, badmail, spool, now=os.path.getmtime(elsewhere / "private.eml") + 5)
    assert os.listdir(elsewhere) == ["private.eml"] and spool.ids() == []


def test_a_pickup_file_swapped_for_a_link_never_links_its_target_into_badmail(
    tmp_path: Path, pth: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pickup, badmail, spool = pickup_box(tmp_path / "home")
    (pickup / "mail.eml").write_bytes(b"Subject: x\r\n\r\nnever mind\r\n")
    old = os.path.getmtime(pth) - 3600
    os.utime(pth, (old, old))
    real_rename = os.rename

    def attacker_first(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        # The writer of Pickup/ swaps its file for a link between the scan and the claim.
        if str(src).endswith("mail.eml"):
            os.unlink(src)
            os.symlink(pth, src)
        real_rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "rename", attacker_first)
    pick_up(pickup, badmail, spool, now=os.path.getmtime(pickup / "mail.eml") + 5)
    assert spool.ids() == [] and os.listdir(pickup) == []
    bad = badmail / "mail.BAD"
    assert bad.is_symlink()  # the link itself moved, not a new name for its target
    assert os.stat(pth).st_nlink == 1
    assert pth.read_bytes() == ORIGINAL and os.stat(pth).st_mtime == old  # not even touched
    assert "symbolic link" in (badmail / "mail.BDR").read_text()


# --- the spool -----------------------------------------------------------------------------


@pytest.mark.parametrize("linked", ["Queue", "Queue/tmp"])
def test_a_spool_directory_swapped_for_a_link_refuses_the_message(
    tmp_path: Path, linked: str
) -> None:
    node = LiveNode(tmp_path / "node")
    try:
        port = free_port()
        cfg = server("Relay", f"127.0.0.1:{port}", domains=(local("corp.test", default=True),))
        node.apply(site(cfg))
        home = node.node.home(cfg)
        elsewhere = tmp_path / "site-packages"
        swap_for_link(home / linked, elsewhere)
        if linked == "Queue":
            (elsewhere / "tmp").mkdir()  # so that a followed link would take the message
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.ehlo("client.test")
            client.mail("a@corp.test")
            client.rcpt("b@corp.test")
            code, reply = client.data(b"Subject: x\r\n\r\nhello\r\n")
        assert (code, reply[:5]) == (452, b"4.3.1"), reply
        assert [p for p in elsewhere.rglob("*") if not p.is_dir()] == []
    finally:
        node.close()


# --- modes ---------------------------------------------------------------------------------


def test_the_data_directory_and_the_sqlite_database_are_private(tmp_path: Path) -> None:
    var = tmp_path / "var"
    var.mkdir(mode=0o755)
    os.chmod(var, 0o755)  # as an older checkout left it
    database = var / "mailadmin.sqlite3"
    database.write_bytes(b"")
    os.chmod(database, 0o644)
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update(MAILADMIN_DATA_DIR=str(var), SECRET_KEY="x" * 50)
    # Any process of the product (web, Celery, manage.py) starts by reading its settings;
    # SQLite makes its -wal and -shm files while a connection is open, with the db's mode.
    code = (
        "import os, sqlite3, mailadmin.settings as s;"
        "name = s.DATABASES['default']['NAME']; c = sqlite3.connect(name);"
        "c.execute('PRAGMA journal_mode=WAL'); c.execute('CREATE TABLE t (x)'); c.commit();"
        "print(*(oct(os.stat(name + x).st_mode & 0o777) for x in ('', '-wal', '-shm')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, check=True, timeout=60, capture_output=True
    )
    assert stat.S_IMODE(var.stat().st_mode) == 0o700
    assert done.stdout.split() == [b"0o600"] * 3


def test_mail_through_the_product_keeps_its_files_private_and_never_follows_links(
    api: APIClient,
    sink: Sink,
    test_redis: str,
    tmp_path: Path,
    settings: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    """SMTP worker, Celery worker and beat as `make run` starts them: a Drop/ swapped for a
    link defers local mail with the reason; once it is a directory again the mail arrives
    there; the worker's cached configuration (it holds password verifiers) is 0600 and the
    mail directories it makes are 0700."""
    mailroot = tmp_path / "mailroot"
    settings.MAILADMIN_MAILROOT = mailroot
    stack = Stack(redis_url=test_redis, mailroot=mailroot, log_dir=tmp_path)
    try:
        address = configure(api, sink, django_capture_on_commit_callbacks)
        elsewhere = tmp_path / "site-packages"
        swap_for_link(mailroot / "Relay" / "Drop", elsewhere)
        stack.smtp(), stack.worker(), stack.beat()
        stack.wait_smtp_applied(ConfigSnapshot.objects.latest().pk)
        with smtplib.SMTP(*address, timeout=10) as client:
            client.sendmail("app@corp.test", ["boss@corp.test"], b"Subject: local\r\n\r\nhi\r\n")

        def deferred() -> bool:
            reply = Recipient.objects.filter(address="boss@corp.test").values_list(
                "last_reply", flat=True
            )
            return any(r.startswith("4.3.0 Cannot write to the Drop") for r in reply)

        until(deferred, timeout=30, interval=0.2)
        assert list(elsewhere.iterdir()) == []
        (mailroot / "Relay" / "Drop").unlink()
        Message.objects.update(next_attempt_at=None)  # due again now
        until(
            lambda: Message.objects.filter(state=MessageState.DELIVERED).exists(),
            timeout=30,
            interval=0.2,
        )
        (content,) = regular_files(mailroot / "Relay" / "Drop").values()
        assert content.startswith(b"x-sender: app@corp.test\r\nx-receiver: boss@corp.test\r\n")
        cache = tmp_path / f"smtpworker-{stack.node}.json"
        assert stat.S_IMODE(cache.stat().st_mode) == 0o600
        for sub in ("Queue", "Pickup", "Badmail"):
            assert stat.S_IMODE((mailroot / "Relay" / sub).stat().st_mode) == 0o700, sub
    finally:
        stack.stop()
