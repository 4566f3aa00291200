"""Console forms: parse what a page posted into the data the services take.

Every form of the console is here: the property sheets, the wizards' steps, a domain's and
a user's properties, the queue's filter bar, Message Tracking's search and the tools'; the
view modules (``mailadmin.console.*``) only build, render and read them.

Forms only turn text into values (numbers, lists, grammar objects). Every rule about
what is allowed is the services' (and the model validators'): their ``ConfigError`` paths
come back onto these forms' fields through :func:`attach_errors`, so a page shows the
same message beside the field as the API gives at that path.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from django import forms
from django.utils import timezone

from mailadmin.exceptions import ConfigError, FieldError
from mailadmin.layout import DOMAIN_FIELD_PATHS, SERVER_FIELD_PATHS
from mailadmin.models import (
    OPEN_STATES,
    DomainKind,
    ListMode,
    LogPeriod,
    MessageState,
    OutboundAuth,
    OutboundTls,
    VirtualServer,
)
from mailadmin.models.servers import default_log_fields
from mailadmin.tracking import parse_moment
from mailadmin.validators import W3C_FIELDS
from smtpworker.core import grammar

SERVER_PATH_FIELDS = {path: field for field, path in SERVER_FIELD_PATHS.items()}
DOMAIN_PATH_FIELDS = {path: field for field, path in DOMAIN_FIELD_PATHS.items()}
USER_PATH_FIELDS = {("active",): "is_active", ("username",): "username", ("password",): "password"}

UNITS = (("1", "minutes"), ("60", "hours"), ("1440", "days"))
_IIS_LOG_ORDER = default_log_fields() + sorted(W3C_FIELDS - set(default_log_fields()))


def attach_errors(
    form: forms.Form, error: ConfigError, paths: Mapping[tuple[Any, ...], str]
) -> list[FieldError]:
    """Put each service error beside its field; return those that have no field here.

    A path into a list (``("relay", "list", 1)``) lands on the list's text box, naming the
    line; a path to a section falls back to the nearest field the form has.
    """
    unplaced = []
    for err in error.errors:
        path, last = err.path, err.path[-1] if err.path else None
        index = last if isinstance(last, int) else None
        if index is not None:
            path = path[:-1]
        field = paths.get(path)
        if field is None or field not in form.fields:
            unplaced.append(err)
            continue
        in_list = index is not None and isinstance(form.fields[field], LinesField)
        text = f"Line {index + 1}: {err.message}" if in_list and index is not None else err.message
        form.add_error(field, text)
    describe(form)
    return unplaced


def describe(form: forms.Form) -> None:
    """Tie each input to its help text and error for screen readers (aria-describedby,
    aria-invalid); the templates give those paragraphs these ids."""
    errors = form.errors if form.is_bound else {}
    for name, field in form.fields.items():
        auto_id = form[name].auto_id
        ids = [f"{auto_id}-help"] if field.help_text else []
        if name in errors:
            ids.append(f"{auto_id}-error")
            field.widget.attrs["aria-invalid"] = "true"
        if ids:
            field.widget.attrs["aria-describedby"] = " ".join(ids)


class LinesField(forms.CharField):
    """A list typed one item per line; ``parse`` turns each line into a value, and a bad
    line is reported with its number."""

    widget = forms.Textarea(attrs={"rows": 5, "spellcheck": "false", "class": "mono"})

    def __init__(self, parse: Callable[[str], Any] | None = None, **kwargs: Any) -> None:
        self.parse = parse
        kwargs.setdefault("required", False)
        kwargs.setdefault("strip", False)
        super().__init__(**kwargs)

    def prepare_value(self, value: Any) -> Any:
        return "\n".join(str(v) for v in value) if isinstance(value, list | tuple) else value

    def clean(self, value: Any) -> list[Any]:
        lines = [line.strip() for line in (value or "").splitlines() if line.strip()]
        if self.parse is None:
            return lines
        parsed, errors = [], []
        for number, line in enumerate(lines, start=1):
            try:
                parsed.append(self.parse(line))
            except grammar.GrammarError as exc:
                errors.append(forms.ValidationError(f"Line {number}: {exc}"))
        if errors:
            raise forms.ValidationError(errors)
        return parsed


class SheetForm(forms.Form):
    """One tab of a server's property sheet.

    ``SIMPLE`` fields map one to one onto model fields; ``LIMITS`` are IIS's "limit to"
    check box plus number (cleared means no limit, stored as None); ``DURATIONS`` are a
    number with a unit, stored in minutes; ``LISTS`` are one item per line.
    """

    tab = ""
    title = ""
    SIMPLE: tuple[str, ...] = ()
    LIMITS: tuple[str, ...] = ()
    DURATIONS: tuple[str, ...] = ()
    LISTS: tuple[str, ...] = ()

    def __init__(self, *args: Any, server: VirtualServer, **kwargs: Any) -> None:
        self.server = server
        kwargs.setdefault("initial", self.initial_from(server))
        super().__init__(*args, **kwargs)
        for name in self.LIMITS:
            self.fields[f"{name}_on"].widget.attrs["data-enables"] = self[name].auto_id

    def initial_from(self, server: VirtualServer) -> dict[str, Any]:
        initial: dict[str, Any] = {name: getattr(server, name) for name in self.SIMPLE}
        for name in self.LIMITS:
            value = getattr(server, name)
            initial[f"{name}_on"] = value is not None
            initial[name] = value
        for name in self.DURATIONS:
            minutes = getattr(server, name)
            factor = next(f for f, _ in reversed(UNITS) if minutes % int(f) == 0)
            initial[name], initial[f"{name}_unit"] = minutes // int(factor), factor
        for name in self.LISTS:
            initial[name] = list_values(server, name)
        return initial

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        for name in self.LIMITS:
            if cleaned.get(f"{name}_on") and cleaned.get(name) is None and name not in self.errors:
                self.add_error(name, "Give a number, or clear the check box for no limit.")
        return cleaned

    def service_data(self) -> dict[str, Any]:
        """What ``server_update`` takes, for every field of this tab."""
        data = {name: self.cleaned_data[name] for name in self.SIMPLE}
        for name in self.LIMITS:
            data[name] = self.cleaned_data[name] if self.cleaned_data[f"{name}_on"] else None
        for name in self.DURATIONS:
            data[name] = self.cleaned_data[name] * int(self.cleaned_data[f"{name}_unit"])
        for name in self.LISTS:
            data[name] = self.cleaned_data[name]
        return data

    def partial_service_data(self) -> dict[str, Any]:
        """``service_data()`` for the fields that cleaned, when some did not: what the
        services can still check, so the sheet lists every error at once."""
        if self.is_valid():
            return self.service_data()
        ok = self.cleaned_data
        data = {name: ok[name] for name in self.SIMPLE + self.LISTS if name in ok}
        for name in self.LIMITS:
            if name in ok and f"{name}_on" in ok:
                data[name] = ok[name] if ok[f"{name}_on"] else None
        for name in self.DURATIONS:
            if ok.get(name) is not None and f"{name}_unit" in ok:
                data[name] = ok[name] * int(ok[f"{name}_unit"])
        return data


def list_values(server: VirtualServer, name: str) -> list[str]:
    if name == "bindings":
        return [str(b) for b in server.bindings.all()]
    if name in ("connection_entries", "relay_entries", "proxy_entries"):
        kind = name.removesuffix("_entries")
        return [e.value for e in server.access_entries.all() if e.list == kind]
    return list(getattr(server, name))


def outbound_auth_fields() -> tuple[forms.ChoiceField, forms.CharField, forms.CharField]:
    """The authentication method, user name and password (write-only: empty keeps the
    stored one), as the Outbound Security dialog and a remote domain's sheet show them."""
    return (
        forms.ChoiceField(
            label="Authentication", choices=OutboundAuth.choices, widget=forms.RadioSelect
        ),
        forms.CharField(label="User name", required=False),
        forms.CharField(
            label="Password",
            required=False,
            strip=False,
            widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
            help_text="Leave empty to keep the stored password.",
        ),
    )


