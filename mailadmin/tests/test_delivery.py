"""Delivery runs against real SMTP sinks and a real DNS server on loopback.

These call the delivery service in-process (the Celery task is a thin wrapper, driven
end to end in test_delivery_e2e); the spool, database, sinks and DNS are all real.
"""

from __future__ import annotations

import email
import email.policy
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from mailadmin.models import (
    Attempt,
    Message,
    MessageState,
    Recipient,
    RecipientState,
    TrafficCounter,
)
from mailadmin.selectors.config import current_config
from mailadmin.services.delivery import reports
from mailadmin.services.delivery.queue import spool_for
from mailadmin.services.delivery.slots import outbound_slots
from mailadmin.tests.factories import (
    BODY,
    deferred_until_expired,
    make_relay,
    reports_to,
    run,
    spool,
)
from smtpworker.tests.dnsserver import DnsServer
from smtpworker.tests.sink import Sink

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("mailroot")]


def test_it_relays_through_a_literal_smart_host(api: APIClient, sink: Sink) -> None:
    make_relay(api, delivery={"smart_host": sink.smart_host, "masquerade_domain": "masq.test"})
    queue_id = spool("a@corp.test", "b@example.test", "c@example.test")
    assert run(queue_id) == "delivered"
    (received,) = sink.wait_for(1)
    assert received.recipients == ("b@example.test", "c@example.test")  # one transaction
    assert received.sender == "a@masq.test"
    assert received.data.replace(b"\r\n", b"\n").endswith(b"Hello.\n.dot line\n")
    message = Message.objects.get(queue_id=queue_id)
    assert message.state == MessageState.DELIVERED and message.finished_at is not None
    assert set(message.recipients.values_list("state", flat=True)) == {RecipientState.DELIVERED}
    assert Attempt.objects.get(message=message).code == 250
    assert spool_for("Relay").ids() == []
    assert TrafficCounter.objects.get(server_name="Relay").delivered == 1


def test_local_domains_go_to_the_drop_directory(api: APIClient, mailroot: Path) -> None:
    make_relay(api)
    queue_id = spool("a@outside.test", "boss@corp.test")
    assert run(queue_id) == "delivered"
    dropped = (mailroot / "Relay" / "Drop" / f"{queue_id}.eml").read_bytes()
    assert dropped.startswith(b"x-sender: a@outside.test\r\nx-receiver: boss@corp.test\r\n")
    assert dropped.endswith(BODY)


def test_a_remote_domain_with_its_own_smart_host_and_helo(api: APIClient, sink: Sink) -> None:
    with Sink() as other:
        server = make_relay(api, delivery={"smart_host": sink.smart_host})
        api.post(
            "/api/v1/domains/",
            {
                "server": server["id"],
                "name": "partner.test",
                "type": "remote",
                "relay_allowed": True,
                "smart_host": other.smart_host,
                "forward_all_to_smart_host": True,
                "use_helo": True,
            },
            format="json",
        )
        queue_id = spool("a@corp.test", "x@partner.test", "y@example.test")
        assert run(queue_id) == "delivered"
        (to_partner,) = other.wait_for(1)
        (to_default,) = sink.wait_for(1)
    assert to_partner.recipients == ("x@partner.test",) and not to_partner.esmtp
    assert to_default.recipients == ("y@example.test",) and to_default.esmtp
    assert sorted(Recipient.objects.values_list("next_hop", flat=True)) == sorted(
        [other.smart_host, sink.smart_host]
    )


def test_direct_delivery_by_mx_in_preference_order(api: APIClient, sink: Sink) -> None:
    zone: dict[str, dict[str, list[Any]]] = {
        "example.test": {"MX": [(10, "mx1.example.test"), (20, "mx2.example.test")]},
        "mx1.example.test": {"A": ["127.0.0.3"]},  # nothing listens there: refused
        "mx2.example.test": {"A": ["127.0.0.1"]},
    }
    with DnsServer(zone) as dns_server:
        make_relay(
            api, delivery={"dns_servers": [dns_server.address], "outbound": {"port": sink.port}}
        )
        queue_id = spool("a@corp.test", "b@example.test")
        assert run(queue_id) == "delivered"
    sink.wait_for(1)
    attempt = Attempt.objects.get(message__queue_id=queue_id)
    assert "mx2.example.test" in attempt.host


