"""A NUL byte in a query string is refused before any view (mailadmin/middleware.py).

PostgreSQL cannot compare a text holding NUL: before this check, the API fuzzer found
parameters that reached a query with one and answered 500 there.
"""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("path", "param"),
    [
        ("/api/v1/servers/", "search"),  # DRF's SearchFilter answered a bare list
        ("/api/v1/users/", "search"),
        ("/api/v1/traffic/", "server"),  # read by the view itself: a 500 on PostgreSQL
        ("/api/v1/tracking/", "q"),
        ("/api/v1/messages/", "sender"),
    ],
)
def test_the_api_answers_a_field_error(api: APIClient, path: str, param: str) -> None:
    response = api.get(path, {param: "Relay\x00", "limit": "5"})
    assert response.status_code == 400
    assert response.json() == {
        "detail": "Null characters are not allowed in the query string.",
        param: ["Null characters are not allowed."],
    }


def test_the_console_answers_a_plain_400(admin_user: User) -> None:
    client = Client()
    client.force_login(admin_user)
    response = client.get("/queues/messages/", {"sender": "a\x00"})
    assert response.status_code == 400
    assert response.content.decode() == "Null characters are not allowed. (in sender)"


def test_it_comes_before_authentication() -> None:
    response = APIClient().get("/api/v1/servers/", {"search": "a\x00"})
    assert response.status_code == 400


def test_a_clean_query_passes(api: APIClient) -> None:
    assert api.get("/api/v1/servers/", {"search": "Relay"}).status_code == 200
