"""The IIS ``Pickup/`` directory: a message file dropped there is queued as if it came by SMTP.

A writer puts a complete RFC 5322 message, with the ``.eml`` extension, into a virtual
server's ``Pickup/`` directory; :func:`process_pickup` moves it into the server's durable
queue (:class:`~smtpworker.core.spool.Spool`) or, if it is malformed, into ``Badmail/``.

The envelope comes from IIS's own drop format when the file starts with it::

    x-sender: alice@example.com
    x-receiver: bob@example.org
    x-receiver: carol@example.net
    From: ...

(one ``x-sender`` line, one ``x-receiver`` line per recipient, names in any case; the lines
are removed from the stored message). Otherwise the message is treated like one handed to a
submission agent: the sender is the first address of ``Sender:`` or else ``From:``, the
recipients are the addresses of every ``To:``, ``Cc:`` and ``Bcc:`` field.

**Writers must write the file elsewhere on the same filesystem and rename it into Pickup/**
(as IIS recommends). Files are only taken once their mtime is ``min_age`` seconds old, so
a slow copy straight into the directory is usually safe too, but only the rename is atomic.

Trust: a pickup message bypasses the relay restrictions, as in IIS; whoever may write to
``Pickup/`` may send mail. ``Badmail/`` must be on the same filesystem as ``Pickup/`` (both
normally live in the server's home directory): files are moved there by hard link.

Crash safety. A file is claimed by renaming it to ``<name>.processing-<queue id>``, with a
fresh queue id, and the message is stored in the spool under exactly that id. So:

* a claimed file whose queue id is already in the spool has been queued; it is unlinked,
  never queued again (a crash between the store and the unlink);
* a claimed file whose id is not in the spool, left for :data:`STALE_CLAIM_AGE` seconds
  (a crashed worker), is processed again under the same id;
* two workers that end up processing the same claim both store under the same id, and the
  spool refuses the second store (it never replaces a message): a file is queued at most
  once whatever the interleaving. The rename and the claim's fresh mtime only make such
  double work rare.

At every moment each message is queued, in Badmail, or (claimed or not) in Pickup; a crash
mid-way through a move to Badmail can leave it in both for a while, and the next run
finishes the move.
"""

from __future__ import annotations

import email.errors
import email.policy
import errno
import json
import logging
import os
import re
import secrets
import socket
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from email.headerregistry import AddressHeader, BaseHeader
from email.parser import BytesHeaderParser
from pathlib import Path

from smtpworker.core import safefile
from smtpworker.core.grammar import GrammarError, parse_forward_path, parse_reverse_path
from smtpworker.core.spool import Envelope, MessageNotFound, Spool, SpoolError, new_queue_id
from smtpworker.inbound.data import MAX_LINE, count_received
from smtpworker.inbound.received import received_header

__all__ = ["STALE_CLAIM_AGE", "PickupResult", "process_pickup"]

log = logging.getLogger(__name__)

#: A claimed file untouched for this many seconds belongs to a worker that died.
STALE_CLAIM_AGE = 60.0
#: What the envelope of a pickup message says about its client (Envelope requires strings).
CLIENT_IP = "127.0.0.1"
CLIENT_HELO = "pickup"
# Envelope lines and Bcc fields are the only bytes removed from a file, so a file bigger than
# the size limit plus this much cannot fit and is refused without reading it into memory.
_READ_SLACK = 1 << 20

_CLAIM_MARK = ".processing-"
_CLAIMED = re.compile(r"(?P<name>.+(?i:\.eml))\.processing-(?P<queue_id>[0-9A-Z]{24})")
_EOL = re.compile(rb"\r\n|\r|\n")
_ENVELOPE_LINE = re.compile(rb"x-(sender|receiver)[ \t]*:(.*)", re.IGNORECASE | re.DOTALL)
# RFC 5322 3.6.8 field name (printable ASCII but ':'), with obsolete space before the colon.
_FIELD = re.compile(rb"([!-9;-~]+)[ \t]*:")
_WSP = (b" ", b"\t")
_OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NOFOLLOW", 0)  # a symlink swapped in must not mail out another file
    | getattr(os, "O_NONBLOCK", 0)  # a FIFO swapped in must not hang the worker
    | getattr(os, "O_CLOEXEC", 0)
)
_BAD_NAME_ATTEMPTS = 16