def outbound_tls_fields() -> tuple[forms.ChoiceField, forms.CharField, forms.BooleanField]:
    """The TLS level, the CA certificates it verifies with, and the clear text AUTH box,
    as the Outbound Security dialog and a remote domain's sheet show them."""
    return (
        forms.ChoiceField(
            label="TLS encryption", choices=OutboundTls.choices, widget=forms.RadioSelect
        ),
        forms.CharField(
            label="CA certificates (PEM)",
            required=False,
            widget=forms.Textarea(attrs={"rows": 4, "spellcheck": "false", "class": "mono"}),
            help_text="Trusted by the verified level; empty: the system's CAs.",
        ),
        forms.BooleanField(
            label="Allow authentication without TLS",
            required=False,
            help_text="Anyone on the path can read the password when the host offers no TLS.",
        ),
    )


def _limit(label: str) -> tuple[forms.BooleanField, forms.IntegerField]:
    return (
        forms.BooleanField(label=label, required=False),
        forms.IntegerField(label=f"{label} (number)", required=False, min_value=1),
    )


def _duration(label: str) -> tuple[forms.IntegerField, forms.ChoiceField]:
    return (
        forms.IntegerField(label=label, min_value=1),
        forms.ChoiceField(label=f"{label} (unit)", choices=UNITS),
    )


