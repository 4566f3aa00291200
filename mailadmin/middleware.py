"""Request checks that hold for every view, before any of them runs.

A NUL byte cannot be stored in, or even compared with, a PostgreSQL text: any query
parameter carrying one would reach a query as a 500. DRF's and Django's form fields refuse
NUL in the fields they validate, but many parameters are read directly (filters, the
search box, a server name); so the query string is checked once, here, for every view.
"""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse

NULL_MESSAGE = "Null characters are not allowed."


class NullCharactersMiddleware:
    """Answer 400 to a request whose query string holds a NUL byte, in a name or a value:
    the API's field-error object naming each such parameter, or a plain page elsewhere.

    It comes before authentication, as routing does: the request is malformed whoever
    sends it, and the answer says nothing about the data."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        bad = {
            name: [NULL_MESSAGE]
            for name, values in request.GET.lists()
            if "\x00" in name or any("\x00" in value for value in values)
        }
        if not bad:
            return self.get_response(request)
        if request.path.startswith("/api/"):
            # Field errors as every 400 of the API, and a "detail" as the config
            # document's 400 has (its schema requires one).
            detail = f"{NULL_MESSAGE[:-1]} in the query string."
            return JsonResponse({"detail": detail, **bad}, status=400)
        return HttpResponseBadRequest(
            f"{NULL_MESSAGE} (in {', '.join(sorted(bad))})", content_type="text/plain"
        )


class BrowserSecurityMiddleware:
    """What browsers are told on every answer: the Content-Security-Policy of
    ``MAILADMIN_CONTENT_SECURITY_POLICY`` (unless a view set its own), and on an answer to
    an HTTPS request the Secure flag on the session and CSRF cookies, so they are never
    sent over plain HTTP (HSTS comes from Django's SecurityMiddleware, for HTTPS only)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        policy = settings.MAILADMIN_CONTENT_SECURITY_POLICY
        if policy and "Content-Security-Policy" not in response:
            response["Content-Security-Policy"] = policy
        if request.is_secure():
            for name in (settings.SESSION_COOKIE_NAME, settings.CSRF_COOKIE_NAME):
                if name in response.cookies:
                    response.cookies[name]["secure"] = True
        return response
