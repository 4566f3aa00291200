"""Helpers the web side's tests share: plain functions, no fixtures (those are in conftest).

Tests import what they need from here, never from another test module. Everything goes
through the real API, services, spool and database, as a user or the SMTP worker would.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import re
import smtplib
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from django import forms
from django.contrib.auth.models import Group, User
from django.test import Client
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from mailadmin.console.forms import SheetForm
from mailadmin.models import (
    AccessEntry,
    Binding,
    ConfigSnapshot,
    Domain,
    Message,
    MessageState,
    SmtpUser,
    VirtualServer,
)
from mailadmin.services.delivery.queue import message_ingest, spool_for
from mailadmin.services.delivery.runs import message_deliver
from smtpworker.core.spool import Envelope, new_queue_id
from smtpworker.tests.factories import free_port
from smtpworker.tests.sink import Sink

ROOT = Path(__file__).resolve().parents[2]

# --- console users ---------------------------------------------------------------------


def console_user(username: str, group: str) -> User:
    """A console and API login in ``group`` (operators, administrators); its password is
    ``<username>-password``."""
    user = User.objects.create_user(username, password=f"{username}-password")
    # get_or_create: transactional tests flush the groups the data migration made.
    user.groups.add(Group.objects.get_or_create(name=group)[0])
    return user


# --- configuration ---------------------------------------------------------------------


def make_server(api: APIClient, **fields: Any) -> dict[str, Any]:
    """Create a server through the API (``fields`` over a minimal body); its JSON."""
    body = {"name": "Test", "default_domain": "test.example", "bindings": ["127.0.0.2:2525"]}
    body.update(fields)
    response = api.post("/api/v1/servers/", body, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def db_state() -> dict[str, Any]:
    """Every configuration and queue row, the configuration versions, the API tokens and
    the console accounts: equal before and after a request that must change nothing."""
    return {
        "servers": list(VirtualServer.objects.order_by("pk").values()),
        "bindings": list(Binding.objects.order_by("pk").values()),
        "entries": list(AccessEntry.objects.order_by("pk").values()),
        "domains": list(Domain.objects.order_by("pk").values()),
        "users": list(SmtpUser.objects.order_by("pk").values()),
        "user_servers": sorted(
            SmtpUser.servers.through.objects.values_list("smtpuser_id", "virtualserver_id")
        ),
        "versions": ConfigSnapshot.objects.count(),
        "messages": list(Message.objects.order_by("pk").values()),
        "tokens": Token.objects.count(),
        "accounts": list(User.objects.order_by("pk").values("pk", "username", "password")),
    }


# --- delivery, in-process (the service a relay task calls) -----------------------------

BODY = b"From: a@corp.test\r\nTo: b@example.test\r\nSubject: Quarterly numbers\r\nMessage-ID: <m1@corp.test>\r\n\r\nHello.\r\n.dot line\r\n"


def make_relay(api: APIClient, **fields: Any) -> dict[str, Any]:
    """:func:`make_server` as the delivery tests' relay: "Relay", for corp.test."""
    return make_server(api, **{"name": "Relay", "default_domain": "corp.test", **fields})


def spool(
    sender: str,
    *recipients: str,
    data: bytes = BODY,
    server: str = "Relay",
    at: float | None = None,
    record: bool = True,
) -> str:
    """Spool a message as the SMTP worker would (received ``at``, default now) and, with
    ``record``, record it as its hand-off would; return its queue id."""
    received = time.time() if at is None else at
    queue_id = new_queue_id(received)
    envelope = Envelope(
        queue_id=queue_id,
        server=server,
        sender=sender,
        recipients=recipients,
        received_at=received,
        client_ip="127.0.0.9",
        client_helo="client.test",
        auth_user=None,
        size=len(data),
        smtputf8=False,
        body_8bit=False,
    )
    spool_for(server).store(envelope, data)
    if record:
        assert message_ingest(server_name=server, queue_id=queue_id) is not None
    return queue_id


def run(queue_id: str) -> str:
    """Make the message due now and run its delivery; how it ended."""
    Message.objects.filter(queue_id=queue_id).update(next_attempt_at=None)
    return message_deliver(queue_id)


def reports_to(address: str) -> list[Message]:
    """The delivery reports (delay notices, NDRs) addressed to ``address``."""
    return [
        m
        for m in Message.objects.filter(is_report=True)
        if m.recipients.filter(address=address).exists()
    ]


