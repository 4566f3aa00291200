"""Filter backends of the API: DRF's, with their refusals as field errors.

DRF's SearchFilter validates ``?search=`` with a serializer field and lets the
ValidationError out bare, so a NUL byte in it answered 400 with a list. Every other 400
of the API is an object of field errors; this one names ``search`` too.

:func:`refuse_null_characters` does the same for query parameters a view reads itself:
PostgreSQL cannot even compare a text holding NUL, so such a value must not reach a query.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rest_framework import filters
from rest_framework.exceptions import ValidationError


class SearchFilter(filters.SearchFilter):
    def get_search_terms(self, request: Any) -> Any:
        try:
            return super().get_search_terms(request)
        except ValidationError as exc:
            raise ValidationError({self.search_param: exc.detail}) from exc


def refuse_null_characters(params: Mapping[str, str], *names: str) -> None:
    """Raise a 400 naming each of ``names`` whose value in ``params`` holds a NUL byte."""
    bad = {
        name: ["Null characters are not allowed."]
        for name in names
        if "\x00" in params.get(name, "")
    }
    if bad:
        raise ValidationError(bad)
