"""The delivery queue's record: messages, their recipients and every attempt.

The spool file is the message; these rows are what happened to it. A recipient that got
a 2xx is marked delivered as soon as the reply arrives and is never sent again.
"""

from __future__ import annotations

from django.db import models


class MessageState(models.TextChoices):
    QUEUED = "queued", "Ready"
    ACTIVE = "active", "Active"
    RETRY = "retry", "Retry"
    SUSPENDED = "suspended", "Suspended"
    DELIVERED = "delivered", "Delivered"
    BOUNCED = "bounced", "Bounced (NDR sent)"
    DELETED = "deleted", "Deleted"


OPEN_STATES = (MessageState.QUEUED, MessageState.ACTIVE, MessageState.RETRY, MessageState.SUSPENDED)
FINAL_STATES = (MessageState.DELIVERED, MessageState.BOUNCED, MessageState.DELETED)


class RecipientState(models.TextChoices):
    PENDING = "pending", "Pending"
    DELIVERED = "delivered", "Delivered"
    FAILED = "failed", "Failed"
    DELETED = "deleted", "Deleted"


class Message(models.Model):
    queue_id = models.CharField(max_length=32, unique=True)
    server = models.ForeignKey(
        "mailadmin.VirtualServer", null=True, on_delete=models.SET_NULL, related_name="messages"
    )
    server_name = models.CharField(max_length=64, db_index=True)
    sender = models.CharField(max_length=320, blank=True, db_index=True)
    subject = models.CharField(max_length=255, blank=True, db_index=True)
    size = models.PositiveIntegerField(default=0)
    client_ip = models.CharField(max_length=45, blank=True)
    auth_user = models.CharField(max_length=254, blank=True)
    # The SMTP worker node whose spool holds the message: its delivery runs on that node's
    # Celery queue (``delivery.<node>``), where the spool file is on local disk.
    node = models.CharField(max_length=64, blank=True, default="")
    received_at = models.DateTimeField(db_index=True)
    state = models.CharField(
        max_length=16, choices=MessageState.choices, default=MessageState.QUEUED
    )
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    lease_until = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    delay_notified_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    # A DSN/NDR we generated: never answered with another NDR; undeliverable -> Badmail.
    is_report = models.BooleanField(default=False)

    class Meta:
        ordering = ["-received_at", "-id"]
        indexes = [
            models.Index(fields=["state", "next_attempt_at"], name="message_due"),
            models.Index(
                fields=["server_name", "state", "received_at"], name="message_server_state"
            ),
        ]

    def __str__(self) -> str:
        return self.queue_id


class Recipient(models.Model):
    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="recipients")
    address = models.CharField(max_length=320)
    domain = models.CharField(max_length=253, db_index=True)
    next_hop = models.CharField(max_length=300, db_index=True)
    hop_kind = models.CharField(max_length=16, default="mx")
    state = models.CharField(
        max_length=16, choices=RecipientState.choices, default=RecipientState.PENDING
    )
    attempts = models.PositiveIntegerField(default=0)
    last_code = models.PositiveIntegerField(null=True, blank=True)
    last_reply = models.TextField(blank=True)
    last_host = models.CharField(max_length=300, blank=True)
    done_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["message", "address"], name="recipient_unique")
        ]
        indexes = [models.Index(fields=["next_hop", "state"], name="recipient_hop_state")]

    def __str__(self) -> str:
        return self.address


class Attempt(models.Model):
    """One delivery attempt of some recipients of a message to one host."""

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="attempt_log")
    at = models.DateTimeField(auto_now_add=True, db_index=True)
    next_hop = models.CharField(max_length=300)
    host = models.CharField(max_length=300, blank=True)
    recipients = models.TextField(help_text="comma-separated addresses tried together")
    code = models.PositiveIntegerField(null=True, blank=True)
    reply = models.TextField(blank=True)
    duration_ms = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["at", "id"]


class QueueControl(models.Model):
    """Operator state of one queue (a next hop): suspended queues are not delivered."""

    next_hop = models.CharField(max_length=300, unique=True)
    suspended = models.BooleanField(default=False)
    updated = models.DateTimeField(auto_now=True)


class TrafficCounter(models.Model):
    """Per server and minute: what the dashboard charts (last hour, last day)."""

    server_name = models.CharField(max_length=64)
    minute = models.DateTimeField()
    accepted = models.PositiveIntegerField(default=0)
    delivered = models.PositiveIntegerField(default=0)
    deferred = models.PositiveIntegerField(default=0)
    bounced = models.PositiveIntegerField(default=0)
    rejected = models.JSONField(default=dict, help_text="reason -> count")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["server_name", "minute"], name="traffic_unique")
        ]
        indexes = [models.Index(fields=["minute"], name="traffic_minute")]