def test_a_null_mx_bounces_with_an_ndr(api: APIClient, sink: Sink) -> None:
    with DnsServer({"nullmx.test": {"MX": [(0, ".")]}}) as dns_server:
        make_relay(
            api,
            delivery={"dns_servers": [dns_server.address], "outbound": {"port": sink.port}},
            messages={"ndr_copy_to": "postmaster@corp.test"},
        )
        queue_id = spool("a@corp.test", "b@nullmx.test")
        assert run(queue_id) == "bounced"
    recipient = Recipient.objects.get(message__queue_id=queue_id)
    assert recipient.state == RecipientState.FAILED and recipient.last_code == 556
    (ndr,) = Message.objects.filter(is_report=True)
    assert ndr.sender == "" and sorted(ndr.recipients.values_list("address", flat=True)) == [
        "a@corp.test",
        "postmaster@corp.test",
    ]
    _envelope, data = spool_for("Relay").load(ndr.queue_id)
    report = email.message_from_bytes(data, policy=email.policy.default)
    assert report.get_content_type() == "multipart/report"
    assert report["Subject"] == "Undeliverable: Quarterly numbers"
    assert b"Final-Recipient: rfc822;b@nullmx.test" in data and b"Status: 5.1.10" in data


def test_attempt_direct_first_falls_back_to_the_smart_host(api: APIClient, sink: Sink) -> None:
    with DnsServer({}) as dns_server:  # NXDOMAIN for everything
        make_relay(
            api,
            delivery={
                "dns_servers": [dns_server.address],
                "smart_host": sink.smart_host,
                "attempt_direct_first": True,
            },
        )
        assert run(spool("a@corp.test", "b@nowhere.test")) == "delivered"
    assert sink.wait_for(1)[0].recipients == ("b@nowhere.test",)


def test_4xx_is_retried_on_the_iis_schedule(api: APIClient, sink: Sink) -> None:
    make_relay(api, delivery={"smart_host": sink.smart_host, "retry_minutes": [10, 20, 30, 40]})
    sink.mode = "451"
    queue_id = spool("a@corp.test", "b@example.test")
    # First, second, third, then every 40 "minutes" (0.01 s each here), counted from a
    # moment of the run: between its start and its end, however slow the machine.
    for expected in [0.1, 0.2, 0.3, 0.4, 0.4]:
        before = timezone.now()
        assert run(queue_id) == "retry"
        after = timezone.now()
        message = Message.objects.get(queue_id=queue_id)
        assert message.state == MessageState.RETRY and message.next_attempt_at is not None
        earliest = before + timedelta(seconds=expected)
        latest = after + timedelta(seconds=expected)
        assert earliest <= message.next_attempt_at <= latest, (expected, before, after)
    assert Recipient.objects.get(message__queue_id=queue_id).last_reply.startswith("4.3.0")
    sink.mode = "accept"
    assert run(queue_id) == "delivered"
    assert len(sink.wait_for(1)) == 1


@pytest.mark.parametrize("mode", ["refuse", "stall", "drop_mid_data", "421"])
def test_connection_failures_are_temporary(sink: Sink, mode: str, relay: str) -> None:
    sink.mode = mode
    queue_id = spool("a@corp.test", "b@example.test")
    assert run(queue_id) == "retry"
    recipient = Recipient.objects.get(message__queue_id=queue_id)
    assert recipient.state == RecipientState.PENDING and 400 <= (recipient.last_code or 0) < 500
    assert not Message.objects.filter(is_report=True).exists()


def test_a_delivered_recipient_is_never_sent_again(sink: Sink, relay: str) -> None:
    sink.rcpt_replies = {"later@example.test": "451 4.2.1 Mailbox busy"}
    queue_id = spool("a@corp.test", "now@example.test", "later@example.test")
    assert run(queue_id) == "retry"
    assert run(queue_id) == "retry"
    sink.rcpt_replies = {}
    assert run(queue_id) == "delivered"
    received = sink.wait_for(2)
    assert [m.recipients for m in received] == [("now@example.test",), ("later@example.test",)]
    assert run(queue_id) == "not due"  # a finished message is never run again