@dataclass(frozen=True, slots=True)
class PickupResult:
    """What one :func:`process_pickup` call did.

    ``queued``: queue ids of the messages it stored. ``bad``: names (as they were in
    Pickup/) of the files it moved to Badmail/.
    """

    queued: tuple[str, ...]
    bad: tuple[str, ...]


class _Malformed(Exception):
    """The file cannot be queued; ``reason`` is one line for the .BDR file.

    ``sender`` (None: not known) and ``recipients`` are what could be parsed, for the .BDP.
    """

    def __init__(
        self, reason: str, sender: str | None = None, recipients: tuple[str, ...] = ()
    ) -> None:
        super().__init__(reason)
        self.reason = " ".join(reason.split())  # the .BDR holds exactly one line
        self.sender = sender
        self.recipients = recipients


@dataclass(frozen=True, slots=True)
class _Parsed:
    sender: str
    recipients: tuple[str, ...]
    content: bytes  # as stored, without our Received header


@dataclass(frozen=True, slots=True)
class _Claim:
    path: Path
    name: str  # the file's name in Pickup/ before it was claimed
    queue_id: str


def process_pickup(
    pickup: Path,
    badmail: Path,
    spool: Spool,
    *,
    server: str,
    enqueue: Callable[[str, str], None],
    max_message_size: int | None,
    min_age: float = 1.0,
    now: float | None = None,
    max_hop_count: int = 15,
    hostname: str | None = None,
) -> PickupResult:
    """Queue every well-formed message file in ``pickup``; move malformed ones to ``badmail``.

    Taken: regular files (not symlinks) whose name ends in ``.eml`` (any case) and does not
    start with ``.``, last modified at least ``min_age`` seconds before ``now``; and claims
    (``<name>.processing-<queue id>``) older than :data:`STALE_CLAIM_AGE`, see the module
    docstring. Everything else is left alone.

    A queued message is stored as in the file except that line endings become CRLF (and
    the last line gets one), the envelope lines and every ``Bcc:`` field (RFC 5322 3.6.3)
    are removed, and a ``Received:`` field naming ``hostname`` (default: this host's name)
    and the queue id is put on top. Its envelope: ``server``, the sender (``""`` for
    ``x-sender: <>``) and the recipients, normalised by the grammar and deduplicated in
    order, ``received_at=now``, client ``127.0.0.1`` / ``pickup``, no AUTH user,
    ``smtputf8`` False. ``enqueue(queue_id, server)`` is called after each store; its
    exceptions are logged, not raised (the delivery sweep finds the message anyway).

    Malformed, so moved to ``Badmail/<stem>.BAD`` (the stem is the name without ``.eml``;
    ``<stem>-<queue id>`` if a different file already has that name) with a one-line
    reason in ``.BDR`` and, if any of it parsed, the envelope as JSON in ``.BDP``: an
    unreadable file; no header section (empty, binary garbage, or a body with no header
    fields); a line in the header section that is neither a field nor a continuation (no
    blank line before the body); a line over 998 characters; an address field the email
    parser finds defective; no sender or no recipient; an address the grammar refuses
    (``%``, ``!``, non-ASCII...); more ``Received:`` fields than ``max_hop_count``; a
    message over ``max_message_size`` bytes as stored (without our Received field). A
    header-only message with no body is well-formed.

    A spool failure (disk full) leaves the claimed file in Pickup to be retried after
    :data:`STALE_CLAIM_AGE`. Raises OSError only if ``pickup`` cannot be listed.
    """
    now = time.time() if now is None else now
    fresh, stale = _scan(pickup, now, min_age)
    claims = [claim for path in fresh if (claim := _claim(path, now)) is not None]
    if claims:
        # Before anything is stored under a claim's id the claim must be durable: a power
        # cut that undid the rename would bring the file back to be queued under a new id.
        safefile.sync_directory(pickup)
    queued: list[str] = []
    bad: list[str] = []
    host = hostname or socket.gethostname()
    for claim in claims + stale:
        try:
            outcome = _process(
                claim,
                badmail,
                spool,
                server=server,
                host=host,
                max_message_size=max_message_size,
                max_hop_count=max_hop_count,
                now=now,
            )
        except OSError as exc:
            # Left claimed in Pickup: the next run after STALE_CLAIM_AGE tries again.
            log.error("%s: pickup file %s left for a retry: %s", server, claim.path.name, exc)
            continue
        if outcome == "queued":
            queued.append(claim.queue_id)
            try:
                enqueue(claim.queue_id, server)
            except Exception:
                log.exception("%s: could not enqueue %s for delivery", server, claim.queue_id)
        elif outcome == "bad":
            bad.append(claim.name)
    return PickupResult(queued=tuple(queued), bad=tuple(bad))


