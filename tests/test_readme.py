"""Every test the README names as the proof of a promise exists.

The README's Security section (and others) cite tests as ``path.py::test_name``, or as
``::test_name`` after a full citation of the same file. A renamed or deleted test would
leave a promise without its proof: this fails instead.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
CONTRIBUTING = ROOT / "CONTRIBUTING.md"

_CITATION = re.compile(r"`((?:[\w./-]+\.py)?)::(\w+)(?:\[[^\]`]*\])?`")
_FILE = re.compile(r"`([\w./-]+\.py)`")


def citations(text: str) -> list[tuple[str, str]]:
    """(file, test) for each citation, a bare ``::test`` taking the last file named."""
    found: list[tuple[str, str]] = []
    last = ""
    for match in _CITATION.finditer(text):
        path, name = match.groups()
        last = path or last
        found.append((last, name))
    return found


def test_every_cited_test_exists() -> None:
    text = README.read_text()
    cited = citations(text)
    assert len(cited) >= 40, "the Security section cites its tests"
    cited += citations(CONTRIBUTING.read_text())
    missing = []
    for path, name in cited:
        source = ROOT / path
        if not path or not source.is_file():
            missing.append(f"{path}::{name} (no such file)")
        elif not re.search(rf"^\s*(async )?def {name}\(", source.read_text(), re.M):
            missing.append(f"{path}::{name}")
    assert not missing, "README or CONTRIBUTING cites tests that do not exist:\n" + "\n".join(
        missing
    )


def test_every_cited_test_file_exists() -> None:
    text = README.read_text()
    section = text[text.index("## Security") : text.index("## The console")]
    files = {f for f in _FILE.findall(section) if "/tests/" in f or f.startswith("tests/")}
    assert files
    assert not [f for f in files if not (ROOT / f).is_file()]


def test_a_citation_without_a_file_takes_the_last_one() -> None:
    text = "`a/tests/x.py::test_one`, `::test_two` and `b/tests/y.py::test_three[p]`"
    assert citations(text) == [
        ("a/tests/x.py", "test_one"),
        ("a/tests/x.py", "test_two"),
        ("b/tests/y.py", "test_three"),
    ]


_PATH = re.compile(r"`([\w./-]+/[\w.-]+\.(?:py|html|json|toml|md))`")


def test_every_file_the_docs_name_exists() -> None:
    # The docs say where things are; a move must take them along. A path may be written
    # from the root or from inside one of the two packages (`inbound/handler.py`).
    for doc in (README, CONTRIBUTING):
        named = set(_PATH.findall(doc.read_text()))
        assert named, doc.name
        missing = [
            path
            for path in sorted(named)
            if not any((ROOT / base / path).exists() for base in ("", "smtpworker", "mailadmin"))
        ]
        assert not missing, f"{doc.name} names files that do not exist: {missing}"
