"""Console views. The full IIS Manager-style console arrives with its own issue; until
then the home page links the API, its docs and the configuration in force."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from mailadmin.models import ConfigSnapshot, VirtualServer


@login_required
def home(request: HttpRequest) -> HttpResponse:
    latest = ConfigSnapshot.objects.order_by("-id").first()
    servers = VirtualServer.objects.prefetch_related("bindings").order_by("name")
    return render(request, "mailadmin/home.html", {"servers": servers, "latest": latest})
