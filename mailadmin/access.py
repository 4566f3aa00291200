"""Who may do what, for every door into the web side: the console's pages, the REST API
(``mailadmin.api.permissions`` wraps these rules in DRF permission classes) and ``/metrics``.

Two groups: members of ``administrators`` (and superusers) change configuration and act on
the queue; members of ``operators`` only look. Everyone else, and any inactive account,
gets nothing.

Who a request is (``api_user``) is decided once too: by the REST API's authentication
classes (``REST_FRAMEWORK["DEFAULT_AUTHENTICATION_CLASSES"]``: an API token, then the
session), which ``/metrics`` uses as well, so a token the API refuses opens nothing else.
"""

from __future__ import annotations

from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import AnonymousUser
from django.http import HttpRequest
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.request import Request

ADMINISTRATORS = "administrators"
OPERATORS = "operators"


def can_write(user: AbstractBaseUser | AnonymousUser) -> bool:
    """Superusers and members of the administrators group change configuration."""
    if not user.is_authenticated or not user.is_active:
        return False
    # getattr: AbstractBaseUser declares neither; Django's User (and PermissionsMixin) has both.
    if getattr(user, "is_superuser", False):
        return True
    return _in_group(user, ADMINISTRATORS)


def can_read(user: AbstractBaseUser | AnonymousUser) -> bool:
    """Writers, and members of the operators group, may look."""
    if can_write(user):
        return True
    # is_active as in can_write: a deactivated operator loses access even when it was
    # authenticated by a route that does not itself refuse inactive users.
    return bool(user.is_authenticated and user.is_active and _in_group(user, OPERATORS))


def _in_group(user: AbstractBaseUser | AnonymousUser, name: str) -> bool:
    groups = getattr(user, "groups", None)
    return bool(groups is not None and groups.filter(name=name).exists())


def api_user(request: HttpRequest) -> AbstractBaseUser | AnonymousUser:
    """The user the REST API would see for ``request``: its authentication classes, in
    their order. Credentials they refuse (an unknown token, a malformed ``Authorization:
    Token`` header, an inactive user's token) give the anonymous user, where the API
    answers 401; a session then does not count either, as in the API."""
    # Imported here: defining APIView loads REST_FRAMEWORK's permission classes, which are
    # built on this module. Its authenticators are the ones every API view builds (the
    # API's views keep APIView's default list).
    from rest_framework.views import APIView

    authenticators = APIView().get_authenticators()
    try:
        user: AbstractBaseUser | AnonymousUser = Request(
            request, authenticators=authenticators
        ).user
    except AuthenticationFailed:
        return AnonymousUser()
    return user
