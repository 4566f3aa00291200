"""Delivery status notifications: the NDRs and delay notices that go back to a sender.

:func:`build_report` returns a complete message (RFC 3464 ``multipart/report``, RFC 6522)
as bytes with CRLF line endings, ready to be spooled with the null sender ``<>`` as its
envelope sender (RFC 3461 section 6.2 / RFC 5321 section 4.5.5: a DSN is never itself
answered by a DSN) and the original envelope sender as its only recipient.

The report has three parts:

1. ``text/plain``: the explanation for people, worded like an IIS / Exchange NDR;
2. ``message/delivery-status``: the machine-readable fields (RFC 3464 section 2);
3. ``text/rfc822-headers``: the original header section (the default), or
   ``message/rfc822`` with the whole original message; either at most :data:`QUOTE_LIMIT`
   octets (64 KiB), so a hostile original costs bounded, linear work and a small report.

Callers must ask :func:`should_notify` first: a message from the null sender, or one that
is itself an automatic report, gets no notification, and :func:`build_report` refuses the
null sender outright.

Transfer encoding: the report is 7-bit ASCII with no line longer than 998 octets, so any
relay can carry it, with two exceptions the caller already knows from its envelope:

* a non-ASCII (RFC 6531) ``envelope_sender`` or ``postmaster`` appears as UTF-8 in
  ``To:`` / ``From:``; such a report must go out with SMTPUTF8, as must any mail to that
  address;
* ``headers_only=False`` with an original that has 8-bit octets: the ``message/rfc822``
  part is declared ``8bit`` (RFC 2046 forbids base64 or quoted-printable there) and the
  report needs ``BODY=8BITMIME``.

Non-ASCII in the original header section is carried by quoting the ``text/rfc822-headers``
part as quoted-printable (``charset=utf-8`` when the octets are UTF-8, else
``unknown-8bit``, RFC 1428): the original octets come back exactly on decoding. Non-ASCII
recipient addresses are written as RFC 6533 ``utf-8`` addresses in their 7-bit
``\\x{HEX}`` form, so the delivery-status part stays ASCII.
"""

from __future__ import annotations

import binascii
import email.policy
import email.utils
import re
import secrets
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from email.header import Header
from typing import Literal, TypeAlias

__all__ = [
    "Action",
    "RecipientStatus",
    "build_report",
    "parse_reply",
    "should_notify",
]

Action: TypeAlias = Literal["failed", "delayed", "delivered", "relayed", "expanded"]
_ACTIONS: frozenset[str] = frozenset(("failed", "delayed", "delivered", "relayed", "expanded"))
# Which status classes (RFC 3463) make sense with each action. An expired message is
# "failed" with a 4.x.x status (e.g. 4.4.7), as Postfix and Exchange report it.
_ACTION_CLASSES = {
    "failed": "45",
    "delayed": "4",
    "delivered": "2",
    "relayed": "2",
    "expanded": "2",
}

# RFC 3463: class "." subject "." detail, subject and detail 1 to 3 digits.
_STATUS = re.compile(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}")
# An enhanced code opening a reply line, after an optional "550 " / "550-" (RFC 2034).
_REPLY_STATUS = re.compile(r"^(?:[0-9]{3}[ -])?\s*([245]\.[0-9]{1,3}\.[0-9]{1,3})(?!\S)")
# Looks like an SMTP reply: then the diagnostic type is "smtp" (RFC 3464 section 2.3.6).
_SMTP_REPLY = re.compile(r"[2-5][0-9]{2}(?:[ -]|$)")
# C0 and C1 controls and the Unicode line separators: never copied into a header or text.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_WHITESPACE = re.compile(r"\s+")
# A host name, or an address literal such as "[10.0.0.2]" or "[IPv6:2001:db8::1]".
_NAME = re.compile(r"[A-Za-z0-9._:\[\]-]{1,255}")
_QUEUE_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")
_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([qQbB])\?([^?\s]*)\?=")
_MSGID = re.compile(rb"<[!-;=?-~]{1,250}>")  # one msg-id, no spaces or nested brackets