def _scan(pickup: Path, now: float, min_age: float) -> tuple[list[Path], list[_Claim]]:
    """New files to claim, oldest first, and stale claims to finish."""
    fresh: list[tuple[float, str]] = []
    stale: list[_Claim] = []
    # A Pickup/ swapped for a link would mail out (and delete) another directory's files.
    os.close(safefile.open_directory(pickup, create=False))
    with os.scandir(pickup) as entries:
        for entry in entries:
            name = entry.name
            if name.startswith("."):
                continue
            claimed = _CLAIMED.fullmatch(name)
            if not claimed and not name.lower().endswith(".eml"):
                continue
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                mtime = entry.stat(follow_symlinks=False).st_mtime
            except FileNotFoundError:
                continue  # claimed or finished by another worker meanwhile
            age = now - mtime
            if claimed is None:
                if age >= min_age:
                    fresh.append((mtime, name))
            elif age >= STALE_CLAIM_AGE:
                path = Path(entry.path)
                stale.append(_Claim(path, claimed["name"], claimed["queue_id"]))
    return [pickup / name for _, name in sorted(fresh)], stale


def _claim(path: Path, now: float) -> _Claim | None:
    """Rename a new file to its claimed name; None if another worker was first."""
    queue_id = new_queue_id()
    claimed = path.with_name(f"{path.name}{_CLAIM_MARK}{queue_id}")
    try:
        os.rename(path, claimed)
    except FileNotFoundError:
        return None
    except OSError as exc:  # e.g. a name too long for the suffix: nothing we can move
        log.error("cannot claim pickup file %s: %s", path, exc)
        return None
    try:
        # rename() keeps the old mtime, which would make the claim look stale at once.
        os.utime(claimed, (now, now), follow_symlinks=False)
    except FileNotFoundError:
        return None  # taken as stale by another worker and already finished
    except OSError as exc:
        log.warning("cannot touch claimed pickup file %s: %s", claimed, exc)
    return _Claim(claimed, path.name, queue_id)


