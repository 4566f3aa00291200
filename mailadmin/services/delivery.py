"""One delivery run of one message: route, send, record, then retry, notify or finish.

Per recipient, at least once and idempotent: a recipient is marked delivered in the
database as soon as its 2xx arrives and is never sent again. The only window left is a
worker killed after the downstream's 250 and before that write: the recipient is then
sent once more on the next run (no relay can close that window).
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from mailadmin.models import Attempt, Message, MessageState, Recipient, RecipientState
from mailadmin.services import reports
from mailadmin.services.queue import (
    current_config,
    delivery_minutes,
    message_claim,
    server_home,
    spool_for,
    suspended_hops,
)
from mailadmin.services.secrets import secret_open
from mailadmin.services.slots import NoSlot, outbound_slots
from smtpworker import outbound, routing
from smtpworker.config import ServerConfig
from smtpworker.spool import MessageNotFound

log = logging.getLogger(__name__)

# A full next hop (outbound limits) is tried again this soon, without counting an attempt.
BUSY_RETRY_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class Outcome:
    code: int
    reply: str
    host: str


def message_deliver(queue_id: str) -> str:
    """Run delivery for one message if it is due; returns what happened (for logs/tests)."""
    message = message_claim(queue_id)
    if message is None:
        return "not due"
    context = {"queue_id": queue_id, "server": message.server_name}
    log.info("delivery run for %s (%d deferred so far)", queue_id, message.attempts, extra=context)
    try:
        outcome = _run(message)
        log.info("%s: %s", queue_id, outcome, extra={**context, "outcome": outcome})
        return outcome
    except Exception as exc:
        # Celery logs the traceback with the task; this line carries the queue id.
        log.warning("delivery run for %s failed: %r", queue_id, exc, extra=context)
        # Give the message back (due again soon) rather than wait for the lease to end.
        Message.objects.filter(pk=message.pk, state=MessageState.ACTIVE).update(
            state=MessageState.RETRY,
            next_attempt_at=timezone.now() + delivery_minutes(1),
            lease_until=None,
        )
        raise


def _run(message: Message) -> str:
    try:
        envelope, data = spool_for(message.server_name).load(message.queue_id)
    except MessageNotFound:
        reports.finish(message, MessageState.DELETED, "spool file missing: lost outside the queue")
        return "missing"
    cfg = current_config(message.server_name)
    if cfg is None:
        _reschedule(
            message, "its virtual server no longer exists; delete it or recreate the server"
        )
        return "no server"
    suspended = suspended_hops()
    groups: dict[routing.Hop, list[Recipient]] = defaultdict(list)
    for recipient in message.recipients.filter(state=RecipientState.PENDING):
        hop = routing.route(cfg, recipient.domain)
        if recipient.next_hop != hop.name or recipient.hop_kind != hop.kind:
            recipient.next_hop, recipient.hop_kind = hop.name, hop.kind
            recipient.save(update_fields=["next_hop", "hop_kind"])
        groups[hop].append(recipient)
    busy = False
    for hop, recipients in groups.items():
        if hop.name in suspended:
            continue
        if _lease_running_out(message):
            busy = True  # leave the rest to the next run rather than outlive the lease
            break
        try:
            _deliver_hop(message, cfg, hop, recipients, envelope.sender, data)
        except NoSlot as exc:
            log.info(
                "%s: %s",
                message.queue_id,
                exc,
                extra={"queue_id": message.queue_id, "server": message.server_name},
            )
            busy = True
    return reports.conclude(message, cfg, data, busy=busy)


def _lease_running_out(message: Message) -> bool:
    margin = timedelta(seconds=min(30, settings.MAILADMIN_DELIVERY_LEASE_SECONDS / 3))
    return message.lease_until is not None and timezone.now() + margin > message.lease_until


def _deliver_hop(
    message: Message,
    cfg: ServerConfig,
    hop: routing.Hop,
    recipients: list[Recipient],
    sender: str,
    data: bytes,
) -> None:
    if hop.kind == "local":
        _drop(message, cfg, recipients, sender, data)
        return
    outcomes = _send_remote(
        cfg, hop, [r.address for r in recipients], _masquerade(cfg, sender), data
    )
    _record(message, hop, recipients, outcomes)


def _masquerade(cfg: ServerConfig, sender: str) -> str:
    domain = cfg.delivery.masquerade_domain
    if not domain or not sender:
        return sender
    return f"{sender.rpartition('@')[0]}@{domain}"


def _send_remote(
    cfg: ServerConfig, hop: routing.Hop, addresses: list[str], sender: str, data: bytes
) -> dict[str, Outcome]:
    """Try the hop's targets in order until one answers; per-recipient outcomes."""
    timeout = min(cfg.delivery.outbound.timeout, settings.MAILADMIN_OUTBOUND_TIMEOUT_CAP)
    try:
        targets = routing.resolve(hop, dns_servers=cfg.delivery.dns_servers, timeout=timeout)
    except routing.RouteError as exc:
        if hop.fallback is not None and not isinstance(exc, routing.NullMX):
            # "Attempt direct delivery before sending to smart host": DNS failed, so the
            # smart host takes it (a null MX is the domain refusing mail: no fallback).
            return _send_remote(cfg, hop.fallback, addresses, sender, data)
        return _all(addresses, exc.code, f"{exc.enhanced} {exc}", "")
    if not targets and hop.fallback is not None:
        return _send_remote(cfg, hop.fallback, addresses, sender, data)
    limits = [
        (f"total:{cfg.name}", cfg.delivery.outbound.connection_limit),
        (f"domain:{hop.name}", cfg.delivery.outbound.per_domain_limit),
    ]
    last: dict[str, Outcome] = {}
    with outbound_slots(limits, ttl=timeout * 3 + 30):
        for target in targets:
            result = _transaction(cfg, hop, target, sender, addresses, data, timeout)
            last = {r.recipient: Outcome(r.code, r.reply, result.host) for r in result.results}
            if result.connect_error is None:
                return last
    if hop.fallback is not None:
        return _send_remote(cfg, hop.fallback, addresses, sender, data)
    return last or _all(addresses, 451, "4.4.1 No answer from any host of the next hop", "")


