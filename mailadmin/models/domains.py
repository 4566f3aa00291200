"""Local and remote domains of a virtual server (IIS's "Domains" node)."""

from __future__ import annotations

from django.db import models
from django.db.models import Q

from mailadmin import validators
from mailadmin.models.servers import (
    OutboundAuth,
    VirtualServer,
    outbound_cleartext_auth_field,
    outbound_tls_ca_field,
    outbound_tls_field,
)


class DomainKind(models.TextChoices):
    LOCAL = "local", "Local"
    REMOTE = "remote", "Remote"


class Domain(models.Model):
    """A local domain (the default or an alias, delivered to Drop/) or a remote domain.

    Remote domain names may be wildcards (``*.example.com``); their relay, smart host and
    outbound security settings override the server's for mail routed to them.
    """

    server = models.ForeignKey(VirtualServer, on_delete=models.CASCADE, related_name="domains")
    name = models.CharField(max_length=253, validators=[validators.domain_or_wildcard])
    kind = models.CharField(max_length=8, choices=DomainKind.choices, default=DomainKind.REMOTE)
    is_default = models.BooleanField(default=False)
    relay_allowed = models.BooleanField(default=False)
    smart_host = models.CharField(
        max_length=300, blank=True, default="", validators=[validators.smart_host]
    )
    forward_all_to_smart_host = models.BooleanField(default=False)
    use_helo = models.BooleanField("send HELO instead of EHLO", default=False)
    # VirtualServer's outbound security fields again, overriding them for this domain;
    # declared on each model, as an abstract base would move them ahead of the others.
    outbound_tls = outbound_tls_field()
    outbound_tls_ca = outbound_tls_ca_field()
    outbound_auth_method = models.CharField(
        max_length=16, choices=OutboundAuth.choices, default=OutboundAuth.ANONYMOUS
    )
    outbound_username = models.CharField(max_length=254, blank=True, default="")
    outbound_password = models.TextField(blank=True, default="")  # sealed
    outbound_cleartext_auth = outbound_cleartext_auth_field()

    class Meta:
        ordering = ["-is_default", "kind", "name"]
        constraints = [
            models.UniqueConstraint(fields=["server", "name"], name="domain_unique_name"),
            models.UniqueConstraint(
                fields=["server"], condition=Q(is_default=True), name="domain_one_default"
            ),
            models.CheckConstraint(
                condition=Q(is_default=False) | Q(kind="local"), name="domain_default_is_local"
            ),
        ]

    def __str__(self) -> str:
        return self.name
