"""How lists of messages page, for the API and the console alike.

The queue's message list and Message Tracking's results show the newest first and page by
cursor: ``GET /api/v1/messages/`` and ``/api/v1/tracking/`` use ``NewestFirst`` as their
DRF pagination class, and the console's pages (``console.base.newest_first_page``) run the
same paginator, so a link to page N means the same rows in both.
"""

from __future__ import annotations

from rest_framework.pagination import CursorPagination


class NewestFirst(CursorPagination):
    """Cursor paging: as fast on page 1,000 of 100,000 queued messages as on page 1."""

    ordering = ("-received_at", "-id")
    page_size = 50
    page_size_query_param = "limit"
    max_page_size = 500
