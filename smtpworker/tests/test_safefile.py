"""smtpworker.core.safefile: new files are exclusive, no write goes through a link."""

from __future__ import annotations

import ast
import errno
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from smtpworker.core import safefile

SECRET = b"precious\n"


@pytest.fixture
def target(tmp_path: Path) -> Path:
    """A file elsewhere that a planted link points at: it must never change."""
    path = tmp_path / "elsewhere" / "precious.pth"
    path.parent.mkdir()
    path.write_bytes(SECRET)
    return path


@pytest.fixture
def box(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    path = tmp_path / "box"
    with safefile.directory(path) as fd:
        yield path, fd


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_write_new_refuses_a_planted_link_and_leaves_its_target(
    box: tuple[Path, int], target: Path
) -> None:
    path, fd = box
    (path / "x.eml").symlink_to(target)
    with pytest.raises(FileExistsError):
        safefile.write_new(fd, "x.eml", b"attacker text")
    assert target.read_bytes() == SECRET


def test_write_new_creates_the_file_with_the_mode_asked(box: tuple[Path, int]) -> None:
    path, fd = box
    safefile.write_new(fd, "a", b"data", mode=0o640)
    assert (path / "a").read_bytes() == b"data" and mode(path / "a") == 0o640
    assert mode(path) == 0o700


def test_write_replace_replaces_a_link_not_its_target(box: tuple[Path, int], target: Path) -> None:
    path, fd = box
    (path / "cache.json").symlink_to(target)
    safefile.write_replace(fd, "cache.json", b"{}")
    assert target.read_bytes() == SECRET
    assert not (path / "cache.json").is_symlink()
    assert (path / "cache.json").read_bytes() == b"{}" and mode(path / "cache.json") == 0o600
    assert os.listdir(path) == ["cache.json"]  # no temporary left behind


def test_write_unique_takes_a_random_name_when_the_first_is_taken(
    box: tuple[Path, int], target: Path
) -> None:
    path, fd = box
    (path / "Q1.eml").symlink_to(target)
    name = safefile.write_unique(fd, "Q1", ".eml", b"mail")
    assert name != "Q1.eml" and name.startswith("Q1-") and name.endswith(".eml")
    assert (path / name).read_bytes() == b"mail"
    assert target.read_bytes() == SECRET and (path / "Q1.eml").is_symlink()
    # Twice the same stem: two files, never one overwritten.
    other = safefile.write_unique(fd, "Q1", ".eml", b"more")
    assert other not in (name, "Q1.eml") and (path / name).read_bytes() == b"mail"


def test_write_unique_reuses_only_an_identical_regular_file_of_ours(
    box: tuple[Path, int], target: Path
) -> None:
    path, fd = box
    assert safefile.write_unique(fd, "Q2", ".eml", b"mail", reuse_identical=True) == "Q2.eml"
    assert safefile.write_unique(fd, "Q2", ".eml", b"mail", reuse_identical=True) == "Q2.eml"
    assert sorted(os.listdir(path)) == ["Q2.eml"]  # a replay writes nothing new
    changed = safefile.write_unique(fd, "Q2", ".eml", b"other", reuse_identical=True)
    assert changed != "Q2.eml"
    # A link to a file holding the very same bytes is still not "ours".
    (path / "Q3.eml").symlink_to(target)
    assert safefile.write_unique(fd, "Q3", ".eml", SECRET, reuse_identical=True) != "Q3.eml"


def test_a_directory_that_is_a_link_is_refused(tmp_path: Path, target: Path) -> None:
    (tmp_path / "Drop").symlink_to(target.parent)
    with pytest.raises(safefile.UnsafePath):
        safefile.open_directory(tmp_path / "Drop")
    assert os.listdir(target.parent) == ["precious.pth"]


def test_missing_directories_are_created_private(tmp_path: Path) -> None:
    os.close(safefile.open_directory(tmp_path / "a" / "b"))
    assert mode(tmp_path / "a") == 0o700 and mode(tmp_path / "a" / "b") == 0o700
    with pytest.raises(FileNotFoundError):
        safefile.open_directory(tmp_path / "c", create=False)


def test_open_append_never_follows_a_link(box: tuple[Path, int], target: Path) -> None:
    path, fd = box
    (path / "ex.log").symlink_to(target)
    with pytest.raises(safefile.UnsafePath):
        safefile.open_append(fd, "ex.log")
    os.link(target, path / "hard.log")  # a hard link to another file: refused too
    with pytest.raises(safefile.UnsafePath):
        safefile.open_append(fd, "hard.log")
    assert target.read_bytes() == SECRET
    log = safefile.open_append(fd, "own.log")
    os.write(log, b"line\n")
    os.close(log)
    assert (path / "own.log").read_bytes() == b"line\n" and mode(path / "own.log") == 0o600


def test_private_directory_and_file_narrow_what_others_could_read(tmp_path: Path) -> None:
    var = tmp_path / "var"
    var.mkdir(mode=0o755)
    os.chmod(var, 0o755)
    safefile.private_directory(var)
    assert mode(var) == 0o700
    database = var / "db.sqlite3"
    database.write_bytes(b"")
    os.chmod(database, 0o644)
    safefile.private_file(database)
    assert mode(database) == 0o600
    fresh = safefile.private_file(var / "new.sqlite3")
    assert fresh.read_bytes() == b"" and mode(fresh) == 0o600


def test_private_file_refuses_a_link(tmp_path: Path, target: Path) -> None:
    os.chmod(target, 0o644)
    (tmp_path / "db.sqlite3").symlink_to(target)
    with pytest.raises(safefile.UnsafePath):
        safefile.private_file(tmp_path / "db.sqlite3")
    assert mode(target) == 0o644  # not narrowed through the link


# --- the durable write: exclusive, every byte, fsync'd, nothing left on failure -----------


def test_write_new_refuses_an_existing_file_and_a_dangling_link(box: tuple[Path, int]) -> None:
    path, fd = box
    (path / "taken.eml").write_bytes(SECRET)
    (path / "dangling.eml").symlink_to(path / "nowhere")
    for name in ("taken.eml", "dangling.eml"):
        with pytest.raises(FileExistsError):
            safefile.write_new(fd, name, b"attacker text")
    assert (path / "taken.eml").read_bytes() == SECRET
    assert not (path / "nowhere").exists()  # the link's target was not created either


def test_write_new_writes_every_byte_when_the_os_takes_a_few_at_a_time(
    box: tuple[Path, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    # write(2) may write less than asked (a signal, a pipe, over 2 GiB): a test double of
    # the OS that takes at most 7 bytes per call.
    path, fd = box
    real_write, calls = os.write, []

    def short_write(descriptor: int, data: bytes | memoryview) -> int:
        calls.append(len(data))
        return real_write(descriptor, bytes(data[:7]))

    monkeypatch.setattr(os, "write", short_write)
    data = bytes(range(256)) * 4
    safefile.write_new(fd, "a.eml", data)
    assert (path / "a.eml").read_bytes() == data
    assert len(calls) == -(-len(data) // 7)


SIZE_LIMITED_WRITE = """
import os, resource, signal, sys
from smtpworker.core import safefile
# The kernel itself writes short at the file size limit, then refuses with EFBIG.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1000, resource.RLIM_INFINITY))
with safefile.directory(sys.argv[1]) as fd:
    for write in (
        lambda: safefile.write_new(fd, "new.eml", b"x" * 5000),
        lambda: safefile.write_unique(fd, "unique", ".eml", b"x" * 5000),
        lambda: safefile.write_replace(fd, "replace.eml", b"x" * 5000),
    ):
        try:
            write()
        except OSError as exc:
            print(exc.errno)
        else:
            print("written")
"""


def test_a_write_the_kernel_cuts_short_is_finished_or_leaves_nothing(tmp_path: Path) -> None:
    # Without the loop the first, short write would be taken for the whole file: a
    # truncated message under its final name. With it, the second write meets EFBIG.
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", SIZE_LIMITED_WRITE, str(tmp_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(root)},
        check=True,
    )
    assert done.stdout.split() == [str(errno.EFBIG)] * 3, done.stderr
    assert os.listdir(tmp_path) == []  # no partial file, no temporary


def test_a_unique_write_is_durable_before_its_name_appears(
    box: tuple[Path, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, fd = box
    events = record_durability_calls(monkeypatch)
    name = safefile.write_unique(fd, "Q4", ".eml", b"mail")
    (kind, tmp), *rest = events
    assert kind == "fsync" and tmp.startswith(f"{path.resolve()}/.Q4.eml.")
    assert rest == [("link", name), ("fsync", str(path.resolve()))]


def test_a_replacing_write_is_durable_before_its_name_appears(
    box: tuple[Path, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, fd = box
    events = record_durability_calls(monkeypatch)
    safefile.write_replace(fd, "cache.json", b"{}")
    (kind, tmp), *rest = events
    assert kind == "fsync" and tmp.startswith(f"{path.resolve()}/.cache.json.")
    assert rest == [("replace", "cache.json"), ("fsync", str(path.resolve()))]


def record_durability_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Record fsync (of what), link and replace (to which name), in order; the OS still
    does each (a kill -9 cannot show a missing fsync, a power cut would)."""
    events: list[tuple[str, str]] = []
    real_fsync, real_link, real_replace = os.fsync, os.link, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def link(src: str, dst: str, **kwargs: Any) -> None:
        events.append(("link", dst))
        real_link(src, dst, **kwargs)

    def replace(src: str, dst: str, **kwargs: Any) -> None:
        events.append(("replace", dst))
        real_replace(src, dst, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "link", link)
    monkeypatch.setattr(os, "replace", replace)
    return events


def test_link_new_never_replaces_and_names_a_link_not_its_target(
    box: tuple[Path, int], target: Path
) -> None:
    path, fd = box
    (path / "taken").write_bytes(b"mine")
    (path / "a").write_bytes(b"a")
    with pytest.raises(FileExistsError):
        safefile.link_new("a", "taken", src_dir_fd=fd, dst_dir_fd=fd)
    assert (path / "taken").read_bytes() == b"mine"
    (path / "planted").symlink_to(target)
    safefile.link_new(path / "planted", "moved", dst_dir_fd=fd)
    assert (path / "moved").is_symlink() and os.stat(target).st_nlink == 1


def test_sync_directory_takes_a_descriptor_or_a_path(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")  # an administrator's link is fine
    safefile.sync_directory(tmp_path / "alias")
    with safefile.directory(tmp_path / "real") as fd:
        safefile.sync_directory(fd)
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        safefile.sync_directory(tmp_path / "f")


# --- every writer goes through this module -------------------------------------------------

# What writes, renames or syncs a file (calls, and the flags that make os.open write).
_OS_WRITES = {"write", "writev", "pwrite", "fsync", "fdatasync", "link", "symlink", "rename"}
_OS_WRITES |= {"replace", "truncate", "ftruncate", "sendfile", "copy_file_range"}
_OS_WRITE_FLAGS = {"O_CREAT", "O_WRONLY", "O_RDWR", "O_APPEND", "O_TRUNC"}
_MODULE_WRITES = {"shutil", "tempfile"}
_PATH_WRITES = {"write_bytes", "write_text"}

# The files outside safefile.py that write a file some other way, and why each may.
ALLOWED = {
    # Pickup/: a claim renames, within Pickup/, a file an application put there; it writes
    # no byte and creates no file (a taken name fails the claim, see pickup's docstring).
    ("smtpworker/inbound/pickup.py", "os.rename"),
    # The W3C log is appended, buffered, never fsync'd: it is not the truth (the spool
    # is), and an fsync per SMTP command would cost a journal commit each. The file is
    # opened by safefile.open_append (never through a link); this wraps that descriptor.
    ("smtpworker/inbound/w3clog.py", "open(mode='ab')"),
    # A private (mkstemp: O_EXCL, 0600) copy of a PEM for ssl.load_cert_chain, which reads
    # only files; deleted at once, nothing to keep.
    ("smtpworker/core/tlsinfo.py", "tempfile.NamedTemporaryFile"),
    # `manage.py config export FILE`: the operator's own output file, named on the command
    # line like a shell redirection; not under the mail root.
    ("mailadmin/management/commands/config.py", ".write_text"),
}


def _writes(tree: ast.AST) -> Iterator[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            module, name = node.value.id, node.attr
            if module == "os" and (name in _OS_WRITES or name in _OS_WRITE_FLAGS):
                yield f"os.{name}"
            elif module in _MODULE_WRITES:
                yield f"{module}.{name}"
        elif isinstance(node, ast.ImportFrom) and node.module in ({"os"} | _MODULE_WRITES):
            yield from (f"from {node.module} import {a.name}" for a in node.names)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in _PATH_WRITES:
                yield f".{node.func.attr}"
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id == "open":
                mode = node.args[1] if len(node.args) > 1 else None
                mode = next((k.value for k in node.keywords if k.arg == "mode"), mode)
                if mode is not None and not (
                    isinstance(mode, ast.Constant) and set(str(mode.value)) <= {"r", "b", "t"}
                ):
                    shown = mode.value if isinstance(mode, ast.Constant) else "?"
                    yield f"open(mode={shown!r})"


def test_every_file_the_product_writes_goes_through_safefile() -> None:
    # A narrow, syntactic check of the product's code (not its tests or migrations): a
    # new writer of mail files (Drop/, Badmail/, the spool, reports) that opens, writes,
    # links or fsyncs by itself fails here; it should call write_new/write_unique/
    # write_replace, link_new and sync_directory instead.
    root = Path(__file__).resolve().parents[2]
    found = set()
    for package in ("mailadmin", "smtpworker"):
        for path in sorted((root / package).rglob("*.py")):
            relative = path.relative_to(root).as_posix()
            if "/tests/" in relative or "/migrations/" in relative:
                continue
            if relative == "smtpworker/core/safefile.py":
                continue
            found |= {(relative, what) for what in _writes(ast.parse(path.read_text()))}
    assert found == ALLOWED
