"""``/metrics``: Prometheus text format, built at scrape time from what is already recorded.

Nothing is counted in the web process. Each scrape reads:

* the SMTP worker nodes' reports in Redis (``mailadmin.selectors.nodes.worker_statuses``), one
  per node process: per node and server, connections, open sessions, messages accepted,
  rejections by reason (the dashboard's reasons, ``services.traffic.REASONS``), AUTH
  failures, listening and error; per node, the configuration version applied, how far
  behind the latest it is, heartbeat age and the stale flag. These counters are the
  worker process's own (they start at 0 when it starts, which Prometheus reads as a
  counter reset). A stale node keeps its last counters but shows no sessions and no
  listener.
* the database: queue sizes by state and the age of the oldest queued message, per
  server; delivered, deferred and bounced counts per server (sums of ``TrafficCounter``);
  the delivery latency (``received_at`` to ``finished_at``) of delivered messages.

Costs. ``TrafficCounter`` keeps a row per server and minute forever, so summing it on every
scrape would get slower every day: minutes older than ``SEAL_MINUTES`` are never written
again (every write goes to the current minute), so their sums are kept per process and
only the newer rows are read on each scrape. The result does not depend on the process
(every gunicorn worker shows the same totals). The latency histogram covers the messages
received in the last ``MAILADMIN_METRICS_LATENCY_HOURS`` (24) hours and delivered, read
through the ``received_at`` index and bucketed by the database; it is a *gauge
histogram* (it describes a sliding window, so its buckets go down as well as up): use
``histogram_quantile(0.95, mailadmin_delivery_latency_seconds_bucket)`` as it is, without
``rate()``. Messages still queued are not in it: ``mailadmin_queue_oldest_age_seconds``
shows those.

Access (``metrics_view``): an operator or administrator as the REST API authenticates one
(an API token or a session, through the API's own authentication classes: a token the API
refuses is refused here), the bearer token ``MAILADMIN_METRICS_TOKEN``, or a peer address
listed in ``MAILADMIN_METRICS_ALLOW``; anyone else gets 403.
"""

from __future__ import annotations

import hmac
import ipaddress
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import Count, DurationField, ExpressionWrapper, F, Min, Q, Sum
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.http import require_safe
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from mailadmin.access import api_user, can_read
from mailadmin.models import OPEN_STATES, Message, MessageState, TrafficCounter, VirtualServer
from mailadmin.selectors.nodes import worker_statuses
from mailadmin.services.config.versions import current_version
from mailadmin.services.delivery.traffic import rejection_reason
from smtpworker.core.contract import WorkerStatus
from smtpworker.core.grammar import AccessEntry, access_entry_matches, parse_access_entry

# Upper bounds (seconds) of the delivery latency buckets: seconds for a smart host on the
# LAN, minutes and hours for retries (IIS's schedule is 15, 30, 60, 240 minutes), two days
# for the default expiry.
LATENCY_BUCKETS = (
    1.0,
    5.0,
    15.0,
    30.0,
    60.0,
    300.0,
    900.0,
    1800.0,
    3600.0,
    7200.0,
    14400.0,
    43200.0,
    86400.0,
    172800.0,
)
# TrafficCounter minutes this old are final (writes go to the current minute; the margin
# covers a slow transaction and clocks that differ between hosts).
SEAL_MINUTES = 10
TRAFFIC_FIELDS = ("delivered", "deferred", "bounced")