class GeneralForm(SheetForm):
    tab, title = "general", "General"
    SIMPLE = (
        "name",
        "description",
        "node",
        "home_directory",
        "connection_timeout",
        "logging_enabled",
        "logging_period",
        "logging_fields",
    )
    LIMITS = ("connection_limit", "client_connection_limit")
    LISTS = ("bindings", "proxy_entries")

    name = forms.CharField(label="Name", max_length=64)
    description = forms.CharField(
        label="Description", required=False, widget=forms.Textarea(attrs={"rows": 2})
    )
    bindings = LinesField(
        grammar.parse_binding,
        label="Identities (IP address:TCP port, one per line)",
        help_text="127.0.0.2:25, [::1]:25, or *:25 for (All Unassigned). Add ' proxy' "
        "(10.0.0.5:25 proxy) to take the PROXY protocol from a load balancer.",
    )
    proxy_entries = LinesField(
        grammar.parse_trusted_proxy,
        label="Trusted proxies (IP address or subnet, one per line)",
        help_text="Only these may connect to a 'proxy' identity; their PROXY header names "
        "the client that connection control, relay and the logs then see.",
    )
    node = forms.CharField(
        label="Worker node", required=False, help_text="Empty: every node serves it."
    )
    home_directory = forms.CharField(
        label="Home directory", required=False, help_text="Empty: <mailroot>/<name>."
    )
    connection_limit_on, connection_limit = _limit("Limit number of connections to")
    client_connection_limit_on, client_connection_limit = _limit("Limit connections per client to")
    connection_timeout = forms.IntegerField(label="Connection time-out (seconds)", min_value=1)
    logging_enabled = forms.BooleanField(label="Enable logging", required=False)
    logging_period = forms.ChoiceField(
        label="New log schedule", choices=LogPeriod.choices, widget=forms.RadioSelect
    )
    logging_fields = forms.MultipleChoiceField(
        label="Extended logging properties",
        choices=[(f, f) for f in _IIS_LOG_ORDER],
        required=False,
        widget=forms.CheckboxSelectMultiple,
    )


