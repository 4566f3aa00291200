"""Request parsers of the API: DRF's, with Django's refusals of a body turned into 400s.

Django refuses a form with more than DATA_UPLOAD_MAX_NUMBER_FIELDS fields (and other
oversized uploads) by raising SuspiciousOperation while the parser reads it; DRF lets that
through and Django answers with its HTML 400 page. Here it is a ParseError, so the client
gets the API's JSON error like any other bad body.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import SuspiciousOperation, TooManyFieldsSent
from rest_framework import parsers
from rest_framework.exceptions import ParseError


def _refused(exc: SuspiciousOperation) -> ParseError:
    if isinstance(exc, TooManyFieldsSent):
        limit = settings.DATA_UPLOAD_MAX_NUMBER_FIELDS
        return ParseError(f"The form has more than {limit} fields; send long lists as JSON.")
    return ParseError(f"The request body was refused: {exc}")


class _Refusals400(parsers.BaseParser):
    """Mixed in before a DRF form parser: Django's refusals of the body become ParseErrors."""

    def parse(self, stream: Any, media_type: Any = None, parser_context: Any = None) -> Any:
        try:
            return super().parse(stream, media_type, parser_context)
        except SuspiciousOperation as exc:
            raise _refused(exc) from exc


class FormParser(_Refusals400, parsers.FormParser):
    pass


class MultiPartParser(_Refusals400, parsers.MultiPartParser):
    pass


# For the views that read a body (DRF's defaults, in the same order).
PARSERS = [parsers.JSONParser, FormParser, MultiPartParser]
