"""Reads of the queue for the API and console: queues by next hop, message detail, traffic."""

from __future__ import annotations

import email.parser
import email.policy
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Count, Max, Min, Q, QuerySet
from django.utils import timezone

from mailadmin.models import (
    OPEN_STATES,
    Message,
    MessageState,
    QueueControl,
    Recipient,
    RecipientState,
    TrafficCounter,
)
from mailadmin.services.delivery.queue import spool_for
from smtpworker.core.spool import MessageNotFound


def queue_list() -> list[dict[str, Any]]:
    """One row per next hop that has pending recipients, or that an operator suspended."""
    pending = Recipient.objects.filter(state=RecipientState.PENDING, message__state__in=OPEN_STATES)
    rows = pending.values("next_hop").annotate(
        messages=Count("message", distinct=True),
        oldest=Min("message__received_at"),
        active=Count("message", filter=Q(message__state=MessageState.ACTIVE), distinct=True),
        retry=Count("message", filter=Q(message__state=MessageState.RETRY), distinct=True),
        last_attempt=Max("message__attempt_log__at"),
    )
    suspended = suspended_hops()
    queues: dict[str, dict[str, Any]] = {}
    for row in rows:
        hop = row["next_hop"]
        state = (
            "suspended"
            if hop in suspended
            else "active"
            if row["active"]
            else "retry"
            if row["retry"] == row["messages"]
            else "ready"
        )
        queues[hop] = {**row, "state": state, "last_error": _last_error(hop)}
    for hop in suspended - queues.keys():
        queues[hop] = {
            "next_hop": hop,
            "messages": 0,
            "oldest": None,
            "active": 0,
            "retry": 0,
            "last_attempt": None,
            "state": "suspended",
            "last_error": "",
        }
    return sorted(queues.values(), key=lambda q: q["next_hop"])


def suspended_hops() -> set[str]:
    """The next hops an operator suspended: nothing is sent to them until resumed."""
    return set(QueueControl.objects.filter(suspended=True).values_list("next_hop", flat=True))


def _last_error(next_hop: str) -> str:
    recipient = (
        Recipient.objects.filter(next_hop=next_hop, state=RecipientState.PENDING)
        .exclude(last_reply="")
        .order_by("-id")
        .only("last_code", "last_reply")
        .first()
    )
    return f"{recipient.last_code} {recipient.last_reply}" if recipient else ""


def messages_filtered(params: dict[str, str]) -> QuerySet[Message]:
    """Messages by server, queue (next hop), state, sender, recipient, subject and age."""
    qs = Message.objects.all()
    if params.get("server"):
        qs = qs.filter(server_name=params["server"])
    if params.get("state"):
        qs = qs.filter(state__in=params["state"].split(","))
    if params.get("queue"):
        qs = qs.filter(
            recipients__next_hop=params["queue"], recipients__state=RecipientState.PENDING
        )
    if params.get("sender"):
        qs = qs.filter(sender__icontains=params["sender"])
    if params.get("recipient"):
        qs = qs.filter(recipients__address__icontains=params["recipient"])
    if params.get("subject"):
        qs = qs.filter(subject__icontains=params["subject"])
    now = timezone.now()
    if params.get("older_than_minutes"):
        qs = qs.filter(
            received_at__lte=now - timedelta(minutes=float(params["older_than_minutes"]))
        )
    if params.get("newer_than_minutes"):
        qs = qs.filter(
            received_at__gte=now - timedelta(minutes=float(params["newer_than_minutes"]))
        )
    if params.get("queue") or params.get("recipient"):
        qs = qs.distinct()
    return qs


def message_headers(message: Message) -> list[tuple[str, str]]:
    """The header fields of a message still in the spool ([] once it left)."""
    try:
        _envelope, data = spool_for(message.server_name).load(message.queue_id)
    except (MessageNotFound, OSError, ValueError):
        return []
    end = data.find(b"\r\n\r\n")
    head = data[: end + 2] if end >= 0 else data
    parsed = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(head)
    return [(name, str(value)) for name, value in parsed.items()]


def traffic(*, server: str | None, since: datetime, bucket_minutes: int) -> list[dict[str, Any]]:
    """Counters summed per bucket from ``since`` to now (buckets with no traffic are 0)."""
    qs = TrafficCounter.objects.filter(minute__gte=since)
    if server:
        qs = qs.filter(server_name=server)
    buckets: dict[datetime, dict[str, Any]] = {}
    start = since.replace(second=0, microsecond=0)
    step = timedelta(minutes=bucket_minutes)
    now = timezone.now()
    t = start
    while t <= now:
        buckets[t] = {
            "start": t,
            "accepted": 0,
            "delivered": 0,
            "deferred": 0,
            "bounced": 0,
            "rejected": {},
        }
        t += step
    for row in qs.values("minute", "accepted", "delivered", "deferred", "bounced", "rejected"):
        index = start + step * int((row["minute"] - start) / step)
        bucket = buckets.setdefault(
            index,
            {
                "start": index,
                "accepted": 0,
                "delivered": 0,
                "deferred": 0,
                "bounced": 0,
                "rejected": {},
            },
        )
        for name in ("accepted", "delivered", "deferred", "bounced"):
            bucket[name] += row[name]
        for reason, count in (row["rejected"] or {}).items():
            bucket["rejected"][reason] = bucket["rejected"].get(reason, 0) + count
    return [buckets[k] for k in sorted(buckets)]


def queue_shape() -> list[dict[str, Any]]:
    """Messages per next hop by age bucket (<1 h, 1-6 h, 6-24 h, >1 day)."""
    now = timezone.now()
    hour, six_hours, day = (now - timedelta(hours=h) for h in (1, 6, 24))

    def received(*, after: datetime | None = None, until: datetime | None = None) -> Count:
        """Messages received after ``after`` and at or before ``until``."""
        window = Q()
        if after is not None:
            window &= Q(message__received_at__gt=after)
        if until is not None:
            window &= Q(message__received_at__lte=until)
        return Count("message", filter=window, distinct=True)

    pending = Recipient.objects.filter(state=RecipientState.PENDING, message__state__in=OPEN_STATES)
    rows = pending.values("next_hop").annotate(
        lt_1h=received(after=hour),
        h1_6=received(after=six_hours, until=hour),
        h6_24=received(after=day, until=six_hours),
        gt_1d=received(until=day),
    )
    return sorted((dict(row) for row in rows), key=lambda r: str(r["next_hop"]))


def state_counts() -> dict[str, int]:
    counts = {state: 0 for state in MessageState.values}
    for row in Message.objects.values("state").annotate(n=Count("id")):
        counts[row["state"]] = row["n"]
    return counts