def test_a_run_repeated_after_its_ndr_sends_the_same_ndr_once(api: APIClient, sink: Sink) -> None:
    with DnsServer({"nullmx.test": {"MX": [(0, ".")]}}) as dns_server:
        make_relay(api, delivery={"dns_servers": [dns_server.address]})
        queue_id = spool("a@corp.test", "b@nullmx.test")
        assert run(queue_id) == "bounced"
    (ndr,) = Message.objects.filter(is_report=True)
    assert ndr.queue_id == f"{queue_id}N"
    # A run cut short after spooling its NDR, before recording the bounce, runs again:
    message = Message.objects.get(queue_id=queue_id)
    failed = list(message.recipients.all())
    cfg = current_config("Relay")
    assert cfg is not None
    again = reports.report_create(message, cfg, BODY, failed, kind="failure", now=timezone.now())
    assert again == ndr.queue_id
    assert Message.objects.filter(is_report=True).count() == 1
    # ... also when the first run died between spooling the NDR and recording it.
    Message.objects.filter(pk=ndr.pk).delete()
    assert spool_for("Relay").message_path(ndr.queue_id).exists()
    again = reports.report_create(message, cfg, BODY, failed, kind="failure", now=timezone.now())
    assert again == ndr.queue_id
    (recorded,) = Message.objects.filter(is_report=True)
    assert recorded.queue_id == ndr.queue_id and recorded.sender == ""


def test_5xx_for_one_recipient_bounces_only_that_one(sink: Sink, relay: str) -> None:
    sink.rcpt_replies = {"gone@example.test": "550 5.1.1 No such user"}
    queue_id = spool("a@corp.test", "gone@example.test", "here@example.test")
    assert run(queue_id) == "bounced"
    assert sink.wait_for(1)[0].recipients == ("here@example.test",)
    (ndr,) = reports_to("a@corp.test")
    _envelope, data = spool_for("Relay").load(ndr.queue_id)
    status_part = data.split(b"message/delivery-status", 1)[1].split(b"text/rfc822-headers", 1)[0]
    assert b"gone@example.test" in status_part and b"here@example.test" not in status_part
    assert b"Diagnostic-Code: smtp;550 5.1.1 No such user" in data


def test_delay_notice_once_then_expiry_ndr(api: APIClient, sink: Sink) -> None:
    queue_id = deferred_until_expired(api, sink)
    reports = reports_to("a@corp.test")
    subjects = sorted(_subject(m) for m in reports)
    assert subjects == ["Delayed: Quarterly numbers", "Undeliverable: Quarterly numbers"]
    recipient = Recipient.objects.get(message__queue_id=queue_id)
    assert recipient.last_reply.startswith("4.4.7 Message expired")


def _subject(message: Message) -> str:
    _envelope, data = spool_for(message.server_name).load(message.queue_id)
    return str(email.message_from_bytes(data, policy=email.policy.default)["Subject"])


def test_no_ndr_for_the_null_sender_and_badmail_for_a_failed_ndr(
    sink: Sink, mailroot: Path, relay: str
) -> None:
    sink.mode = "550"
    bounce = spool("", "b@example.test")
    assert run(bounce) == "bounced"
    assert not Message.objects.filter(is_report=True).exists()  # never answer <> with an NDR
    failing = spool("a@elsewhere.test", "b@example.test")  # a remote sender: the NDR relays
    assert run(failing) == "bounced"
    (ndr,) = reports_to("a@elsewhere.test")
    assert run(ndr.queue_id) == "bounced"  # the smart host refuses the NDR too
    badmail = mailroot / "Relay" / "Badmail"
    assert (badmail / f"{ndr.queue_id}.BAD").exists()
    assert "could not be delivered" in (badmail / f"{ndr.queue_id}.BDR").read_text()


def test_a_failed_ndr_goes_to_the_servers_own_badmail_directory(
    api: APIClient, sink: Sink, tmp_path: Path
) -> None:
    # The server's badmail_directory, as Pickup/ honours it, not <home>/Badmail.
    home, badmail = tmp_path / "homes" / "relay", tmp_path / "elsewhere" / "bad"
    make_relay(
        api,
        home_directory=str(home),
        delivery={"smart_host": sink.smart_host},
        messages={"badmail_directory": str(badmail)},
    )
    sink.mode = "550"
    failing = spool("a@elsewhere.test", "b@example.test")
    assert (home / "Queue" / f"{failing}.env").is_file()  # the home directory is honoured
    assert run(failing) == "bounced"
    (ndr,) = reports_to("a@elsewhere.test")
    assert run(ndr.queue_id) == "bounced"
    assert (badmail / f"{ndr.queue_id}.BAD").is_file()
    assert "could not be delivered" in (badmail / f"{ndr.queue_id}.BDR").read_text()
    assert not (home / "Badmail").exists()