# --- from the worker nodes ----------------------------------------------------------------


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def worker_metrics(statuses: Iterable[WorkerStatus], latest: int, now: float) -> Iterator[Metric]:
    """Families from the nodes' reports (``worker_statuses()``) and the latest version."""
    labels = ["node", "server"]
    connections = CounterMetricFamily(
        "mailadmin_smtp_connections",
        "SMTP connections let in by connection control, since the node process started",
        labels=labels,
    )
    sessions = GaugeMetricFamily(
        "mailadmin_smtp_sessions", "Open SMTP sessions (0 on a stale node)", labels=labels
    )
    accepted = CounterMetricFamily(
        "mailadmin_smtp_messages_accepted",
        "Messages accepted (spooled and answered 250), since the node process started",
        labels=labels,
    )
    rejected = CounterMetricFamily(
        "mailadmin_smtp_rejected",
        "Connections, recipients and messages refused, by the dashboard's reasons "
        "(authentication failures included), since the node process started",
        labels=[*labels, "reason"],
    )
    auth_failures = CounterMetricFamily(
        "mailadmin_smtp_auth_failures",
        "Failed AUTH attempts, since the node process started",
        labels=labels,
    )
    listening = GaugeMetricFamily(
        "mailadmin_smtp_server_listening",
        "1 if the node has the server's listeners open (0 on a stale node)",
        labels=labels,
    )
    error = GaugeMetricFamily(
        "mailadmin_smtp_server_error",
        "1 if the node could not run the server (a binding failed); see GET /api/v1/servers/",
        labels=labels,
    )
    applied = GaugeMetricFamily(
        "mailadmin_node_config_version",
        "Configuration version the node runs",
        labels=["node"],
    )
    behind = GaugeMetricFamily(
        "mailadmin_node_config_behind",
        "Versions between the latest configuration and the one the node runs "
        "(1 for a version this database never made)",
        labels=["node"],
    )
    age = GaugeMetricFamily(
        "mailadmin_node_heartbeat_age_seconds",
        "Seconds since the node last reported",
        labels=["node"],
    )
    stale = GaugeMetricFamily(
        "mailadmin_node_stale",
        "1 if the node stopped or has not reported for 10 s",
        labels=["node"],
    )
    for status in statuses:
        node = str(status.get("node", ""))
        is_stale = bool(status.get("stale"))
        version = _number(status.get("applied_version"))
        applied.add_metric([node], version)
        # A number above the latest is another database's (a reinstall, a second checkout
        # on the same Redis): not in step, though no count of versions says how far.
        behind.add_metric([node], latest - version if version <= latest else 1.0)
        age.add_metric([node], max(0.0, now - _number(status.get("heartbeat"))))
        stale.add_metric([node], 1.0 if is_stale else 0.0)
        servers = status.get("servers")
        if not isinstance(servers, dict):
            continue
        for name, server in sorted(servers.items()):
            if not isinstance(server, dict):
                continue
            key = [node, str(name)]
            counters = server.get("counters")
            counters = counters if isinstance(counters, dict) else {}
            reasons: dict[str, float] = defaultdict(float)
            for counter, value in counters.items():
                reason = rejection_reason(str(counter))
                if reason:
                    reasons[reason] += _number(value)
            connections.add_metric(key, _number(counters.get("connections")))
            accepted.add_metric(key, _number(counters.get("accepted")))
            auth_failures.add_metric(key, _number(counters.get("auth_failures")))
            for reason, total in sorted(reasons.items()):
                rejected.add_metric([*key, reason], total)
            sessions.add_metric(key, 0.0 if is_stale else _number(server.get("sessions")))
            listening.add_metric(key, 0.0 if is_stale else 1.0 if server.get("listening") else 0.0)
            error.add_metric(key, 1.0 if server.get("error") else 0.0)
    latest_family = GaugeMetricFamily(
        "mailadmin_config_version", "The configuration version in force (the latest)"
    )
    latest_family.add_metric([], float(latest))
    yield from (
        connections,
        sessions,
        accepted,
        rejected,
        auth_failures,
        listening,
        error,
        applied,
        behind,
        age,
        stale,
        latest_family,
    )


# --- from the database --------------------------------------------------------------------


