"""Who may do what through the API: administrators write, operators only read."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import AnonymousUser
from rest_framework.permissions import SAFE_METHODS, BasePermission
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


class IsAdminOrReadOnlyOperator(BasePermission):
    message = "Operators may look but not change anything; ask an administrator."

    def has_permission(self, request: Request, view: Any) -> bool:
        if request.method in SAFE_METHODS:
            return can_read(request.user)
        return can_write(request.user)


class IsReader(BasePermission):
    """Readers (operators and administrators) may use it whatever the method: for actions
    that only compute an answer, such as the relay test."""

    message = "Log in as an operator or administrator."

    def has_permission(self, request: Request, view: Any) -> bool:
        return can_read(request.user)
