"""The SMTP virtual server and the rows that belong to exactly one server.

Field defaults are the IIS 6 SMTP Service defaults. Field-level grammar (addresses,
networks, host names) is checked by validators that call ``smtpworker.core.grammar``; rules that
span rows (binding conflicts, one default domain) live in ``mailadmin.services``.
"""

from __future__ import annotations

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from mailadmin import validators
from smtpworker.core.grammar import Binding as GrammarBinding


class ServerState(models.TextChoices):
    STARTED = "started", "Started"
    STOPPED = "stopped", "Stopped"
    PAUSED = "paused", "Paused"


class ListMode(models.TextChoices):
    # IIS wording: "All except the list below" / "Only the list below".
    ALL_EXCEPT_LIST = "all_except_list", "All except the list below"
    ONLY_LIST = "only_list", "Only the list below"


class OutboundAuth(models.TextChoices):
    ANONYMOUS = "anonymous", "Anonymous access"
    BASIC = "basic", "Basic authentication"
    INTEGRATED = "integrated", "Integrated Windows authentication"


class OutboundTls(models.TextChoices):
    # Postfix's smtp_tls_security_level may / encrypt / verify.
    OPPORTUNISTIC = "opportunistic", "Opportunistic: TLS when the host offers it"
    REQUIRED = "required", "Required: TLS or no delivery, with any certificate"
    VERIFIED = "verified", "Required and verified: a trusted certificate naming the host"


class LogPeriod(models.TextChoices):
    HOURLY = "hourly", "Hourly"
    DAILY = "daily", "Daily"
    WEEKLY = "weekly", "Weekly"
    MONTHLY = "monthly", "Monthly"


def default_retry_minutes() -> list[int]:
    """IIS: first retry 15, second 30, third 60, subsequent every 240 minutes."""
    return [15, 30, 60, 240]


def default_log_fields() -> list[str]:
    """The W3C extended fields IIS 6 enables by default for SMTP."""
    return [
        "date",
        "time",
        "c-ip",
        "cs-username",
        "s-sitename",
        "s-computername",
        "s-ip",
        "s-port",
        "cs-method",
        "cs-uri-query",
        "sc-status",
        "sc-win32-status",
        "sc-bytes",
        "cs-bytes",
        "time-taken",
        "cs-version",
        "cs-host",
        "cs(User-Agent)",
    ]


_positive = [MinValueValidator(1)]
_port = [MinValueValidator(1), MaxValueValidator(65535)]


# The outbound security fields, shared by the server (its smart host and direct delivery)
# and each remote domain (mail routed to it).
def outbound_tls_field() -> models.CharField:
    return models.CharField(
        "outbound TLS",
        max_length=16,
        choices=OutboundTls.choices,
        default=OutboundTls.OPPORTUNISTIC,
    )


def outbound_tls_ca_field() -> models.TextField:
    return models.TextField(
        "CA certificates",
        blank=True,
        default="",
        validators=[validators.pem_certificates],
        help_text="PEM certificates that verified TLS trusts; empty: the system's CAs.",
    )


def outbound_cleartext_auth_field() -> models.BooleanField:
    return models.BooleanField(
        "allow authentication without TLS",
        default=False,
        help_text="Send the user name and password even when the session is not encrypted.",
    )


