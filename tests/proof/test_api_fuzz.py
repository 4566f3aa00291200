"""Suite 4: schemathesis against the REST API's own OpenAPI document.

The document is the one ``/api/v1/schema/`` serves (``test_the_fuzzed_schema_is_the_served_one``
checks that), loaded with schemathesis's Python API and called in-process through the
WSGI application, so every request goes through Django's whole middleware stack and
DRF's authentication, as one from a script would.

* As an administrator (token header): no generated request, valid or not, gets a 5xx, and
  every response matches the schema (status code documented, body and content type).
* As an operator (token header) and anonymously: the same, and no request changes
  anything (every configuration and queue row compared before and after).
"""

from __future__ import annotations

import gc
import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
import werkzeug
from django.contrib.auth.models import User
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from django.urls import Resolver404, URLPattern, URLResolver, get_resolver, resolve
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.renderers import OpenApiJsonRenderer
from hypothesis import HealthCheck, settings
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from mailadmin import configdoc
from mailadmin.api.schema import ApiSchema
from mailadmin.models import (
    Domain,
    Message,
    SmtpUser,
    VirtualServer,
)
from mailadmin.tests.factories import db_state, spool
from mailadmin.wsgi import application
from tests.pytest_plugin import forget_failed_logins

# Generated multipart bodies big enough for Django to spool to temporary files: one that a
# parser then refuses is closed by its finaliser, not explicitly (Django and DRF
# internals), which Python reports as a ResourceWarning. Collected after every case of
# this module (_collect_garbage) so it cannot surface in a later, unrelated test.
pytestmark = [
    pytest.mark.django_db,
    pytest.mark.usefixtures("fast_hashing", "_collect_garbage"),
    pytest.mark.filterwarnings("ignore:unclosed file <_io.BufferedRandom:ResourceWarning"),
]

SCHEMA_URL = "/api/v1/schema/"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
# Examples per operation: enough to get past the first field checks of every serializer,
# few enough that the suite stays well inside `make test`. Operators and anonymous clients
# are refused before their input is parsed, so fewer examples show as much there.
MAX_EXAMPLES = 25
FEW_EXAMPLES = 6
# Terminating a session waits up to 2 s for the node's reply (there is no node here).
SLOW = "/terminate/$"


def served_document() -> dict[str, Any]:
    """The OpenAPI document as /api/v1/schema/ renders it (the same generator and renderer,
    so the tests can be collected without a database)."""
    generated = SchemaGenerator().get_schema(request=None, public=True)
    return json.loads(OpenApiJsonRenderer().render(generated))


def load(*, phases: list[str], max_examples: int) -> Any:
    """The API's schema, called in-process through the WSGI application. ``coverage`` adds
    schemathesis's boundary values and unexpected methods for every field, which for the
    big server bodies is hundreds of cases: `make proof` runs it (``long``)."""
    loaded = schemathesis.openapi.from_dict(served_document())
    loaded.app = application
    loaded.location = SCHEMA_URL
    loaded.config.phases.update(phases=phases)
    loaded.config.generation.update(
        modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], max_examples=max_examples
    )
    return loaded


schema = load(phases=["examples", "fuzzing"], max_examples=MAX_EXAMPLES).exclude(path_regex=SLOW)
slow_schema = load(phases=["examples", "fuzzing"], max_examples=2).include(path_regex=SLOW)
few_schema = load(phases=["fuzzing"], max_examples=FEW_EXAMPLES).exclude(path_regex=SLOW)
full_schema = load(phases=["examples", "coverage", "fuzzing"], max_examples=MAX_EXAMPLES)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
FUZZ = settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
FEW = settings(FUZZ, max_examples=FEW_EXAMPLES)


