"""Sending a delivery run's messages and recording each outcome as it arrives.

:func:`jobs_send` groups the pending recipients of a run's messages by next hop. Each hop's
messages go one after another over one pooled connection, under one outbound slot. Each
message's outcome is committed (:func:`_record`) before the next message is sent: a
recipient that got a 2xx is never sent again, and a worker killed mid-batch repeats at
most the message in flight. :mod:`mailadmin.services.delivery.runs` takes the batch in and
concludes it.
"""

from __future__ import annotations

import functools
import logging
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.db import connection
from django.utils import timezone

from mailadmin.models import Attempt, Message, Recipient, RecipientState
from mailadmin.selectors.config import current_server
from mailadmin.selectors.queues import suspended_hops
from mailadmin.services.config.secrets import secret_open
from mailadmin.services.delivery import intake
from mailadmin.services.delivery.queue import delivery_lease, server_directories
from mailadmin.services.delivery.slots import NoSlot, outbound_slots
from mailadmin.storable import fit, fit_row
from smtpworker.core import safefile
from smtpworker.core.config import ServerConfig
from smtpworker.core.mailroot import ServerLayout
from smtpworker.core.spool import Envelope, Spool
from smtpworker.outbound import client as outbound
from smtpworker.outbound import routing
from smtpworker.outbound.pool import POOL

# A delivery's log lines (the run, each attempt, the outcome) keep one logger name.
log = logging.getLogger("mailadmin.services.delivery.runs")


@dataclass(frozen=True, slots=True)
class Outcome:
    code: int
    reply: str
    host: str


@dataclass(eq=False, slots=True)
class Job:
    """One message in a run: its row, all its recipients (kept up to date in memory as
    outcomes are written), and its spool contents."""

    message: Message
    recipients: list[Recipient]
    envelope: Envelope
    data: bytes
    busy: bool = False  # a next hop was full or the lease ran short: not an attempt


@dataclass(slots=True)
class Run:
    """What one delivery run holds: its lease (also its claim token), each server's
    configuration, the hosts that could not be reached, and what it writes at the end."""

    node: str
    now: datetime = field(default_factory=timezone.now)
    lease: datetime = field(init=False)
    configs: dict[str, tuple[ServerConfig | None, int | None]] = field(default_factory=dict)
    spools: dict[str, Spool] = field(default_factory=dict)
    # A target whose session could not be opened (with this server's name, security and
    # greeting) gives every later message of this run the same temporary failure at once,
    # instead of a time-out each.
    unreachable: dict[tuple[str, routing.Hop, routing.Target], Outcome] = field(
        default_factory=dict
    )
    attempts: list[Attempt] = field(default_factory=list)
    counts: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))

    def __post_init__(self) -> None:
        self.lease = delivery_lease(self.now)

    def config(self, server_name: str) -> tuple[ServerConfig | None, int | None]:
        if server_name not in self.configs:
            self.configs[server_name] = current_server(server_name)
        return self.configs[server_name]

    def directories(self, server_name: str) -> ServerLayout:
        return server_directories(server_name, self.config(server_name)[0])

    def spool(self, server_name: str) -> Spool:
        if server_name not in self.spools:
            self.spools[server_name] = Spool(self.directories(server_name).queue)
        return self.spools[server_name]

    def lease_running_out(self) -> bool:
        margin = timedelta(seconds=min(30, settings.MAILADMIN_DELIVERY_LEASE_SECONDS / 3))
        return timezone.now() + margin > self.lease


# --- sending ---------------------------------------------------------------------------------


