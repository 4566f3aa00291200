"""The durable queue of one SMTP virtual server: the queue files are the truth.

Each message is two files in the server's ``Queue/`` directory: ``<id>.eml`` holds the
message data exactly as received and ``<id>.env`` its envelope as JSON. The ``.env`` is the
commit marker: a message exists iff its ``.env`` exists, and the ``.env`` only appears once
the ``.eml`` beside it is complete and on disk.

:meth:`Spool.store` returns only when both files are durable, so the SMTP handler may answer
``250`` after DATA as soon as it returns (DESIGN.md invariant 1): a ``kill -9`` or a power cut
at any later moment loses nothing acknowledged, and one at any earlier moment leaves at most
unacknowledged leftovers, never a half-written committed message.

The queue directory must be on a local POSIX filesystem with hard links and an ordered
metadata journal (ext4, XFS, btrfs): the ``.eml`` and ``.env`` links are made with a single
directory fsync after both, which relies on the journal never persisting the later link
without the earlier one.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import re
import secrets
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smtpworker.core import safefile

__all__ = ["Envelope", "MessageNotFound", "Spool", "SpoolError", "new_queue_id"]

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_QUEUE_ID = re.compile(r"[0-9A-Z]{1,64}")
# 14 hex digits of microseconds last until the year 4253; 12 would have wrapped in 1978.
_TIME_DIGITS = 14
_RANDOM_CHARS = 10
_BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
# O_NOFOLLOW: a link planted under a queue name must not mail out the file it points at.
# O_NONBLOCK: nor may a FIFO there hang the reader.
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)

_STR_FIELDS = ("queue_id", "server", "sender", "client_ip", "client_helo")
_BOOL_FIELDS = ("smtputf8", "body_8bit")
_FIELDS = frozenset(
    (*_STR_FIELDS, *_BOOL_FIELDS, "v", "recipients", "received_at", "auth_user", "size")
)


class SpoolError(Exception):
    """A message could not be stored (disk full, permissions...): answer ``452 4.3.1``.

    Nothing of the failed message is left behind.
    """


class MessageNotFound(LookupError):
    """The queue id names no committed message (never stored, or removed)."""


def new_queue_id(now: float | None = None) -> str:
    """Return a new queue id: 14 hex digits of ``now`` in microseconds + 10 random base32.

    Ids are 24 uppercase characters, safe as file names, and sort by time to the
    microsecond. The 50 random bits come from :mod:`secrets`, so ids made in the same
    microsecond by any number of processes still differ.
    """
    micros = time.time_ns() // 1000 if now is None else round(now * 1_000_000)
    bits = secrets.randbits(5 * _RANDOM_CHARS)
    tail = "".join(_BASE32[(bits >> (5 * i)) & 31] for i in range(_RANDOM_CHARS))
    return f"{micros:0{_TIME_DIGITS}X}{tail}"


def _check_queue_id(queue_id: str) -> None:
    # Ids become file names: this is what keeps "../x" out of the queue directory.
    if not isinstance(queue_id, str) or not _QUEUE_ID.fullmatch(queue_id):
        raise ValueError(f"invalid queue id {queue_id!r}")


@dataclass(frozen=True, slots=True)
class Envelope:
    """What the SMTP session learnt about a message, besides its data.

    ``sender`` is ``""`` for the null sender ``<>``; ``size`` is ``len(data)``. Construction
    raises ValueError for a bad queue id, no recipients or a negative size.
    """

    queue_id: str
    server: str
    sender: str
    recipients: tuple[str, ...]
    received_at: float
    client_ip: str
    client_helo: str
    auth_user: str | None
    size: int
    smtputf8: bool
    body_8bit: bool

    def __post_init__(self) -> None:
        _check_queue_id(self.queue_id)
        if not self.recipients:
            raise ValueError("an envelope needs at least one recipient")
        if self.size < 0:
            raise ValueError(f"negative message size {self.size}")

    def to_json(self) -> str:
        """Return compact JSON with ``"v": 1``; :meth:`from_json` reads it back exactly.

        ASCII escapes keep any string (even lone surrogates from undecodable input) lossless.
        """
        doc = {
            "v": SCHEMA_VERSION,
            "queue_id": self.queue_id,
            "server": self.server,
            "sender": self.sender,
            "recipients": list(self.recipients),
            "received_at": self.received_at,
            "client_ip": self.client_ip,
            "client_helo": self.client_helo,
            "auth_user": self.auth_user,
            "size": self.size,
            "smtputf8": self.smtputf8,
            "body_8bit": self.body_8bit,
        }
        return json.dumps(doc, separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> Envelope:
        """Parse :meth:`to_json` output, checking every field's presence and type.

        Raises ValueError for malformed JSON, another schema version, a missing, unknown
        or mistyped field, or values the constructor refuses.
        """
        doc = json.loads(text)
        if not isinstance(doc, dict):
            raise ValueError("envelope: not a JSON object")
        if doc.get("v") != SCHEMA_VERSION:
            raise ValueError(f"envelope: unsupported schema version {doc.get('v')!r}")
        if doc.keys() != _FIELDS:
            raise ValueError(f"envelope: fields differ: {sorted(doc.keys() ^ _FIELDS)}")
        _check_types(doc)
        return cls(
            **{name: doc[name] for name in (*_STR_FIELDS, *_BOOL_FIELDS, "auth_user", "size")},
            recipients=tuple(doc["recipients"]),
            received_at=float(doc["received_at"]),
        )


def _check_types(doc: dict[str, Any]) -> None:
    # type() rather than isinstance(): JSON true must not pass as the size 1.
    bad = [name for name in _STR_FIELDS if type(doc[name]) is not str]
    bad += [name for name in _BOOL_FIELDS if type(doc[name]) is not bool]
    if type(doc["size"]) is not int:
        bad.append("size")
    if type(doc["received_at"]) not in (int, float) or not math.isfinite(doc["received_at"]):
        bad.append("received_at")
    if doc["auth_user"] is not None and type(doc["auth_user"]) is not str:
        bad.append("auth_user")
    recipients = doc["recipients"]
    if type(recipients) is not list or any(type(r) is not str for r in recipients):
        bad.append("recipients")
    if bad:
        raise ValueError(f"envelope: wrong type for {', '.join(bad)}")


class Spool:
    """The ``Queue/`` directory of one virtual server.

    Methods are synchronous (the SMTP handler calls them in a thread executor) and
    thread-safe: the only shared state is the filesystem. Several processes may share one
    directory.
    """

    def __init__(self, directory: Path) -> None:
        """Open the queue at ``directory``, creating it and its ``tmp/`` subdirectory.

        ``tmp/`` lives inside the queue so that it is on the same filesystem and moving a
        file into the queue is a single atomic directory operation.
        """
        self.directory = Path(directory)
        self.tmp = self.directory / "tmp"
        for path in (self.directory, self.tmp):
            if not path.is_dir():
                safefile.make_directories(path, 0o700)  # the server's home too, if new
                # Otherwise a power cut could forget the new directory, and with it
                # every message acknowledged into it.
                safefile.sync_directory(path.parent)

    def __repr__(self) -> str:
        return f"Spool({str(self.directory)!r})"

    def store(self, envelope: Envelope, data: bytes) -> None:
        """Commit a message; when this returns it survives a crash or a power cut.

        Raises ValueError (before touching the disk) if ``envelope.size != len(data)``, and
        SpoolError if the queue id is already taken or the disk refuses (the text names the
        cause, e.g. "No space left on device"); in both failure cases whatever this call
        wrote is removed again and any existing message is left intact.
        """
        if envelope.size != len(data):
            raise ValueError(f"envelope size {envelope.size} != {len(data)} bytes of data")
        _check_queue_id(envelope.queue_id)
        created: list[tuple[int, str]] = []  # (directory, name) this call made, for clean-up
        try:
            with self._directories() as (queue_fd, tmp_fd):
                try:
                    env = envelope.to_json().encode("ascii")
                    _commit(envelope.queue_id, env, data, queue_fd, tmp_fd, created)
                except BaseException:
                    _discard(created)
                    raise
        except OSError as exc:
            if exc.errno == errno.EEXIST:
                raise SpoolError(f"queue id {envelope.queue_id} already exists") from exc
            reason = exc.strerror or str(exc)
            raise SpoolError(f"cannot spool {envelope.queue_id}: {reason}") from exc

    @contextlib.contextmanager
    def _directories(self) -> Iterator[tuple[int, int]]:
        """Descriptors of ``Queue/`` and its ``tmp/``, neither opened through a link: every
        name is then made relative to them, so a directory swapped for a link meanwhile
        (by whoever may write to the server's home) cannot redirect a message."""
        queue_fd = safefile.open_directory(self.directory, create=False)
        try:
            tmp_fd = safefile.open_directory("tmp", create=False, dir_fd=queue_fd)
            try:
                yield queue_fd, tmp_fd
            finally:
                os.close(tmp_fd)
        finally:
            os.close(queue_fd)

    def ids(self) -> list[str]:
        """Return the ids of committed messages, oldest first."""
        return sorted(self._committed())

    def count(self) -> int:
        """Return the number of committed messages."""
        return len(self._committed())

    def __len__(self) -> int:
        return self.count()

    def _committed(self) -> list[str]:
        with os.scandir(self.directory) as entries:
            names = [entry.name for entry in entries]
        return [n[:-4] for n in names if n.endswith(".env") and _QUEUE_ID.fullmatch(n[:-4])]

    def load(self, queue_id: str) -> tuple[Envelope, bytes]:
        """Return a committed message's envelope and data.

        Raises MessageNotFound if there is no such message, ValueError if its files are
        damaged (bad envelope, or data of another size than the envelope says).
        """
        envelope = self.envelope(queue_id)
        try:
            data = _read(self._path(queue_id, ".eml"))
        except FileNotFoundError:
            raise MessageNotFound(queue_id) from None  # removed since the .env was read
        if len(data) != envelope.size:
            raise ValueError(f"{queue_id}: {len(data)} bytes, envelope says {envelope.size}")
        return envelope, data

    def envelope(self, queue_id: str) -> Envelope:
        """Return a committed message's envelope; raises as :meth:`load` does."""
        try:
            text = _read(self._path(queue_id, ".env"))
        except FileNotFoundError:
            raise MessageNotFound(queue_id) from None
        envelope = Envelope.from_json(text)
        if envelope.queue_id != queue_id:
            raise ValueError(f"{queue_id}: envelope belongs to {envelope.queue_id}")
        return envelope

    def message_path(self, queue_id: str) -> Path:
        """Return where the message data of ``queue_id`` is (whether it exists or not)."""
        return Path(self._path(queue_id, ".eml"))

    def remove(self, queue_id: str) -> None:
        """Delete a message; removing a missing message is not an error.

        The .env goes first, so a crash midway leaves an orphan .eml for :meth:`recover`,
        never a committed message without its data.

        Not durable on purpose: the directory is not fsync'd. Callers remove a message
        only after its end is recorded elsewhere (the delivery database), so a removal
        that a power cut undoes brings back a message that record already knows as
        finished; the delivery side's spool sweep skips such a file and deletes it. An
        fsync here would cost every delivered message a journal commit to protect
        nothing.
        """
        for suffix in (".env", ".eml"):
            try:
                os.unlink(self._path(queue_id, suffix))
            except FileNotFoundError:
                pass

    def recover(self, *, older_than: float = 3600, now: float | None = None) -> list[str]:
        """Delete leftovers of interrupted stores and removes; return their relative paths.

        Leftovers are files in ``tmp/`` and ``.eml`` files without a ``.env``, last modified
        at least ``older_than`` seconds before ``now``. None was ever acknowledged. A store
        in progress has young leftovers, hence the age limit; ``older_than=0`` is safe only
        while nothing else uses the spool. Committed messages are never touched.
        """
        cutoff = (time.time() if now is None else now) - older_than
        removed = [f"tmp/{name}" for name in _remove_old(self.tmp, cutoff, lambda _: True)]
        committed = set(self._committed())
        removed += _remove_old(
            self.directory,
            cutoff,
            lambda name: name.endswith(".eml") and name[:-4] not in committed,
        )
        for path in removed:
            logger.warning("removed spool leftover %s", self.directory / path)
        return removed

    def _path(self, queue_id: str, suffix: str) -> str:
        _check_queue_id(queue_id)
        return os.path.join(self.directory, queue_id + suffix)


def _commit(
    queue_id: str,
    env: bytes,
    data: bytes,
    queue_fd: int,
    tmp_fd: int,
    created: list[tuple[int, str]],
) -> None:
    eml, env_name = queue_id + ".eml", queue_id + ".env"
    # The tmp names are this store's own: a store of the same id that a kill cut short
    # leaves its tmp files behind (recover() removes them later), and a retry, such as a
    # delivery report whose id derives from its message's, must not be refused for them.
    # Only the queue names decide whether the id is taken.
    stem = f"{queue_id}.{secrets.token_hex(6)}"
    tmp_eml, tmp_env = stem + ".eml", stem + ".env"
    # Each file is fsync'd before it gets its queue name: otherwise a power cut could
    # keep the name but not the data, leaving an empty or truncated message committed.
    _write_durably(tmp_fd, tmp_eml, data, created)
    _write_durably(tmp_fd, tmp_env, env, created)
    # link() is rename() that refuses to replace an existing file: a duplicate id can
    # never overwrite a queued message. The .eml goes first, the .env (commit) last.
    safefile.link_new(tmp_eml, eml, src_dir_fd=tmp_fd, dst_dir_fd=queue_fd)
    created.append((queue_fd, eml))
    safefile.link_new(tmp_env, env_name, src_dir_fd=tmp_fd, dst_dir_fd=queue_fd)
    created.append((queue_fd, env_name))
    os.unlink(tmp_eml, dir_fd=tmp_fd)
    os.unlink(tmp_env, dir_fd=tmp_fd)
    # The new names are only durable once the directory itself is fsync'd. The unlinks
    # in tmp/ need no fsync: a resurrected tmp file is garbage for recover().
    safefile.sync_directory(queue_fd)


def _discard(created: list[tuple[int, str]]) -> None:
    # Newest first, so the .env (the commit) goes before the .eml it points at. No fsync:
    # a removal undone by a power cut resurrects a message whose client was told 452,
    # i.e. a duplicate delivery at worst, never a loss.
    for dir_fd, name in reversed(created):
        try:
            os.unlink(name, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        except OSError as exc:
            logger.warning("could not remove %s after a failed store: %s", name, exc)


def _write_durably(dir_fd: int, name: str, data: bytes, created: list[tuple[int, str]]) -> None:
    """Create ``name`` (mode 0600, never an existing file nor through a link), write
    ``data``, fsync it."""
    safefile.write_new(dir_fd, name, data, mode=0o600)
    created.append((dir_fd, name))


def _read(path: str) -> bytes:
    """The bytes of the file ``path``; ValueError if it is not a regular file (a link)."""
    try:
        fd = os.open(path, _READ)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ValueError(f"{path}: a symbolic link, not a queue file") from exc
        raise
    with open(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(f"{path}: not a regular file")
        return file.read()


def _remove_old(directory: Path, cutoff: float, wanted: Callable[[str], bool]) -> list[str]:
    """Unlink regular files in ``directory`` that ``wanted(name)`` and are older than cutoff."""
    removed = []
    with os.scandir(directory) as entries:
        for entry in entries:
            if not (wanted(entry.name) and entry.is_file(follow_symlinks=False)):
                continue
            try:
                if entry.stat(follow_symlinks=False).st_mtime <= cutoff:
                    os.unlink(entry.path)
                    removed.append(entry.name)
            except FileNotFoundError:
                pass  # already gone: another recover, or the store finished and cleaned up
    return sorted(removed)
