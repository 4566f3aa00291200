"""A configuration is identified by its content, not by a counter (issue 10, item 3).

The reinstall, the restored backup and the forged body are played with the real SMTP
worker (``python -m smtpworker``) on the test Redis, spoken to over loopback SMTP. A
"fresh database" is the test database flushed (new site identity, versions counting from
1 again, as after deleting the SQLite file); a "backup" is ``dumpdata`` of the app, and
restoring it is ``flush`` + ``loaddata``, identity and version history included.
"""

from __future__ import annotations

import hashlib
import json
import smtplib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings
from django.contrib.auth.models import User
from django.core.management import call_command
from rest_framework.test import APIClient

from mailadmin.models import ConfigSnapshot, SiteIdentity, VirtualServer
from mailadmin.services.config.versions import (
    config_republish,
    config_transaction,
    published_body,
)
from mailadmin.tests.factories import db_state
from mailadmin.tests.stack import Stack, until
from smtpworker.core import configmac, contract
from smtpworker.core.contract import CONFIG_BODY_KEY, CONFIG_CHANNEL
from smtpworker.tests.factories import free_port

pytestmark = pytest.mark.usefixtures("fast_hashing")

HOST = "127.0.0.2"
OUTSIDE = "someone@outside.example"


# --- helpers ----------------------------------------------------------------------------


def document(port: int, password: str) -> dict[str, Any]:
    """One server: anonymous mail for its own domain only, relay for users who log in."""
    return {
        "servers": [
            {
                "name": "Corp",
                "description": "corporate relay",
                "state": "started",
                "bindings": [f"{HOST}:{port}"],
                "default_domain": "corp.test",
                "authentication": {"anonymous": True, "basic": True},
                "relay": {"mode": "only_list", "list": [], "allow_authenticated": True},
            }
        ],
        "users": [{"username": "alice", "password": password, "servers": ["Corp"]}],
    }


def admin_api() -> APIClient:
    """An administrator's API client; made again after a flush removed the accounts."""
    user = User.objects.filter(username="root").first() or User.objects.create_superuser(
        "root", "root@example.test", "root-password"
    )
    client = APIClient()
    client.force_login(user)
    return client


def put(doc: dict[str, Any]) -> int:
    response = admin_api().put("/api/v1/config/", doc, format="json")
    assert response.status_code == 200, response.content
    return int(response.json()["version"])


def auth_code(port: int, password: str) -> int:
    """The reply code of AUTH for alice with ``password`` on a new session."""
    with smtplib.SMTP(HOST, port, timeout=10) as client:
        client.ehlo("client.test")
        try:
            return int(client.login("alice", password)[0])
        except smtplib.SMTPAuthenticationError as exc:
            return int(exc.smtp_code)


def anonymous_rcpt_code(port: int) -> int:
    """The reply code of an anonymous RCPT to a domain the server must not relay to."""
    with smtplib.SMTP(HOST, port, timeout=10) as client:
        client.ehlo("client.test")
        client.mail("sender@client.test")
        return int(client.rcpt(OUTSIDE)[0])


def worker_status(stack: Stack) -> dict[str, Any]:
    client = redis.Redis.from_url(stack.redis_url)
    body = client.get(contract.worker_key(stack.node))
    client.close()
    return dict(json.loads(body)) if body else {}


def wait_running(stack: Stack, snapshot: ConfigSnapshot) -> dict[str, Any]:
    """Wait until the worker runs exactly ``snapshot`` (version, site and digest)."""
    site = str(SiteIdentity.objects.get().uuid)

    def running() -> dict[str, Any] | None:
        status = worker_status(stack)
        wanted = (snapshot.pk, site, snapshot.digest)
        got = tuple(status.get(k) for k in ("applied_version", "applied_site", "applied_digest"))
        return status if got == wanted and not status.get("stopped") else None

    return dict(until(running, timeout=10))


