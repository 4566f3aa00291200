"""A virtual server's Properties: the IIS tabs, their sub-dialogs, OK / Cancel / Apply.

The whole sheet is one form, as in IIS: edits on several tabs are applied together, and
nothing changes until Apply or OK. Each tab panel posts a hidden ``tab`` input, so a
request carrying only some tabs (a test, or a page without script) changes only those.
The merged values go to ``server_update`` in one call; its errors come back beside their
fields, and an unchanged sheet makes no new configuration version.
"""

from __future__ import annotations

from typing import Any

from cryptography import x509
from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.urls import reverse
from django.utils import timezone

from mailadmin.console.base import author, console_view, render_console
from mailadmin.console.forms import (
    SHEET_PATH_FIELDS,
    SHEET_TABS,
    SheetForm,
    attach_errors,
    describe,
)
from mailadmin.exceptions import ConfigError, FieldError
from mailadmin.models import VirtualServer
from mailadmin.services.config import servers as server_services
from mailadmin.services.config.versions import current_version

TAB_NAMES = [form.tab for form in SHEET_TABS]


def _server(pk: int) -> VirtualServer:
    queryset = VirtualServer.objects.prefetch_related("bindings", "access_entries", "domains")
    return get_object_or_404(queryset, pk=pk)


@console_view
def properties(request: HttpRequest, pk: int, tab: str = "general") -> HttpResponse:
    if tab not in TAB_NAMES:
        raise Http404("No such tab.")
    server = _server(pk)
    if request.method != "POST":
        forms = [cls(server=server) for cls in SHEET_TABS]
        return _render(request, server, forms, tab, [])
    posted = set(request.POST.getlist("tab"))
    forms = [
        cls(request.POST, request.FILES, server=server) if cls.tab in posted else cls(server=server)
        for cls in SHEET_TABS
    ]
    bound = [f for f in forms if f.is_bound]
    active = request.POST.get("active_tab", tab)
    if not all(f.is_valid() for f in bound):
        unplaced = _every_error(request, server, bound)
        for form in bound:
            describe(form)
        return _render(request, server, forms, active, unplaced, status=400)
    data: dict[str, Any] = {}
    for form in bound:
        data.update(form.service_data())
    before = current_version()
    try:
        server = server_services.server_update(server=server, data=data, author=author(request))
    except ConfigError as exc:
        unplaced = exc.errors
        for form in bound:
            unplaced = attach_errors(form, ConfigError(unplaced), SHEET_PATH_FIELDS)
        return _render(request, server, forms, active, unplaced, status=400)
    after = current_version()
    if after == before:
        messages.info(request, "Nothing was changed.")
    else:
        messages.success(request, f"{server.name}: saved as configuration version {after}.")
    if request.POST.get("action") == "ok":
        return redirect("console:server", pk=server.pk)
    target = active if active in TAB_NAMES else "general"
    return redirect("console:properties-tab", pk=server.pk, tab=target)


def _every_error(
    request: HttpRequest, server: VirtualServer, bound: list[SheetForm]
) -> list[FieldError]:
    """Beside the field errors, the services' errors for the fields that did clean and
    the cross-object ones for list lines that parsed; returns those with no field here."""
    data: dict[str, Any] = {}
    for form in bound:
        data.update(form.partial_service_data())
    errors = server_services.server_check(server=server, data=data)
    general = next((f for f in bound if f.tab == "general"), None)
    if general is not None and {"bindings", "proxy_entries"} & set(general.errors):
        raw = {
            "bindings": request.POST.get("bindings", "").splitlines(),
            "trusted_proxies": request.POST.get("proxy_entries", "").splitlines(),
        }
        raw = {k: [line.strip() for line in v if line.strip()] for k, v in raw.items()}
        peers = server_services.running_peers(exclude=server)
        errors += server_services.server_cross_errors(server=server, raw=raw, peers=peers)
    unplaced = errors
    for form in bound:
        unplaced = attach_errors(form, ConfigError(unplaced), SHEET_PATH_FIELDS)
    return unplaced


def _render(
    request: HttpRequest,
    server: VirtualServer,
    forms: list[SheetForm],
    active: str,
    unplaced: list[FieldError],
    status: int = 200,
) -> HttpResponse:
    with_errors = [f.tab for f in forms if f.is_bound and f.errors]
    if with_errors and active not in with_errors:
        active = with_errors[0]
    if active not in TAB_NAMES:
        active = "general"
    context = {
        "tabs": [
            {
                "form": form,
                "name": form.tab,
                "title": form.title,
                "errors": len(form.errors) if form.is_bound else 0,
                "active": form.tab == active,
                "template": f"mailadmin/sheet/{form.tab}.html",
            }
            for form in forms
        ],
        "any_errors": bool(with_errors),
        "active": active,
        "sheet_errors": unplaced,
        "certificate": certificate_summary(server),
        "summary": access_summary(server),
        "action_url": reverse("console:properties-tab", args=[server.pk, active]),
    }
    return render_console(
        request,
        "mailadmin/sheet/sheet.html",
        context,
        node="server",
        server=server,
        status=status,
    )


def certificate_summary(server: VirtualServer) -> dict[str, Any] | None:
    """Who the stored certificate names and when it expires (the key is never shown)."""
    if not server.tls_certificate:
        return None
    try:
        cert = x509.load_pem_x509_certificate(server.tls_certificate.encode())
    except ValueError:
        return {"subject": "(unreadable certificate)", "issuer": "", "days": None}
    not_after = cert.not_valid_after_utc
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "not_after": not_after,
        "days": (not_after - timezone.now()).days,
        "key_set": bool(server.tls_private_key),
    }


def access_summary(server: VirtualServer) -> dict[str, str]:
    methods = [
        label
        for on, label in (
            (server.auth_anonymous, "Anonymous"),
            (server.auth_basic, "Basic"),
            (server.auth_integrated, "Integrated"),
        )
        if on
    ]
    entries = list(server.access_entries.all())

    def listed(kind: str, mode: str) -> str:
        count = sum(1 for e in entries if e.list == kind)
        words = "Only the list below" if mode == "only_list" else "All except the list below"
        return f"{words}, {count} entr{'y' if count == 1 else 'ies'}"

    relay = listed("relay", server.relay_mode)
    if server.relay_allow_authenticated:
        relay += "; authenticated users relay"
    return {
        "auth": ", ".join(methods) or "No method: nobody can connect",
        "tls": "Required" if server.tls_require else "Offered" if server.tls_certificate else "Off",
        "connection": listed("connection", server.connection_mode),
        "relay": relay,
    }
