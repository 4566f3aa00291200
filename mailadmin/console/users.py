"""SMTP users: the accounts that may AUTH, with password set and reset.

Passwords go straight to ``user_create`` / ``user_update``, which keep only verifiers;
nothing here stores, logs or shows one back.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.urls import reverse

from mailadmin.console.base import author, console_view, render_console
from mailadmin.console.forms import (
    USER_PATH_FIELDS,
    AccountFields,
    NewUserForm,
    PasswordFields,
    attach_errors,
    describe,
)
from mailadmin.exceptions import ConfigError
from mailadmin.models import SmtpUser
from mailadmin.services.config import users as user_services


def _data(form: forms.Form, *names: str) -> dict[str, Any]:
    data = {name: form.cleaned_data[name] for name in names}
    if "servers" in data:
        data["servers"] = list(data["servers"])
    return data


def _page(
    request: HttpRequest, template: str, context: dict[str, Any], status: int = 200
) -> HttpResponse:
    return render_console(request, template, context, node="users", status=status)


@console_view
def user_list(request: HttpRequest) -> HttpResponse:
    users = SmtpUser.objects.prefetch_related("servers").order_by("username")
    return _page(request, "mailadmin/users/list.html", {"users": users})


def _save(
    request: HttpRequest, form: forms.Form, action: Any, template: str, context: dict[str, Any]
) -> HttpResponse:
    """Validate, call the service, and on error show the form again with the messages."""
    unplaced: list[Any] = []
    if request.method == "POST" and form.is_valid():
        try:
            text = action()
        except ConfigError as exc:
            unplaced = attach_errors(form, exc, USER_PATH_FIELDS)
        else:
            messages.success(request, text)
            return redirect("console:users")
    status = 400 if request.method == "POST" else 200
    describe(form)
    return _page(request, template, {**context, "form": form, "form_errors": unplaced}, status)


@console_view
def user_new(request: HttpRequest) -> HttpResponse:
    form = NewUserForm(request.POST if request.method == "POST" else None)

    def create() -> str:
        data = _data(form, "username", "password", "is_active", "allow_cram_md5", "servers")
        user = user_services.user_create(data=data, author=author(request))
        return f"Created the SMTP user {user.username}."

    return _save(request, form, create, "mailadmin/users/form.html", {"title": "New SMTP user"})


@console_view
def user_properties(request: HttpRequest, pk: int) -> HttpResponse:
    user = get_object_or_404(SmtpUser.objects.prefetch_related("servers"), pk=pk)
    initial = {
        "is_active": user.is_active,
        "allow_cram_md5": user.allow_cram_md5,
        "servers": list(user.servers.all()),
    }
    form = AccountFields(request.POST if request.method == "POST" else None, initial=initial)

    def update() -> str:
        data = _data(form, "is_active", "allow_cram_md5", "servers")
        user_services.user_update(user=user, data=data, author=author(request))
        return f"Saved {user.username}."

    context = {"title": f"{user.username} Properties", "account": user}
    return _save(request, form, update, "mailadmin/users/form.html", context)


@console_view
def user_password(request: HttpRequest, pk: int) -> HttpResponse:
    user = get_object_or_404(SmtpUser, pk=pk)
    form = PasswordFields(request.POST if request.method == "POST" else None)

    def reset() -> str:
        user_services.user_update(user=user, data=_data(form, "password"), author=author(request))
        return f"Set a new password for {user.username}."

    context = {"title": f"Set password for {user.username}", "account": user}
    return _save(request, form, reset, "mailadmin/users/form.html", context)


@console_view
def user_delete(request: HttpRequest, pk: int) -> HttpResponse:
    user = get_object_or_404(SmtpUser, pk=pk)
    if request.method == "POST":
        user_services.user_delete(user=user, author=author(request))
        messages.success(request, f"Deleted the SMTP user {user.username}.")
        return redirect("console:users")
    context = {
        "title": f"Delete the SMTP user {user.username}?",
        "message": "Clients logging in with this account will be refused from the next "
        "connection on.",
        "confirm": "Delete",
        "cancel_url": reverse("console:users"),
    }
    return _page(request, "mailadmin/confirm.html", context)