def backup(path: Path) -> None:
    call_command("dumpdata", "mailadmin", output=str(path), verbosity=0)


def restore(path: Path) -> None:
    call_command("flush", interactive=False, verbosity=0)
    call_command("loaddata", str(path), verbosity=0)


def fresh_database() -> None:
    """What deleting the SQLite file and migrating again gives: no rows, sequences reset."""
    call_command("flush", interactive=False, verbosity=0)


@pytest.fixture
def api(db: None) -> APIClient:
    return admin_api()


@pytest.fixture
def stack(test_redis: str, tmp_path: Path) -> Iterator[Stack]:
    # The node's only server binds HOST; MAILADMIN_ENCRYPTION_KEY is the session's, from
    # the environment, so the worker checks signatures with the web side's key.
    running = Stack(redis_url=test_redis, mailroot=tmp_path / "mailroot", log_dir=tmp_path)
    yield running
    running.stop()


# --- scenarios with the real SMTP worker ---------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_reinstall_enforces_its_own_version_1_at_once(stack: Stack) -> None:
    port = free_port(HOST)
    fresh_database()
    first = put(document(port, "password-A"))
    stack.smtp()
    wait_running(stack, ConfigSnapshot.objects.get(pk=first))
    assert auth_code(port, "password-A") == 235

    fresh_database()  # the reinstall: same Redis, same running worker, a new database
    second = put(document(port, "password-B"))
    assert second == first  # the new database's own "version 1"
    wait_running(stack, ConfigSnapshot.objects.get(pk=second))
    assert auth_code(port, "password-B") == 235
    assert auth_code(port, "password-A") == 535


@pytest.mark.django_db(transaction=True)
def test_a_restored_older_backup_is_applied_when_a_process_starts(
    stack: Stack, tmp_path: Path
) -> None:
    port = free_port(HOST)
    fresh_database()
    older = put(document(port, "password-A"))
    backup(tmp_path / "backup.json")
    stack.smtp()
    newer = put(document(port, "password-B"))
    wait_running(stack, ConfigSnapshot.objects.get(pk=newer))
    assert auth_code(port, "password-B") == 235

    restore(tmp_path / "backup.json")  # back to version `older`, below what the worker runs
    stack.beat()  # a process of the site starts, and publishes what its database holds
    status = wait_running(stack, ConfigSnapshot.objects.get(pk=older))
    assert status["applied_version"] == older < newer
    assert auth_code(port, "password-A") == 235
    assert auth_code(port, "password-B") == 535


@pytest.mark.django_db(transaction=True)
def test_the_first_edit_after_a_restore_is_enforced_though_its_number_is_taken(
    stack: Stack, tmp_path: Path
) -> None:
    port = free_port(HOST)
    fresh_database()
    put(document(port, "password-A"))
    backup(tmp_path / "backup.json")
    stack.smtp()
    taken = put(document(port, "password-B"))
    wait_running(stack, ConfigSnapshot.objects.get(pk=taken))

    restore(tmp_path / "backup.json")
    again = put(document(port, "password-C"))  # the restored database's next number ...
    assert again == taken  # ... is the one the worker already runs, with password B
    wait_running(stack, ConfigSnapshot.objects.get(pk=again))
    assert auth_code(port, "password-C") == 235
    assert auth_code(port, "password-B") == 535


