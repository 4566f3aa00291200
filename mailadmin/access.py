"""Who may do what, for every door into the web side: the console's pages, the REST API
(``mailadmin.api.permissions`` wraps these rules in DRF permission classes) and ``/metrics``.

Two groups: members of ``administrators`` (and superusers) change configuration and act on
the queue; members of ``operators`` only look. Everyone else, and any inactive account,
gets nothing.
"""

from __future__ import annotations

from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import AnonymousUser

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