def _process(
    claim: _Claim,
    badmail: Path,
    spool: Spool,
    *,
    server: str,
    host: str,
    max_message_size: int | None,
    max_hop_count: int,
    now: float,
) -> str | None:
    """Queue or reject one claimed file: "queued", "bad", or None if nothing was done here
    (another worker did it, or it had been queued before a crash)."""
    if _in_spool(spool, claim):
        _unlink(claim.path)
        log.info("%s: pickup file %s was already queued as %s", server, claim.name, claim.queue_id)
        return None
    try:
        raw = _read(claim.path, max_message_size)
        if raw is None:
            return None
        parsed = _parse(raw, max_message_size=max_message_size, max_hop_count=max_hop_count)
    except _Malformed as bad:
        moved = _to_badmail(claim, badmail, bad, server=server)
        if moved is not None:
            log.warning("%s: pickup file %s -> Badmail/%s.BAD: %s", server, claim.name, moved, bad)
        return None if moved is None else "bad"
    received = received_header(
        queue_id=claim.queue_id,
        from_name="pickup",
        from_comment="mailadmin pickup directory",
        host=host,
        server=server,
        recipients=parsed.recipients,
        when=datetime.fromtimestamp(now).astimezone(),
    )
    data = received.encode("ascii") + parsed.content
    envelope = Envelope(
        queue_id=claim.queue_id,
        server=server,
        sender=parsed.sender,
        recipients=parsed.recipients,
        received_at=now,
        client_ip=CLIENT_IP,
        client_helo=CLIENT_HELO,
        auth_user=None,
        size=len(data),
        smtputf8=False,
        body_8bit=not data.isascii(),
    )
    try:
        spool.store(envelope, data)
    except SpoolError as exc:
        if not _in_spool(spool, claim):
            raise OSError(str(exc)) from exc
        # Another worker stored this very claim first (see the module docstring).
        _unlink(claim.path)
        return None
    # No fsync: if a power cut undoes this unlink, the claim's id is found in the spool.
    _unlink(claim.path)
    log.info("%s: pickup file %s queued as %s", server, claim.name, claim.queue_id)
    return "queued"


def _in_spool(spool: Spool, claim: _Claim) -> bool:
    try:
        spool.envelope(claim.queue_id)
    except MessageNotFound:
        return False
    except ValueError as exc:
        # Something is stored under this id, so it must not be stored again; but it is
        # damaged, so the file is kept for an operator rather than deleted.
        raise OSError(f"queue entry {claim.queue_id} is damaged: {exc}") from exc
    return True


