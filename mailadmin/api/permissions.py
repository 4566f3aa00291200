"""Who may do what through the API: administrators write, operators only read."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request

ADMINISTRATORS = "administrators"
OPERATORS = "operators"


def can_write(user: AbstractBaseUser | AnonymousUser) -> bool:
    """Superusers and members of the administrators group change configuration."""
    if not user.is_authenticated or not user.is_active:
        return False
    return bool(user.is_superuser or user.groups.filter(name=ADMINISTRATORS).exists())  # type: ignore[union-attr]


def can_read(user: AbstractBaseUser | AnonymousUser) -> bool:
    """Writers, and members of the operators group, may look."""
    if can_write(user):
        return True
    return bool(user.is_authenticated and user.groups.filter(name=OPERATORS).exists())  # type: ignore[union-attr]


class IsAdminOrReadOnlyOperator(BasePermission):
    message = "Operators may look but not change anything; ask an administrator."

    def has_permission(self, request: Request, view: Any) -> bool:
        if request.method in SAFE_METHODS:
            return can_read(request.user)
        return can_write(request.user)
