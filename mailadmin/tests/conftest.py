"""Shared fixtures: real database, real Redis (REDIS_URL, started by `make test`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from rest_framework.test import APIClient

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings: Any) -> None:
    # Real PBKDF2/SCRAM, with fewer rounds so creating accounts stays quick.
    settings.MAILADMIN_PASSWORD_ITERATIONS = 1000


@pytest.fixture
def admin_user(db: None) -> User:
    return User.objects.create_superuser("root", "root@example.test", "root-password")


@pytest.fixture
def operator_user(db: None) -> User:
    user = User.objects.create_user("watcher", password="watcher-password")
    # get_or_create: transactional tests flush the groups the data migration made.
    user.groups.add(Group.objects.get_or_create(name="operators")[0])
    return user


@pytest.fixture
def api(admin_user: User) -> APIClient:
    client = APIClient()
    client.force_login(admin_user)
    return client


@pytest.fixture
def operator_api(operator_user: User) -> APIClient:
    client = APIClient()
    client.force_login(operator_user)
    return client


@pytest.fixture
def typical_site() -> dict[str, Any]:
    return json.loads((EXAMPLES / "typical-site.json").read_text())


def make_server(api: APIClient, **fields: Any) -> dict[str, Any]:
    body = {"name": "Test", "default_domain": "test.example", "bindings": ["127.0.0.2:2525"]}
    body.update(fields)
    response = api.post("/api/v1/servers/", body, format="json")
    assert response.status_code == 201, response.content
    return response.json()
