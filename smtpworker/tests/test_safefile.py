"""smtpworker.core.safefile: new files are exclusive, no write goes through a link."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

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
