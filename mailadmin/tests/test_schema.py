"""The OpenAPI schema: valid, warning-free, complete and described."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

API_PATHS = {
    "/api/v1/servers/": {"get", "post"},
    "/api/v1/servers/{id}/": {"get", "put", "patch", "delete"},
    "/api/v1/servers/{id}/start/": {"post"},
    "/api/v1/servers/{id}/stop/": {"post"},
    "/api/v1/servers/{id}/pause/": {"post"},
    "/api/v1/domains/": {"get", "post"},
    "/api/v1/domains/{id}/": {"get", "put", "patch", "delete"},
    "/api/v1/users/": {"get", "post"},
    "/api/v1/users/{id}/": {"get", "put", "patch", "delete"},
    "/api/v1/config/": {"get", "put"},
    "/api/v1/config/version/": {"get"},
    "/api/v1/token/": {"post"},
    "/api/v1/sessions/": {"get"},
    "/api/v1/sessions/{id}/terminate/": {"post"},
    "/api/v1/workers/": {"get"},
    "/api/v1/servers/{id}/check-relay/": {"post"},
    "/api/v1/servers/{id}/auth-blocks/": {"get"},
    "/api/v1/servers/{id}/auth-blocks/unblock/": {"post"},
    "/api/v1/queues/": {"get"},
    "/api/v1/queues/{id}/retry/": {"post"},
    "/api/v1/queues/{id}/suspend/": {"post"},
    "/api/v1/queues/{id}/resume/": {"post"},
    "/api/v1/messages/": {"get"},
    "/api/v1/messages/{queue_id}/": {"get"},
    "/api/v1/messages/{queue_id}/retry/": {"post"},
    "/api/v1/messages/{queue_id}/suspend/": {"post"},
    "/api/v1/messages/{queue_id}/resume/": {"post"},
    "/api/v1/messages/{queue_id}/delete/": {"post"},
    "/api/v1/messages/{queue_id}/delete-ndr/": {"post"},
    "/api/v1/messages/bulk/": {"post"},
    "/api/v1/traffic/": {"get"},
    "/api/v1/tracking/": {"get"},
}
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


def test_it_generates_a_valid_schema_without_warnings(schema: dict[str, Any]) -> None:
    assert schema["openapi"].startswith("3.")
    assert schema["info"]["title"] == "mailadmin API"


def test_it_lists_every_api_path_and_method(schema: dict[str, Any]) -> None:
    methods = {
        path: {m for m in operations if m in HTTP_METHODS}
        for path, operations in schema["paths"].items()
    }
    assert methods == API_PATHS


def test_every_operation_is_described(schema: dict[str, Any]) -> None:
    undescribed = [
        f"{method.upper()} {path}"
        for path, operations in schema["paths"].items()
        for method, operation in operations.items()
        if method in HTTP_METHODS and not (operation.get("description") or operation.get("summary"))
    ]
    assert undescribed == []


def test_operation_ids_are_unique(schema: dict[str, Any]) -> None:
    ids = [
        operation["operationId"]
        for operations in schema["paths"].values()
        for method, operation in operations.items()
        if method in HTTP_METHODS
    ]
    assert len(ids) == len(set(ids))


def test_secrets_are_write_only_in_the_schema(schema: dict[str, Any]) -> None:
    components = schema["components"]["schemas"]
    assert "password" not in components["User"]["properties"]
    assert "password" in components["UserRequest"]["properties"]
    assert "private_key" not in components["ServerTls"]["properties"]
    assert "private_key" in components["ServerTlsRequest"]["properties"]
    assert components["ServerTls"]["properties"]["private_key_set"]["type"] == "boolean"


@pytest.mark.django_db
def test_it_serves_the_schema_to_an_administrator(api: APIClient) -> None:
    response = api.get("/api/v1/schema/?format=json")
    assert response.status_code == 200
    body = response.json()
    assert body["openapi"].startswith("3.")
    assert set(API_PATHS) <= set(body["paths"])


@pytest.mark.django_db
def test_it_serves_the_docs_page_to_an_administrator(api: APIClient) -> None:
    response = api.get("/api/v1/docs/")
    assert response.status_code == 200
    assert b"swagger" in response.content.lower()
    # Its start-up script is a file of its own (the Content-Security-Policy runs no inline
    # script), and that script loads the schema.
    assert b'<script src="/api/v1/docs/?script="></script>' in response.content
    script = api.get("/api/v1/docs/?script=")
    assert script.status_code == 200
    assert script["Content-Type"].startswith("application/javascript")
    assert b"/api/v1/schema/" in script.content