@pytest.fixture(autouse=True)
def _keep_the_test_connection() -> Iterator[None]:
    """Django closes the database connection at the end of every request it serves
    through WSGI; in a test that is the transaction holding the fixtures. Its test client
    unhooks the same handlers while it runs, and so does this."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


@pytest.fixture
def site(settings: Any, tmp_path: Path, admin_user: User) -> dict[str, list[str]]:
    """The typical site, plus one queued message: real rows for the fuzzed ids to hit.
    Returns, per path prefix, path parameter values that exist."""
    settings.MAILADMIN_MAILROOT = tmp_path / "mailroot"
    configdoc.document_import(json.loads((EXAMPLES / "typical-site.json").read_text()), author="t")
    queue_id = spool(
        "a@corp.test",
        "b@example.com",
        data=b"Subject: queued\r\n\r\nhello\r\n",
        server="CorpServer",
    )
    return {
        "/api/v1/servers/": [str(pk) for pk in VirtualServer.objects.values_list("pk", flat=True)],
        "/api/v1/domains/": [str(pk) for pk in Domain.objects.values_list("pk", flat=True)],
        "/api/v1/users/": [str(pk) for pk in SmtpUser.objects.values_list("pk", flat=True)],
        "/api/v1/queues/": ["example.com", "[10.0.0.2]"],
        "/api/v1/messages/": [queue_id],
        "/api/v1/sessions/": ["node1:0123456789abcdef"],
    }


class ClosingClient(werkzeug.Client):
    """Reads and closes every response: werkzeug closes the request's input stream (a
    temporary file for a large generated body) only then, and schemathesis does not."""

    def open(self, *args: Any, **kwargs: Any) -> Any:
        response = super().open(*args, **kwargs)
        response.get_data()
        response.close()
        return response


def call(case: Any, user: User | None = None) -> Any:
    headers = {"Authorization": f"Token {token_for(user)}"} if user else None
    return case.call(headers=headers, session=ClosingClient(application, werkzeug.Response))


def token_for(user: User) -> str:
    return Token.objects.get_or_create(user=user)[0].key


_turn = itertools.count()


def aim(case: Any, known: dict[str, list[str]]) -> None:
    """Every other case is sent to an object that exists, so detail views, updates and
    actions see real rows and not only 404s."""
    if not case.path_parameters or next(_turn) % 2:
        return
    values = next(v for prefix, v in known.items() if case.path.startswith(prefix))
    (name,) = case.path_parameters
    case.path_parameters[name] = values[next(_turn) % len(values)]


def resolves(path: str) -> bool:
    try:
        resolve(path)
    except Resolver404:
        return False
    return True


def administrator_case(case: Any, site: dict[str, list[str]], admin_user: User) -> None:
    aim(case, site)
    response = call(case, admin_user)
    case.validate_response(response, checks=CHECKS)


@schema.parametrize()
@FUZZ
def test_as_an_administrator(case: Any, site: dict[str, list[str]], admin_user: User) -> None:
    administrator_case(case, site, admin_user)


@slow_schema.parametrize()
@settings(FUZZ, max_examples=2)
def test_slow_operations_as_an_administrator(
    case: Any, site: dict[str, list[str]], admin_user: User
) -> None:
    administrator_case(case, site, admin_user)


@pytest.fixture
def _collect_garbage() -> Iterator[None]:
    yield
    gc.collect()  # inside the test's warning filters, not in some later test


@pytest.mark.long
@full_schema.parametrize()
@FUZZ
def test_as_an_administrator_with_boundary_values(
    case: Any, site: dict[str, list[str]], admin_user: User
) -> None:
    administrator_case(case, site, admin_user)


@few_schema.parametrize()
@FEW
def test_as_an_operator_changes_nothing(
    case: Any, site: dict[str, list[str]], operator_user: User
) -> None:
    aim(case, site)
    token_for(operator_user)
    before = db_state()
    response = call(case, operator_user)
    case.validate_response(response, checks=CHECKS)
    assert db_state() == before, f"{case.method} {case.formatted_path} changed the database"
    if case.method.upper() not in ("GET", "HEAD", "OPTIONS") and response.status_code < 400:
        assert case.path.endswith("/check-relay/"), (case.method, case.path, response.status_code)


@few_schema.parametrize()
@FEW
def test_anonymously_changes_nothing(case: Any, site: dict[str, list[str]]) -> None:
    aim(case, site)
    # Each generated name and password is a failed login from 127.0.0.1; the sixth in one
    # test would be locked out (429, proven in test_hostile_secrets), not answered 400.
    forget_failed_logins()
    before = db_state()
    response = call(case)
    case.validate_response(response, checks=CHECKS)
    assert db_state() == before, f"{case.method} {case.formatted_path} changed the database"
    method = response.request.method
    # Routing, and DRF's choice of renderer for ?format=, come before authentication and
    # say no more than "not found".
    query = case.query or {}
    unknown_format = query.get("format") not in (None, "", "json", "yaml")
    # A parameter whose value is an empty list is not sent at all, its name included.
    sent = {k: (v if isinstance(v, list) else [v]) for k, v in query.items()}
    sent = {k: values for k, values in sent.items() if values}
    texts = [str(k) for k in sent] + [str(v) for values in sent.values() for v in values]
    if any("\x00" in text for text in texts):
        expected = 400  # a malformed query string, refused before any view (middleware)
    elif not resolves(case.formatted_path) or unknown_format:
        expected = 404
    elif case.path != "/api/v1/token/":
        expected = 401
    else:  # the one open door: a name and password that match no one
        expected = {"POST": 400, "OPTIONS": 200}.get(method, 405)  # OPTIONS: DRF's metadata
    assert response.status_code == expected, (method, case.formatted_path, response.status_code)


def test_the_fuzzed_schema_is_the_served_one(admin_user: User) -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token_for(admin_user)}")
    response = client.get(SCHEMA_URL, {"format": "json"})
    assert response.status_code == 200
    assert json.loads(response.content) == served_document()
    assert len(list(full_schema.get_all_operations())) >= 40


def test_every_api_view_documents_its_errors() -> None:
    """A new view without ApiSchema answers 400/401/403/404 its schema does not list."""
    undocumented = []
    for pattern in get_resolver("mailadmin.api.urls").url_patterns:
        for callback in _callbacks(pattern):
            view = getattr(callback, "cls", None)
            if view is None or view.schema is None or view.__module__.startswith("drf_spectacular"):
                continue  # not an API view, or left out of the schema (DRF's router root)
            if not isinstance(view.schema, ApiSchema):
                undocumented.append(view.__name__)
    assert not undocumented, f"set schema = ApiSchema() on {sorted(set(undocumented))}"


def _callbacks(pattern: Any) -> Iterator[Any]:
    if isinstance(pattern, URLResolver):
        for sub in pattern.url_patterns:
            yield from _callbacks(sub)
    elif isinstance(pattern, URLPattern):
        yield pattern.callback


# --- What this suite found, pinned down -----------------------------------------------------


@pytest.fixture
def admin_api(admin_user: User) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token_for(admin_user)}")
    return client


def test_a_bad_age_filter_is_a_400_not_a_500(
    admin_api: APIClient, site: dict[str, list[str]]
) -> None:
    for value in ("null", "nan", "inf", "-1", "1e300"):
        response = admin_api.get("/api/v1/messages/", {"older_than_minutes": value})
        assert response.status_code == 400, (value, response.content)
        assert list(response.json()) == ["older_than_minutes"]
    assert admin_api.get("/api/v1/messages/", {"newer_than_minutes": "90"}).status_code == 200


def test_http_delete_does_not_reach_the_delete_action(
    admin_api: APIClient, site: dict[str, list[str]]
) -> None:
    (queue_id,) = site["/api/v1/messages/"]
    assert admin_api.delete(f"/api/v1/messages/{queue_id}/").status_code == 405
    assert admin_api.delete("/api/v1/messages/bulk/").status_code == 405
    assert Message.objects.filter(queue_id=queue_id).exists()
    response = admin_api.post(f"/api/v1/messages/{queue_id}/delete/")
    assert response.status_code == 200 and response.json() == {"changed": 1}


def test_errors_render_in_yaml_too(site: dict[str, list[str]]) -> None:
    response = APIClient().get("/api/v1/config/", {"format": "yaml"})
    assert response.status_code == 401
    assert response["Content-Type"].startswith("application/yaml")
    assert response.content == b"detail: Authentication credentials were not provided.\n"


def test_a_password_smtp_auth_cannot_carry_is_a_field_error(
    admin_api: APIClient, site: dict[str, list[str]]
) -> None:
    user_id = site["/api/v1/users/"][0]
    response = admin_api.patch(f"/api/v1/users/{user_id}/", {"password": "pass\x7fword"})
    assert response.status_code == 400, response.content
    assert "U+007F" in response.json()["password"][0]
    created = admin_api.post("/api/v1/users/", {"username": "bob", "password": "a\ue000b"})
    assert created.status_code == 400 and "password" in created.json()


def test_format_suffix_urls_are_gone_not_500(
    admin_api: APIClient, site: dict[str, list[str]]
) -> None:
    # Found by test_console_security: DRF passed the suffix as format= to actions and plain
    # ViewSets that take no such argument.
    server = site["/api/v1/servers/"][0]
    for url in ("/api/v1/sessions.json", f"/api/v1/servers/{server}/check-relay.json"):
        assert admin_api.get(url).status_code == 404, url
    assert admin_api.get("/api/v1/sessions/", {"format": "json"}).status_code == 200


def test_huge_paging_numbers_are_bounded(admin_api: APIClient, site: dict[str, list[str]]) -> None:
    # Found by the boundary values: a LIMIT or OFFSET past 64 bits was a database error.
    huge = str(10**40)
    response = admin_api.get("/api/v1/users/", {"limit": huge})
    assert response.status_code == 200 and len(response.json()["results"]) == 1
    response = admin_api.get("/api/v1/servers/", {"offset": huge, "limit": huge})
    assert response.status_code == 200 and response.json()["results"] == []


def test_a_form_with_too_many_fields_gets_a_json_400(
    admin_api: APIClient, site: dict[str, list[str]]
) -> None:
    body = "action=retry&" + "&".join(f"queue_ids=Q{n}" for n in range(1500))
    response = admin_api.post(
        "/api/v1/messages/bulk/", body, content_type="application/x-www-form-urlencoded"
    )
    assert response.status_code == 400
    assert response["Content-Type"] == "application/json"
    assert response.json() == {
        "detail": "The form has more than 1000 fields; send long lists as JSON."
    }
