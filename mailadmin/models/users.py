"""SMTP user accounts, for AUTH on the virtual servers.

Passwords are never stored: only a salted PBKDF2 hash (AUTH PLAIN/LOGIN), a SCRAM-SHA-256
verifier, and, only for users allowed CRAM-MD5, that mechanism's context sealed at rest.
"""

from __future__ import annotations

from django.db import models

from mailadmin import validators
from mailadmin.models.servers import VirtualServer


class SmtpUser(models.Model):
    username = models.CharField(max_length=254, unique=True, validators=[validators.smtp_username])
    is_active = models.BooleanField(default=True)
    password_hash = models.CharField(max_length=256, blank=True, default="")
    scram_sha256 = models.CharField(max_length=256, blank=True, default="")
    # Like Active Directory's "store password using reversible encryption": takes effect
    # the next time the password is set, because only then is the password known.
    allow_cram_md5 = models.BooleanField(default=False)
    cram_md5_context = models.TextField(blank=True, default="")  # sealed
    # Servers this account may authenticate to; none listed means every server.
    servers = models.ManyToManyField(VirtualServer, blank=True, related_name="users")
    password_changed = models.DateTimeField(null=True, blank=True, editable=False)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["username"]
        verbose_name = "SMTP user"

    def __str__(self) -> str:
        return self.username