# A header field line: a field name (printable ASCII but ':'), optional WSP, ':'.
_FIELD = re.compile(rb"[!-9;-~]+[ \t]*:")
_LINE = re.compile(rb"([^\r\n]*)(?:\r\n|\r|\n|$)")
_EOL = re.compile(rb"\r\n|\r|\n")
_NOT_7BIT = re.compile(rb"[^\x01-\x7f]")
_MAX_LINE = 998  # octets without CRLF, RFC 5322 section 2.1.1

# How much of the original a report quotes and reads: its header section up to this many
# octets, and the whole original only when it fits too. Postfix returns at most
# bounce_size_limit (50,000 bytes) of the original and keeps at most header_size_limit
# (102,400 bytes) of one header; 64 KiB lies between: room for any real header section (a
# long Received chain with DKIM and ARC signatures is 10-20 KB), while a message with a
# 2 MB header block neither makes a 2 MB report nor costs more than this much parsing.
QUOTE_LIMIT = 64 * 1024
# The original Subject as shown in the report's Subject and text, in characters.
_SUBJECT_LIMIT = 256

_WIDTH = 78  # the preferred line length of headers and text (RFC 5322 section 2.1.1)
_TEXT_WIDTH = 76
_MAX_ADDRESS = 254  # octets, RFC 5321 section 4.5.3.1.3 less the "<>"
# A DNS name is at most 255 octets; written with \DDD escapes, up to about four times that.
_MAX_MTA_TEXT = 1024
_CRLF = "\r\n"

# refold_source="all": the default policy passes short values through unencoded.
_POLICY = email.policy.SMTP.clone(refold_source="all")
_PARSER_POLICY = email.policy.default
_DELIVERY_STATUS_TYPES = frozenset(("delivery-status", "global-delivery-status"))


@dataclass(frozen=True, slots=True)
class RecipientStatus:
    """The outcome for one recipient, as it goes into a report.

    ``recipient`` is the address the message was sent to, without ``<>`` (the
    Final-Recipient); ``status`` an RFC 3463 enhanced code, whose class must suit the
    action: ``2`` for delivered / relayed / expanded, ``4`` for delayed, ``4`` or ``5``
    for failed (an expired message fails with e.g. ``4.4.7``). ``remote_mta`` is the host
    that answered (a name or ``[address]``) as DNS gave it, so any text: it is kept as
    printable ASCII, every other octet of its UTF-8 form written ``\\DDD`` as in a DNS
    zone file (``mx/1.example`` and ``*.example`` stay as they are), at most 1,024
    characters; empty is None. ``diagnostic`` is its reply text such as
    ``"550 5.1.1 User unknown"``: a value starting with a reply code is reported as type
    ``smtp``, anything else (``"Connection refused"``) as ``X-Mailadmin``. Multi-line
    replies are joined with spaces. Datetimes must be timezone-aware;
    ``will_retry_until`` belongs to delayed recipients.

    Construction raises ValueError for an empty recipient, one with control characters, an
    unknown action, a malformed status or one of the wrong class, a ``remote_mta`` that is
    not text, or a naive datetime.
    """

    recipient: str
    action: Action
    status: str
    remote_mta: str | None = None
    diagnostic: str | None = None
    last_attempt: datetime | None = None
    will_retry_until: datetime | None = None

    def __post_init__(self) -> None:
        _check_address(self.recipient, "recipient")
        if self.action not in _ACTIONS:
            raise ValueError(f"unknown DSN action {self.action!r}")
        if not isinstance(self.status, str) or not _STATUS.fullmatch(self.status):
            raise ValueError(f"malformed enhanced status code {self.status!r}")
        if self.status[0] not in _ACTION_CLASSES[self.action]:
            raise ValueError(f"status {self.status} does not fit action {self.action!r}")
        if self.remote_mta is not None:
            # DNS data, which a remote zone chooses: a name that is no host name must still
            # make a report (else the message would be retried for ever, never bounced).
            object.__setattr__(self, "remote_mta", _mta_text(self.remote_mta) or None)
        _check_aware(self.last_attempt, "last_attempt")
        _check_aware(self.will_retry_until, "will_retry_until")