def queue_metrics(now: datetime) -> Iterator[Metric]:
    """Queued messages per server and open state, and the oldest one's age."""
    rows = (
        Message.objects.filter(state__in=OPEN_STATES)
        .values("server_name", "state")
        .annotate(count=Count("id"), oldest=Min("received_at"))
        .order_by()
    )
    counts: dict[str, dict[str, int]] = {
        name: {} for name in VirtualServer.objects.values_list("name", flat=True)
    }
    oldest: dict[str, datetime] = {}
    for row in rows:
        counts.setdefault(row["server_name"], {})[row["state"]] = row["count"]
        if row["oldest"] is not None:
            first = oldest.get(row["server_name"])
            oldest[row["server_name"]] = min(first, row["oldest"]) if first else row["oldest"]
    sizes = GaugeMetricFamily(
        "mailadmin_queue_messages",
        "Messages in the queue by state (queued is IIS's Ready)",
        labels=["server", "state"],
    )
    age = GaugeMetricFamily(
        "mailadmin_queue_oldest_age_seconds",
        "Age of the oldest message in the queue (0 when the queue is empty)",
        labels=["server"],
    )
    for server in sorted(counts):
        for state in OPEN_STATES:
            sizes.add_metric([server, str(state)], float(counts[server].get(str(state), 0)))
        first = oldest.get(server)
        age.add_metric([server], max(0.0, (now - first).total_seconds()) if first else 0.0)
    yield sizes
    yield age


