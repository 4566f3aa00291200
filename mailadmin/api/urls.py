"""API routes under /api/v1/."""

from __future__ import annotations

from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView
from rest_framework.routers import DefaultRouter

from mailadmin.api import queue_views, tracking, views


class Router(DefaultRouter):
    # No ".json" suffix routes: the API takes ?format= (and Accept). DRF passes a suffix to
    # the view as a format= keyword, which the actions and plain ViewSets do not take (500).
    include_format_suffixes = False


class ApiDocsView(SpectacularSwaggerSplitView):
    """Swagger UI with its start-up script served as a file of its own (``?script``) and
    no inline style, so the console's Content-Security-Policy holds on it too."""

    template_name = "mailadmin/api_docs.html"
    schema = None  # a page, not an API operation: left out of the schema, as its parent is


router = Router()
router.register("servers", views.ServerViewSet, basename="server")
router.register("domains", views.DomainViewSet, basename="domain")
router.register("users", views.UserViewSet, basename="user")
router.register("sessions", views.SessionViewSet, basename="session")
router.register("workers", views.WorkerViewSet, basename="worker")
router.register("queues", queue_views.QueueViewSet, basename="queue")
router.register("messages", queue_views.MessageViewSet, basename="message")
router.register("traffic", queue_views.TrafficViewSet, basename="traffic")
router.register("tracking", tracking.TrackingViewSet, basename="tracking")

urlpatterns = [
    path("", include(router.urls)),
    path("config/", views.ConfigDocumentView.as_view(), name="config-document"),
    path("config/version/", views.ConfigVersionView.as_view(), name="config-version"),
    path("token/", views.TokenView.as_view(), name="token"),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", ApiDocsView.as_view(url_name="schema"), name="docs"),
]
