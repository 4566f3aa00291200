"""Files the product writes: created exclusively, never through a symbolic link.

Every file the workers and the web process create goes through this module. The rules,
those of Postfix's ``safe_open()`` and OpenSMTPD's queue:

* A new file is opened ``O_CREAT|O_EXCL|O_NOFOLLOW``: an existing name, a symbolic link
  included (dangling or not), is never opened for writing. Whoever can write to a directory
  the product writes in (``Drop/`` is read by a local mail store, ``Pickup/`` is written by
  applications) can therefore make a write fail, never redirect it.
* A file appears under its final name complete and fsync'd: it is written under a random,
  unguessable temporary name and then linked (never replacing) or renamed (replacing the
  directory entry itself, never what a link there points at) into place.
* Names that others could guess and pre-create are not trusted to be free: a collision
  takes a new name with random bits, never the existing file.
* The directory itself is opened ``O_DIRECTORY|O_NOFOLLOW`` and every operation is made
  relative to that descriptor, so swapping the directory for a link meanwhile changes
  nothing; a directory that is a link is refused with :class:`UnsafePath`.

Only the last component of a directory path is checked: the product's own data directory
and mail root may well be links an administrator made on purpose.

Durability is built from three steps, each done here and nowhere else in the product:
:func:`write_new` is the only code that writes the bytes of a new file (exclusive create,
a loop until every byte is written, since a write may be short, fsync of the file, the
file removed again on any failure); :func:`link_new` (never replacing) or a rename gives
the finished file its name; :func:`sync_directory` makes that name durable.
:func:`write_unique` and :func:`write_replace` are the three in one call. The spool
commits two files with one directory fsync, so it calls the steps itself. What is
deliberately not synced says why where it is done: the spool's removals
(``Spool.remove``), and the W3C log, appended through :func:`open_append` and never
fsync'd because it is not the truth.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "UnsafePath",
    "directory",
    "link_new",
    "make_directories",
    "open_append",
    "open_directory",
    "private_directory",
    "private_file",
    "read_regular",
    "sync_directory",
    "write_new",
    "write_replace",
    "write_unique",
]

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | _CLOEXEC
# Only to fsync: nothing is written through it, so a link an administrator made is fine.
_SYNC_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | _CLOEXEC
_APPEND = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | _CLOEXEC
# O_NONBLOCK: a FIFO planted under the name must not hang the reader.
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | _CLOEXEC
_NAME_ATTEMPTS = 16


class UnsafePath(OSError):
    """A path the product would write through is a symbolic link, a hard link to another
    file, or not a regular file or directory; nothing was written."""


def _unsafe(exc: OSError, path: str | Path, what: str) -> OSError:
    # O_NOFOLLOW on a link gives ELOOP; O_DIRECTORY on a non-directory gives ENOTDIR.
    if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
        return UnsafePath(exc.errno, f"{what} (refusing to follow a link)", str(path))
    return exc


def open_directory(
    path: str | Path, *, create: bool = True, mode: int = 0o700, dir_fd: int | None = None
) -> int:
    """Return a descriptor of the directory ``path`` (the caller closes it).

    ``path`` is relative to ``dir_fd`` if given. A missing directory is created with
    ``mode`` (its missing parents too, with the same mode) when ``create`` (never with
    ``dir_fd``). Raises :class:`UnsafePath` if ``path`` is a symbolic link or not a
    directory, FileNotFoundError if it is missing and not created.
    """
    try:
        return os.open(path, _DIRECTORY, dir_fd=dir_fd)
    except FileNotFoundError:
        if not create or dir_fd is not None:
            raise
    except OSError as exc:
        raise _unsafe(exc, path, "not a directory") from exc
    make_directories(path, mode)
    try:
        return os.open(path, _DIRECTORY)
    except OSError as exc:
        raise _unsafe(exc, path, "not a directory") from exc


def make_directories(path: str | Path, mode: int = 0o700) -> None:
    """Create ``path`` and its missing parents, each with ``mode`` (``mkdir -p -m``, which
    gives the parents the umask's mode instead); existing ones are left as they are."""
    path = Path(path)
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made by another process meanwhile
            os.mkdir(directory, mode)


@contextlib.contextmanager
def directory(path: str | Path, *, create: bool = True, mode: int = 0o700) -> Iterator[int]:
    """:func:`open_directory` as a context manager that closes the descriptor."""
    fd = open_directory(path, create=create, mode=mode)
    try:
        yield fd
    finally:
        os.close(fd)


def write_new(dir_fd: int, name: str, data: bytes, *, mode: int = 0o600, sync: bool = True) -> None:
    """Create ``name`` in ``dir_fd`` holding ``data`` (fsync'd when ``sync``).

    Raises FileExistsError if anything has that name (a link included): an existing file
    is never opened. On any failure the partly written file is removed again. The name
    itself is durable only once the directory is synced (:func:`sync_directory`).
    """
    fd = os.open(name, _CREATE, mode, dir_fd=dir_fd)
    try:
        try:
            view = memoryview(data)  # slicing a view copies nothing
            while view:  # short writes are legal (signals, > 2 GiB)
                view = view[os.write(fd, view) :]
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=dir_fd)
        raise


def _write_temporary(dir_fd: int, name: str, data: bytes, mode: int, sync: bool) -> str:
    """Write ``data`` to a new dotfile named after ``name`` with 64 random bits; its name."""
    for _ in range(_NAME_ATTEMPTS):
        tmp = f".{name}.{secrets.token_hex(8)}.tmp"
        try:
            write_new(dir_fd, tmp, data, mode=mode, sync=sync)
        except FileExistsError:
            continue  # someone planted this very name: take another
        return tmp
    raise FileExistsError(errno.EEXIST, "no free temporary name", name)


