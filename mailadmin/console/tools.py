"""Beyond IIS: Test relay, the audit log, and the configuration document's export/import."""

from __future__ import annotations

import json
from typing import Any

import yaml
from django.contrib import messages
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect

from mailadmin import configdoc
from mailadmin.audit import audit_entries, snapshot_changes
from mailadmin.console.base import author, console_view, render_console
from mailadmin.console.forms import ImportForm, RelayTestForm
from mailadmin.exceptions import ConfigError, FieldError
from mailadmin.models import VirtualServer
from mailadmin.relaytest import relay_test
from mailadmin.services.config.versions import canonical_body, current_version
from smtpworker.core.grammar import GrammarError

AUDIT_PAGE = 25


@console_view
def relay_tester(request: HttpRequest, pk: int) -> HttpResponse:
    """A GET form: it changes nothing, so operators may use it too."""
    server = get_object_or_404(VirtualServer, pk=pk)
    form = RelayTestForm(request.GET if "recipient" in request.GET else None)
    result = None
    if form.is_bound and form.is_valid():
        data = form.cleaned_data
        user = (data["username"] or "user") if data["authenticated"] else None
        try:
            result = relay_test(
                server,
                client_ip=data["client_ip"],
                authenticated_user=user,
                tls=data["tls"],
                sender=data["sender"],
                recipient=data["recipient"],
            )
        except GrammarError as exc:
            form.add_error("client_ip", str(exc))
    return render_console(
        request,
        "mailadmin/tools/relaytest.html",
        {"form": form, "result": result},
        node="relaytest",
        server=server,
    )


@console_view
def audit_log(request: HttpRequest) -> HttpResponse:
    before = request.GET.get("before")
    before_version = int(before) if before and before.isdigit() else None
    entries = audit_entries(limit=AUDIT_PAGE, before_version=before_version)
    older = entries[-1].version if len(entries) == AUDIT_PAGE and entries[-1].version > 1 else None
    return render_console(
        request, "mailadmin/tools/audit.html", {"entries": entries, "older": older}, node="audit"
    )


@console_view
def config_page(request: HttpRequest) -> HttpResponse:
    form = ImportForm(*((request.POST, request.FILES) if request.method == "POST" else ()))
    context: dict[str, Any] = {"form": form}
    if request.method == "POST" and form.is_valid():
        text = form.cleaned_data["text"]
        if request.POST.get("confirm"):
            return _apply(request, text, context)
        context.update(_preview(text, author(request)))
        context["document"] = text
    status = 400 if form.errors or context.get("errors") else 200
    return render_console(
        request, "mailadmin/tools/config.html", context, node="config", status=status
    )


class _Rollback(Exception):
    pass


def _preview(text: str, who: str) -> dict[str, Any]:
    """What importing ``text`` would change, found by importing it in a transaction that
    is then rolled back (the same code path as the real import, nothing kept)."""
    before, _digest = canonical_body()
    after: dict[str, Any] = {}
    try:
        with transaction.atomic():
            configdoc.document_import(configdoc.parse_text(text), author=who)
            after, _digest = canonical_body()
            raise _Rollback
    except _Rollback:
        return {"changes": snapshot_changes(before, after), "errors": [], "previewed": True}
    except ConfigError as exc:
        return {"changes": [], "errors": exc.errors, "previewed": True}


def _apply(request: HttpRequest, text: str, context: dict[str, Any]) -> HttpResponse:
    try:
        result = configdoc.document_import(configdoc.parse_text(text), author=author(request))
    except ConfigError as exc:
        errors: list[FieldError] = exc.errors
        context.update({"errors": errors, "changes": [], "previewed": True, "document": text})
        return render_console(
            request, "mailadmin/tools/config.html", context, node="config", status=400
        )
    if result.changed:
        messages.success(request, f"Imported: configuration version {result.version}.")
    else:
        messages.info(request, "The document matches the configuration; nothing changed.")
    return redirect("console:audit")


@console_view
def config_export(request: HttpRequest) -> HttpResponse:
    document = configdoc.document_export()
    version = current_version()
    if request.GET.get("format") == "yaml":
        body = yaml.safe_dump(document, sort_keys=False, allow_unicode=True)
        content_type, ext = "application/yaml", "yaml"
    else:
        body = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
        content_type, ext = "application/json", "json"
    response = HttpResponse(body, content_type=f"{content_type}; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="mailadmin-v{version}.{ext}"'
    response["X-Config-Version"] = str(version)
    return response