class AccessForm(SheetForm):
    tab, title = "access", "Access"
    SIMPLE = (
        "auth_anonymous",
        "auth_basic",
        "auth_basic_requires_tls",
        "auth_basic_default_domain",
        "auth_integrated",
        "auth_cram_md5",
        "auth_brake_enabled",
        "auth_failures_before_delay",
        "auth_block_after_failures",
        "tls_require",
        "connection_mode",
        "relay_mode",
        "relay_allow_authenticated",
    )
    LISTS = ("connection_entries", "relay_entries")
    DURATIONS = ("auth_failure_window_minutes", "auth_block_minutes")

    auth_anonymous = forms.BooleanField(label="Anonymous access", required=False)
    auth_basic = forms.BooleanField(
        label="Basic authentication (AUTH PLAIN, LOGIN)", required=False
    )
    auth_basic_requires_tls = forms.BooleanField(label="Requires TLS encryption", required=False)
    auth_basic_default_domain = forms.CharField(label="Default domain", required=False)
    auth_integrated = forms.BooleanField(
        label="Integrated authentication (SCRAM-SHA-256: no password crosses the wire)",
        required=False,
    )
    auth_cram_md5 = forms.BooleanField(
        label="Also offer CRAM-MD5",
        required=False,
        help_text="Needs a password-equivalent stored per user; only for old clients.",
    )
    auth_brake_enabled = forms.BooleanField(label="Brake password guessing", required=False)
    auth_failures_before_delay = forms.IntegerField(
        label="Failed logons before replies slow down", min_value=0
    )
    auth_block_after_failures = forms.IntegerField(
        label="Failed logons before the client is blocked", min_value=1
    )
    auth_failure_window_minutes, auth_failure_window_minutes_unit = _duration(
        "Counting failed logons over"
    )
    auth_block_minutes, auth_block_minutes_unit = _duration("Block the client's logons for")
    tls_certificate = forms.FileField(label="Certificate (PEM, chain allowed)", required=False)
    tls_private_key = forms.FileField(
        label="Private key (PEM)", required=False, help_text="Stored sealed; never shown back."
    )
    tls_remove = forms.BooleanField(label="Remove the certificate and key", required=False)
    tls_require = forms.BooleanField(label="Require TLS encryption", required=False)
    connection_mode = forms.ChoiceField(
        label="Grant or deny access", choices=ListMode.choices, widget=forms.RadioSelect
    )
    connection_entries = LinesField(
        grammar.parse_access_entry,
        label="Computers (IP address, subnet or domain, one per line)",
    )
    relay_mode = forms.ChoiceField(
        label="Relay", choices=ListMode.choices, widget=forms.RadioSelect
    )
    relay_entries = LinesField(
        grammar.parse_access_entry,
        label="Computers that may relay (IP address, subnet or domain, one per line)",
    )
    relay_allow_authenticated = forms.BooleanField(
        label="Allow all computers which successfully authenticate to relay, "
        "regardless of the list above",
        required=False,
    )

    def service_data(self) -> dict[str, Any]:
        data = super().service_data()
        if self.cleaned_data["tls_remove"]:
            data["tls_certificate"] = data["tls_private_key"] = ""
            data["tls_require"] = data["auth_basic_requires_tls"] = False
            return data
        for name in ("tls_certificate", "tls_private_key"):
            upload = self.cleaned_data.get(name)
            if upload:
                data[name] = upload.read().decode("utf-8", "replace")
        return data


class MessagesForm(SheetForm):
    tab, title = "messages", "Messages"
    SIMPLE = ("ndr_copy_to", "badmail_directory")
    LIMITS = (
        "max_message_size_kb",
        "max_session_size_kb",
        "max_messages_per_connection",
        "max_recipients_per_message",
    )

    max_message_size_kb_on, max_message_size_kb = _limit("Limit message size to (KB)")
    max_session_size_kb_on, max_session_size_kb = _limit("Limit session size to (KB)")
    max_messages_per_connection_on, max_messages_per_connection = _limit(
        "Limit number of messages per connection to"
    )
    max_recipients_per_message_on, max_recipients_per_message = _limit(
        "Limit number of recipients per message to"
    )
    ndr_copy_to = forms.CharField(label="Send copy of Non-Delivery Report to", required=False)
    badmail_directory = forms.CharField(
        label="Badmail directory", required=False, help_text="Empty: <home>/Badmail."
    )


