"""Text taken from the network, made storable on every supported database.

Anything a client or a remote server sends (a Subject, an address, a reply text, an error
naming a host) may hold bytes no database column takes: PostgreSQL refuses a NUL in any
text (``DataError``), and neither PostgreSQL nor SQLite can encode a lone surrogate (what
``surrogateescape`` decoding makes of undecodable bytes: ``UnicodeEncodeError``). One such
value in a batch insert used to fail the whole batch. :func:`storable` is applied at the
boundary, before a value reaches the ORM, so the record holds a visible stand-in instead.

Like Postfix's ``printable()``, which rewrites what it logs and records rather than trust
it, the replacement is one character for one: NUL and the other C0 controls become their
Unicode control pictures (``"\\x00"`` -> ``"␀"``), so an operator sees that a NUL was there;
DEL, C1 controls and lone surrogates become U+FFFD. TAB, LF and CR are kept (multi-line
replies). Anything else, any script, emoji or symbol, is left exactly as it was.
"""

from __future__ import annotations

import re

__all__ = ["ELLIPSIS", "storable"]

ELLIPSIS = "\u2026"
# C0 controls but TAB, LF and CR; DEL; C1 controls; lone surrogates (a pair cannot occur
# in a str: Python strings hold code points).
_UNSTORABLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
_PICTURE_BASE = 0x2400  # U+2400 SYMBOL FOR NULL .. U+241F SYMBOL FOR UNIT SEPARATOR


def _stand_in(match: re.Match[str]) -> str:
    code = ord(match.group())
    return chr(_PICTURE_BASE + code) if code < 0x20 else "\ufffd"


def storable(value: str, max_length: int | None = None) -> str:
    """``value`` with every character no database can store replaced by a visible
    stand-in of one character, then cut to ``max_length`` characters (None: no limit),
    its last character an ellipsis when it was cut. Idempotent; a value that needs
    neither is returned unchanged."""
    if max_length is not None and max_length < 1:
        raise ValueError(f"max_length must be at least 1, not {max_length}")
    if _UNSTORABLE.search(value):
        value = _UNSTORABLE.sub(_stand_in, value)
    if max_length is not None and len(value) > max_length:
        value = value[: max_length - 1] + ELLIPSIS
    return value
