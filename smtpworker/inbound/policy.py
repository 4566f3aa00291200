"""The relay policy: whether a peer may connect, authenticate, send, relay, or send this much.

This is the only code that makes those decisions. The SMTP handler, the console's "Test
relay" tool and the REST API's check-relay endpoint all call these functions on a frozen
:class:`~smtpworker.core.config.ServerConfig`, so what the console explains is what the worker
enforces. Every function is pure: no I/O, no clock, no logging, no Django. Each returns a
:class:`Decision` carrying the SMTP reply and the rule that decided, in words an
administrator can read.

Sizes are in bytes. ``session_bytes`` is always the total size of the messages already
accepted earlier in the same SMTP session, not counting the one being decided.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, replace

from smtpworker.core.config import ServerConfig, domain_entry
from smtpworker.core.contract import DomainKind, ListMode, ServerState
from smtpworker.core.grammar import (
    AccessEntry,
    GrammarError,
    Mailbox,
    access_entry_matches,
    parse_forward_path,
    parse_reverse_path,
)

__all__ = [
    "Client",
    "Decision",
    "RecipientDecision",
    "SenderDecision",
    "check_auth",
    "check_connect",
    "check_data",
    "check_mail",
    "check_rcpt",
    "ehlo_keywords",
    "explain_relay",
    "offered_auth_mechanisms",
]

_MODE_LABELS: dict[str, str] = {
    ListMode.ONLY_LIST: "only the list below",
    ListMode.ALL_EXCEPT_LIST: "all except the list below",
}
_BASIC = ("PLAIN", "LOGIN")
_STARTTLS_FIRST = "Must issue a STARTTLS command first"
_TOO_BIG = "Message size exceeds fixed maximum message size"


@dataclass(frozen=True, slots=True)
class Decision:
    """One policy verdict: the SMTP reply to give and the rule that decided.

    ``enhanced`` is an RFC 3463 code whose class always equals the reply's first digit
    (construction raises ValueError otherwise). ``ok`` means "go on": the command is
    accepted, or, for connect and AUTH, the session or exchange may proceed.
    """

    code: int
    enhanced: str
    text: str
    rule: str

    def __post_init__(self) -> None:
        if self.code // 100 not in (2, 4, 5) or self.enhanced.split(".")[0] != str(self.code)[0]:
            raise ValueError(f"enhanced code {self.enhanced} does not fit reply code {self.code}")

    @property
    def ok(self) -> bool:
        return self.code < 400

    @property
    def reply(self) -> str:
        return f"{self.code} {self.enhanced} {self.text}"


@dataclass(frozen=True, slots=True)
class SenderDecision(Decision):
    """A MAIL FROM verdict. ``mailbox`` is the parsed reverse path when accepted; it is None
    for a refusal and for the null sender ``<>`` (tell them apart with ``ok``)."""

    mailbox: Mailbox | None = None


@dataclass(frozen=True, slots=True)
class RecipientDecision(Decision):
    """A RCPT TO verdict. ``mailbox`` is the normalised recipient when accepted (deliver to
    that, not to what the client typed), None when refused."""

    mailbox: Mailbox | None = None


@dataclass(frozen=True, slots=True)
class Client:
    """Facts about the SMTP session's peer.

    ``ptr_names`` must be forward-confirmed reverse DNS names (a PTR record alone is the
    client's own claim); empty if not looked up. Raises GrammarError if ``ip`` is not an IP
    address, so a console typo is caught here and not half-way through a decision.
    """

    ip: str
    ptr_names: tuple[str, ...] = ()
    authenticated_user: str | None = None
    tls: bool = False

    def __post_init__(self) -> None:
        try:
            ipaddress.ip_address(self.ip.partition("%")[0])
        except ValueError:
            raise GrammarError(f"{self.ip!r} is not an IP address.") from None


def _host(cfg: ServerConfig) -> str:
    return cfg.fqdn or cfg.name


def _first_match(entries: Sequence[AccessEntry], client: Client) -> AccessEntry | None:
    for entry in entries:
        if access_entry_matches(entry, client.ip, client.ptr_names):
            return entry
    return None


def _list_grants(mode: str, entries: Sequence[AccessEntry], client: Client) -> tuple[bool, str]:
    """Apply a grant/deny or relay list; returns (granted, why) with the mode named in why.

    Any mode but "all_except_list" is read as "only_list", so a corrupt mode fails closed.
    """
    match = _first_match(entries, client)
    if mode == ListMode.ALL_EXCEPT_LIST:
        label = f"({_MODE_LABELS[mode]})"
        if match is not None:
            return False, f"{label}: {match} is denied"
        return True, f"{label}: {client.ip} matches no entry"
    label = f"({_MODE_LABELS[ListMode.ONLY_LIST]})"
    if match is not None:
        return True, f"{label}: {match} matched"
    return False, f"{label}: {client.ip} matches no entry"


# --- Connection -----------------------------------------------------------------------------


def check_connect(
    cfg: ServerConfig, client: Client, *, active_connections: int, client_connections: int = 0
) -> Decision:
    """Whether a new connection may start a session.

    ``active_connections`` counts the sessions already open on this server, not this one;
    ``client_connections`` those of the same client (``authbrake.client_key``).
    Refusals: a server not started -> 421 4.3.2; connection control -> 554 5.7.1 (RFC 5321
    section 3.1 allows a 554 greeting to refuse service); the connection limit (None is
    unlimited) -> 421 4.7.0; the per-client limit -> 421 4.7.0 to that client only. On 220 the listener sends its own greeting: RFC 2034 puts no
    enhanced code on the greeting, so ``reply`` is not meant for the wire here.
    """
    host = _host(cfg)
    if cfg.state != ServerState.STARTED:
        # Listeners stay bound while paused and answer every new client this way.
        return Decision(421, "4.3.2", f"{host} Service not available", f"server is {cfg.state}")
    granted, why = _list_grants(cfg.connection.mode, cfg.connection.entries, client)
    rule = f"connection control {why}"
    if not granted:
        return Decision(554, "5.7.1", f"{host} Access denied", rule)
    limit = cfg.connection_limit
    if limit is not None and active_connections >= limit:
        return Decision(
            421,
            "4.7.0",
            f"{host} Too many connections, try later",
            f"connection limit ({limit}) reached",
        )
    per_client = cfg.client_connection_limit
    if per_client is not None and client_connections >= per_client:
        return Decision(
            421,
            "4.7.0",
            f"{host} Too many connections from your address, try later",
            f"client connection limit ({per_client}) reached",
        )
    return Decision(220, "2.0.0", f"{host} Service ready", rule)


# --- EHLO and AUTH --------------------------------------------------------------------------


def offered_auth_mechanisms(cfg: ServerConfig, *, tls: bool) -> tuple[str, ...]:
    """The SASL mechanisms to advertise on a session with or without TLS.

    Basic gives PLAIN and LOGIN, withheld without TLS if basic_requires_tls. Integrated
    gives SCRAM-SHA-256, plus CRAM-MD5 only where the operator turned it on. Nothing is
    offered before STARTTLS on a server that requires TLS (RFC 4954 section 4: do not
    advertise what would be refused).
    """
    if cfg.tls.require and not tls:
        return ()
    mechanisms: list[str] = []
    if cfg.auth.basic and (tls or not cfg.auth.basic_requires_tls):
        mechanisms += _BASIC
    if cfg.auth.integrated:
        mechanisms.append("SCRAM-SHA-256")
        if cfg.auth.cram_md5:
            mechanisms.append("CRAM-MD5")
    return tuple(mechanisms)


def ehlo_keywords(cfg: ServerConfig, *, tls: bool) -> tuple[str, ...]:
    """The EHLO extension lines (without the leading "250-"), in the order to send them.

    SIZE carries the message size limit ("SIZE" alone when unlimited, RFC 1870). DSN and
    CHUNKING are not offered: the spool and delivery do not implement them.
    """
    limit = cfg.messages.max_message_size
    keywords = [
        "SIZE" if limit is None else f"SIZE {limit}",
        "8BITMIME",
        "PIPELINING",
        "ENHANCEDSTATUSCODES",
        "SMTPUTF8",
    ]
    if cfg.tls.enabled and not tls:
        keywords.append("STARTTLS")
    mechanisms = offered_auth_mechanisms(cfg, tls=tls)
    if mechanisms:
        keywords.append("AUTH " + " ".join(mechanisms))
    return tuple(keywords)


def check_auth(cfg: ServerConfig, client: Client, *, mechanism: str) -> Decision:
    """Whether the client may start an AUTH exchange with this mechanism (case-insensitive).

    ok (250 2.0.0, never sent: the handler goes on with the 334 exchange) means proceed.
    Refusals: already authenticated -> 503 5.5.1; TLS required (by "require TLS", or by
    basic_requires_tls for PLAIN/LOGIN) on a plain session -> 530 5.7.0; a mechanism not
    offered -> 504 5.5.4.
    """
    name = mechanism.upper()
    if client.authenticated_user is not None:
        return Decision(503, "5.5.1", "Already authenticated", "AUTH may be given only once")
    if cfg.tls.require and not client.tls:
        return Decision(530, "5.7.0", _STARTTLS_FIRST, "the server requires TLS")
    offered = offered_auth_mechanisms(cfg, tls=client.tls)
    if name in offered:
        return Decision(250, "2.0.0", "Go ahead", f"AUTH {name} is offered")
    if name in offered_auth_mechanisms(cfg, tls=True):
        return Decision(530, "5.7.0", _STARTTLS_FIRST, "basic authentication requires TLS")
    return Decision(
        504,
        "5.5.4",
        "Unrecognized authentication type",
        f"AUTH {name} is not offered (offered: {' '.join(offered) or 'none'})",
    )


# --- MAIL -----------------------------------------------------------------------------------


def check_mail(
    cfg: ServerConfig,
    client: Client,
    *,
    sender: str,
    size: int | None,
    smtputf8: bool,
    messages_sent: int,
    session_bytes: int,
) -> SenderDecision:
    """Whether a MAIL FROM may open a transaction.

    ``size`` is the SIZE parameter (None if not declared); ``messages_sent`` counts the
    messages already accepted on this connection. In order: TLS required -> 530 5.7.0;
    anonymous access off and not authenticated -> 530 5.7.0; messages per connection
    reached -> 421 4.7.0; bad sender -> 501 5.1.7; SIZE over the message or session
    limit -> 552 5.3.4. Else 250 2.1.0 with the parsed sender.
    """
    refusal = _session_refusal(cfg, client, messages_sent=messages_sent)
    if refusal is not None:
        return refusal
    try:
        mailbox = parse_reverse_path(sender, smtputf8=smtputf8)
    except GrammarError as exc:
        return SenderDecision(501, "5.1.7", "Bad sender address syntax", f"sender: {exc}")
    refusal = _size_refusal(cfg, size=size, session_bytes=session_bytes)
    if refusal is not None:
        return refusal
    rule = "null sender <>" if mailbox is None else f"sender {mailbox} accepted"
    return SenderDecision(250, "2.1.0", "Sender OK", rule, mailbox)


def _session_refusal(
    cfg: ServerConfig, client: Client, *, messages_sent: int
) -> SenderDecision | None:
    if cfg.tls.require and not client.tls:
        return SenderDecision(530, "5.7.0", _STARTTLS_FIRST, "the server requires TLS")
    if not cfg.auth.anonymous and client.authenticated_user is None:
        # IIS with anonymous access cleared makes every client authenticate, whatever the
        # relay settings say.
        return SenderDecision(
            530, "5.7.0", "Authentication required", "anonymous access is not allowed"
        )
    limit = cfg.messages.max_messages_per_connection
    if limit is not None and messages_sent >= limit:
        # 421 closes the connection; the client reconnects for the rest, as IIS does when
        # it reaches this limit (it opens a new connection and carries on).
        return SenderDecision(
            421,
            "4.7.0",
            f"{_host(cfg)} Too many messages on this connection, closing",
            f"messages per connection limit ({limit}) reached",
        )
    return None


def _size_refusal(
    cfg: ServerConfig, *, size: int | None, session_bytes: int
) -> SenderDecision | None:
    limits = cfg.messages
    if size is not None and limits.max_message_size is not None:
        if size > limits.max_message_size:
            return SenderDecision(*_too_big(size, limits.max_message_size, "message"))
    session_limit = limits.max_session_size
    if session_limit is None:
        return None
    if size is not None and session_bytes + size > session_limit:
        return SenderDecision(*_too_big(session_bytes + size, session_limit, "session"))
    # Without SIZE, refuse only a session already full: any message has at least one byte.
    if size is None and session_bytes >= session_limit:
        rule = f"session already holds its size limit ({session_limit})"
        return SenderDecision(552, "5.3.4", _TOO_BIG, rule)
    return None


def _too_big(size: int, limit: int, what: str) -> tuple[int, str, str, str]:
    return 552, "5.3.4", _TOO_BIG, f"{what} size {size} exceeds the {what} size limit ({limit})"


# --- RCPT -----------------------------------------------------------------------------------


def check_rcpt(
    cfg: ServerConfig, client: Client, *, recipient: str, accepted_so_far: int, smtputf8: bool
) -> RecipientDecision:
    """Whether to accept a RCPT TO: the relay decision (no open relay).

    ``accepted_so_far`` counts recipients already accepted in this transaction. Refusals:
    over the recipient limit -> 452 4.5.3; a bad or tricky address -> 501 5.1.3 (the
    grammar's reason in ``rule``); a domain the server may not take from this client ->
    550 5.7.1. A bare ``<Postmaster>`` means postmaster at the default domain (RFC 5321
    section 4.5.1). On acceptance ``mailbox`` holds the normalised recipient.
    """
    limit = cfg.messages.max_recipients_per_message
    if limit is not None and accepted_so_far >= limit:
        rule = f"recipients per message limit ({limit}) reached"
        return RecipientDecision(452, "4.5.3", "Too many recipients", rule)
    try:
        mailbox = _parse_recipient(cfg, recipient, smtputf8=smtputf8)
    except GrammarError as exc:
        text = "Bad destination mailbox address syntax"
        return RecipientDecision(501, "5.1.3", text, f"recipient: {exc}")
    accepted, rule = _relay_verdict(cfg, client, mailbox.domain)
    if not accepted:
        return RecipientDecision(550, "5.7.1", f"Unable to relay for {mailbox}", rule)
    return RecipientDecision(250, "2.1.5", "Recipient OK", rule, mailbox)


def _parse_recipient(cfg: ServerConfig, recipient: str, *, smtputf8: bool) -> Mailbox:
    bare = recipient.removeprefix("<").removesuffix(">")
    if bare.lower() == "postmaster" and cfg.default_domain:
        return Mailbox("postmaster", cfg.default_domain)
    return parse_forward_path(recipient, smtputf8=smtputf8)


def _relay_verdict(cfg: ServerConfig, client: Client, domain: str) -> tuple[bool, str]:
    """(accepted, rule) for a canonical recipient domain, per DESIGN invariant 4.

    The entry that decides is the one routing uses too (:func:`domain_entry`): an exact
    name that does not allow relay is not overruled by a wildcard that does.
    """
    entry = domain_entry(cfg.domains, domain)
    if entry is not None and entry.kind == DomainKind.LOCAL:
        return True, f"local domain {entry.name}"
    if entry is not None and entry.relay_allowed:
        return True, f"remote domain {entry.name} allows relay"
    # Not accepted on its own account; the client may still be allowed to relay.
    refused_remote = f"remote domain {entry.name} does not allow relay" if entry else ""
    if client.authenticated_user is not None and cfg.relay.allow_authenticated:
        return True, "authenticated users may relay"
    granted, why = _list_grants(cfg.relay.mode, cfg.relay.entries, client)
    if granted:
        return True, f"relay list {why}"
    reasons = [refused_remote or f"{domain} is not a local or relay-allowed remote domain"]
    reasons.append(_auth_reason(cfg, client))
    reasons.append(f"relay list {why}")
    return False, "; ".join(reasons)


def _auth_reason(cfg: ServerConfig, client: Client) -> str:
    if client.authenticated_user is None:
        return "client is not authenticated"
    return "authenticated users may not relay (the option is off)"


# --- DATA -----------------------------------------------------------------------------------


def check_data(
    cfg: ServerConfig, *, size: int, received_headers: int, session_bytes: int
) -> Decision:
    """Whether to accept a received message of ``size`` bytes with that many Received headers.

    Refusals: over the message size limit -> 552 5.3.4; more Received headers than the
    maximum hop count -> 554 5.4.6 (a routing loop, RFC 3463); with this message the
    session over its size limit -> 552 5.3.4. Else 250 2.0.0; the handler replies only
    after spooling.
    """
    limits = cfg.messages
    if limits.max_message_size is not None and size > limits.max_message_size:
        return Decision(*_too_big(size, limits.max_message_size, "message"))
    hops = cfg.delivery.max_hop_count
    if received_headers > hops:
        return Decision(
            554, "5.4.6", "Too many hops", f"{received_headers} Received headers exceed {hops}"
        )
    total = session_bytes + size
    if limits.max_session_size is not None and total > limits.max_session_size:
        return Decision(*_too_big(total, limits.max_session_size, "session"))
    return Decision(250, "2.0.0", "Message accepted", f"message size {size} within limits")


# --- The console's "Test relay" -------------------------------------------------------------


def explain_relay(
    cfg: ServerConfig, client: Client, *, sender: str, recipient: str
) -> list[Decision]:
    """Run a session's decisions for these facts, in order, stopping at the first refusal.

    Steps: connect (as the only connection), AUTH when ``client.authenticated_user`` is set
    (can this client authenticate here at all? the credentials are taken as good), MAIL
    (no SIZE, first message), RCPT (first recipient). SMTPUTF8 is assumed declared when
    an address is not ASCII, as a client sending it would. The last decision says why.
    """
    utf8 = not (sender + recipient).isascii()
    steps: list[Decision] = [check_connect(cfg, client, active_connections=0)]
    if steps[-1].ok and client.authenticated_user is not None:
        steps.append(_explain_auth(cfg, client))
    if steps[-1].ok:
        steps.append(
            check_mail(
                cfg,
                client,
                sender=sender,
                size=None,
                smtputf8=utf8,
                messages_sent=0,
                session_bytes=0,
            )
        )
    if steps[-1].ok:
        steps.append(check_rcpt(cfg, client, recipient=recipient, accepted_so_far=0, smtputf8=utf8))
    return steps


def _explain_auth(cfg: ServerConfig, client: Client) -> Decision:
    offered = offered_auth_mechanisms(cfg, tls=client.tls)
    mechanism = offered[0] if offered else "PLAIN"
    decision = check_auth(cfg, replace(client, authenticated_user=None), mechanism=mechanism)
    if not decision.ok:
        return decision
    rule = f"{client.authenticated_user} authenticated (offered: {' '.join(offered)})"
    return Decision(235, "2.7.0", "Authentication successful", rule)