class DeliveryForm(SheetForm):
    tab, title = "delivery", "Delivery"
    SIMPLE = (
        "outbound_tls",
        "outbound_tls_ca",
        "outbound_cleartext_auth",
        "outbound_auth_method",
        "outbound_username",
        "outbound_port",
        "outbound_timeout",
        "max_hop_count",
        "masquerade_domain",
        "fqdn",
        "smart_host",
        "attempt_direct_first",
        "reverse_dns_lookup",
    )
    LIMITS = ("outbound_connection_limit", "outbound_per_domain_limit")
    DURATIONS = (
        "delay_notification_minutes",
        "expiration_minutes",
        "local_delay_notification_minutes",
        "local_expiration_minutes",
    )
    LISTS = ("dns_servers",)
    RETRIES = ("retry_first", "retry_second", "retry_third", "retry_subsequent")

    retry_first = forms.IntegerField(
        label="First retry interval (minutes)", min_value=1, max_value=10080
    )
    retry_second = forms.IntegerField(
        label="Second retry interval (minutes)", min_value=1, max_value=10080
    )
    retry_third = forms.IntegerField(
        label="Third retry interval (minutes)", min_value=1, max_value=10080
    )
    retry_subsequent = forms.IntegerField(
        label="Subsequent retry interval (minutes)", min_value=1, max_value=10080
    )
    delay_notification_minutes, delay_notification_minutes_unit = _duration("Delay notification")
    expiration_minutes, expiration_minutes_unit = _duration("Expiration timeout")
    local_delay_notification_minutes, local_delay_notification_minutes_unit = _duration(
        "Delay notification"
    )
    local_expiration_minutes, local_expiration_minutes_unit = _duration("Expiration timeout")
    outbound_auth_method, outbound_username, outbound_password = outbound_auth_fields()
    outbound_tls, outbound_tls_ca, outbound_cleartext_auth = outbound_tls_fields()
    outbound_connection_limit_on, outbound_connection_limit = _limit(
        "Limit number of connections to"
    )
    outbound_timeout = forms.IntegerField(label="Time-out (seconds)", min_value=1)
    outbound_per_domain_limit_on, outbound_per_domain_limit = _limit(
        "Limit number of connections per domain to"
    )
    outbound_port = forms.IntegerField(label="TCP port", min_value=1, max_value=65535)
    max_hop_count = forms.IntegerField(label="Maximum hop count")
    masquerade_domain = forms.CharField(label="Masquerade domain", required=False)
    fqdn = forms.CharField(label="Fully-qualified domain name", required=False)
    smart_host = forms.CharField(
        label="Smart host", required=False, help_text="[10.0.0.2] for an address, or a host name."
    )
    attempt_direct_first = forms.BooleanField(
        label="Attempt direct delivery before sending to smart host", required=False
    )
    reverse_dns_lookup = forms.BooleanField(
        label="Perform reverse DNS lookup on incoming messages", required=False
    )
    dns_servers = LinesField(
        label="External DNS servers (one per line)", help_text="10.0.0.53 or 127.0.0.1:5353"
    )

    def initial_from(self, server: VirtualServer) -> dict[str, Any]:
        initial = super().initial_from(server)
        initial.update(zip(self.RETRIES, server.retry_minutes, strict=False))
        return initial

    def service_data(self) -> dict[str, Any]:
        data = super().service_data()
        data["retry_minutes"] = [self.cleaned_data[name] for name in self.RETRIES]
        if self.cleaned_data["outbound_password"]:
            data["outbound_password"] = self.cleaned_data["outbound_password"]
        return data