def forged(snapshot: ConfigSnapshot, how: str) -> bytes:
    """An open-relay body with a correct-looking version, site and digest, as someone
    who can write to Redis but has no MAILADMIN_ENCRYPTION_KEY would write it."""
    body = json.loads(published_body(snapshot))
    body["servers"][0]["relay"] = {
        "mode": "all_except_list",
        "entries": [],
        "allow_authenticated": True,
    }
    body["version"] = snapshot.pk + 1
    runtime = {k: v for k, v in body.items() if k not in ("site", "digest")} | {"version": 0}
    text = json.dumps(runtime, sort_keys=True, separators=(",", ":"))
    body["digest"] = hashlib.sha256(text.encode()).hexdigest()
    raw = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    if how == "unsigned":
        return raw  # the format of the body before it was signed
    if how == "other key":
        return configmac.sign(configmac.body_key("a key the attacker made up"), raw)
    assert how == "bad mac"
    return configmac.MAGIC + b"0" * 64 + b"\n" + raw


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("how", ["unsigned", "other key", "bad mac"])
def test_a_body_written_without_the_key_is_refused_and_reported(stack: Stack, how: str) -> None:
    port = free_port(HOST)
    version = put(document(port, "password-A"))
    snapshot = ConfigSnapshot.objects.get(pk=version)
    stack.smtp()
    wait_running(stack, snapshot)
    assert anonymous_rcpt_code(port) == 550

    client = redis.Redis.from_url(stack.redis_url)
    client.set(CONFIG_BODY_KEY, forged(snapshot, how))
    client.publish(CONFIG_CHANNEL, str(version + 1))
    client.close()
    status = until(lambda: worker_status(stack).get("config_error") and worker_status(stack))
    assert "refused" in status["config_error"] and "sign" in status["config_error"]
    assert status["applied_version"] == version
    assert anonymous_rcpt_code(port) == 550  # still no open relay
    assert auth_code(port, "password-A") == 235

    config_republish()  # the beat task puts the site's own body back; the error clears
    until(lambda: worker_status(stack).get("config_error") == "")
    assert worker_status(stack)["applied_version"] == version


@pytest.mark.django_db(transaction=True)
def test_a_forged_last_good_file_is_refused_at_start(stack: Stack) -> None:
    port = free_port(HOST)
    version = put(document(port, "password-A"))
    snapshot = ConfigSnapshot.objects.get(pk=version)
    stack.smtp()
    wait_running(stack, snapshot)
    stack.processes["smtp"].stop()
    cache = stack.log_dir / f"smtpworker-{stack.node}.json"
    assert configmac.verify(
        configmac.body_key(settings.MAILADMIN_ENCRYPTION_KEY), cache.read_bytes()
    )
    cache.write_bytes(forged(snapshot, "unsigned"))
    redis.Redis.from_url(stack.redis_url).delete(CONFIG_BODY_KEY)  # Redis lost everything

    stack.smtp()
    status = until(lambda: worker_status(stack).get("config_error") and worker_status(stack))
    assert "last good configuration" in status["config_error"]
    assert status["applied_version"] == 0 and status["servers"] == {}
    with pytest.raises(OSError):
        anonymous_rcpt_code(port)  # nothing listens: no configuration is better than that one


# --- versions: every change, and only a change ---------------------------------------------


@pytest.mark.django_db
def test_a_description_only_change_is_a_new_version(api: APIClient) -> None:
    put(document(free_port(HOST), "password-A"))
    before = ConfigSnapshot.objects.latest()
    with config_transaction(author="test", reason="describe"):
        VirtualServer.objects.filter(name="Corp").update(description="now described")
    after = ConfigSnapshot.objects.latest()
    assert after.pk == before.pk + 1
    assert after.digest == before.digest  # the workers have nothing to reload
    with config_transaction(author="test", reason="nothing"):
        VirtualServer.objects.filter(name="Corp").update(description="now described")
    assert ConfigSnapshot.objects.latest().pk == after.pk  # nothing changed: no version


@pytest.mark.django_db
def test_republish_replaces_anything_but_this_sites_signed_body(test_redis: str) -> None:
    put(document(free_port(HOST), "password-A"))
    client = redis.Redis.from_url(test_redis)
    version = config_republish()
    snapshot = ConfigSnapshot.objects.get(pk=version)
    ours = client.get(CONFIG_BODY_KEY)
    for intruder in (forged(snapshot, "unsigned"), forged(snapshot, "other key")):
        client.set(CONFIG_BODY_KEY, intruder)
        assert config_republish() == version
        assert client.get(CONFIG_BODY_KEY) == ours
    # Another database's "version N", signed with the same key (a second checkout).
    other = json.loads(published_body(snapshot)) | {"site": "another-database"}
    key = configmac.body_key(settings.MAILADMIN_ENCRYPTION_KEY)
    client.set(CONFIG_BODY_KEY, configmac.sign(key, json.dumps(other).encode()))
    config_republish()
    assert client.get(CONFIG_BODY_KEY) == ours
    client.close()