class _SealedTraffic:
    """Per-server sums of the TrafficCounter minutes before ``until`` (see the module
    docstring), kept per database."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.database: tuple[str, str] | None = None
        self.until: datetime | None = None
        self.totals: dict[str, dict[str, int]] = {}

    def sums(self, boundary: datetime) -> dict[str, dict[str, int]]:
        database = (connection.alias, str(connection.settings_dict.get("NAME")))
        with self.lock:
            if self.database != database:
                self.reset()
                self.database = database
            if self.until is None or boundary > self.until:
                rows = TrafficCounter.objects.filter(minute__lt=boundary)
                if self.until is not None:
                    rows = rows.filter(minute__gte=self.until)
                _add(self.totals, _traffic_sums(rows))
                self.until = boundary
            return {server: dict(values) for server, values in self.totals.items()}


def _traffic_sums(rows: Any) -> dict[str, dict[str, int]]:
    sums: dict[str, dict[str, int]] = {}
    for row in (
        rows.values("server_name")
        .annotate(**{field: Sum(field) for field in TRAFFIC_FIELDS})
        .order_by()
    ):
        sums[row["server_name"]] = {field: int(row[field] or 0) for field in TRAFFIC_FIELDS}
    return sums


def _add(totals: dict[str, dict[str, int]], more: dict[str, dict[str, int]]) -> None:
    for server, values in more.items():
        mine = totals.setdefault(server, dict.fromkeys(TRAFFIC_FIELDS, 0))
        for field, value in values.items():
            mine[field] = mine.get(field, 0) + value


_SEALED = _SealedTraffic()


def reset_caches() -> None:
    """Forget the sealed traffic sums (tests, or after rows were deleted by hand)."""
    with _SEALED.lock:
        _SEALED.reset()


def traffic_metrics(now: datetime) -> Iterator[Metric]:
    """Delivered, deferred and bounced per server, since the database began."""
    boundary = (now - timedelta(minutes=SEAL_MINUTES)).replace(second=0, microsecond=0)
    totals = _SEALED.sums(boundary)
    _add(totals, _traffic_sums(TrafficCounter.objects.filter(minute__gte=boundary)))
    help_texts = {
        "delivered": "Messages delivered to every recipient",
        "deferred": "Delivery runs that ended in a retry (4xx, no answer, time-out)",
        "bounced": "Messages finished with at least one failed recipient (NDR sent)",
    }
    for field in TRAFFIC_FIELDS:
        family = CounterMetricFamily(
            f"mailadmin_messages_{field}", help_texts[field], labels=["server"]
        )
        for server in sorted(totals):
            family.add_metric([server], float(totals[server].get(field, 0)))
        yield family


def latency_metrics(now: datetime) -> Iterator[Metric]:
    """Received-to-delivered time of the messages received in the window, per server."""
    hours = settings.MAILADMIN_METRICS_LATENCY_HOURS
    latency = ExpressionWrapper(F("finished_at") - F("received_at"), output_field=DurationField())
    buckets = {
        f"le_{index}": Count("id", filter=Q(latency__lte=timedelta(seconds=bound)))
        for index, bound in enumerate(LATENCY_BUCKETS)
    }
    rows = (
        Message.objects.filter(
            received_at__gte=now - timedelta(hours=hours),
            state=MessageState.DELIVERED,
            finished_at__isnull=False,
        )
        .annotate(latency=latency)
        .values("server_name")
        .annotate(count=Count("id"), total=Sum("latency"), **buckets)
        .order_by("server_name")
    )
    family = GaugeHistogramMetricFamily(
        "mailadmin_delivery_latency_seconds",
        f"Seconds from arrival to delivery of the messages received in the last {hours} h "
        "and delivered (a sliding window: use histogram_quantile without rate())",
        labels=["server"],
    )
    for values in rows:
        row: dict[str, Any] = dict(values)
        cumulative = [
            (floatToGoString(bound), float(row[f"le_{index}"]))
            for index, bound in enumerate(LATENCY_BUCKETS)
        ]
        cumulative.append(("+Inf", float(row["count"])))
        total = row["total"]
        seconds = total.total_seconds() if isinstance(total, timedelta) else _number(total)
        family.add_metric([row["server_name"]], cumulative, gsum_value=seconds)
    yield family


class MailadminCollector(Collector):
    """Builds every family at scrape time; holds no counters of its own."""

    def collect(self) -> Iterable[Metric]:
        now = timezone.now()
        yield from worker_metrics(worker_statuses(), current_version(), time.time())
        yield from queue_metrics(now)
        yield from traffic_metrics(now)
        yield from latency_metrics(now)


REGISTRY = CollectorRegistry(auto_describe=False)
REGISTRY.register(MailadminCollector())


# --- the view -----------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _allow_entries(entries: tuple[str, ...]) -> tuple[AccessEntry, ...]:
    return tuple(parse_access_entry(text) for text in entries)


def address_allowed(address: str) -> bool:
    """Whether ``address`` (REMOTE_ADDR) is in ``MAILADMIN_METRICS_ALLOW``."""
    entries = _allow_entries(tuple(settings.MAILADMIN_METRICS_ALLOW))
    if not entries or not address:
        return False
    try:
        ipaddress.ip_address(address.partition("%")[0])
    except ValueError:
        return False
    return any(access_entry_matches(entry, address) for entry in entries)


def _bearer_ok(request: HttpRequest) -> bool:
    expected = settings.MAILADMIN_METRICS_TOKEN
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    if not expected or scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(credentials.strip().encode(), expected.encode())


def allowed(request: HttpRequest) -> bool:
    """A listed address, the metrics token, or a reader as the API authenticates one (an
    API token or a session: ``mailadmin.access.api_user``)."""
    return (
        address_allowed(request.META.get("REMOTE_ADDR", ""))
        or _bearer_ok(request)
        or can_read(api_user(request))
    )


@require_safe
def metrics_view(request: HttpRequest) -> HttpResponse:
    """Prometheus metrics (text format 0.0.4, or OpenMetrics when the scraper asks)."""
    if not allowed(request):
        return HttpResponse(
            "403 Forbidden: log in as an operator or administrator, send the metrics token "
            "(Authorization: Bearer ...), or scrape from an address in "
            "MAILADMIN_METRICS_ALLOW.\n",
            status=403,
            content_type="text/plain; charset=utf-8",
        )
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    response = HttpResponse(encoder(REGISTRY), content_type=content_type)
    response["Cache-Control"] = "no-store"
    return response