SHEET_TABS: tuple[type[SheetForm], ...] = (GeneralForm, AccessForm, MessagesForm, DeliveryForm)
SHEET_PATH_FIELDS = {
    **SERVER_PATH_FIELDS,
    ("delivery", "retry_minutes"): "retry_first",
    ("state",): "bindings",
}


# --- The wizards' steps (console.create) --------------------------------------------------


class ServerNameForm(forms.Form):
    name = forms.CharField(
        label="Name",
        max_length=64,
        help_text="How the server appears in the tree, e.g. CorpServer.",
    )
    description = forms.CharField(label="Description", required=False)


class ServerBindingForm(forms.Form):
    ip_address = forms.CharField(
        label="IP address",
        required=False,
        help_text="Empty for (All Unassigned): every address of the node.",
        widget=forms.TextInput(attrs={"placeholder": "(All Unassigned)", "list": "ip-choices"}),
    )
    port = forms.IntegerField(label="TCP port", initial=25, min_value=1, max_value=65535)
    start = forms.BooleanField(
        label="Start the server when the wizard finishes",
        required=False,
        help_text="Its address and port must not be used by another running server.",
    )

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        host = (cleaned.get("ip_address") or "").strip() or "*"
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        if cleaned.get("port") is not None:
            try:
                cleaned["binding"] = grammar.parse_binding(f"{host}:{cleaned['port']}")
            except grammar.GrammarError as exc:
                self.add_error("ip_address", str(exc))
        return cleaned


class ServerHomeForm(forms.Form):
    home_directory = forms.CharField(
        label="Home directory",
        required=False,
        help_text="Holds Queue, Pickup, Drop and Badmail. Empty: <mailroot>/<name> on each node.",
    )


class ServerDomainForm(forms.Form):
    default_domain = forms.CharField(
        label="Default domain",
        help_text="Mail for it is delivered to Drop. A relay that owns no mail uses a dummy "
        "name such as bogus1.",
    )


class DomainKindForm(forms.Form):
    kind = forms.ChoiceField(
        label="Domain type",
        choices=[
            (DomainKind.LOCAL, "Alias: another name for the local mailboxes (delivered to Drop)"),
            (DomainKind.REMOTE, "Remote: mail for it is relayed to another server"),
        ],
        widget=forms.RadioSelect,
        initial=DomainKind.REMOTE,
    )


class DomainNameForm(forms.Form):
    name = forms.CharField(
        label="Name", help_text="example.com; a remote domain may be *.example.com."
    )


# --- A domain's properties (console.domains) ----------------------------------------------


class LocalDomainForm(forms.Form):
    name = forms.CharField(label="Name")
    is_default = forms.BooleanField(
        label="Default domain",
        required=False,
        help_text="The default takes postmaster mail; the previous default becomes an "
        "alias. Every local domain is delivered to the server's Drop directory.",
    )
    FIELDS = ("name", "is_default")


class RemoteDomainForm(forms.Form):
    name = forms.CharField(label="Name", help_text="example.com or *.example.com")
    relay_allowed = forms.BooleanField(
        label="Allow incoming mail to be relayed to this domain", required=False
    )
    use_helo = forms.BooleanField(label="Send HELO instead of EHLO", required=False)
    forward_all_to_smart_host = forms.BooleanField(
        label="Forward all mail to smart host", required=False
    )
    smart_host = forms.CharField(
        label="Smart host", required=False, help_text="[10.0.0.2] for an address, or a host name."
    )
    outbound_auth_method, outbound_username, outbound_password = outbound_auth_fields()
    outbound_tls, outbound_tls_ca, outbound_cleartext_auth = outbound_tls_fields()
    FIELDS = (
        "name",
        "relay_allowed",
        "use_helo",
        "forward_all_to_smart_host",
        "smart_host",
        "outbound_auth_method",
        "outbound_username",
        "outbound_tls",
        "outbound_tls_ca",
        "outbound_cleartext_auth",
    )


