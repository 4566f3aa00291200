"""Configuration models (IIS 6 SMTP Service model, with its defaults)."""

from __future__ import annotations

from mailadmin.models.config import ConfigLock, ConfigSnapshot, SiteIdentity
from mailadmin.models.domains import Domain, DomainKind
from mailadmin.models.queue import (
    FINAL_STATES,
    OPEN_STATES,
    Attempt,
    Message,
    MessageState,
    QueueControl,
    Recipient,
    RecipientState,
    TrafficCounter,
)
from mailadmin.models.servers import (
    AccessEntry,
    AccessList,
    Binding,
    ListMode,
    LogPeriod,
    OutboundAuth,
    OutboundTls,
    ServerState,
    VirtualServer,
)
from mailadmin.models.users import SmtpUser

__all__ = [
    "FINAL_STATES",
    "OPEN_STATES",
    "AccessEntry",
    "Attempt",
    "Message",
    "MessageState",
    "QueueControl",
    "Recipient",
    "RecipientState",
    "TrafficCounter",
    "AccessList",
    "Binding",
    "ConfigLock",
    "ConfigSnapshot",
    "Domain",
    "DomainKind",
    "ListMode",
    "LogPeriod",
    "OutboundAuth",
    "OutboundTls",
    "ServerState",
    "SiteIdentity",
    "SmtpUser",
    "VirtualServer",
]
