"""URL wiring: the console, the API, Django's login pages and admin."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

from mailadmin import views

urlpatterns = [
    path("", views.home, name="home"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("api/v1/", include("mailadmin.api.urls")),
    path("admin/", admin.site.urls),
]
