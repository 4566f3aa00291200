"""New SMTP Virtual Server and New Domain, as IIS's wizards."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.urls import reverse

from mailadmin.console.base import author, console_view, render_console
from mailadmin.console.forms import (
    DomainKindForm,
    DomainNameForm,
    ServerBindingForm,
    ServerDomainForm,
    ServerHomeForm,
    ServerNameForm,
)
from mailadmin.console.wizards import Step, Wizard, dry_run, run_wizard
from mailadmin.exceptions import FieldError
from mailadmin.models import Domain, DomainKind, ServerState, VirtualServer
from mailadmin.services.config import domains as domain_services
from mailadmin.services.config import servers as server_services

PLACEHOLDER_DOMAIN = "wizard.invalid"


SERVER_STEPS = (
    Step(ServerNameForm, "Name", "Type a name for the SMTP virtual server."),
    Step(ServerBindingForm, "IP address", "Select the IP address and port it listens on."),
    Step(ServerHomeForm, "Home directory", "Where this server keeps its mail directories."),
    Step(ServerDomainForm, "Default domain", "The local domain this server delivers to Drop."),
)
SERVER_PATHS: dict[tuple[str | int, ...], str] = {
    ("name",): "name",
    ("description",): "description",
    ("bindings",): "ip_address",
    ("state",): "ip_address",
    ("home_directory",): "home_directory",
    ("default_domain",): "default_domain",
}


def _server_data(data: dict[str, Any], step: int) -> dict[str, Any]:
    answered = step >= 1
    return {
        "name": data.get("name", ""),
        "description": data.get("description", ""),
        "bindings": [data["binding"]] if answered else [server_services.DEFAULT_BINDING],
        "state": ServerState.STARTED if answered and data.get("start") else ServerState.STOPPED,
        "home_directory": data.get("home_directory", ""),
        "default_domain": data.get("default_domain") or PLACEHOLDER_DOMAIN,
    }


def _check_server(data: dict[str, Any], step: int) -> list[FieldError]:
    def attempt() -> None:
        server = VirtualServer()
        server_services.server_apply(server, _server_data(data, step))
        server_services.server_check_conflicts(server)

    return dry_run(attempt)


@console_view
def new_server(request: HttpRequest) -> HttpResponse:
    def finish(data: dict[str, Any]) -> HttpResponse:
        server = server_services.server_create(
            data=_server_data(data, len(SERVER_STEPS)), author=author(request)
        )
        messages.success(
            request, f"Created {server.name}. Set its access and delivery in Properties."
        )
        return redirect("console:server", pk=server.pk)

    wizard = Wizard(
        title="New SMTP Virtual Server Wizard",
        steps=SERVER_STEPS,
        paths=SERVER_PATHS,
        check=_check_server,
        finish=finish,
        cancel_url=reverse("console:home"),
    )

    def render(context: dict[str, Any], status: int) -> HttpResponse:
        return render_console(
            request, "mailadmin/wizard.html", context, node="machine", status=status
        )

    return run_wizard(request, wizard, render)


DOMAIN_STEPS = (
    Step(DomainKindForm, "Domain type", "Select the type of domain to create."),
    Step(DomainNameForm, "Domain name", "Type the name of the domain."),
)
DOMAIN_PATHS: dict[tuple[str | int, ...], str] = {("name",): "name", ("default",): "kind"}


@console_view
def new_domain(request: HttpRequest, pk: int) -> HttpResponse:
    server = get_object_or_404(VirtualServer, pk=pk)

    def check(data: dict[str, Any], step: int) -> list[FieldError]:
        if step == 0:
            return []
        fields = {"name": data["name"], "kind": data["kind"]}
        return dry_run(lambda: domain_services.domain_apply(Domain(server=server), fields))

    def finish(data: dict[str, Any]) -> HttpResponse:
        domain = domain_services.domain_create(
            server=server, data={"name": data["name"], "kind": data["kind"]}, author=author(request)
        )
        messages.success(request, f"Added the {domain.get_kind_display().lower()} domain {domain}.")
        if domain.kind == DomainKind.REMOTE:
            return redirect("console:domain", pk=domain.pk)
        return redirect("console:domains", pk=server.pk)

    wizard = Wizard(
        title="New SMTP Domain Wizard",
        steps=DOMAIN_STEPS,
        paths=DOMAIN_PATHS,
        check=check,
        finish=finish,
        cancel_url=reverse("console:domains", args=[server.pk]),
    )

    def render(context: dict[str, Any], status: int) -> HttpResponse:
        return render_console(
            request, "mailadmin/wizard.html", context, node="domains", server=server, status=status
        )

    return run_wizard(request, wizard, render)