def _read(path: Path, limit: int | None) -> bytes | None:
    """The file's bytes; None if it is gone (another worker finished it)."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _Malformed("not a regular file (a symbolic link)") from exc
        raise _Malformed(f"unreadable: {exc.strerror or exc}") from exc
    with open(fd, "rb") as file:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _Malformed("not a regular file")
        if limit is not None and info.st_size > limit + _READ_SLACK:
            raise _Malformed(
                f"message size {info.st_size} bytes exceeds the limit of {limit} bytes"
            )
        try:
            # Bounded even so: the file may grow while we read it.
            raw = file.read() if limit is None else file.read(limit + _READ_SLACK + 1)
        except OSError as exc:
            raise _Malformed(f"unreadable: {exc.strerror or exc}") from exc
    if limit is not None and len(raw) > limit + _READ_SLACK:
        raise _Malformed(f"message size over {len(raw)} bytes exceeds the limit of {limit} bytes")
    return raw


def _parse(raw: bytes, *, max_message_size: int | None, max_hop_count: int) -> _Parsed:
    """Split off the envelope, check the message, remove Bcc; raise _Malformed."""
    content = _EOL.sub(b"\r\n", raw)
    if content and not content.endswith(b"\r\n"):
        content += b"\r\n"  # as the SMTP path stores it: every line ends in CRLF
    lines = content.split(b"\r\n")[:-1]
    for number, line in enumerate(lines, 1):
        if len(line) + 2 > MAX_LINE:
            raise _Malformed(f"line {number} is longer than 998 characters (RFC 5322 2.1.1)")
    start = 0
    x_lines: list[tuple[str, bytes]] = []
    while start < len(lines) and (match := _ENVELOPE_LINE.fullmatch(lines[start])):
        x_lines.append((match[1].decode().lower(), match[2]))
        start += 1
    if x_lines and start < len(lines) and lines[start].startswith(_WSP):
        raise _Malformed(f"line {start + 1}: x-sender/x-receiver lines cannot be folded")
    end = next((i for i in range(start, len(lines)) if not lines[i]), len(lines))
    head = lines[start:end]
    _check_header_section(head, start)
    sender, recipients = _envelope_lines(x_lines) if x_lines else _envelope_headers(head)
    head = _without_bcc(head)
    stored = b"".join(line + b"\r\n" for line in head + lines[end:])
    hops = count_received(stored)
    if hops > max_hop_count:
        raise _Malformed(
            f"too many hops: {hops} Received headers exceed {max_hop_count}", sender, recipients
        )
    if max_message_size is not None and len(stored) > max_message_size:
        raise _Malformed(
            f"message size {len(stored)} bytes exceeds the limit of {max_message_size} bytes",
            sender,
            recipients,
        )
    return _Parsed(sender, recipients, stored)


def _check_header_section(head: list[bytes], offset: int) -> None:
    if not head:
        raise _Malformed("no header section: the message must start with header fields")
    if not _FIELD.match(head[0]):
        raise _Malformed(f"line {offset + 1} is not a header field: no header section")
    for number, line in enumerate(head, offset + 1):
        if not (line.startswith(_WSP) or _FIELD.match(line)):
            raise _Malformed(
                f"line {number} is neither a header field nor a continuation line "
                "(a blank line must separate the header from the body)"
            )


def _envelope_lines(x_lines: list[tuple[str, bytes]]) -> tuple[str, tuple[str, ...]]:
    """The envelope from IIS's x-sender / x-receiver lines."""
    senders = [value for kind, value in x_lines if kind == "sender"]
    receivers = [value for kind, value in x_lines if kind == "receiver"]
    if len(senders) != 1:
        raise _Malformed(f"{len(senders)} x-sender lines: the drop format has exactly one")
    sender = _sender(_ascii(senders[0]))
    return sender, _recipients([_ascii(value) for value in receivers], sender)


def _ascii(value: bytes) -> str:
    try:
        return value.decode("ascii").strip()
    except UnicodeDecodeError:
        raise _Malformed(f"non-ASCII address {value!r} (SMTPUTF8 is not used here)") from None


def _envelope_headers(head: list[bytes]) -> tuple[str, tuple[str, ...]]:
    """The envelope from Sender:/From: and To:/Cc:/Bcc:, as a submission agent takes it."""
    section = b"".join(line + b"\r\n" for line in head)
    try:
        message = BytesHeaderParser(policy=email.policy.SMTP).parsebytes(section)
        # header.addresses rather than email.utils.getaddresses: on this Python,
        # getaddresses silently drops or misreads addresses in malformed lists
        # (CVE-2023-27043), while the header objects report a defect we refuse on.
        from_field = _addresses(message.get_all("Sender") or message.get_all("From") or [])
        to_fields = [_addresses(message.get_all(name) or []) for name in ("To", "Cc", "Bcc")]
    except _Malformed:
        raise
    except Exception as exc:
        # The stdlib header parser has raised assorted errors on hostile input over the
        # years; such a file is malformed, not a reason to stop the worker.
        raise _Malformed(f"cannot parse the header: {type(exc).__name__}: {exc}") from exc
    if not from_field:
        raise _Malformed("no sender: no x-sender line and no address in Sender: or From:")
    sender = _sender(from_field[0])
    return sender, _recipients([a for field in to_fields for a in field], sender)


def _addresses(values: list[object]) -> list[str]:
    """The addr-specs of a list of address header fields, refusing any defective one."""
    found: list[str] = []
    for value in values:
        if not (isinstance(value, AddressHeader) and isinstance(value, BaseHeader)):
            raise _Malformed(f"cannot parse the header field {value!r}")
        defects = [d for d in value.defects if not isinstance(d, email.errors.ObsoleteHeaderDefect)]
        if defects:
            raise _Malformed(f"cannot parse the {value.name}: field {str(value)!r}: {defects[0]}")
        found += [address.addr_spec for address in value.addresses]
    return found