def jobs_send(run: Run, jobs: list[Job]) -> None:
    """Send every pending recipient of the jobs, grouped by next hop: each hop's messages
    go one after another over one pooled connection, under one outbound slot."""
    suspended = suspended_hops()
    groups: dict[tuple[str, routing.Hop], list[tuple[Job, list[Recipient]]]] = defaultdict(list)
    rerouted: list[Recipient] = []
    for job in jobs:
        server_name = job.message.server_name
        cfg = run.config(server_name)[0]
        if cfg is None:
            continue
        log.debug(
            "delivery run for %s (%d deferred so far)",
            job.message.queue_id,
            job.message.attempts,
            extra={"queue_id": job.message.queue_id, "server": server_name},
        )
        by_hop: dict[routing.Hop, list[Recipient]] = defaultdict(list)
        for recipient in job.recipients:
            if recipient.state != RecipientState.PENDING:
                continue
            hop = routing.route(cfg, recipient.domain)
            if recipient.next_hop != hop.name or recipient.hop_kind != hop.kind:
                recipient.next_hop, recipient.hop_kind = hop.name, hop.kind
                rerouted.append(recipient)  # the configuration changed since
            by_hop[hop].append(recipient)
        for hop, recipients in by_hop.items():
            if hop.name not in suspended:
                groups[(server_name, hop)].append((job, recipients))
    if rerouted:
        Recipient.objects.bulk_update(rerouted, ["next_hop", "hop_kind"])
    for (server_name, hop), items in groups.items():
        cfg = run.config(server_name)[0]
        assert cfg is not None
        if hop.kind == "local":
            _drop_all(run, cfg, hop, items)
        else:
            _send_group(run, cfg, hop, items, hop)


Item = tuple[Job, list[Recipient]]


def _send_group(
    run: Run, cfg: ServerConfig, hop: routing.Hop, items: list[Item], recorded_as: routing.Hop
) -> None:
    """Send each item to ``hop``'s first target that answers, and record its outcomes
    under ``recorded_as`` (the hop the recipients are queued for: a fallback's results
    count for the hop it stands in for)."""
    timeout = min(cfg.delivery.outbound.timeout, settings.MAILADMIN_OUTBOUND_TIMEOUT_CAP)
    try:
        targets = routing.resolve(hop, dns_servers=cfg.delivery.dns_servers, timeout=timeout)
    except routing.RouteError as exc:
        if hop.fallback is not None and not isinstance(exc, routing.NullMX):
            # "Attempt direct delivery before sending to smart host": DNS failed, so the
            # smart host takes it (a null MX is the domain refusing mail: no fallback).
            _send_group(run, cfg, hop.fallback, items, recorded_as)
            return
        for job, recipients in items:
            failure = Outcome(exc.code, f"{exc.enhanced} {exc}", "")
            _record(run, job, recorded_as, recipients, _all(recipients, failure))
        return
    if not targets and hop.fallback is not None:
        _send_group(run, cfg, hop.fallback, items, recorded_as)
        return
    limits = [
        (f"total:{cfg.name}", cfg.delivery.outbound.connection_limit),
        (f"domain:{hop.name}", cfg.delivery.outbound.per_domain_limit),
    ]
    unanswered: list[Item] = []
    try:
        with outbound_slots(limits, ttl=timeout * 3 + 30):
            for job, recipients in items:
                if run.lease_running_out():
                    job.busy = True  # leave the rest to the next run, not outlive the lease
                    continue
                outcomes, answered = _send_one(run, cfg, hop, targets, job, recipients, timeout)
                if not answered and hop.fallback is not None:
                    unanswered.append((job, recipients))
                else:
                    _record(run, job, recorded_as, recipients, outcomes)
    except NoSlot as exc:  # raised before anything was sent
        log.info("%s: %s", cfg.name, exc, extra={"server": cfg.name})
        for job, _recipients in items:
            job.busy = True
        return
    if unanswered:
        assert hop.fallback is not None
        _send_group(run, cfg, hop.fallback, unanswered, recorded_as)