# --- SMTP users (console.users) -----------------------------------------------------------


class PasswordFields(forms.Form):
    password = forms.CharField(
        label="Password",
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
    )
    confirm = forms.CharField(
        label="Confirm password",
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
    )

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if cleaned.get("password") and cleaned.get("password") != cleaned.get("confirm"):
            self.add_error("confirm", "The two passwords differ.")
        return cleaned


class AccountFields(forms.Form):
    is_active = forms.BooleanField(label="Account enabled", required=False, initial=True)
    allow_cram_md5 = forms.BooleanField(
        label="Allow CRAM-MD5 (stores a password-equivalent; takes effect at the next password)",
        required=False,
    )
    servers = forms.ModelMultipleChoiceField(
        label="May log in to",
        queryset=VirtualServer.objects.order_by("name"),
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="None ticked: every server.",
    )


class NewUserForm(AccountFields, PasswordFields):
    username = forms.CharField(label="User name", max_length=254)
    field_order = ["username", "password", "confirm", "is_active", "allow_cram_md5", "servers"]


# --- The message list's filter bar (console.queues) ---------------------------------------


STATE_CHOICES = [
    ("open", "In the queue"),
    *((str(s.value), str(s.label)) for s in MessageState),
    ("all", "Any state"),
]
OPEN = ",".join(str(s) for s in OPEN_STATES)
AGES: dict[str, tuple[str, dict[str, str]]] = {
    "": ("Any age", {}),
    "lt1h": ("Less than 1 hour", {"newer_than_minutes": "60"}),
    "gt1h": ("Older than 1 hour", {"older_than_minutes": "60"}),
    "gt6h": ("Older than 6 hours", {"older_than_minutes": "360"}),
    "gt1d": ("Older than 1 day", {"older_than_minutes": "1440"}),
}


class MessageFilter(forms.Form):
    """The filter bar: the API's filters, with the age as a few ready-made ranges."""

    server = forms.ChoiceField(required=False, label="Server")
    queue = forms.CharField(required=False, label="Next hop", max_length=300)
    state = forms.ChoiceField(required=False, label="State", choices=STATE_CHOICES)
    sender = forms.CharField(required=False, label="From", max_length=320)
    recipient = forms.CharField(required=False, label="To", max_length=320)
    subject = forms.CharField(required=False, label="Subject", max_length=255)
    age = forms.ChoiceField(
        required=False, label="Age", choices=[(k, v[0]) for k, v in AGES.items()]
    )

    def __init__(self, data: Any) -> None:
        data = data.copy()
        data.setdefault("state", "open")
        super().__init__(data)
        names = list(VirtualServer.objects.order_by("name").values_list("name", flat=True))
        if data.get("server") and data["server"] not in names:
            names.append(data["server"])  # a server deleted since: its mail is still here
        server = self.fields["server"]
        assert isinstance(server, forms.ChoiceField)
        server.choices = [("", "All servers"), *((n, n) for n in names)]

    def params(self) -> dict[str, str]:
        """The selector's parameters (``mailadmin.selectors.queues.messages_filtered``)."""
        if not self.is_valid():
            return {"state": OPEN}
        data = self.cleaned_data
        state = {"open": OPEN, "all": ""}.get(data["state"], data["state"])
        params = {k: data[k] for k in ("server", "queue", "sender", "recipient", "subject")}
        return {**params, "state": state, **AGES[data["age"]][1]}


# --- Message Tracking's search (console.tracking) -----------------------------------------


QUEUE_ID = re.compile(r"[0-9A-Z]+")
TIME_FORMAT = "YYYY-MM-DD or YYYY-MM-DD hh:mm"


