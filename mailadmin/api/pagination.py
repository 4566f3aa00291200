"""Paging of the API's lists."""

from __future__ import annotations

from typing import Any

from rest_framework.pagination import LimitOffsetPagination


class LimitOffset(LimitOffsetPagination):
    """DRF's limit/offset paging with bounds: SQL's LIMIT and OFFSET are 64-bit integers,
    and ``?limit=`` or ``?offset=`` past that was a database error (a 500)."""

    max_limit = 1000
    max_offset = 2**31 - 1

    def get_offset(self, request: Any) -> int:
        return min(super().get_offset(request), self.max_offset)