def _send_one(
    run: Run,
    cfg: ServerConfig,
    hop: routing.Hop,
    targets: list[routing.Target],
    job: Job,
    recipients: list[Recipient],
    timeout: float,
) -> tuple[dict[str, Outcome], bool]:
    """Try the targets in order until one answers; per-recipient outcomes, and whether
    a host answered (False: the next hop's fallback may take the message)."""
    addresses = [r.address for r in recipients]
    sender = _masquerade(cfg, job.envelope.sender)
    last: dict[str, Outcome] = {}
    for target in targets:
        session = (cfg.name, hop, target)
        known_failure = run.unreachable.get(session)
        if known_failure is not None:
            last = _all(recipients, known_failure)
            continue
        result = _transaction(cfg, hop, target, sender, addresses, job.data, timeout)
        last = {r.recipient: Outcome(r.code, r.reply, result.host) for r in result.results}
        if result.connect_error is None:
            return last, True
        if result.unreachable:
            code = next((r.code for r in result.results if r.reply == result.connect_error), 421)
            run.unreachable[session] = Outcome(code, result.connect_error, result.host)
    if not last:
        last = _all(recipients, Outcome(451, "4.4.1 No answer from any host of the next hop", ""))
    return last, False


def _masquerade(cfg: ServerConfig, sender: str) -> str:
    domain = cfg.delivery.masquerade_domain
    if not domain or not sender:
        return sender
    return f"{sender.rpartition('@')[0]}@{domain}"


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
    return POOL.send(
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


def _all(recipients: list[Recipient], outcome: Outcome) -> dict[str, Outcome]:
    return {r.address: outcome for r in recipients}


# --- recording -------------------------------------------------------------------------------


def _record(
    run: Run,
    job: Job,
    hop: routing.Hop,
    recipients: list[Recipient],
    outcomes: dict[str, Outcome],
) -> None:
    """Write the recipients' outcomes at once, one UPDATE per distinct reply (one in
    practice): a 2xx is never sent again. The attempt log rows wait for the run's end.
    Reply texts and host names come from the network: they are made storable first."""
    message = job.message
    now = timezone.now()
    outcomes = {address: _storable(outcome) for address, outcome in outcomes.items()}
    by_outcome: dict[Outcome, list[Recipient]] = defaultdict(list)
    for recipient in recipients:
        outcome = outcomes.get(recipient.address) or Outcome(451, "4.4.0 no result", "")
        by_outcome[outcome].append(recipient)
    for outcome, group in by_outcome.items():
        state, done_at = RecipientState.PENDING, None
        if 200 <= outcome.code < 300:
            state, done_at = RecipientState.DELIVERED, now
        elif outcome.code >= 500:
            state, done_at = RecipientState.FAILED, now
        outcome = _write_outcome([r.pk for r in group], state, done_at, outcome)
        for recipient in group:
            recipient.state, recipient.attempts = state, recipient.attempts + 1
            recipient.last_code, recipient.last_reply = outcome.code, outcome.reply
            recipient.last_host = outcome.host
            if done_at is not None:
                recipient.done_at = done_at
        addresses = [r.address for r in group]
        attempt = Attempt(
            message=message,
            next_hop=hop.name,
            host=outcome.host,
            recipients=", ".join(addresses),
            code=outcome.code,
            reply=outcome.reply[:2000],
        )
        run.attempts.append(fit_row(attempt))
        log.info(
            "%s: %s via %s: %s %s",
            message.queue_id,
            ", ".join(addresses),
            outcome.host or hop.name,
            outcome.code,
            outcome.reply,
            extra={
                "queue_id": message.queue_id,
                "server": message.server_name,
                "next_hop": hop.name,
                "host": outcome.host,
                "code": outcome.code,
                "recipients": addresses,
            },
        )
    failing = [o for o in outcomes.values() if 400 <= o.code < 500]
    if failing:
        message.last_error = failing[0].reply[:2000]  # written when the run concludes


_ENHANCED = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")


def _storable(outcome: Outcome) -> Outcome:
    reply = fit(Recipient, "last_reply", outcome.reply)
    host = fit(Recipient, "last_host", outcome.host)
    if (reply, host) == (outcome.reply, outcome.host):
        return outcome
    return Outcome(outcome.code, reply, host)


def _write_outcome(
    recipient_ids: list[int], state: str, done_at: datetime | None, outcome: Outcome
) -> Outcome:
    """Write the outcome (:func:`_update_outcome`); returns it as written. Should the
    database refuse its text all the same, the outcome is written with a plain one, so the
    message goes on through its retries or its end like any other, never held."""
    try:
        _update_outcome(recipient_ids, state, done_at, outcome)
    except intake.TRANSIENT:
        raise
    except intake.REFUSED as exc:
        log.error(
            "outcome of recipient(s) %s not recorded as is: %s", recipient_ids, intake.describe(exc)
        )
        # The enhanced status code stays first: delivery reports are built from it.
        enhanced = outcome.reply.split(" ", 1)[0]
        enhanced = enhanced if _ENHANCED.fullmatch(enhanced) else ""
        text = f"{enhanced} (the reply could not be recorded: {intake.describe(exc)})"
        outcome = _storable(Outcome(outcome.code, text.strip(), ""))
        _update_outcome(recipient_ids, state, done_at, outcome)
    return outcome


def _update_outcome(
    recipient_ids: list[int], state: str, done_at: datetime | None, outcome: Outcome
) -> None:
    """``UPDATE recipient SET state, done_at, attempts + 1, last reply WHERE id IN ...``,
    committed at once (autocommit). Written as SQL because it runs once per message sent:
    the ORM spends about 200 us building this statement, the database 40 us running it."""
    params = [
        state,
        connection.ops.adapt_datetimefield_value(done_at),
        outcome.code,
        outcome.reply,
        outcome.host,
        *recipient_ids,
    ]
    with connection.cursor() as cursor:
        cursor.execute(_outcome_sql(connection.vendor, len(recipient_ids)), params)


@functools.cache
def _outcome_sql(vendor: str, count: int) -> str:
    quote = connection.ops.quote_name
    column = {f.name: quote(str(f.column)) for f in Recipient._meta.concrete_fields}
    names = ("state", "done_at", "last_code", "last_reply", "last_host")
    sets = ", ".join(f"{column[name]} = %s" for name in names)
    attempts = column["attempts"]
    return (
        f"UPDATE {quote(Recipient._meta.db_table)} SET {sets}, {attempts} = {attempts} + 1 "
        f"WHERE {column['id']} IN ({', '.join(['%s'] * count)})"
    )


def _drop_all(run: Run, cfg: ServerConfig, hop: routing.Hop, items: list[Item]) -> None:
    """Local domains: IIS writes each message to Drop/ with x-sender/x-receiver lines."""
    for job, recipients in items:
        if run.lease_running_out():
            job.busy = True
            continue
        lines = [f"x-sender: {job.envelope.sender}"]
        lines += [f"x-receiver: {r.address}" for r in recipients]
        content = ("\r\n".join(lines) + "\r\n").encode() + job.data
        try:
            name = _write_drop(run.directories(job.message.server_name).drop, job, content)
        except OSError as exc:
            # A Drop/ that is a link (or full, or unwritable) is the operator's to fix: the
            # message waits in the queue with the reason, as for an unreachable host.
            reason = exc.strerror or str(exc)
            written = Outcome(451, f"4.3.0 Cannot write to the Drop directory: {reason}", "Drop")
        else:
            written = Outcome(250, f"2.0.0 Written to the Drop directory as {name}", "Drop")
        local = routing.Hop("local", recipients[0].domain, cfg.delivery.outbound.security, False, 0)
        _record(run, job, local, recipients, _all(recipients, written))


def _write_drop(drop: Path, job: Job, content: bytes) -> str:
    """Write ``content`` to ``drop`` as ``<queue id>.eml`` and return the name used.

    Never through a link, never over an existing file (someone who may write to Drop/ can
    plant a link under a queue id it was told in a 250 reply): a taken name gets random
    bits. A replayed run (a crash after the write, before the record) finds its own file
    with the same content and writes nothing. 0640: Drop/ is read by a local mail store.
    """
    with safefile.directory(drop) as dir_fd:
        return safefile.write_unique(
            dir_fd, job.message.queue_id, ".eml", content, mode=0o640, reuse_identical=True
        )