def _transaction(
    cfg: ServerConfig,
    hop: routing.Hop,
    target: routing.Target,
    sender: str,
    addresses: list[str],
    data: bytes,
    timeout: float,
) -> outbound.TransactionResult:
    security = hop.security
    password = secret_open(security.password) if security.password else ""
    return outbound.POOL.send(
        target,
        helo_name=cfg.fqdn or settings.MAILADMIN_HOSTNAME,
        use_helo=hop.use_helo,
        security=security,
        password=password,
        timeout=timeout,
        sender=sender,
        recipients=addresses,
        data=data,
    )


def _all(addresses: list[str], code: int, reply: str, host: str) -> dict[str, Outcome]:
    return {a: Outcome(code, reply, host) for a in addresses}


def _record(
    message: Message, hop: routing.Hop, recipients: list[Recipient], outcomes: dict[str, Outcome]
) -> None:
    """Write each recipient's outcome at once: a 2xx is never sent again."""
    now = timezone.now()
    by_reply: dict[tuple[int, str, str], list[str]] = defaultdict(list)
    with transaction.atomic():
        for recipient in recipients:
            outcome = outcomes.get(recipient.address) or Outcome(451, "4.4.0 no result", "")
            recipient.attempts += 1
            recipient.last_code, recipient.last_reply, recipient.last_host = (
                outcome.code,
                outcome.reply,
                outcome.host,
            )
            if 200 <= outcome.code < 300:
                recipient.state, recipient.done_at = RecipientState.DELIVERED, now
            elif outcome.code >= 500:
                recipient.state, recipient.done_at = RecipientState.FAILED, now
            recipient.save()
            by_reply[(outcome.code, outcome.reply, outcome.host)].append(recipient.address)
        for (code, reply, host), addresses in by_reply.items():
            Attempt.objects.create(
                message=message,
                next_hop=hop.name,
                host=host,
                recipients=", ".join(addresses),
                code=code,
                reply=reply[:2000],
            )
            log.info(
                "%s: %s via %s: %s %s",
                message.queue_id,
                ", ".join(addresses),
                host or hop.name,
                code,
                reply,
                extra={
                    "queue_id": message.queue_id,
                    "server": message.server_name,
                    "next_hop": hop.name,
                    "host": host,
                    "code": code,
                    "recipients": addresses,
                },
            )
        failing = [o for o in outcomes.values() if 400 <= o.code < 500]
        if failing:
            Message.objects.filter(pk=message.pk).update(last_error=failing[0].reply[:2000])


def _drop(
    message: Message, cfg: ServerConfig, recipients: list[Recipient], sender: str, data: bytes
) -> None:
    """Local domains: IIS writes each message to Drop/ with x-sender/x-receiver lines."""
    drop = server_home(message.server_name) / "Drop"
    drop.mkdir(parents=True, exist_ok=True)
    lines = [f"x-sender: {sender}"] + [f"x-receiver: {r.address}" for r in recipients]
    content = ("\r\n".join(lines) + "\r\n").encode() + data
    _write_durably(drop / f"{message.queue_id}.eml", content)
    _record(
        message,
        routing.Hop("local", recipients[0].domain, cfg.delivery.outbound.security, False, 0),
        recipients,
        _all([r.address for r in recipients], 250, "2.0.0 Written to the Drop directory", "Drop"),
    )


def _write_durably(path: Path, content: bytes) -> None:
    # A replayed run (crash after the write, before the record) overwrites the same name.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        os.write(fd, content)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _reschedule(message: Message, reason: str) -> None:
    Message.objects.filter(pk=message.pk).update(
        state=MessageState.RETRY,
        lease_until=None,
        last_error=reason,
        next_attempt_at=timezone.now() + delivery_minutes(15),
    )