def parse_reply(code: int, text: str) -> str:
    """Return the enhanced status code of an SMTP reply.

    The code is taken from the start of ``text`` (``"5.1.1 User unknown"`` -> ``"5.1.1"``;
    a leading ``"550 "`` or ``"550-"`` on the text is skipped; for a multi-line reply the
    first line that has one wins) when its class matches ``code``; otherwise it is derived
    from the reply code's class: ``"2.0.0"``, ``"4.0.0"`` or ``"5.0.0"``. Raises
    ValueError if ``code`` is not a 2xx, 4xx or 5xx reply code.
    """
    if not 200 <= code <= 599 or code // 100 == 3:
        raise ValueError(f"{code} is not a final SMTP reply code")
    klass = str(code // 100)
    for line in text.splitlines():
        match = _REPLY_STATUS.match(line)
        if match is not None and match.group(1)[0] == klass:
            return match.group(1)
    return f"{klass}.0.0"


def should_notify(envelope_sender: str, original: bytes) -> bool:
    """Return whether a delay notice or NDR about ``original`` may be sent at all.

    False for the null sender (``""``, or ``"<>"``), and for a message that is itself
    automatic, so that a notification is never answered by another one: an
    ``Auto-Submitted`` header with any value but ``no`` (RFC 3834), or a top-level
    ``Content-Type: multipart/report`` with ``report-type`` ``delivery-status`` or
    ``global-delivery-status``. Only the header section of ``original`` is read, and of
    that only the first :data:`QUOTE_LIMIT` octets (what a report would quote).
    """
    if envelope_sender.strip() in ("", "<>"):
        return False
    fields = _fields(_header_lines(original)[0])
    for name, value in fields:
        if name == b"auto-submitted":
            keyword = value.split(b";", 1)[0].split(b"(", 1)[0].strip().lower()
            if keyword != b"no":
                return False
    content_type = _first(fields, b"content-type")
    return content_type is None or not _is_delivery_report(content_type)


def _is_delivery_report(content_type: bytes) -> bool:
    """Whether a Content-Type value is multipart/report for delivery status."""
    value = content_type.decode("ascii", "replace")
    try:
        # The default policy decodes RFC 2231 parameters (report-type*=...); compat32
        # does not for names with a hyphen.
        header = _PARSER_POLICY.header_factory("Content-Type", value)
        kind = str(getattr(header, "content_type", ""))
        params = {str(k).lower(): str(v) for k, v in getattr(header, "params", {}).items()}
        report_type = params.get("report-type", "")
    except Exception:  # the stdlib header parser has failed on odd input before
        lowered = value.lower()
        return lowered.lstrip().startswith("multipart/report") and "delivery-status" in lowered
    return kind == "multipart/report" and report_type.strip().lower() in _DELIVERY_STATUS_TYPES


def build_report(
    *,
    original: bytes,
    envelope_sender: str,
    reporting_mta: str,
    postmaster: str,
    recipients: Sequence[RecipientStatus],
    arrival: datetime,
    now: datetime,
    queue_id: str,
    kind: Literal["failure", "delay"],
    headers_only: bool = True,
    message_id_domain: str | None = None,
) -> bytes:
    """Return a delivery status notification about ``original``, CRLF-terminated.

    ``envelope_sender`` (the original MAIL FROM, without ``<>``) becomes ``To:``;
    ``postmaster`` the address in ``From: "Mail Delivery System" <...>``;
    ``reporting_mta`` this server's FQDN (``Reporting-MTA: dns;...``). ``kind`` is
    ``"failure"`` (an NDR, ``Subject: Undeliverable: ...``; at least one recipient
    ``failed``) or ``"delay"`` (``Subject: Delayed: ...``; at least one ``delayed``, none
    ``failed``); recipients with other actions may be listed alongside. ``arrival`` is
    when the original was received, ``now`` the report's ``Date``; both timezone-aware.
    The ``Message-ID`` is new on every call, at ``message_id_domain`` or else
    ``reporting_mta``; ``queue_id`` is shown to administrators in the text part.

    The report carries ``Auto-Submitted: auto-replied`` and, when the original has a
    well-formed ``Message-ID``, ``In-Reply-To`` / ``References`` to it. The third part is
    the original header section (``headers_only=True``) or the whole original as
    ``message/rfc822``; an original that cannot be carried intact that way (a line over
    998 octets, or NUL octets) or is larger than :data:`QUOTE_LIMIT` falls back to its
    header section. The header section quoted is at most QUOTE_LIMIT octets, whole fields
    only (the text part then says it was shortened), and the original Subject shown is at
    most 256 characters. The work done is linear in the part of ``original`` read.

    Raises ValueError, before doing anything else, for the null sender ``""`` (a DSN must
    never be sent to ``<>``; callers check :func:`should_notify` first), and for no
    recipients, recipients that do not fit ``kind``, naive datetimes, a queue id that is
    not 1-64 letters, digits, ``_`` or ``-``, addresses that are empty, longer than 254
    octets or contain control characters or ``<>``, and ``reporting_mta`` /
    ``message_id_domain`` values that are not ASCII host names or ``[address]`` literals.
    """
    if envelope_sender == "" or envelope_sender.strip() == "<>":
        raise ValueError("no delivery status notification may be sent to the null sender")
    _check_address(envelope_sender, "envelope_sender")
    _check_address(postmaster, "postmaster")
    _check_name(reporting_mta, "reporting_mta")
    if message_id_domain is not None:
        _check_name(message_id_domain, "message_id_domain")
    if not _QUEUE_ID.fullmatch(queue_id):
        raise ValueError(f"invalid queue id {queue_id!r}")
    _check_aware(arrival, "arrival")
    _check_aware(now, "now")
    if kind not in ("failure", "delay"):
        raise ValueError(f"unknown report kind {kind!r}")
    recipients = tuple(recipients)
    if not recipients:
        raise ValueError("a report needs at least one recipient")
    actions = {r.action for r in recipients}
    if kind == "failure" and "failed" not in actions:
        raise ValueError("a failure report needs at least one failed recipient")
    if kind == "delay" and ("delayed" not in actions or "failed" in actions):
        raise ValueError("a delay report needs delayed recipients and no failed ones")

    header_lines, cut = _header_lines(original)
    fields = _fields(header_lines)
    subject = _original_subject(fields)

    original_part, whole = _original_part(original, header_lines, headers_only)
    text_part = _text_part(
        recipients=recipients,
        reporting_mta=reporting_mta,
        queue_id=queue_id,
        subject=subject,
        arrival=arrival,
        whole=whole,
        cut=cut,
    )
    status_part = _status_part(reporting_mta, arrival, recipients)
    parts = (text_part, status_part, original_part)

    boundary = _boundary(parts)
    eight_bit = any(_NOT_7BIT.search(part) for part in parts)
    domain = message_id_domain or reporting_mta
    prefix = "Undeliverable" if kind == "failure" else "Delayed"
    headers = [
        f'From: "Mail Delivery System" <{postmaster}>',
        f"To: <{envelope_sender}>",
        _fold_unstructured("Subject", f"{prefix}: {subject or '(no subject)'}"),
        f"Date: {email.utils.format_datetime(now)}",
        f"Message-ID: <DSN.{queue_id}.{secrets.token_hex(8)}@{domain}>",
    ]
    original_id = _first(fields, b"message-id")
    if original_id is not None and _MSGID.fullmatch(original_id.strip()):
        msgid = original_id.strip().decode("ascii")
        headers += [f"In-Reply-To: {msgid}", f"References: {msgid}"]
    headers += [
        "MIME-Version: 1.0",
        "Auto-Submitted: auto-replied",
        "Content-Type: multipart/report; report-type=delivery-status;",
        f'\tboundary="{boundary}"',
        f"Content-Transfer-Encoding: {'8bit' if eight_bit else '7bit'}",
    ]
    head = (_CRLF.join(headers) + _CRLF + _CRLF).encode("utf-8")
    preamble = b"This is a MIME-encapsulated delivery status notification.\r\n"
    delimiter = b"\r\n--" + boundary.encode("ascii")
    out = [head, preamble]
    for part in parts:
        out += [delimiter, b"\r\n", part]
    out += [delimiter, b"--\r\n"]
    return b"".join(out)


# -- the parts ---------------------------------------------------------------------------


def _text_part(
    *,
    recipients: Sequence[RecipientStatus],
    reporting_mta: str,
    queue_id: str,
    subject: str,
    arrival: datetime,
    whole: bool,
    cut: bool,
) -> bytes:
    failed = [r for r in recipients if r.action == "failed"]
    delayed = [r for r in recipients if r.action == "delayed"]
    others = [r for r in recipients if r.action not in ("failed", "delayed")]
    paragraphs: list[str | list[str]] = []  # a str is wrapped; a list keeps its lines
    if failed:
        paragraphs.append("Delivery has failed to these recipients or groups:")
        for r in failed:
            paragraphs.append([r.recipient])
            paragraphs.append(_explain(r))
    if delayed:
        paragraphs.append("Delivery to the following recipients has been delayed.")
        paragraphs.append([r.recipient for r in delayed])
        paragraphs.append([f"Subject: {subject}", f"Sent: {_date(arrival)}"])
        retry = [r.will_retry_until for r in delayed if r.will_retry_until is not None]
        until = f" until {_date(max(retry))}" if retry else ""
        paragraphs.append(
            "This is a warning message only. You do not need to resend your message. "
            f"The server will keep trying to deliver it{until}."
        )
    if others:
        paragraphs.append("The message was handed on for these recipients:")
        paragraphs.append([f"{r.recipient} ({r.action})" for r in others])
    paragraphs.append("Diagnostic information for administrators:")
    paragraphs.append([f"Generating server: {reporting_mta}", f"Queue ID: {queue_id}"])
    for r in recipients:
        admin = [r.recipient, f"{r.remote_mta or reporting_mta} #{_reply_text(r)} ##"]
        if r.last_attempt is not None:
            admin.append(f"Last attempt: {_date(r.last_attempt)}")
        if r.will_retry_until is not None:
            admin.append(f"Will retry until: {_date(r.will_retry_until)}")
        paragraphs.append(admin)
    what = "The original message is" if whole else "The headers of the original message are"
    if cut and not whole:
        what = f"The first {QUOTE_LIMIT} octets of the original message's headers are"
    paragraphs.append(f"{what} attached.")
    lines: list[str] = []
    for paragraph in paragraphs:
        chunk = [paragraph] if isinstance(paragraph, str) else paragraph
        for line in chunk:
            lines += _wrap(line)
        lines.append("")
    text = _CRLF.join(lines).encode("utf-8", "replace")  # "?" for lone surrogates
    if text.isascii():
        return _part("text/plain; charset=us-ascii", "7bit", text, "Notification")
    return _part("text/plain; charset=utf-8", "quoted-printable", _qp(text), "Notification")


def _explain(r: RecipientStatus) -> str:
    """One sentence for people about a failed recipient, from its status code."""
    klass, subject, detail = r.status.split(".")
    reason = {
        "1": "The e-mail address could not be found. Check the address and try again.",
        "2": "The recipient's mailbox cannot accept the message (full or disabled).",
        "3": "The receiving system could not accept the message (too big or not supported).",
        "4": "The message could not be routed to the recipient's mail system.",
        "5": "The receiving system did not accept the message (protocol problem).",
        "6": "The message content could not be converted for the recipient.",
        "7": "The receiving system refused the message by its security policy.",
    }.get(subject, "The receiving system did not accept the message.")
    if klass == "4" or (subject == "4" and detail == "7"):
        reason = "The message could not be delivered in the time allowed."
    if r.diagnostic and r.diagnostic.strip():
        return f"{reason} The server replied: {_reply_text(r)}"
    return f"{reason} (Status {r.status}.)"


def _reply_text(r: RecipientStatus) -> str:
    if not r.diagnostic or not r.diagnostic.strip():
        return r.status
    return _WHITESPACE.sub(" ", _CONTROL.sub(" ", r.diagnostic)).strip()


def _status_part(
    reporting_mta: str, arrival: datetime, recipients: Sequence[RecipientStatus]
) -> bytes:
    blocks = [[f"Reporting-MTA: dns;{reporting_mta}", f"Arrival-Date: {_date(arrival)}"]]
    for r in recipients:
        block = [
            f"Final-Recipient: {_address_field(r.recipient)}",  # < 998: 254 octets at most
            f"Action: {r.action}",
            f"Status: {r.status}",
        ]
        if r.remote_mta is not None:
            block.append(_fold("Remote-MTA", f"dns;{r.remote_mta}"))
        if r.diagnostic is not None and r.diagnostic.strip():
            text = _ascii(_WHITESPACE.sub(" ", r.diagnostic).strip())
            kind = "smtp" if _SMTP_REPLY.match(text) else "X-Mailadmin"
            block.append(_fold("Diagnostic-Code", f"{kind};{text}"))
        if r.last_attempt is not None:
            block.append(f"Last-Attempt-Date: {_date(r.last_attempt)}")
        if r.will_retry_until is not None:
            block.append(f"Will-Retry-Until: {_date(r.will_retry_until)}")
        blocks.append(block)
    body = (_CRLF + _CRLF).join(_CRLF.join(block) for block in blocks) + _CRLF
    return _part("message/delivery-status", "7bit", body.encode("ascii"), "Delivery report")


def _original_part(
    original: bytes, header_lines: list[bytes], headers_only: bool
) -> tuple[bytes, bool]:
    """The third part, and whether it holds the whole original (else its headers)."""
    if not headers_only and len(original) <= QUOTE_LIMIT:
        whole = _EOL.sub(b"\r\n", original)
        if whole and not whole.endswith(b"\r\n"):
            whole += b"\r\n"
        if b"\x00" not in whole and not _has_long_line(whole):
            cte = "8bit" if _NOT_7BIT.search(whole) else "7bit"
            return _part("message/rfc822", cte, whole, "Undelivered message"), True
    section = b"".join(line + b"\r\n" for line in header_lines)
    if not _NOT_7BIT.search(section) and not _has_long_line(section):
        return _part("text/rfc822-headers", "7bit", section, "Undelivered message headers"), False
    try:
        section.decode("utf-8")
        charset = "utf-8"
    except UnicodeDecodeError:
        charset = "unknown-8bit"
    content_type = f"text/rfc822-headers; charset={charset}"
    return _part(
        content_type, "quoted-printable", _qp(section), "Undelivered message headers"
    ), False


def _has_long_line(data: bytes) -> bool:
    """Whether a line of ``data`` is over 998 octets. Linear: a regular expression search
    for 999 non-EOL octets restarts at every octet and costs up to 998 steps there, which
    made a report on 2 MB of 998-octet lines take seconds."""
    return any(len(line) > _MAX_LINE for line in data.splitlines())


def _part(content_type: str, cte: str, body: bytes, description: str) -> bytes:
    head = (
        f"Content-Type: {content_type}\r\n"
        f"Content-Description: {description}\r\n"
        f"Content-Transfer-Encoding: {cte}\r\n\r\n"
    )
    return head.encode("ascii") + body


def _qp(data: bytes) -> bytes:
    """Quoted-printable with CRLF line breaks kept as line breaks (RFC 2045 6.7)."""
    return binascii.b2a_qp(data, quotetabs=False, istext=True, header=False)


def _boundary(parts: Iterable[bytes]) -> str:
    parts = tuple(parts)
    while True:
        boundary = f"=_DSN_{secrets.token_hex(16)}"
        encoded = boundary.encode("ascii")
        if not any(encoded in part for part in parts):
            return boundary


# -- the original message ------------------------------------------------------------------


def _header_lines(original: bytes) -> tuple[list[bytes], bool]:
    """The lines of the original's header section, without line endings, and whether the
    section was cut short to fit :data:`QUOTE_LIMIT`.

    The section ends at the first empty line, or at the first line that is neither a
    header field nor the continuation of one (a message without the empty line), so no
    body text is ever taken for a header. Only the first QUOTE_LIMIT octets are read, and
    the lines kept take at most QUOTE_LIMIT octets with CRLF line ends; a field that does
    not fit is left out whole, with its continuation lines, and so is everything after it.
    """
    head = original[:QUOTE_LIMIT]
    lines: list[bytes] = []
    field_start = 0  # index in lines of the current field's first line
    size = 0
    for match in _LINE.finditer(head):
        line = match.group(1)
        if not line:
            return lines, False
        folded = line[:1] in (b" ", b"\t")
        size += len(line) + 2
        runs_past = match.end() >= len(head) and len(original) > len(head)
        if size > QUOTE_LIMIT or runs_past:
            # This line may not be whole (or does not fit): nor may its field be.
            return lines[: field_start if folded else len(lines)], True
        if folded:
            if not lines:
                break
        elif not _FIELD.match(line):
            break
        else:
            field_start = len(lines)
        lines.append(line)
        if match.end() >= len(head):
            break
    return lines, False


def _fields(lines: list[bytes]) -> list[tuple[bytes, bytes]]:
    """(lower-case name, unfolded value) for each header field, in order."""
    # Continuation lines are collected and joined once: adding each to the value so far
    # would copy the value again for every line (quadratic in a field's length).
    parts: list[tuple[bytes, list[bytes]]] = []
    for line in lines:
        if line[:1] in (b" ", b"\t") and parts:
            parts[-1][1].append(line)
        else:
            name, _, value = line.partition(b":")
            parts.append((name.strip().lower(), [value.strip()]))
    return [(name, b"".join(values)) for name, values in parts]


def _first(fields: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    return next((value for field, value in fields if field == name), None)


def _original_subject(fields: list[tuple[bytes, bytes]]) -> str:
    """The original Subject as text: RFC 2047 words decoded, raw 8-bit read as UTF-8.

    An encoded word that does not decode (unknown charset, bad base64) is kept as it is.
    Control characters become spaces: nothing of the subject can break out of the header
    or the line it is put in.
    """
    raw = _first(fields, b"subject")
    if raw is None:
        return ""
    text = _decode_words(raw.decode("utf-8", "replace"))
    text = _WHITESPACE.sub(" ", _CONTROL.sub(" ", text)).strip()
    # A subject of thousands of words would make a report header of as many lines.
    return text if len(text) <= _SUBJECT_LIMIT else text[: _SUBJECT_LIMIT - 3].rstrip() + "..."


def _decode_words(text: str) -> str:
    """Decode the RFC 2047 encoded words in ``text``, dropping the space between two."""
    out: list[str] = []
    pos = 0
    after_word = False
    for match in _ENCODED_WORD.finditer(text):
        between = text[pos : match.start()]
        if not (after_word and (not between or between.isspace())):
            out.append(between)
        decoded = _decode_word(match)
        out.append(match.group() if decoded is None else decoded)
        after_word = decoded is not None
        pos = match.end()
    out.append(text[pos:])
    return "".join(out)


def _decode_word(match: re.Match[str]) -> str | None:
    charset = match.group(1).split("*", 1)[0]  # RFC 2231 adds "*language"
    payload = match.group(3).encode("ascii", "replace")
    try:
        if match.group(2) in "qQ":
            octets = binascii.a2b_qp(payload, header=True)
        else:
            octets = binascii.a2b_base64(payload + b"=" * (-len(payload) % 4))
        return octets.decode(charset, "replace")
    except (LookupError, ValueError):
        return None


# -- formatting ----------------------------------------------------------------------------


def _fold_unstructured(name: str, value: str) -> str:
    """``Name: value`` folded at 78 columns, non-ASCII as RFC 2047 UTF-8 encoded words.

    The result is ASCII and no line is longer than 78 characters.
    """
    if value.isascii() and all(len(word) <= _WIDTH - len(name) - 2 for word in value.split()):
        # Plain text, folded at its spaces. Encoded words that did not decode are kept as
        # they are (the stdlib policy would decode them on its own terms, failing on some).
        return _fold(name, value)
    if "=?" not in value:
        try:
            folded = str(_POLICY.fold(name, value)).rstrip(_CRLF)
        except Exception:  # a stdlib folding bug must not stop the report; encode it all
            folded = ""
        lines = folded.split(_CRLF)
        # The policy sometimes leaves "Name:" alone on the first line; that is not kept.
        if (
            folded
            and folded.isascii()
            and max(map(len, lines)) <= _WIDTH
            and lines[0] != f"{name}:"
        ):
            return folded
    # Anything else is encoded as a whole, which always fits.
    encoded = Header(value, "utf-8", maxlinelen=_WIDTH, header_name=name).encode(linesep=_CRLF)
    return f"{name}: {encoded}"


def _fold(name: str, value: str) -> str:
    """``Name: value`` folded at whitespace to 78 columns where it can be.

    Whitespace runs become single spaces. A word too long for a line is cut into pieces
    on lines of their own; the folding then adds a space inside it (acceptable for the
    free text of diagnostics, the only values long enough).
    """
    words: list[str] = []
    for word in value.split():
        words += textwrap.wrap(word, _WIDTH - 1, break_long_words=True) or [word]
    lines = [f"{name}:"]
    for word in words:
        if len(lines[-1]) + 1 + len(word) <= _WIDTH or lines[-1] == f"{name}:":
            lines[-1] += " " + word
        else:
            lines.append(" " + word)
    return _CRLF.join(lines)


def _wrap(line: str) -> list[str]:
    if len(line) <= _TEXT_WIDTH:
        return [line]
    return textwrap.wrap(line, _TEXT_WIDTH, break_long_words=True, break_on_hyphens=False) or [""]


def _date(when: datetime) -> str:
    return email.utils.format_datetime(when)


def _ascii(text: str) -> str:
    """Printable ASCII: other characters as Python escapes (``\\xe9``), controls as spaces."""
    return _CONTROL.sub(" ", text.encode("ascii", "backslashreplace").decode("ascii"))


def _address_field(address: str) -> str:
    """An RFC 3464 address: ``rfc822;addr``, or RFC 6533 ``utf-8;`` with ``\\x{HEX}``."""
    if address.isascii():
        return f"rfc822;{address}"
    escaped = "".join(
        ch if ("!" <= ch <= "~" and ch not in "\\+=") else f"\\x{{{ord(ch):02X}}}" for ch in address
    )
    return f"utf-8;{escaped}"


# -- checks --------------------------------------------------------------------------------


def _check_address(address: str, what: str) -> None:
    if not isinstance(address, str) or not address.strip():
        raise ValueError(f"{what} is empty")
    if _CONTROL.search(address) or any(ch in address for ch in "<>"):
        raise ValueError(f"{what} {address!r} has control characters or angle brackets")
    try:
        octets = len(address.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError(f"{what} {address!r} is not valid Unicode") from None
    if octets > _MAX_ADDRESS:
        raise ValueError(f"{what} is longer than {_MAX_ADDRESS} octets")


def _mta_text(name: str) -> str:
    if not isinstance(name, str):
        raise ValueError(f"remote_mta {name!r} is not text")
    octets = name.strip().encode("utf-8", "surrogatepass")
    text = "".join(chr(b) if 0x21 <= b <= 0x7E else f"\\{b:03d}" for b in octets)
    return text[:_MAX_MTA_TEXT]


def _check_name(name: str, what: str) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"{what} {name!r} is not a host name or [address] literal")


def _check_aware(when: datetime | None, what: str) -> None:
    if when is not None and (when.tzinfo is None or when.utcoffset() is None):
        raise ValueError(f"{what} must be a timezone-aware datetime")
