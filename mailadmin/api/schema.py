"""OpenAPI generation: drf-spectacular's, plus the error answers every operation can give.

drf-spectacular documents only the success response. A client (and schemathesis) also
meets 400 (field errors), 401 (no or bad credentials), 403 (an operator writing, a user in
no group), 404 (no such object, a stale cursor, an unknown ``?format=``), 415 (a body
in a media type the operation does not take) and, for the token, 429 (locked out); each is
documented here with the body DRF sends, so that every response the API gives matches its
schema.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.openapi import AutoSchema
from rest_framework.permissions import AllowAny

_DETAIL = {
    "type": "object",
    "properties": {"detail": {"type": "string"}},
    "required": ["detail"],
}
_FIELD_ERRORS = {
    "type": "object",
    "description": (
        "Field errors at each field's place in the request, as lists of messages "
        '(e.g. {"relay": {"list": {"1": ["..."]}}}); "non_field_errors" for the rest.'
    ),
    "additionalProperties": {},
}


def _response(description: str, schema: dict[str, Any], media_types: list[str]) -> dict[str, Any]:
    content = {media_type: {"schema": schema} for media_type in media_types}
    return {"description": description, "content": content}


class ApiSchema(AutoSchema):
    """Set as ``schema`` on every API view (DRF's DEFAULT_SCHEMA_CLASS lives in settings)."""

    def get_operation(self, *args: Any, **kwargs: Any) -> dict[str, Any] | None:
        operation = super().get_operation(*args, **kwargs)
        if operation is None:
            return None
        responses = operation.setdefault("responses", {})
        for code, response in self._errors(operation).items():
            responses.setdefault(code, response)
        return operation

    def _errors(self, operation: dict[str, Any]) -> dict[str, dict[str, Any]]:
        query = {p["name"] for p in operation.get("parameters", []) if p.get("in") == "query"}
        # Errors come in the media types the view renders (the config document: YAML too).
        media = self.map_renderers("media_type") or ["application/json"]
        errors: dict[str, dict[str, Any]] = {}
        # Any text parameter can be refused (mailadmin.middleware: a NUL byte); the
        # numbers of limit/offset paging cannot.
        if self.method != "GET" or query - {"limit", "offset"}:
            errors["400"] = _response(
                "The request is invalid; nothing was changed.", _FIELD_ERRORS, media
            )
        if not any(p is AllowAny for p in self.view.permission_classes):
            errors["401"] = _response("No credentials, or bad ones.", _DETAIL, media)
            errors["403"] = _response("Not allowed for this user.", _DETAIL, media)
        if "requestBody" in operation:
            errors["415"] = _response("The body's media type is not one listed.", _DETAIL, media)
        if getattr(self.view, "login_rate_limited", False):
            errors["429"] = _response(
                "Too many failed logins for this account or from this address (mailadmin."
                "lockout); Retry-After gives the seconds until logins are taken again.",
                _DETAIL,
                media,
            )
        if "{" in self.path or query & {"cursor", "format"}:
            errors["404"] = _response(
                "No such object (or a stale page cursor, or an unknown ?format=).", _DETAIL, media
            )
        return errors