def write_replace(
    dir_fd: int, name: str, data: bytes, *, mode: int = 0o600, sync: bool = True
) -> None:
    """Make ``name`` in ``dir_fd`` hold ``data``, replacing whatever had that name.

    Readers see the old content or the new one, never a mixture. Whatever had the name (a
    link included) is replaced as a directory entry: no file it points at is touched. With
    ``sync`` the data and the rename are durable when this returns.
    """
    tmp = _write_temporary(dir_fd, name, data, mode, sync)
    try:
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
    if sync:
        sync_directory(dir_fd)


def write_unique(
    dir_fd: int,
    stem: str,
    suffix: str,
    data: bytes,
    *,
    mode: int = 0o600,
    sync: bool = True,
    reuse_identical: bool = False,
) -> str:
    """Put ``data`` in a new file ``stem + suffix`` in ``dir_fd`` and return the name used.

    If that name is taken (by anything, a link included), ``stem-<random> + suffix`` is
    used instead: an existing file is never replaced or opened for writing. The file
    appears complete (written under a temporary name, then hard-linked into place). With
    ``reuse_identical``, an existing regular file of ours under ``stem + suffix`` that
    already holds exactly ``data`` is taken as this very write done before (a replay after
    a crash) and its name returned, nothing written.
    """
    first = stem + suffix
    if reuse_identical and read_regular(dir_fd, first, limit=len(data)) == data:
        return first
    tmp = _write_temporary(dir_fd, first, data, mode, sync)
    try:
        for attempt in range(_NAME_ATTEMPTS):
            name = first if attempt == 0 else f"{stem}-{secrets.token_hex(6)}{suffix}"
            try:
                # link() never replaces: the kernel's answer to "is this name free?" is final.
                link_new(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            except FileExistsError:
                continue
            break
        else:
            raise FileExistsError(errno.EEXIST, "no free name", first)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
    if sync:
        sync_directory(dir_fd)
    return name


def link_new(src: str | Path, dst: str, *, dst_dir_fd: int, src_dir_fd: int | None = None) -> None:
    """Give the file ``src`` (relative to ``src_dir_fd`` if given) the further name ``dst``
    in ``dst_dir_fd``.

    Never replaces: FileExistsError if anything has the name ``dst``, a link included. A
    link at ``src`` is given the name itself, never the file it points at. The new name is
    durable once ``dst_dir_fd`` is synced (:func:`sync_directory`).
    """
    os.link(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd, follow_symlinks=False)


def sync_directory(directory: int | str | Path) -> None:
    """Make the names made, renamed or removed in ``directory`` durable (fsync).

    ``directory`` is a descriptor or a path; a path may be a link (nothing is written
    through it).
    """
    if isinstance(directory, int):
        os.fsync(directory)
        return
    fd = os.open(directory, _SYNC_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_regular(dir_fd: int, name: str, *, limit: int) -> bytes | None:
    """Return the content of ``name`` if it is a regular file of this process's user with
    one link and at most ``limit`` bytes; None otherwise (missing, a link, someone else's)."""
    try:
        fd = os.open(name, _READ, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not _own_regular(info) or info.st_size > limit:
            return None
        chunks, left = [], info.st_size + 1
        while left > 0 and (chunk := os.read(fd, left)):
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _own_regular(info: os.stat_result) -> bool:
    return stat.S_ISREG(info.st_mode) and info.st_nlink == 1 and info.st_uid == os.geteuid()


def open_append(dir_fd: int, name: str, *, mode: int = 0o600) -> int:
    """Open ``name`` in ``dir_fd`` for appending, creating it with ``mode`` if missing.

    Raises :class:`UnsafePath` if the name is a symbolic link, or is not a regular file of
    this process's user with a single link (a hard link planted to another file).
    """
    try:
        fd = os.open(name, _APPEND, mode, dir_fd=dir_fd)
    except OSError as exc:
        raise _unsafe(exc, name, "not a regular file") from exc
    if not _own_regular(os.fstat(fd)):
        os.close(fd)
        raise UnsafePath(errno.EPERM, "not a regular file of ours with one link", name)
    return fd


def private_directory(path: str | Path) -> Path:
    """Make sure ``path`` is a directory only its owner can enter (0700) and return it.

    A missing one is created 0700 (parents too); an existing one of ours that others could
    enter is narrowed to 0700. Raises :class:`UnsafePath` if it is a link or not a
    directory.
    """
    fd = open_directory(path, create=True, mode=0o700)
    try:
        info = os.fstat(fd)
        if info.st_mode & 0o077 and info.st_uid == os.geteuid():
            os.fchmod(fd, stat.S_IMODE(info.st_mode) & 0o700)
    finally:
        os.close(fd)
    return Path(path)


def private_file(path: str | Path) -> Path:
    """Make sure ``path`` is a regular file only its owner can read (0600) and return it.

    A missing file is created empty (an empty file is a new SQLite database); an existing
    one of ours that others could read is narrowed to 0600. Raises :class:`UnsafePath` if
    it is a link or not a regular file.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | _CLOEXEC, 0o600)
    except OSError as exc:
        raise _unsafe(exc, path, "not a regular file") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafePath(errno.EPERM, "not a regular file", str(path))
        if info.st_mode & 0o077 and info.st_uid == os.geteuid():
            os.fchmod(fd, stat.S_IMODE(info.st_mode) & 0o700)
    finally:
        os.close(fd)
    return Path(path)
