"""Every setting of the layout reaches everything that must know it.

``mailadmin.layout`` generates the API serializers and places the services' errors, and
``mailadmin.snapshot`` copies its plain leaves into the worker's configuration. What is
left to a person adding a setting (a config field the worker reads, a sheet field, a
unit change, a rule tying it to another setting) is checked here, leaf by leaf: each leaf
of the server and domain tables, set to a value other than its default through the API,
must reach

1. the worker's configuration, as a worker loads it (``snapshot.site_config`` ->
   ``dump_site`` -> ``load_site``), at the place the tables below name;
2. the configuration document, both ways (export shows it, import restores it);
3. the API's OpenAPI schema, at its document path;
4. a field of the console's sheet, shown in the page and saved by it,

unless a list below says why not. A new leaf without a row in these tables fails here.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import pytest
import trustme
from django import forms
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from rest_framework.test import APIClient

from mailadmin import configdoc, snapshot
from mailadmin.console.forms import DOMAIN_PATH_FIELDS, SHEET_PATH_FIELDS, SHEET_TABS
from mailadmin.layout import DOMAIN_LAYOUT, SECRET_FIELDS, SERVER_LAYOUT, Layout, walk
from mailadmin.models import Domain, VirtualServer
from mailadmin.services.config.secrets import secret_open
from mailadmin.tests.factories import form_data, make_server
from smtpworker.core.config import DomainConfig, ServerConfig, dump_site, load_site, to_data

Path = tuple[str, ...]

_CA = trustme.CA()
_LEAF = _CA.issue_cert("mx.walk.test")
# Stripped, as the services store PEM text.
CERT_PEM = b"".join(blob.bytes() for blob in _LEAF.cert_chain_pems).decode().strip()
KEY_PEM = _LEAF.private_key_pem.bytes().decode()
CA_PEM = _CA.cert_pem.bytes().decode().strip()

SEALED = object()  # the worker holds the sample sealed (secretbox); it opens to the sample
TLS_PAIR: tuple[Path, ...] = (("tls", "certificate"), ("tls", "private_key"))


@dataclass(frozen=True)
class Leaf:
    """One setting: a value other than its default, as the API takes and shows it; where
    the worker's config object holds it (an attribute path, None when it does not: see
    ``WORKER_UNUSED``) and what it holds there as JSON data when that is not the sample;
    the leaves a rule requires to be set with it."""

    sample: Any
    worker: str | None
    expect: Any = None
    needs: tuple[Path, ...] = ()

    def expected(self) -> Any:
        return self.sample if self.expect in (None, SEALED) else self.expect


SERVER_LEAVES: dict[Path, Leaf] = {
    ("name",): Leaf("Walked", "name"),
    ("description",): Leaf("Every setting walked", None),
    ("state",): Leaf("stopped", "state"),
    ("node",): Leaf("node-b", "node"),
    ("bindings",): Leaf(["127.0.0.3:2626"], "bindings"),
    ("trusted_proxies",): Leaf(["10.0.0.5", "10.0.1.0/24"], "trusted_proxies"),
    ("fqdn",): Leaf("mx.walk.test", "fqdn"),
    ("default_domain",): Leaf("walked.test", "default_domain"),
    ("home_directory",): Leaf("/srv/mailroot/walked", "home_directory"),
    ("connection_limit",): Leaf(77, "connection_limit"),
    ("client_connection_limit",): Leaf(7, "client_connection_limit"),
    ("connection_timeout",): Leaf(1200, "connection_timeout"),
    ("logging", "enabled"): Leaf(False, "logging.enabled"),
    ("logging", "period"): Leaf("hourly", "logging.period"),
    ("logging", "fields"): Leaf(["date", "time", "c-ip"], "logging.fields"),
    ("authentication", "anonymous"): Leaf(False, "auth.anonymous"),
    ("authentication", "basic"): Leaf(True, "auth.basic"),
    ("authentication", "basic_requires_tls"): Leaf(True, "auth.basic_requires_tls", needs=TLS_PAIR),
    ("authentication", "basic_default_domain"): Leaf("corp.walk.test", "auth.basic_default_domain"),
    ("authentication", "integrated"): Leaf(True, "auth.integrated"),
    ("authentication", "cram_md5"): Leaf(True, "auth.cram_md5"),
    ("authentication", "brake", "enabled"): Leaf(False, "auth_brake.enabled"),
    ("authentication", "brake", "failures_before_delay"): Leaf(
        5, "auth_brake.failures_before_delay"
    ),
    ("authentication", "brake", "block_after_failures"): Leaf(
        20, "auth_brake.block_after_failures"
    ),
    ("authentication", "brake", "window_minutes"): Leaf(
        30, "auth_brake.window_seconds", expect=30 * 60
    ),
    ("authentication", "brake", "block_minutes"): Leaf(
        120, "auth_brake.block_seconds", expect=120 * 60
    ),
    ("tls", "certificate"): Leaf(CERT_PEM, "tls.certificate", needs=TLS_PAIR),
    ("tls", "private_key"): Leaf(KEY_PEM, "tls.private_key", expect=SEALED, needs=TLS_PAIR),
    ("tls", "require"): Leaf(True, "tls.require", needs=TLS_PAIR),
    ("connection_control", "mode"): Leaf("only_list", "connection.mode"),
    ("connection_control", "list"): Leaf(["10.2.0.0/16", "walk.test"], "connection.entries"),
    ("relay", "mode"): Leaf("all_except_list", "relay.mode"),
    ("relay", "list"): Leaf(["10.3.0.5"], "relay.entries"),
    ("relay", "allow_authenticated"): Leaf(False, "relay.allow_authenticated"),
    ("messages", "max_message_size_kb"): Leaf(
        4096, "messages.max_message_size", expect=4096 * 1024
    ),
    ("messages", "max_session_size_kb"): Leaf(
        20480, "messages.max_session_size", expect=20480 * 1024
    ),
    ("messages", "max_messages_per_connection"): Leaf(50, "messages.max_messages_per_connection"),
    ("messages", "max_recipients_per_message"): Leaf(200, "messages.max_recipients_per_message"),
    ("messages", "ndr_copy_to"): Leaf("postmaster@walk.test", "messages.ndr_copy_to"),
    ("messages", "badmail_directory"): Leaf("/srv/badmail/walked", "messages.badmail_directory"),
    ("delivery", "retry_minutes"): Leaf([5, 10, 20, 40], "delivery.retry_minutes"),
    ("delivery", "delay_notification_minutes"): Leaf(60, "delivery.delay_notification_minutes"),
    ("delivery", "expiration_minutes"): Leaf(1440, "delivery.expiration_minutes"),
    ("delivery", "local_delay_notification_minutes"): Leaf(
        120, "delivery.local_delay_notification_minutes"
    ),
    ("delivery", "local_expiration_minutes"): Leaf(5760, "delivery.local_expiration_minutes"),
    ("delivery", "max_hop_count"): Leaf(30, "delivery.max_hop_count"),
    ("delivery", "masquerade_domain"): Leaf("masq.walk.test", "delivery.masquerade_domain"),
    ("delivery", "smart_host"): Leaf("[10.0.0.2]", "delivery.smart_host"),
    ("delivery", "attempt_direct_first"): Leaf(True, "delivery.attempt_direct_first"),
    ("delivery", "reverse_dns_lookup"): Leaf(True, "delivery.reverse_dns_lookup"),
    ("delivery", "dns_servers"): Leaf(["10.0.0.53"], "delivery.dns_servers"),
    ("delivery", "outbound", "port"): Leaf(2525, "delivery.outbound.port"),
    ("delivery", "outbound", "connection_limit"): Leaf(10, "delivery.outbound.connection_limit"),
    ("delivery", "outbound", "per_domain_limit"): Leaf(5, "delivery.outbound.per_domain_limit"),
    ("delivery", "outbound", "timeout"): Leaf(120, "delivery.outbound.timeout"),
    ("delivery", "outbound", "tls"): Leaf("verified", "delivery.outbound.security.tls"),
    ("delivery", "outbound", "tls_ca"): Leaf(CA_PEM, "delivery.outbound.security.tls_ca"),
    ("delivery", "outbound", "auth", "method"): Leaf(
        "basic", "delivery.outbound.security.auth_method"
    ),
    ("delivery", "outbound", "auth", "username"): Leaf(
        "relay-user", "delivery.outbound.security.username"
    ),
    ("delivery", "outbound", "auth", "password"): Leaf(
        "walk-secret", "delivery.outbound.security.password", expect=SEALED
    ),
    ("delivery", "outbound", "auth", "allow_cleartext"): Leaf(
        True, "delivery.outbound.security.cleartext_auth"
    ),
}

# The domain the tests below change is a remote one, made through the API.
DOMAIN_LEAVES: dict[Path, Leaf] = {
    ("name",): Leaf("other.walk.test", "name"),
    ("type",): Leaf("local", "kind"),
    ("default",): Leaf(True, "default", needs=(("type",),)),
    ("relay_allowed",): Leaf(True, "relay_allowed"),
    ("smart_host",): Leaf("relay.walk.test", "smart_host"),
    ("forward_all_to_smart_host",): Leaf(
        True, "forward_all_to_smart_host", needs=(("smart_host",),)
    ),
    ("use_helo",): Leaf(True, "use_helo"),
    ("outbound", "tls"): Leaf("required", "security.tls"),
    ("outbound", "tls_ca"): Leaf(CA_PEM, "security.tls_ca"),
    ("outbound", "auth", "method"): Leaf("basic", "security.auth_method"),
    ("outbound", "auth", "username"): Leaf("hop-user", "security.username"),
    ("outbound", "auth", "password"): Leaf("hop-secret", "security.password", expect=SEALED),
    ("outbound", "auth", "allow_cleartext"): Leaf(True, "security.cleartext_auth"),
}

# Leaves the worker never reads, each with the reason. A leaf listed here must leave the
# worker's configuration as it was (remove it from here when the worker starts using it).
WORKER_UNUSED: dict[tuple[str, Path], str] = {
    ("server", ("description",)): "console only: a note for administrators",
}

# Leaves that are not a field of the server's sheet or the domain's properties page.
NOT_ON_SHEET: dict[tuple[str, Path], str] = {
    ("server", ("state",)): "Start, Stop and Pause are actions on the server, not a field",
    ("server", ("default_domain",)): "set in the Domains node (a local domain's properties)",
    ("domain", ("type",)): "chosen in the New Domain wizard; a domain keeps its type",
    ("domain", ("default",)): "only the local page shows it (a remote domain is never one)",
}

SERVER_PATHS = [path for path, _target in walk(SERVER_LAYOUT)]
DOMAIN_PATHS = [path for path, _target in walk(DOMAIN_LAYOUT)]


def ids(path: Path) -> str:
    return ".".join(path)


def nest(values: dict[Path, Any]) -> dict[str, Any]:
    """Document paths and values -> the nested body the API takes."""
    body: dict[str, Any] = {}
    for path, value in values.items():
        level = body
        for key in path[:-1]:
            level = level.setdefault(key, {})
        level[path[-1]] = value
    return body


def leaf(table: dict[Path, Leaf], path: Path, what: str) -> Leaf:
    if path not in table:
        pytest.fail(
            f"{what} leaf {ids(path)} is new: give it a row in test_layout_reach.py "
            "(a non-default value and where the worker holds it), then follow the "
            "failures to every place it must reach"
        )
    return table[path]


def with_needs(table: dict[Path, Leaf], path: Path) -> dict[Path, Any]:
    one = leaf(table, path, "")
    return {p: table[p].sample for p in (path, *one.needs)}


def worker_site() -> Any:
    """The configuration as a worker applies it: published text, parsed back."""
    return load_site(dump_site(snapshot.site_config()))


def worker_server(name: str) -> ServerConfig:
    server = worker_site().server(name)
    assert server is not None, f"the worker's configuration has no server {name}"
    return server


def held(config: Any, where: str, expect: Any) -> Any:
    value = to_data(operator.attrgetter(where)(config))
    return secret_open(value) if expect is SEALED else value


def opened(server: ServerConfig) -> dict[str, Any]:
    """The worker's data for a server with its secrets opened (sealing is randomised) and
    without its row id."""
    data: dict[str, Any] = to_data(server)
    data.pop("id")
    data["tls"]["private_key"] = secret_open(data["tls"]["private_key"])
    for security in [data["delivery"]["outbound"]["security"]] + [
        d["security"] for d in data["domains"]
    ]:
        security["password"] = secret_open(security["password"])
    return data


def patch_server(api: APIClient, server_id: int, values: dict[Path, Any]) -> dict[str, Any]:
    response = api.patch(f"/api/v1/servers/{server_id}/", nest(values), format="json")
    assert response.status_code == 200, response.content
    return dict(response.json())


def walked_server(api: APIClient) -> dict[str, Any]:
    """A server with every leaf set to its sample."""
    server = make_server(api, name="Base")
    return patch_server(api, server["id"], {p: leaf.sample for p, leaf in SERVER_LEAVES.items()})


# -- 1. the worker's configuration -------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("path", SERVER_PATHS, ids=ids)
def test_each_server_leaf_alone_reaches_the_worker(api: APIClient, path: Path) -> None:
    one = leaf(SERVER_LEAVES, path, "server")
    server = make_server(api, name="Base")
    before = worker_server("Base")
    patch_server(api, server["id"], with_needs(SERVER_LEAVES, path))
    after = worker_server(SERVER_LEAVES[("name",)].sample if path == ("name",) else "Base")
    if one.worker is None:
        assert ("server", path) in WORKER_UNUSED, f"say why the worker ignores {ids(path)}"
        assert opened(after) == opened(before), f"the worker reads {ids(path)}: unlist it"
        return
    assert held(before, one.worker, one.expect) != one.expected(), "the sample is the default"
    assert held(after, one.worker, one.expect) == one.expected()


@pytest.mark.django_db
@pytest.mark.parametrize("path", DOMAIN_PATHS, ids=ids)
def test_each_domain_leaf_alone_reaches_the_worker_and_the_document(
    api: APIClient, path: Path
) -> None:
    # One at a time, document included: some leaves exclude others (a local domain has no
    # smart host; HELO cannot ask for the required TLS).
    one = leaf(DOMAIN_LEAVES, path, "domain")
    server = make_server(api, name="Base")
    domain = remote_domain(api, server["id"])

    def worker_domain(name: str) -> DomainConfig:
        return next(d for d in worker_server("Base").domains if d.name == name)

    before = worker_domain("remote.walk.test")
    values = with_needs(DOMAIN_LEAVES, path)
    response = api.patch(f"/api/v1/domains/{domain['id']}/", nest(values), format="json")
    assert response.status_code == 200, response.content
    name = response.json()["name"]
    after = worker_domain(name)
    assert one.worker is not None, "no domain leaf is unused by the worker yet"
    assert held(before, one.worker, one.expect) != one.expected(), "the sample is the default"
    assert held(after, one.worker, one.expect) == one.expected()

    document = configdoc.document_export()
    exported = next(d for d in document["servers"][0]["domains"] if d["name"] == name)
    check_exported(exported, DOMAIN_LAYOUT_TARGETS, values)
    whole = opened(worker_server("Base"))
    reimport(document)
    assert opened(worker_server("Base")) == whole


def remote_domain(api: APIClient, server_id: int) -> dict[str, Any]:
    response = api.post(
        "/api/v1/domains/",
        {"server": server_id, "name": "remote.walk.test", "type": "remote"},
        format="json",
    )
    assert response.status_code == 201, response.content
    return dict(response.json())


def test_every_row_of_the_tables_is_a_leaf_of_the_layout() -> None:
    assert set(SERVER_LEAVES) <= set(SERVER_PATHS)
    assert set(DOMAIN_LEAVES) <= set(DOMAIN_PATHS)
    for kind, path in set(WORKER_UNUSED) | set(NOT_ON_SHEET):
        assert path in (SERVER_PATHS if kind == "server" else DOMAIN_PATHS), (kind, path)


# -- 2. the configuration document -------------------------------------------------------


@pytest.mark.django_db
def test_every_server_leaf_is_exported_and_imported(api: APIClient) -> None:
    walked_server(api)
    before = opened(worker_server("Walked"))
    document = configdoc.document_export()
    (exported,) = document["servers"]
    check_exported(exported, SERVER_LAYOUT_TARGETS, {p: v.sample for p, v in SERVER_LEAVES.items()})
    reimport(document)
    assert opened(worker_server("Walked")) == before


def check_exported(
    exported: dict[str, Any], targets: dict[Path, str], values: dict[Path, Any]
) -> None:
    """Each value is exported as set, but a secret, which is left out; it is put back, as
    an administrator must, so that the document can be imported."""
    for path, value in values.items():
        shown = at(exported, path)
        if targets[path] in SECRET_FIELDS:
            assert shown is MISSING, f"the secret {ids(path)} is exported"
            put(exported, path, value)
        else:
            assert shown == value, f"{ids(path)} is not exported as set"


def reimport(document: dict[str, Any]) -> None:
    """Remove everything through the document service, then import ``document``."""
    configdoc.document_import({"servers": [], "users": []}, author="test")
    assert not VirtualServer.objects.exists() and not Domain.objects.exists()
    configdoc.document_import(document, author="test")


MISSING = object()
SERVER_LAYOUT_TARGETS = dict(walk(SERVER_LAYOUT))
DOMAIN_LAYOUT_TARGETS = dict(walk(DOMAIN_LAYOUT))


def at(data: dict[str, Any], path: Path) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return MISSING
        data = data[key]
    return data


def put(data: dict[str, Any], path: Path, value: Any) -> None:
    for key in path[:-1]:
        data = data.setdefault(key, {})
    data[path[-1]] = value


# -- 3. the API schema -------------------------------------------------------------------


@pytest.fixture(scope="module")
def openapi() -> dict[str, Any]:
    # Imported here: importing it first thing, before DRF's views, is a circular import.
    from drf_spectacular.generators import SchemaGenerator

    return dict(SchemaGenerator().get_schema(request=None, public=True))


def schema_at(openapi: dict[str, Any], component: str, path: Path) -> Any:
    """The schema of ``path`` inside a component, following references."""
    schemas = openapi["components"]["schemas"]
    node = schemas[component]
    for key in path:
        while "$ref" in node or "allOf" in node:
            ref = node["$ref"] if "$ref" in node else node["allOf"][0]["$ref"]
            node = schemas[ref.rsplit("/", 1)[1]]
        properties = node.get("properties", {})
        if key not in properties:
            return MISSING
        node = properties[key]
    return node


@pytest.mark.parametrize(
    ("component", "layout", "path"),
    [pytest.param("Server", SERVER_LAYOUT, p, id=f"server-{ids(p)}") for p in SERVER_PATHS]
    + [pytest.param("Domain", DOMAIN_LAYOUT, p, id=f"domain-{ids(p)}") for p in DOMAIN_PATHS],
)
def test_every_leaf_is_in_the_api_schema(
    openapi: dict[str, Any], component: str, layout: Layout, path: Path
) -> None:
    # Written in requests; shown in answers, but a secret shows only whether it is set.
    assert schema_at(openapi, f"{component}Request", path) is not MISSING
    assert schema_at(openapi, f"Patched{component}Request", path) is not MISSING
    secret = dict(walk(layout))[path] in SECRET_FIELDS
    shown = (*path[:-1], f"{path[-1]}_set") if secret else path
    assert schema_at(openapi, component, shown) is not MISSING
    if secret:
        assert schema_at(openapi, component, path) is MISSING


# -- 4. the console's sheet --------------------------------------------------------------


def sheet_field(path: Path) -> str:
    name = SHEET_PATH_FIELDS[path]
    tabs = [tab for tab in SHEET_TABS if name in tab.base_fields]
    assert tabs, f"no tab of the server's sheet has a field {name} for {ids(path)}"
    return name


@pytest.mark.parametrize("path", SERVER_PATHS, ids=ids)
def test_every_server_leaf_is_a_field_of_the_sheet(path: Path) -> None:
    if ("server", path) in NOT_ON_SHEET:
        return
    sheet_field(path)


@pytest.mark.parametrize("path", DOMAIN_PATHS, ids=ids)
def test_every_domain_leaf_is_a_field_of_a_domain_page(
    path: Path, admin_client: Client, api: APIClient
) -> None:
    if ("domain", path) in NOT_ON_SHEET:
        return
    server = make_server(api, name="Base")
    domain = remote_domain(api, server["id"])
    page = admin_client.get(f"/domains/{domain['id']}/")
    assert page.status_code == 200
    name = DOMAIN_PATH_FIELDS[path]
    assert name in page.context["form"].fields, f"the domain page has no field for {ids(path)}"
    assert f'name="{name}"' in page.content.decode(), f"the page does not show {name}"


@pytest.mark.django_db
def test_the_sheet_shows_and_saves_every_server_leaf(api: APIClient, admin_client: Client) -> None:
    walked = walked_server(api)
    page = admin_client.get(f"/servers/{walked['id']}/properties/")
    assert page.status_code == 200
    html = page.content.decode()
    sheet: dict[str, Any] = {"tab": [t["name"] for t in page.context["tabs"]]}
    for tab in page.context["tabs"]:
        shown = form_data(tab["form"])
        del shown["tab"]  # the sheet posts every tab at once: "tab" is their list
        sheet.update(shown)
    for path in SERVER_PATHS:
        if ("server", path) not in NOT_ON_SHEET:
            sheet_field(path)
    for tab in SHEET_TABS:  # a leaf's field, and its limit box or unit beside it
        for name in tab.base_fields:
            assert f'name="{name}"' in html, f"the sheet page does not show {name}"
    before = opened(worker_server("Walked"))
    exported = configdoc.document_export()["servers"]
    api.delete(f"/api/v1/servers/{walked['id']}/")

    # A fresh server gets the leaves that are not on the sheet through the API, the rest
    # from the sheet as it showed the walked server, with its write-only fields typed in.
    off_sheet = {p: SERVER_LEAVES[p].sample for k, p in NOT_ON_SHEET if k == "server"}
    fresh = make_server(api, name="Fresh", **nest(off_sheet))
    for path in SERVER_PATHS:
        name = SHEET_PATH_FIELDS[path]
        widget = next(
            (t.base_fields[name].widget for t in SHEET_TABS if name in t.base_fields), None
        )
        if isinstance(widget, forms.FileInput):
            sheet[name] = SimpleUploadedFile(f"{name}.pem", SERVER_LEAVES[path].sample.encode())
        elif isinstance(widget, forms.PasswordInput):
            sheet[name] = SERVER_LEAVES[path].sample
    response = admin_client.post(f"/servers/{fresh['id']}/properties/", {**sheet, "action": "ok"})
    assert response.status_code == 302, response.content.decode()[:3000]
    assert opened(worker_server("Walked")) == before
    assert configdoc.document_export()["servers"] == exported
