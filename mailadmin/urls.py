"""URL wiring: the console, the API, Django's login pages and admin."""

from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path, re_path

from mailadmin.console import (
    authblocks,
    create,
    domains,
    machine,
    queues,
    servers,
    sessions,
    sheet,
    tools,
    tracking,
    users,
)
from mailadmin.metrics import metrics_view

console = (
    [
        path("", machine.home, name="home"),
        path("dashboard/", machine.dashboard, name="dashboard"),
        path("state.json", machine.state_feed, name="state"),
        path("servers/new/", create.new_server, name="server-new"),
        path("servers/<int:pk>/", servers.overview, name="server"),
        re_path(
            r"^servers/(?P<pk>[0-9]+)/(?P<action>start|stop|pause)/$",
            servers.set_state,
            name="server-state",
        ),
        path("servers/<int:pk>/delete/", servers.delete, name="server-delete"),
        path("servers/<int:pk>/properties/", sheet.properties, name="properties"),
        path("servers/<int:pk>/properties/<str:tab>/", sheet.properties, name="properties-tab"),
        path("servers/<int:pk>/domains/", domains.domain_list, name="domains"),
        path("servers/<int:pk>/domains/new/", create.new_domain, name="domain-new"),
        path("servers/<int:pk>/sessions/", sessions.session_list, name="sessions"),
        path(
            "servers/<int:pk>/sessions/terminate/",
            sessions.session_terminate,
            name="session-terminate",
        ),
        path("servers/<int:pk>/relay-test/", tools.relay_tester, name="relay-test"),
        path("servers/<int:pk>/auth-blocks/", authblocks.block_list, name="auth-blocks"),
        path(
            "servers/<int:pk>/auth-blocks/unblock/",
            authblocks.block_lift,
            name="auth-unblock",
        ),
        path("domains/<int:pk>/", domains.domain_properties, name="domain"),
        path("domains/<int:pk>/delete/", domains.domain_delete, name="domain-delete"),
        path("users/", users.user_list, name="users"),
        path("users/new/", users.user_new, name="user-new"),
        path("users/<int:pk>/", users.user_properties, name="user"),
        path("users/<int:pk>/password/", users.user_password, name="user-password"),
        path("users/<int:pk>/delete/", users.user_delete, name="user-delete"),
        path("queues/", queues.queue_list, name="queues"),
        path("queues/action/", queues.queue_action, name="queue-action"),
        path("queues/messages/", queues.message_list, name="messages"),
        path("queues/messages/action/", queues.message_action, name="message-action"),
        path("queues/messages/<str:queue_id>/", queues.message_detail, name="message"),
        re_path(
            r"^queues/messages/(?P<queue_id>[^/]+)/(?P<action>delete|delete-ndr)/$",
            queues.message_delete,
            name="message-delete",
        ),
        path("tracking/", tracking.search, name="tracking"),
        path("tracking/<str:queue_id>/", tracking.timeline, name="tracking-message"),
        path("audit/", tools.audit_log, name="audit"),
        path("config/", tools.config_page, name="config"),
        path("config/export/", tools.config_export, name="config-export"),
    ],
    "console",
)

urlpatterns = [
    path("", include(console)),
    # Login, logout and password change only: no password reset by e-mail, which would let
    # anyone have reset links mailed (console users are few and set up by an administrator).
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path(
        "accounts/password_change/", auth_views.PasswordChangeView.as_view(), name="password_change"
    ),
    path(
        "accounts/password_change/done/",
        auth_views.PasswordChangeDoneView.as_view(),
        name="password_change_done",
    ),
    path("api/v1/", include("mailadmin.api.urls")),
    path("admin/", admin.site.urls),
    path("metrics", metrics_view, name="metrics"),
]
