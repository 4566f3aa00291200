"""Process logs as plain text or as one JSON object per line (``LOG_FORMAT=json``).

One formatter for every process: the SMTP worker uses it through :func:`configure`, and
Django (hence the web process and Celery) through ``mailadmin.jsonlog`` in ``LOGGING``.
A JSON line has ``time`` (UTC, ISO 8601, milliseconds), ``level``, ``logger`` and
``message``, then every extra field of the record (``queue_id``, ``server``, ``node``,
``client_ip``, ``session``...), then ``exception`` when there is a traceback::

    {"time": "2024-05-01T12:00:00.123Z", "level": "INFO", "logger": "smtpworker.inbound.handler",
     "message": "accepted 18F2A... from <a@corp.test>", "node": "n1", "server": "Relay",
     "client_ip": "10.0.0.5", "session": "3f2a9c...", "queue_id": "18F2A..."}

The plain format stays what it was, with the same extra fields appended as ``key=value``,
so a queue id can be followed with grep in either format. The W3C logs of the virtual
servers are a different thing and are not touched by any of this.

Context travels with :class:`ContextAdapter`: a session binds its server, client and
session id once, and binds the queue id when it has one; every line logged through it
carries them.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping, MutableMapping
from datetime import UTC, datetime
from typing import Any

FORMATS = ("plain", "json")
PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(
    [*logging.LogRecord("", logging.INFO, "", 0, "", None, None).__dict__, "message", "asctime"]
    + ["taskName"]  # Python 3.12+
)
# The base fields of a JSON line: an extra field of the same name does not replace them.
_BASE = ("time", "level", "logger", "message")


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a log call added with ``extra=`` (or a :class:`ContextAdapter`)."""
    return {
        key: value
        for key, value in record.__dict__.items()
        if key not in _STANDARD and not key.startswith("_")
    }


def _jsonable(value: Any) -> Any:
    """Something json.dumps accepts: containers as such, everything else as str()."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    try:
        return str(value)
    except Exception:  # noqa: BLE001 - a log line must never fail on an odd object
        return f"<unprintable {type(value).__name__}>"


class JsonFormatter(logging.Formatter):
    """One JSON object per line. ``fields`` are added to every line (a record's own
    extra fields of the same name win), e.g. ``{"node": "n1"}``."""

    def __init__(self, fields: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.fields = dict(fields or {})

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        line: dict[str, Any] = {
            # "Z" rather than "+00:00": what log shippers parse without configuration.
            "time": when.replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in {**self.fields, **self.context(record), **extra_fields(record)}.items():
            if key not in _BASE:
                line[key] = _jsonable(value)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        # ensure_ascii: one line whatever the message holds (U+2028 and friends included).
        return json.dumps(line, ensure_ascii=True, separators=(", ", ": "))

    def context(self, record: logging.LogRecord) -> dict[str, Any]:
        """Fields a subclass knows from elsewhere (Django adds the Celery task); none here."""
        return {}


class PlainFormatter(logging.Formatter):
    """The classic line, with the record's extra fields appended as ``key=value``.

    Only simple values are shown (Django's ``request`` object, say, is not): the plain
    format is for people, the JSON format carries everything.
    """

    def __init__(self, fmt: str | None = None, datefmt: str | None = None) -> None:
        super().__init__(fmt or PLAIN_FORMAT, datefmt)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        pairs = [
            f"{key}={_plain_value(value)}"
            for key, value in extra_fields(record).items()
            if value is None or isinstance(value, str | int | float | bool)
        ]
        if not pairs:
            return text
        head, newline, rest = text.partition("\n")  # after the message, before a traceback
        return f"{head} {' '.join(pairs)}{newline}{rest}"


def _plain_value(value: str | int | float | bool | None) -> str:
    if isinstance(value, str) and (not value or any(c.isspace() or c in '"=' for c in value)):
        return json.dumps(value)
    return str(value)


class ContextAdapter(logging.LoggerAdapter[logging.Logger]):
    """A logger that adds its fields to every record, merged with the call's own
    ``extra=`` (which wins); ``bind()`` makes one with more fields.

    >>> log = ContextAdapter(logging.getLogger("smtpworker"), {"server": "Relay"})
    >>> log.bind(queue_id="18F2A").info("accepted")  # server=Relay queue_id=18F2A
    """

    def __init__(self, logger: logging.Logger, fields: Mapping[str, Any] | None = None) -> None:
        super().__init__(logger, dict(fields or {}))

    @property
    def fields(self) -> dict[str, Any]:
        return dict(self.extra or {})

    def bind(self, **fields: Any) -> ContextAdapter:
        return ContextAdapter(self.logger, {**self.fields, **fields})

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {**self.fields, **(kwargs.get("extra") or {})}
        return msg, kwargs


def formatter(fmt: str, *, node: str | None = None, show_node: bool = False) -> logging.Formatter:
    """The formatter for ``fmt`` (``plain`` or ``json``). ``node`` goes into every JSON
    line; with ``show_node`` it also goes before the logger name of a plain line (the
    processes of a multi-process node)."""
    if fmt == "json":
        return JsonFormatter({"node": node} if node else None)
    if fmt == "plain":
        if node and show_node:
            return PlainFormatter(PLAIN_FORMAT.replace("%(name)s", f"{node} %(name)s"))
        return PlainFormatter()
    raise ValueError(f"log format {fmt!r} is not one of {', '.join(FORMATS)}")


def configure(
    level: str | int, fmt: str = "plain", *, node: str | None = None, show_node: bool = False
) -> logging.Handler:
    """Log to stderr at ``level`` in ``fmt``, replacing whatever the root logger had (so a
    forked child can call it again with its own name). Returns the handler."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(fmt, node=node, show_node=show_node))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    return handler
