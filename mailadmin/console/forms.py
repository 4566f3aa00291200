"""Console forms: parse what a page posted into the data the services take.

Forms only turn text into values (numbers, lists, grammar objects). Every rule about
what is allowed is the services' (and the model validators'): their ``ConfigError`` paths
come back onto these forms' fields through :func:`attach_errors`, so a page shows the
same message beside the field as the API gives at that path.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from django import forms

from mailadmin.exceptions import ConfigError, FieldError
from mailadmin.layout import DOMAIN_FIELD_PATHS, SERVER_FIELD_PATHS
from mailadmin.models import ListMode, LogPeriod, OutboundAuth, OutboundTls, VirtualServer
from mailadmin.models.servers import default_log_fields
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
    outbound_auth_method = forms.ChoiceField(
        label="Authentication", choices=OutboundAuth.choices, widget=forms.RadioSelect
    )
    outbound_username = forms.CharField(label="User name", required=False)
    outbound_password = forms.CharField(
        label="Password",
        required=False,
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        help_text="Leave empty to keep the stored password.",
    )
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