def _sender(text: str) -> str:
    try:
        mailbox = parse_reverse_path(text)
    except GrammarError as exc:
        raise _Malformed(f"sender refused: {exc}") from exc
    return "" if mailbox is None else str(mailbox)


def _recipients(texts: list[str], sender: str) -> tuple[str, ...]:
    """Parse and deduplicate in order; refuse the lot if one is refused or there are none."""
    good: dict[str, None] = {}  # a dict keeps first-seen order
    for text in texts:
        try:
            good[str(parse_forward_path(text))] = None
        except GrammarError as exc:
            raise _Malformed(f"recipient refused: {exc}", sender, tuple(good)) from exc
    if not good:
        raise _Malformed("no recipients", sender)
    return tuple(good)


def _without_bcc(head: list[bytes]) -> list[bytes]:
    """The header lines without any Bcc field (its continuation lines included)."""
    kept: list[bytes] = []
    dropping = False
    for line in head:
        if not line.startswith(_WSP):
            match = _FIELD.match(line)
            dropping = match is not None and match[1].lower() == b"bcc"
        if not dropping:
            kept.append(line)
    return kept


def _to_badmail(claim: _Claim, badmail: Path, bad: _Malformed, *, server: str) -> str | None:
    """Move a claimed file to Badmail; return the base name used, None if it was gone.

    The .BAD is made by hard link first, so the file is never absent from both places;
    then the .BDR/.BDP are written and only then is the claim unlinked. A rerun after a
    crash recognises its own earlier .BAD by inode and finishes the move. Badmail/ is
    opened without following a link, and nothing in it is written through one.
    """
    with safefile.directory(badmail) as dir_fd:
        base = _link_bad(claim, dir_fd)
        if base is None:
            return None
        reason = (bad.reason + "\n").encode()
        safefile.write_replace(dir_fd, f"{base}.BDR", reason)
        if bad.sender is not None or bad.recipients:
            doc = {
                "server": server,
                "file": claim.name,
                "sender": bad.sender,
                "recipients": list(bad.recipients),
            }
            safefile.write_replace(dir_fd, f"{base}.BDP", (json.dumps(doc) + "\n").encode())
        safefile.sync_directory(dir_fd)
    _unlink(claim.path)
    return base


def _link_bad(claim: _Claim, dir_fd: int) -> str | None:
    """Hard-link the claim into Badmail as ``<base>.BAD``; the base, None if it was gone.

    ``<stem>``, else ``<stem>-<queue id>``, else (someone planted that name: the queue id
    shows in Pickup/) with random bits added. An existing name is never replaced.
    """
    for base in _bad_names(claim):
        try:
            # follow_symlinks=False: a claim swapped for a link moves as the link itself,
            # never as a new name for the file it points at.
            safefile.link_new(claim.path, f"{base}.BAD", dst_dir_fd=dir_fd)
        except FileNotFoundError:
            return None  # another worker finished this claim
        except FileExistsError:
            try:
                mine = os.stat(claim.path, follow_symlinks=False)
                there = os.stat(f"{base}.BAD", dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                return None
            if (mine.st_dev, mine.st_ino) != (there.st_dev, there.st_ino):
                continue  # an older file of the same name: take the next name
        return base
    raise OSError(errno.EEXIST, "no free name in Badmail", claim.name)


def _bad_names(claim: _Claim) -> Iterator[str]:
    stem = claim.name[:-4]
    yield stem
    yield f"{stem}-{claim.queue_id}"
    for _ in range(_BAD_NAME_ATTEMPTS):
        yield f"{stem}-{claim.queue_id}-{secrets.token_hex(4)}"


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass  # another worker finished the same claim