def _time_field(label: str, help_text: str) -> forms.CharField:
    return forms.CharField(
        label=label,
        required=False,
        max_length=64,
        help_text=help_text,
        widget=forms.TextInput(attrs={"placeholder": "YYYY-MM-DD hh:mm", "autocomplete": "off"}),
    )


class TrackingSearch(forms.Form):
    """The criteria of ``mailadmin.tracking.tracked_messages``; every one optional, all
    of those given must match. Times are parsed as the API parses ``since``/``until``."""

    queue_id = forms.CharField(
        label="Queue ID",
        required=False,
        max_length=32,
        help_text="Exact, as in “250 2.0.0 queued as …”.",
        widget=forms.TextInput(attrs={"class": "mono", "spellcheck": "false"}),
    )
    sender = forms.CharField(label="Sender", required=False, max_length=320)
    recipient = forms.CharField(label="Recipient", required=False, max_length=320)
    subject = forms.CharField(label="Subject", required=False, max_length=255)
    server = forms.ChoiceField(label="Server", required=False)
    since = _time_field("Received from", "At or after this time.")
    until = _time_field("Received to", "Before this time; a date alone includes that day.")

    def __init__(self, data: Any) -> None:
        super().__init__(data)
        names = list(VirtualServer.objects.order_by("name").values_list("name", flat=True))
        wanted = data.get("server")
        if wanted and wanted not in names:
            names.append(wanted)  # a server deleted since: its messages are still recorded
        server = self.fields["server"]
        assert isinstance(server, forms.ChoiceField)
        server.choices = [("", "All servers"), *((n, n) for n in names)]
        zone = timezone.get_current_timezone_name()
        for name in ("since", "until"):
            self.fields[name].help_text += f" Times are {zone} unless they carry an offset."

    def clean_queue_id(self) -> str:
        value = str(self.cleaned_data["queue_id"]).strip().upper()
        if value and not QUEUE_ID.fullmatch(value):
            raise forms.ValidationError("A queue ID has only letters and digits.")
        return value

    def _moment(self, name: str) -> datetime | None:
        try:
            return parse_moment(self.cleaned_data[name], end_of_day=name == "until")
        except ValueError as exc:
            hint = f" Write it as {TIME_FORMAT}." if "ISO 8601" in str(exc) else ""
            raise forms.ValidationError(f"{exc}{hint}") from exc

    def clean_since(self) -> datetime | None:
        return self._moment("since")

    def clean_until(self) -> datetime | None:
        return self._moment("until")

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        since, until = data.get("since"), data.get("until")
        if since is not None and until is not None and until <= since:
            self.add_error("until", "This must be later than “Received from”.")
        return data

    def criteria(self) -> dict[str, Any]:
        """The keyword arguments of ``tracked_messages`` (call only once valid)."""
        return dict(self.cleaned_data)


# --- Test relay and the document import (console.tools) -----------------------------------


class RelayTestForm(forms.Form):
    client_ip = forms.CharField(label="Client IP address", initial="192.0.2.10")
    authenticated = forms.BooleanField(label="The client has authenticated", required=False)
    username = forms.CharField(label="as user", required=False)
    tls = forms.BooleanField(label="The session uses TLS", required=False)
    sender = forms.CharField(label="Sender (MAIL FROM)", initial="someone@example.org")
    recipient = forms.CharField(label="Recipient (RCPT TO)")


class ImportForm(forms.Form):
    file = forms.FileField(label="Document file (JSON or YAML)", required=False)
    text = forms.CharField(
        label="or paste the document",
        required=False,
        strip=False,
        widget=forms.Textarea(attrs={"rows": 8, "class": "mono", "spellcheck": "false"}),
    )

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        upload = cleaned.get("file")
        if upload:
            cleaned["text"] = upload.read().decode("utf-8", "replace")
        if not (cleaned.get("text") or "").strip():
            raise forms.ValidationError("Choose a file or paste a document.")
        return cleaned
