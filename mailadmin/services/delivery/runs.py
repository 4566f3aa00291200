"""Delivery runs: route, send, record, then retry, notify or finish.

A run takes a batch of queue ids of one node (the SMTP worker's hand-off sends a few ms
of its messages at once; the sweep and the operator's actions send due messages). It
records the new ones already claimed, straight from the spool (one pass from the spool to
the wire), claims the known ones that are due, sends each next hop's messages one after
another over one pooled connection, and writes the ends of the delivered ones together.

Per recipient, at least once and idempotent: a recipient is marked delivered in the
database as soon as its 2xx arrives (one UPDATE, before the next message is sent) and is
never sent again. The only window left is a worker killed after the downstream's 250 and
before that write: that one message's recipients are sent once more on the next run (no
relay can close that window). A run that fails or is stopped gives the messages it still
holds back for a retry a minute later; one that dies outright leaves them to the sweep
once its lease has run out.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from mailadmin.models import Message, MessageState, Recipient, RecipientState
from mailadmin.services.delivery import intake, reports
from mailadmin.services.delivery.queue import (
    delivery_minutes,
    message_recipients,
    message_record,
    messages_claim,
)
from mailadmin.services.delivery.sending import Job, Run, jobs_send
from mailadmin.services.delivery.traffic import traffic_add_counts
from mailadmin.storable import Unstorable, fit
from smtpworker.core.spool import Envelope, MessageNotFound, Spool

log = logging.getLogger(__name__)

# At INFO a delivery writes one line per recipient outcome: the attempt's line, with the
# recipients, the host and its reply, which is what a mail admin greps for (a queue id, an
# address, a 2xx, 4xx or 5xx). A message's end has a line of its own at INFO only where it
# says more than that (bounced: an NDR was sent; badmail, missing, damaged, no server);
# these ends, which its attempt lines already told, are at DEBUG.
_TOLD_BY_ATTEMPTS = frozenset(["delivered", "retry"])


def messages_deliver(
    *, server_name: str, queue_ids: Sequence[str], node: str = ""
) -> dict[str, str]:
    """Record the new ones among ``queue_ids`` (spooled by ``node`` for ``server_name``)
    and deliver every one that is due; returns what happened to each id: delivered,
    bounced, retry, not due (finished, held by another run, or not yet due), missing (no
    such spool file), damaged (an unreadable one), no server, badmail (it cannot be
    recorded: moved to Badmail) or unrecorded (not even that: left in the spool).

    Safe to run twice, and concurrently with another run of the same ids: each message
    is delivered by the one run that claimed it."""
    run = Run(node)
    results: dict[str, str] = {}
    jobs = _take(run, server_name, list(dict.fromkeys(queue_ids)), results)
    try:
        if jobs:
            jobs_send(run, jobs)
        _conclude(run, jobs, results)
    except Exception as exc:
        # Celery logs the traceback with the task; this line carries the queue ids.
        held = [job.message.queue_id for job in jobs]
        log.warning("delivery run for %s failed: %r", ", ".join(held[:10]), exc)
        _give_back(run, jobs)
        raise
    return results


def message_deliver(queue_id: str) -> str:
    """Run delivery for one recorded message if it is due (see :func:`messages_deliver`)."""
    row = Message.objects.filter(queue_id=queue_id).values_list("server_name", "node")[:1]
    if not row:
        return "not due"
    server_name, node = row[0]
    return messages_deliver(server_name=server_name, queue_ids=[queue_id], node=node)[queue_id]


# --- taking the batch: record the new, claim the known -------------------------------------


def _take(run: Run, server_name: str, queue_ids: list[str], results: dict[str, str]) -> list[Job]:
    known = set(
        Message.objects.filter(queue_id__in=queue_ids).order_by().values_list("queue_id", flat=True)
    )
    jobs: list[Job] = []
    fresh = [q for q in queue_ids if q not in known]
    if fresh:
        recorded, raced = _record_new(run, server_name, fresh, results)
        jobs += recorded
        known.update(raced)
    if known:
        jobs += _claim(run, [q for q in queue_ids if q in known], results)
    return jobs


def _record_new(
    run: Run, server_name: str, queue_ids: list[str], results: dict[str, str]
) -> tuple[list[Job], list[str]]:
    """Record spooled messages the database does not know, claimed by this run; returns
    their jobs, and the ids another run recorded meanwhile, to claim the ordinary way.
    One that cannot be recorded goes to Badmail (:func:`intake.message_give_up`)."""
    spool = run.spool(server_name)
    loaded = _load(spool, queue_ids, results)
    if not loaded:
        return [], []
    cfg, server_id = run.config(server_name)
    jobs: list[Job] = []
    refused: list[tuple[Message, bytes, str]] = []
    for envelope, data in loaded:
        message = message_record(
            envelope, data, cfg, server_id, node=run.node, lease_until=run.lease
        )
        try:
            jobs.append(Job(message, message_recipients(message, envelope, cfg), envelope, data))
        except Unstorable as exc:
            refused.append((message, data, str(exc)))
    done, raced, failed = intake.messages_record([(job.message, job.recipients) for job in jobs])
    refused += [(jobs[index].message, jobs[index].data, reason) for index, reason in failed]
    for message, data, reason in refused:
        moved = intake.message_give_up(spool, message, data, reason)
        results[message.queue_id] = "badmail" if moved else "unrecorded"
    recorded = [jobs[index] for index in done]
    run.counts[server_name]["accepted"] += len(recorded)
    return recorded, raced


def _load(
    spool: Spool, queue_ids: list[str], results: dict[str, str]
) -> list[tuple[Envelope, bytes]]:
    loaded = []
    for queue_id in queue_ids:
        try:
            loaded.append(spool.load(queue_id))
        except MessageNotFound:
            log.warning("%s: no spooled message %s", spool.directory, queue_id)
            results[queue_id] = "missing"
        except ValueError as exc:  # left in the spool for an operator to look at
            log.error("%s: cannot read spooled message %s: %s", spool.directory, queue_id, exc)
            results[queue_id] = "damaged"
    return loaded


def _claim(run: Run, queue_ids: list[str], results: dict[str, str]) -> list[Job]:
    messages = messages_claim(queue_ids, lease=run.lease, now=run.now)
    claimed = {m.queue_id for m in messages}
    for queue_id in queue_ids:
        if queue_id not in claimed:
            results[queue_id] = "not due"
    if not messages:
        return []
    recipients: dict[int, list[Recipient]] = defaultdict(list)
    for recipient in Recipient.objects.filter(message__in=messages).order_by("id"):
        recipients[recipient.message_id].append(recipient)
    jobs = []
    for message in messages:
        for recipient in recipients[message.pk]:
            recipient.message = message  # no query when message_conclude reads it
        job = _claim_job(run, message, recipients[message.pk], results)
        if job is not None:
            jobs.append(job)
    return jobs


def _claim_job(
    run: Run, message: Message, recipients: list[Recipient], results: dict[str, str]
) -> Job | None:
    try:
        envelope, data = run.spool(message.server_name).load(message.queue_id)
    except MessageNotFound:
        reports.message_finish(
            message, MessageState.DELETED, "spool file missing: lost outside the queue"
        )
        results[message.queue_id] = "missing"
        return None
    except ValueError as exc:
        log.error("%s: cannot read its spool files: %s", message.queue_id, exc)
        _reschedule(message, f"its spool files cannot be read: {exc}", delivery_minutes(1))
        results[message.queue_id] = "damaged"
        return None
    return Job(message, recipients, envelope, data)


# --- the end of the run ----------------------------------------------------------------------


def _conclude(run: Run, jobs: list[Job], results: dict[str, str]) -> None:
    """End the run in one transaction: the attempt log, the messages whose every recipient
    is delivered (one UPDATE), the traffic counters. Then decide each of the others
    (retry, delay notice, NDR, expiry) on its own: the attempt rows are written first,
    so they come before any report those decisions spool."""
    delivered: list[Job] = []
    others: list[Job] = []
    for job in jobs:
        if run.config(job.message.server_name)[0] is None:
            others.append(job)
        elif all(r.state == RecipientState.DELIVERED for r in job.recipients):
            delivered.append(job)
            results[job.message.queue_id] = "delivered"
        else:
            others.append(job)
    if delivered or run.attempts or any(run.counts.values()):
        with transaction.atomic():
            if delivered:
                Message.objects.filter(pk__in=[job.message.pk for job in delivered]).update(
                    state=MessageState.DELIVERED,
                    finished_at=timezone.now(),
                    lease_until=None,
                    last_error="",
                )
                for job in delivered:
                    run.counts[job.message.server_name]["delivered"] += 1
                finished = [
                    (run.spool(j.message.server_name), j.message.queue_id) for j in delivered
                ]
                transaction.on_commit(lambda: _remove(finished))
            _write_log_and_counts(run)
    for job in others:
        results[job.message.queue_id] = _conclude_one(run, job)
    if any(run.counts.values()):
        _write_log_and_counts(run)
    for job in jobs:
        outcome = results[job.message.queue_id]
        log.log(
            logging.DEBUG if outcome in _TOLD_BY_ATTEMPTS else logging.INFO,
            "%s: %s",
            job.message.queue_id,
            outcome,
            extra={
                "queue_id": job.message.queue_id,
                "server": job.message.server_name,
                "outcome": outcome,
            },
        )


def _conclude_one(run: Run, job: Job) -> str:
    message = job.message
    cfg = run.config(message.server_name)[0]
    if cfg is None:
        _reschedule(
            message,
            "its virtual server no longer exists; delete it or recreate the server",
            delivery_minutes(15),
        )
        return "no server"
    counts = run.counts[message.server_name]
    return reports.message_conclude(
        message, cfg, job.data, job.recipients, busy=job.busy, counts=counts
    )


def _remove(finished: list[tuple[Spool, str]]) -> None:
    for spool, queue_id in finished:
        spool.remove(queue_id)


def _write_log_and_counts(run: Run) -> None:
    # Attempt rows are a log, written once per run when its sending is over: they carry
    # that moment as their time. A run killed before this loses its log rows, never an
    # outcome: each recipient row has its own last reply, host and time.
    if run.attempts:
        intake.attempts_insert(run.attempts)
        run.attempts = []
    for server_name, counts in run.counts.items():
        traffic_add_counts(server_name, counts)
    run.counts.clear()


def _give_back(run: Run, jobs: list[Job]) -> None:
    """After a failed run: make the messages it still holds due again in a minute, rather
    than wait for the lease to end, and keep what it learnt for the log and the charts."""
    held = [job.message.pk for job in jobs]
    try:
        Message.objects.filter(
            pk__in=held, state=MessageState.ACTIVE, lease_until=run.lease
        ).update(
            state=MessageState.RETRY,
            next_attempt_at=timezone.now() + delivery_minutes(1),
            lease_until=None,
        )
        _write_log_and_counts(run)
    except Exception as exc:  # noqa: BLE001 - the lease still ends; the sweep takes over
        log.warning("could not give back %d message(s): %r", len(held), exc)


def _reschedule(message: Message, reason: str, wait: timedelta) -> None:
    Message.objects.filter(pk=message.pk).update(
        state=MessageState.RETRY,
        lease_until=None,
        last_error=fit(Message, "last_error", reason),
        next_attempt_at=timezone.now() + wait,
    )