def test_outbound_limits_hold_and_defer_without_counting_an_attempt(
    api: APIClient, sink: Sink
) -> None:
    make_relay(api, delivery={"smart_host": sink.smart_host, "outbound": {"per_domain_limit": 1}})
    queue_id = spool("a@corp.test", "b@example.test")
    with outbound_slots([(f"domain:{sink.smart_host}", 1)], ttl=30):  # another worker holds it
        assert run(queue_id) == "retry"
    message = Message.objects.get(queue_id=queue_id)
    assert message.attempts == 0 and sink.messages == []
    assert run(queue_id) == "delivered"


def test_outbound_auth_and_required_tls_to_the_smart_host(api: APIClient) -> None:
    with Sink(tls=True, auth=("relayuser", "relaypass")) as secure:
        make_relay(
            api,
            delivery={
                "smart_host": secure.smart_host,
                "outbound": {
                    "tls": True,
                    "auth": {"method": "basic", "username": "relayuser", "password": "relaypass"},
                },
            },
        )
        assert run(spool("a@corp.test", "b@example.test")) == "delivered"
        (received,) = secure.wait_for(1)
    assert received.tls and received.auth_user == "relayuser"


def test_queue_api_lists_queues_and_acts_on_messages(
    api: APIClient, operator_api: APIClient, sink: Sink, relay: str
) -> None:
    sink.mode = "451"
    first, second, third = (spool("a@corp.test", f"u{i}@example.test") for i in range(3))
    for queue_id in (first, second, third):
        run(queue_id)
    (queue,) = api.get("/api/v1/queues/").json()
    assert (
        queue["next_hop"] == sink.smart_host
        and queue["messages"] == 3
        and queue["state"] == "retry"
    )
    assert queue["last_error"].startswith("451 4.3.0")
    assert operator_api.post(f"/api/v1/messages/{first}/delete/").status_code == 403
    assert api.post(f"/api/v1/messages/{first}/suspend/").json() == {"changed": 1}
    assert api.get("/api/v1/messages/?state=suspended").json()["results"][0]["queue_id"] == first
    assert run(first) == "not due"
    assert api.post(f"/api/v1/messages/{first}/resume/").json() == {"changed": 1}
    detail = api.get(f"/api/v1/messages/{second}/").json()
    assert ["Subject", "Quarterly numbers"] in detail["headers"]
    assert detail["attempt_log"][0]["code"] == 451 and detail["recipients"][0]["state"] == "pending"
    assert api.post(f"/api/v1/messages/{second}/delete/").json() == {"changed": 1}
    assert Message.objects.get(queue_id=second).state == MessageState.DELETED
    assert api.post(f"/api/v1/messages/{third}/delete-ndr/").json() == {"changed": 1}
    (ndr,) = reports_to("a@corp.test")
    assert b"Deleted from the queue" in spool_for("Relay").load(ndr.queue_id)[1]
    hop = sink.smart_host
    assert api.post(f"/api/v1/queues/{hop}/suspend/").status_code == 200
    assert api.get("/api/v1/queues/").json()[0]["state"] == "suspended"
    sink.mode = "accept"
    run(first)
    assert sink.messages == []  # the queue is suspended
    api.post(f"/api/v1/queues/{hop}/resume/")
    assert run(first) == "delivered"
    bulk = api.post(
        "/api/v1/messages/bulk/", {"action": "delete", "queue_ids": [ndr.queue_id]}, format="json"
    )
    assert bulk.json() == {"changed": 1}
    assert (
        api.post(
            "/api/v1/messages/bulk/", {"action": "explode", "queue_ids": []}, format="json"
        ).status_code
        == 400
    )


def test_message_list_filters_and_pages(api: APIClient, relay: str) -> None:
    ids = [spool(f"s{i}@corp.test", "b@example.test") for i in range(7)]
    page = api.get("/api/v1/messages/?limit=3").json()
    assert [m["queue_id"] for m in page["results"]] == ids[::-1][:3]
    rest = api.get(page["next"]).json()
    assert [m["queue_id"] for m in rest["results"]] == ids[::-1][3:6]
    assert [m["sender"] for m in api.get("/api/v1/messages/?sender=s3@").json()["results"]] == [
        "s3@corp.test"
    ]
    assert len(api.get("/api/v1/messages/?subject=quarterly&state=queued").json()["results"]) == 7
    assert api.get("/api/v1/messages/?recipient=nobody").json()["results"] == []