# --- ETag and If-Match --------------------------------------------------------------------


@pytest.mark.django_db
def test_the_document_carries_its_version_as_etag(api: APIClient) -> None:
    version = put(document(free_port(HOST), "password-A"))
    response = api.get("/api/v1/config/")
    assert response.status_code == 200
    assert response["ETag"] == f'"{version}"'


@pytest.mark.django_db
def test_a_stale_edit_gets_412_and_changes_nothing(api: APIClient) -> None:
    port = free_port(HOST)
    put(document(port, "password-A"))
    etag = api.get("/api/v1/config/")["ETag"]
    put(document(port, "password-B"))  # another administrator, in between
    state = db_state()

    doc = document(port, "password-C")
    stale = api.put("/api/v1/config/", doc, format="json", HTTP_IF_MATCH=etag)
    assert stale.status_code == 412, stale.content
    assert set(stale.json()) == {"detail"} and "If-Match" in stale.json()["detail"]
    assert db_state() == state
    for weak_or_other in (f"W/{etag}", '"not-a-version"', '"999999"'):
        refused = api.put("/api/v1/config/", doc, format="json", HTTP_IF_MATCH=weak_or_other)
        assert refused.status_code == 412, weak_or_other
    assert db_state() == state

    current = api.get("/api/v1/config/")["ETag"]
    fresh = api.put("/api/v1/config/", doc, format="json", HTTP_IF_MATCH=f'"1", {current}')
    assert fresh.status_code == 200, fresh.content
    assert fresh["ETag"] == f'"{fresh.json()["version"]}"' != current
    assert api.put("/api/v1/config/", doc, format="json", HTTP_IF_MATCH="*").status_code == 200


@pytest.mark.django_db
def test_a_malformed_if_match_is_a_400(api: APIClient) -> None:
    put(document(free_port(HOST), "password-A"))
    state = db_state()
    for header in ("7", '"7', "", '"7" "8"'):
        response = api.put(
            "/api/v1/config/", document(1025, "x"), format="json", HTTP_IF_MATCH=header
        )
        assert response.status_code == 400, header
        assert [e["path"] for e in response.json()["errors"]] == ["If-Match"]
        assert "nothing was changed" in response.json()["detail"].lower()
    assert db_state() == state


@pytest.mark.django_db
def test_the_schema_documents_etag_and_if_match(api: APIClient) -> None:
    schema = api.get("/api/v1/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    operations = schema["paths"]["/api/v1/config/"]
    put_parameters = {p["name"]: p for p in operations["put"]["parameters"]}
    assert put_parameters["If-Match"]["in"] == "header"
    assert "412" in operations["put"]["responses"]
    assert "ETag" in operations["get"]["responses"]["200"]["headers"]
    assert "ETag" in operations["put"]["responses"]["200"]["headers"]


@pytest.mark.django_db
def test_a_node_running_another_databases_higher_version_is_behind(
    api: APIClient, test_redis: str
) -> None:
    version = put(document(free_port(HOST), "password-A"))
    client = redis.Redis.from_url(test_redis)
    for node, applied in (("same", version), ("foreign", version + 5)):
        status = {"node": node, "applied_version": applied, "heartbeat": time.time()}
        client.set(contract.worker_key(node), json.dumps(status | {"servers": {}}))
    client.close()
    workers = {w["node"]: w for w in api.get("/api/v1/workers/").json()}
    assert not workers["same"]["behind"]
    assert workers["foreign"]["behind"]