class VirtualServer(models.Model):
    """One SMTP virtual server, as in IIS Manager's SMTP snap-in.

    ``state`` is what the administrator asked for; what a worker node actually runs
    (listening, or the error of a failed bind) is reported separately by the nodes.
    """

    name = models.CharField(max_length=64, unique=True, validators=[validators.server_name])
    description = models.TextField(blank=True, default="")
    state = models.CharField(
        max_length=16, choices=ServerState.choices, default=ServerState.STARTED
    )
    # Worker node that serves this server; empty means every node.
    node = models.CharField(max_length=64, blank=True, default="", validators=[validators.node])

    # General
    fqdn = models.CharField(
        "fully-qualified domain name",
        max_length=253,
        blank=True,
        default="",
        validators=[validators.domain],
        help_text="Announced in the greeting and EHLO; empty uses the node's own host name.",
    )
    home_directory = models.CharField(
        max_length=1024,
        blank=True,
        default="",
        validators=[validators.home_directory],
        help_text="Holds Queue/ Pickup/ Drop/ Badmail/; empty means <mailroot>/<name>.",
    )
    connection_limit = models.PositiveIntegerField(null=True, blank=True, validators=_positive)
    connection_timeout = models.PositiveIntegerField(default=600, validators=_positive)
    # Concurrent connections one client (an IPv4 address, an IPv6 /64) may hold, like
    # Postfix's smtpd_client_connection_count_limit and its default of 50: a busy relay
    # or a large NAT opens a few dozen at most, one host cannot take every slot.
    client_connection_limit = models.PositiveIntegerField(
        null=True, blank=True, default=50, validators=_positive
    )
    logging_enabled = models.BooleanField(default=True)
    logging_period = models.CharField(
        max_length=16, choices=LogPeriod.choices, default=LogPeriod.DAILY
    )
    logging_fields = models.JSONField(
        default=default_log_fields, validators=[validators.log_fields]
    )

    # Access: authentication
    auth_anonymous = models.BooleanField(default=True)
    auth_basic = models.BooleanField(default=False)
    auth_basic_requires_tls = models.BooleanField(default=False)
    auth_basic_default_domain = models.CharField(
        max_length=253, blank=True, default="", validators=[validators.domain]
    )
    auth_integrated = models.BooleanField(default=False)
    # CRAM-MD5 verifiers are password-equivalent for that mechanism, so it is offered only
    # where an operator turns it on (SCRAM-SHA-256 is always part of "integrated").
    auth_cram_md5 = models.BooleanField(default=False)
    # Access: the brake on password guessing, per client (an IPv4 address, an IPv6 /64)
    # and for this server only. It answers AUTH with 454; it never refuses a connection.
    auth_brake_enabled = models.BooleanField("brake password guessing", default=True)
    auth_failures_before_delay = models.PositiveIntegerField(
        default=3, validators=[MaxValueValidator(1000)]
    )
    auth_block_after_failures = models.PositiveIntegerField(
        default=10, validators=[MinValueValidator(1), MaxValueValidator(1000)]
    )
    auth_failure_window_minutes = models.PositiveIntegerField(
        default=15, validators=[MinValueValidator(1), MaxValueValidator(10080)]
    )
    auth_block_minutes = models.PositiveIntegerField(
        default=15, validators=[MinValueValidator(1), MaxValueValidator(10080)]
    )

    # Access: secure communication
    tls_certificate = models.TextField(blank=True, default="")
    tls_private_key = models.TextField(
        blank=True, default=""
    )  # sealed by smtpworker.core.secretbox
    tls_not_after = models.DateTimeField(null=True, blank=True, editable=False)
    tls_require = models.BooleanField(default=False)

    # Access: connection control and relay restrictions
    connection_mode = models.CharField(
        max_length=16, choices=ListMode.choices, default=ListMode.ALL_EXCEPT_LIST
    )
    relay_mode = models.CharField(
        max_length=16, choices=ListMode.choices, default=ListMode.ONLY_LIST
    )
    relay_allow_authenticated = models.BooleanField(default=True)

    # Messages (null means the IIS check box is cleared: no limit)
    max_message_size_kb = models.PositiveIntegerField(
        null=True, blank=True, default=2048, validators=_positive
    )
    max_session_size_kb = models.PositiveIntegerField(
        null=True, blank=True, default=10240, validators=_positive
    )
    max_messages_per_connection = models.PositiveIntegerField(
        null=True, blank=True, default=20, validators=_positive
    )
    max_recipients_per_message = models.PositiveIntegerField(
        null=True, blank=True, default=100, validators=_positive
    )
    ndr_copy_to = models.CharField(
        max_length=254, blank=True, default="", validators=[validators.mailbox]
    )
    badmail_directory = models.CharField(
        max_length=1024, blank=True, default="", validators=[validators.home_directory]
    )

    # Delivery
    retry_minutes = models.JSONField(
        default=default_retry_minutes, validators=[validators.retry_minutes]
    )
    delay_notification_minutes = models.PositiveIntegerField(default=720, validators=_positive)
    expiration_minutes = models.PositiveIntegerField(default=2880, validators=_positive)
    local_delay_notification_minutes = models.PositiveIntegerField(
        default=720, validators=_positive
    )
    local_expiration_minutes = models.PositiveIntegerField(default=2880, validators=_positive)
    max_hop_count = models.PositiveIntegerField(
        default=15, validators=[MinValueValidator(10), MaxValueValidator(256)]
    )
    masquerade_domain = models.CharField(
        max_length=253, blank=True, default="", validators=[validators.domain]
    )
    smart_host = models.CharField(
        max_length=300, blank=True, default="", validators=[validators.smart_host]
    )
    attempt_direct_first = models.BooleanField(default=False)
    reverse_dns_lookup = models.BooleanField(default=False)
    dns_servers = models.JSONField(default=list, blank=True, validators=[validators.dns_servers])
    outbound_port = models.PositiveIntegerField(default=25, validators=_port)
    outbound_connection_limit = models.PositiveIntegerField(
        null=True, blank=True, default=1000, validators=_positive
    )
    outbound_per_domain_limit = models.PositiveIntegerField(
        null=True, blank=True, default=100, validators=_positive
    )
    outbound_timeout = models.PositiveIntegerField(default=600, validators=_positive)
    outbound_tls = outbound_tls_field()
    outbound_tls_ca = outbound_tls_ca_field()
    outbound_auth_method = models.CharField(
        max_length=16, choices=OutboundAuth.choices, default=OutboundAuth.ANONYMOUS
    )
    outbound_username = models.CharField(max_length=254, blank=True, default="")
    outbound_password = models.TextField(blank=True, default="")  # sealed
    outbound_cleartext_auth = outbound_cleartext_auth_field()

    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Binding(models.Model):
    """One ip:port identity of a server ("Advanced..." on IIS's General tab).

    ``host`` empty means "(All Unassigned)". ``proxy_protocol``: the identity sits behind
    a TCP load balancer and takes the PROXY protocol, from the server's trusted proxies
    only (the ``proxy`` access list).
    """

    server = models.ForeignKey(VirtualServer, on_delete=models.CASCADE, related_name="bindings")
    host = models.CharField(max_length=45, blank=True, default="")
    port = models.PositiveIntegerField(default=25, validators=_port)
    proxy_protocol = models.BooleanField("PROXY protocol", default=False)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["server", "host", "port"], name="binding_unique")
        ]

    def __str__(self) -> str:
        return str(self.as_grammar())

    def as_grammar(self) -> GrammarBinding:
        return GrammarBinding(self.host or None, self.port, self.proxy_protocol)


class AccessList(models.TextChoices):
    CONNECTION = "connection", "Connection control"
    RELAY = "relay", "Relay restrictions"
    # Who may send PROXY protocol headers to the server's PROXY bindings: IPs and networks
    # only (``smtpworker.core.grammar.parse_trusted_proxy``).
    PROXY = "proxy", "Trusted proxies"


class AccessEntry(models.Model):
    """An IP address, CIDR network or domain name on a connection or relay list, or an IP
    address or network on the trusted proxy list."""

    server = models.ForeignKey(
        VirtualServer, on_delete=models.CASCADE, related_name="access_entries"
    )
    list = models.CharField(max_length=16, choices=AccessList.choices)
    value = models.CharField(max_length=300, validators=[validators.access_entry])

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["server", "list", "value"], name="access_entry_unique")
        ]

    def __str__(self) -> str:
        return self.value
