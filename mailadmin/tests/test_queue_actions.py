"""The operator's queue actions do the same through the REST API and the console.

Each test runs once per entry point and expects one outcome: the message states, the
relay tasks that reached the real broker (Redis; no Celery worker takes them here) and
the queue controls. Transactional, so the relay tasks go out on commit, as in production.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from rest_framework.test import APIClient

from mailadmin.api.queue_views import ACTIONS as API_ACTIONS
from mailadmin.console.queues import ACTIONS as CONSOLE_ACTIONS
from mailadmin.models import Message, MessageState, QueueControl, RecipientState
from mailadmin.services.delivery.actions import MESSAGE_ACTIONS
from mailadmin.services.delivery.queue import spool_for
from mailadmin.tests.factories import make_relay, reports_to, run, spool
from smtpworker.tests.sink import Sink

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("mailroot")]

ENTRY_POINTS = ["api", "console"]


@pytest.fixture
def partner() -> Iterator[Sink]:
    """The smart host of the remote domain partner.test: a second next hop."""
    with Sink() as server:
        yield server


@pytest.fixture
def hops(api: APIClient, sink: Sink, partner: Sink) -> tuple[str, str]:
    """Relay: example.test through ``sink``, partner.test through ``partner``."""
    server = make_relay(api, delivery={"smart_host": sink.smart_host})
    response = api.post(
        "/api/v1/domains/",
        {
            "server": server["id"],
            "name": "partner.test",
            "type": "remote",
            "relay_allowed": True,
            "smart_host": partner.smart_host,
            "forward_all_to_smart_host": True,
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    return sink.smart_host, partner.smart_host


@pytest.fixture
def console(admin_user: User) -> Client:
    client = Client()
    client.force_login(admin_user)
    return client


Act = Callable[[str, list[str]], int]


def _api_messages(api: APIClient) -> Act:
    def act(action: str, queue_ids: list[str]) -> int:
        if len(queue_ids) == 1:
            path = action.replace("_ndr", "-ndr")
            response = api.post(f"/api/v1/messages/{queue_ids[0]}/{path}/")
        else:
            body = {"action": action, "queue_ids": queue_ids}
            response = api.post("/api/v1/messages/bulk/", body, format="json")
        assert response.status_code == 200, response.content
        return int(response.json()["changed"])

    return act


def _console_messages(console: Client) -> Act:
    def act(action: str, queue_ids: list[str]) -> int:
        data = {"action": action, "queue_id": queue_ids, "confirm": "yes"}
        response = console.post("/queues/messages/action/", data, follow=True)
        assert response.status_code == 200
        (flash,) = [str(m) for m in response.context["messages"]]
        return int(flash.split(" ", 1)[0])  # "<n> messages <done>."

    return act


def _api_queue(api: APIClient) -> Act:
    def act(action: str, hop: list[str]) -> int:
        response = api.post(f"/api/v1/queues/{hop[0]}/{action}/")
        assert response.status_code == 200, response.content
        return int(response.json()["changed"])

    return act


def _console_queue(console: Client) -> Act:
    def act(action: str, hop: list[str]) -> int:
        data = {"next_hop": hop[0], "action": action}
        response = console.post("/queues/action/", data, follow=True)
        assert response.status_code == 200
        (flash,) = [str(m) for m in response.context["messages"]]
        if action == "suspend":
            return 1  # as the API's answer
        return int(flash.rsplit("(", 1)[1].split(" ", 1)[0])  # "... (<n> messages)."

    return act


@pytest.fixture(params=ENTRY_POINTS)
def on_messages(request: Any, api: APIClient, console: Client) -> Act:
    """``act(action, queue ids)``: one message action through the entry point; returns
    how many messages it changed."""
    return _api_messages(api) if request.param == "api" else _console_messages(console)


@pytest.fixture(params=ENTRY_POINTS)
def on_queue(request: Any, api: APIClient, console: Client) -> Act:
    """``act(action, [next hop])``: one queue action through the entry point; returns
    how many messages it made due (1 for suspend)."""
    return _api_queue(api) if request.param == "api" else _console_queue(console)


def states(*queue_ids: str) -> list[str]:
    by_id = dict(Message.objects.filter(queue_id__in=queue_ids).values_list("queue_id", "state"))
    return [by_id[q] for q in queue_ids]


def deferred(sink: Sink, sender: str, *recipients: str) -> str:
    """A message tried once and deferred (451) by ``sink``: state retry."""
    mode, sink.mode = sink.mode, "451"
    queue_id = spool(sender, *recipients)
    assert run(queue_id) == "retry"
    sink.mode = mode
    return queue_id


def test_every_message_action_does_the_same(
    on_messages: Act, hops: tuple[str, str], sink: Sink, enqueued: Callable[[], list[str]]
) -> None:
    a, b, c, d = (deferred(sink, "s@corp.test", f"u{i}@example.test") for i in range(4))
    assert on_messages("suspend", [a, b]) == 2
    assert states(a, b, c) == [MessageState.SUSPENDED, MessageState.SUSPENDED, MessageState.RETRY]
    # Resume makes the message due and sends its relay task now, from either side.
    assert on_messages("resume", [a]) == 1
    assert states(a) == [MessageState.QUEUED] and enqueued() == [a]
    # Retry now leaves suspended messages alone and sends the others' tasks.
    assert on_messages("retry", [b, c]) == 1
    assert states(b, c) == [MessageState.SUSPENDED, MessageState.QUEUED]
    assert enqueued() == [a, c]
    assert on_messages("delete", [b]) == 1
    assert states(b) == [MessageState.DELETED] and b not in spool_for("Relay").ids()
    assert on_messages("delete_ndr", [d]) == 1
    assert states(d) == [MessageState.DELETED]
    (ndr,) = reports_to("s@corp.test")
    assert b"Deleted from the queue" in spool_for("Relay").load(ndr.queue_id)[1]
    # A finished message is not changed again, and says so.
    assert on_messages("delete", [b, d]) == 0


def test_every_queue_action_does_the_same(
    on_queue: Act,
    hops: tuple[str, str],
    sink: Sink,
    partner: Sink,
    enqueued: Callable[[], list[str]],
) -> None:
    main, other = hops
    partner.mode = "451"
    # Its example.test recipient is delivered, its partner.test one waits: due now, as
    # after an operator's Retry whose task has not run yet. It is not in main's queue.
    mixed = spool("s@corp.test", "x@example.test", "y@partner.test")
    assert run(mixed) == "retry"
    delivered = Message.objects.get(queue_id=mixed).recipients.get(address="x@example.test")
    assert delivered.state == RecipientState.DELIVERED and delivered.next_hop == main
    Message.objects.filter(queue_id=mixed).update(state=MessageState.QUEUED)
    waiting = deferred(sink, "s@corp.test", "u@example.test")
    elsewhere = deferred(partner, "s@corp.test", "v@partner.test")
    # Retry: only the messages with a recipient pending at that next hop.
    assert on_queue("retry", [main]) == 1
    assert states(waiting, elsewhere) == [MessageState.QUEUED, MessageState.RETRY]
    assert enqueued() == [waiting]
    # Suspend, then resume: resuming retries the queue now and sends its tasks.
    assert on_queue("suspend", [other]) == 1
    assert QueueControl.objects.get(next_hop=other).suspended
    assert on_queue("resume", [other]) == 2
    assert not QueueControl.objects.get(next_hop=other).suspended
    assert states(mixed, elsewhere) == [MessageState.QUEUED, MessageState.QUEUED]
    assert enqueued()[0] == waiting and sorted(enqueued()[1:]) == sorted([mixed, elsewhere])


def test_both_offer_the_message_actions_the_services_have() -> None:
    assert tuple(CONSOLE_ACTIONS) == tuple(API_ACTIONS) == MESSAGE_ACTIONS
