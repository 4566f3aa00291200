"""Who may do what through the API: administrators write, operators only read.

The rules are ``mailadmin.access``'s, shared with the console and ``/metrics``; this module
only fits them to DRF's permission classes.
"""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request

from mailadmin.access import can_read, can_write


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
