"""One error shape for configuration problems, rendered for the API, forms and documents.

Services raise :class:`ConfigError`, a list of :class:`FieldError` each with a path into
the configuration document (``("servers", 1, "bindings", 0)``). The API renders it in DRF's
nested field-error shape, the config import as ``servers[1].bindings[0]`` strings, and
forms attach each message to its field.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import exceptions as drf_exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler

Path = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class FieldError:
    path: Path
    message: str

    @property
    def dotted(self) -> str:
        return path_text(self.path)

    def as_dict(self) -> dict[str, str]:
        return {"path": self.dotted, "message": self.message}


class ConfigError(Exception):
    """A configuration change was refused; nothing was written."""

    def __init__(self, errors: Iterable[FieldError]) -> None:
        self.errors = list(errors)
        super().__init__("; ".join(f"{e.dotted}: {e.message}" for e in self.errors))

    @classmethod
    def at(cls, path: Path, message: str) -> ConfigError:
        return cls([FieldError(path, message)])

    def prefixed(self, prefix: Path) -> ConfigError:
        return ConfigError(FieldError(prefix + e.path, e.message) for e in self.errors)

    def as_drf_detail(self) -> dict[str, Any]:
        """Nested ``{"field": {"sub": ["message"]}}``, as DRF serializers report errors."""
        detail: dict[str, Any] = {}
        for error in self.errors:
            node = detail
            path = error.path or ("non_field_errors",)
            for key in path[:-1]:
                node = _branch(node, str(key))
            leaf = node.get(str(path[-1]))
            if isinstance(leaf, dict):  # errors below this key too: the message goes beside
                leaf.setdefault("non_field_errors", []).append(error.message)
            else:
                node.setdefault(str(path[-1]), []).append(error.message)
        return detail


def _branch(node: dict[str, Any], key: str) -> dict[str, Any]:
    """The dict under ``key``; messages already there (an error about the whole list, say)
    move to its ``non_field_errors``, so an error about one item can go beside them."""
    value = node.get(key)
    if isinstance(value, dict):
        return value
    branch: dict[str, Any] = {"non_field_errors": value} if value else {}
    node[key] = branch
    return branch


def path_text(path: Sequence[str | int]) -> str:
    """``("servers", 1, "bindings", 0)`` -> ``servers[1].bindings[0]``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text


def flatten_drf_errors(detail: Any, prefix: Path = ()) -> Iterator[FieldError]:
    """Walk DRF's nested error structure and yield one FieldError per message."""
    if isinstance(detail, Mapping):
        for key, value in detail.items():
            part: str | int = int(key) if isinstance(key, int) or str(key).isdigit() else str(key)
            sub = prefix if part in ("non_field_errors",) else prefix + (part,)
            yield from flatten_drf_errors(value, sub)
    elif isinstance(detail, list | tuple):
        if detail and all(isinstance(item, Mapping) for item in detail):
            # many=True serializers report one (possibly empty) dict per item.
            for index, item in enumerate(detail):
                yield from flatten_drf_errors(item, prefix + (index,))
        else:
            for item in detail:
                yield from flatten_drf_errors(item, prefix)
    else:
        yield FieldError(prefix, str(detail))


def from_django_validation_error(
    exc: DjangoValidationError, field_paths: Mapping[str, Path] | None = None
) -> ConfigError:
    """Map ``full_clean()`` errors (keyed by model field) to document paths."""
    field_paths = field_paths or {}
    errors: list[FieldError] = []
    if hasattr(exc, "error_dict"):
        for field, messages in exc.message_dict.items():
            path = field_paths.get(field, (field,) if field != "__all__" else ())
            errors.extend(FieldError(path, m) for m in messages)
    else:
        errors.extend(FieldError((), m) for m in exc.messages)
    return ConfigError(errors)


def api_exception_handler(exc: Exception, context: Mapping[str, Any]) -> Response | None:
    """DRF's handler, plus ConfigError and Django ValidationError as 400 field errors."""
    if isinstance(exc, ConfigError):
        exc = drf_exceptions.ValidationError(exc.as_drf_detail())
    elif isinstance(exc, DjangoValidationError):
        exc = drf_exceptions.ValidationError(from_django_validation_error(exc).as_drf_detail())
    return exception_handler(exc, dict(context))
