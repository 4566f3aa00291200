"""A server's Domains node: the list, a domain's properties, Delete."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.urls import reverse

from mailadmin.console.base import author, console_view, render_console
from mailadmin.console.forms import (
    DOMAIN_PATH_FIELDS,
    LocalDomainForm,
    RemoteDomainForm,
    attach_errors,
    describe,
)
from mailadmin.exceptions import ConfigError
from mailadmin.models import Domain, DomainKind, VirtualServer
from mailadmin.services.config import domains as domain_services


def _form_class(domain: Domain) -> Any:
    return LocalDomainForm if domain.kind == DomainKind.LOCAL else RemoteDomainForm


@console_view
def domain_list(request: HttpRequest, pk: int) -> HttpResponse:
    server = get_object_or_404(VirtualServer.objects.prefetch_related("domains"), pk=pk)
    return render_console(
        request,
        "mailadmin/domains/list.html",
        {"domains": server.domains.all()},
        node="domains",
        server=server,
    )


@console_view
def domain_properties(request: HttpRequest, pk: int) -> HttpResponse:
    domain = get_object_or_404(Domain.objects.select_related("server"), pk=pk)
    cls = _form_class(domain)
    initial = {name: getattr(domain, name) for name in cls.FIELDS}
    form = cls(request.POST if request.method == "POST" else None, initial=initial)
    unplaced: list[Any] = []
    status = 200
    if request.method == "POST":
        if form.is_valid():
            data = {name: form.cleaned_data[name] for name in cls.FIELDS}
            if domain.is_default:
                data["is_default"] = True  # the box is shown ticked and locked
            if form.cleaned_data.get("outbound_password"):
                data["outbound_password"] = form.cleaned_data["outbound_password"]
            try:
                domain_services.domain_update(domain=domain, data=data, author=author(request))
            except ConfigError as exc:
                unplaced = attach_errors(form, exc, DOMAIN_PATH_FIELDS)
            else:
                messages.success(request, f"Saved the domain {data['name']}.")
                return redirect("console:domains", pk=domain.server_id)
        describe(form)
        status = 400
    return render_console(
        request,
        "mailadmin/domains/properties.html",
        {"domain": domain, "form": form, "form_errors": unplaced},
        node="domains",
        server=domain.server,
        status=status,
    )


@console_view
def domain_delete(request: HttpRequest, pk: int) -> HttpResponse:
    domain = get_object_or_404(Domain.objects.select_related("server"), pk=pk)
    back = reverse("console:domains", args=[domain.server_id])
    if request.method == "POST":
        try:
            domain_services.domain_delete(domain=domain, author=author(request))
        except ConfigError as exc:
            messages.error(request, " ".join(e.message for e in exc.errors))
        else:
            messages.success(request, f"Deleted the domain {domain.name}.")
        return redirect(back)
    return render_console(
        request,
        "mailadmin/confirm.html",
        {
            "title": f"Delete the domain {domain.name}?",
            "message": f"{domain.server.name} will no longer accept or route mail for "
            f"{domain.name} by this entry.",
            "confirm": "Delete",
            "cancel_url": back,
        },
        node="domains",
        server=domain.server,
    )