def deferred_until_expired(api: APIClient, sink: Sink) -> str:
    """A message that the sink defers until it expires (retry every "minute", a delay
    notice after 5, expiry after 30): delay notice, then NDR. Its queue id."""
    make_relay(
        api,
        delivery={
            "smart_host": sink.smart_host,
            "retry_minutes": [1, 1, 1, 1],
            "delay_notification_minutes": 5,
            "expiration_minutes": 30,
        },
    )
    sink.mode = "451"
    queue_id = spool("a@corp.test", "b@example.test")
    deadline = time.monotonic() + 10
    while Message.objects.get(queue_id=queue_id).state != MessageState.BOUNCED:
        assert time.monotonic() < deadline
        run(queue_id)
        time.sleep(0.02)
    return queue_id


# --- delivery, end to end (a running SMTP worker and Celery worker) --------------------


def configure(
    api: APIClient,
    sink: Sink,
    django_capture_on_commit_callbacks: Any,
    *,
    name: str = "Relay",
    node: str = "",
    host: str = "127.0.0.2",
    **delivery: Any,
) -> tuple[str, int]:
    """Create a started server of ``node`` on a free port of ``host`` that relays for
    loopback clients to ``sink`` (quick retries); return its address."""
    port = free_port(host)
    with django_capture_on_commit_callbacks(execute=True):
        response = api.post(
            "/api/v1/servers/",
            {
                "name": name,
                "node": node,
                "default_domain": f"{name.lower()}.test" if node else "corp.test",
                "bindings": [f"{host}:{port}"],
                "relay": {"list": ["127.0.0.0/8"]},
                "messages": {"max_messages_per_connection": None},
                "delivery": {
                    "smart_host": sink.smart_host,
                    "retry_minutes": [20, 20, 20, 20],
                    **delivery,
                },
            },
            format="json",
        )
    assert response.status_code == 201, response.content
    return host, port


def send(address: tuple[str, int], count: int, tag: str) -> list[str]:
    """Send ``count`` messages; return the queue ids the server acknowledged."""
    acked = []
    with smtplib.SMTP(*address, timeout=10) as client:
        client.ehlo("load.test")
        for i in range(count):
            client.mail("app@corp.test")
            client.rcpt(f"user{i % 3}@example.test")
            code, reply = client.data(f"Subject: {tag}-{i}\r\n\r\nbody {i}\r\n".encode())
            assert code == 250, reply
            acked.append(reply.decode().rsplit(" ", 1)[-1])
    return acked


# --- the console's Properties sheet ----------------------------------------------------


def form_data(form: forms.Form) -> dict[str, Any]:
    """What a browser posts for this form as shown (unchanged): file inputs stay empty and
    a password box shows nothing; a sheet tab's form also names its tab."""
    data: dict[str, Any] = {"tab": form.tab} if isinstance(form, SheetForm) else {}
    for name, field in form.fields.items():
        value = form[name].value()
        if value is None or isinstance(field.widget, forms.FileInput | forms.PasswordInput):
            continue
        if isinstance(field.widget, forms.CheckboxInput):
            if value:
                data[name] = "on"
        else:
            data[name] = value
    return data


def get_tab(client: Client, server: VirtualServer, tab: str) -> dict[str, Any]:
    """The form data of one tab of ``server``'s Properties sheet, as shown."""
    response = client.get(f"/servers/{server.pk}/properties/{tab}/")
    assert response.status_code == 200
    tabs = {t["name"]: t["form"] for t in response.context["tabs"]}
    return form_data(tabs[tab])


def post(client: Client, server: VirtualServer, tab: str, data: dict[str, Any]) -> Any:
    """Apply ``data`` on one tab of the sheet, as its Apply button does."""
    return client.post(
        f"/servers/{server.pk}/properties/{tab}/", {**data, "action": "apply", "active_tab": tab}
    )


def error_beside(html: str, field: str) -> str:
    """The error text the sheet shows beside ``field`` (the test fails if there is none)."""
    match = re.search(rf'<p class="field-error" id="id_{field}-error">(.*?)</p>', html, re.S)
    assert match, f"no error beside {field}"
    return match[1]


# --- bin/run -----------------------------------------------------------------------------


def load_bin_run(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """``make run``'s script bin/run (no .py) loaded as the module ``bin_run`` for one test."""
    loader = importlib.machinery.SourceFileLoader("bin_run", str(ROOT / "bin" / "run"))
    spec = importlib.util.spec_from_loader("bin_run", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bin_run", module)  # its dataclasses look themselves up
    loader.exec_module(module)
    return module
