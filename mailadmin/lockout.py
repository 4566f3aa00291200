"""Login rate limits: what a locked-out client is told, and which address it counts as.

django-axes counts failed logins in Redis (settings: AXES_*), per client address and per
account, for the console's login page, ``/admin/`` and ``POST /api/v1/token/``. At the
limit it refuses further attempts, even with the right password, for the cool-off time.
The answer is 429: the login form again with the reason above it, or for the API the
one error shape (``{"detail": ...}``) with ``Retry-After``.
"""

from __future__ import annotations

import ipaddress
import math
from typing import Any

from axes.backends import AxesStandaloneBackend
from django.conf import settings
from django.contrib import admin
from django.contrib.auth.forms import AuthenticationForm
from django.forms.utils import ErrorDict
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.response import TemplateResponse

LOCKED_STATUS = 429


class LoginLimitBackend(AxesStandaloneBackend):  # type: ignore[misc]  # axes has no types
    """axes' check for every login that comes with a request (the login pages and the
    token endpoint always pass theirs). An ``authenticate()`` call from code without one
    (Django's test client ``login()``, a shell) has no client to count: it is passed on to
    the next backend instead of raising, as axes' own backend would."""

    def authenticate(
        self,
        request: HttpRequest | None,
        username: str | None = None,
        password: str | None = None,
        **kwargs: Any,
    ) -> None:
        if request is None:
            return None
        # axes' backend never returns a user: it passes, or raises for a locked-out client.
        super().authenticate(request, username, password, **kwargs)
        return None


def cooloff_seconds() -> int:
    return int(settings.AXES_COOLOFF_TIME.total_seconds())


def lockout_message() -> str:
    minutes = max(1, math.ceil(cooloff_seconds() / 60))
    return (
        "Too many failed logins for this account or from this address. Logins are refused "
        f"for {minutes} minute{'s' if minutes != 1 else ''} after the last failure; ask an "
        "administrator if it is urgent."
    )


def api_lockout_response() -> JsonResponse:
    """429 in the API's error shape, with Retry-After."""
    response = JsonResponse({"detail": lockout_message()}, status=LOCKED_STATUS)
    response["Retry-After"] = str(cooloff_seconds())
    return response


class LockedOutForm(AuthenticationForm):
    """The login form as a locked-out client sees it: nothing is validated (no password
    is checked), it carries the user name and the reason as its one error."""

    def full_clean(self) -> None:
        self._errors = ErrorDict()
        self.cleaned_data = {}
        self.add_error(None, lockout_message())


def lockout_response(
    request: HttpRequest, original_response: HttpResponse | None = None, credentials: Any = None
) -> HttpResponse:
    """AXES_LOCKOUT_CALLABLE: the login form it came from, with the reason, as a 429."""
    if request.path.startswith("/api/"):
        return api_lockout_response()
    username = str((credentials or {}).get("username") or request.POST.get("username", ""))
    form = LockedOutForm(request, data={"username": username})
    if request.path.startswith(f"/{admin.site.name}/"):
        template = "admin/login.html"
        context = {**admin.site.each_context(request), "title": "Log in"}
    else:
        template, context = "registration/login.html", {}
    context.update(form=form, next=request.POST.get("next", ""), app_path=request.get_full_path())
    response = TemplateResponse(request, template, context, status=LOCKED_STATUS)
    response["Retry-After"] = str(cooloff_seconds())
    return response.render()


def client_address(request: HttpRequest) -> str:
    """AXES_CLIENT_IP_CALLABLE: the address failed logins are counted against.

    REMOTE_ADDR, unless MAILADMIN_PROXY_CLIENT_HEADER names the header a reverse proxy in
    front appends the client's address to: then its last entry (the one that proxy added;
    earlier ones came from the client and are not trusted). IPv6 clients count by /64, as
    one host usually holds the whole prefix.
    """
    address = request.META.get("REMOTE_ADDR", "")
    header = settings.MAILADMIN_PROXY_CLIENT_HEADER
    if header:
        forwarded = request.META.get("HTTP_" + header.upper().replace("-", "_"), "")
        last = forwarded.rsplit(",", 1)[-1].strip()
        if last:
            address = last
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:100]  # counted as given; never trusted for anything else
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)
