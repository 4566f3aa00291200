"""Writes to a server's local and remote domains."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError

from mailadmin.exceptions import ConfigError, FieldError, from_django_validation_error
from mailadmin.layout import DOMAIN_FIELD_PATHS, SECRET_FIELDS
from mailadmin.models import Domain, DomainKind, OutboundTls, VirtualServer
from mailadmin.services.config.secrets import secret_replace
from mailadmin.services.config.versions import config_transaction
from mailadmin.validators import canonical_domain, canonical_smart_host
from smtpworker.core import grammar


def domain_create(*, server: VirtualServer, data: dict[str, Any], author: str) -> Domain:
    with config_transaction(author=author, reason=f"add domain {data.get('name')} to {server}"):
        domain = Domain(server=server)
        domain_apply(domain, data)
    return domain


def domain_update(*, domain: Domain, data: dict[str, Any], author: str) -> Domain:
    with config_transaction(author=author, reason=f"update domain {domain.name}"):
        domain = Domain.objects.select_for_update().get(pk=domain.pk)
        domain_apply(domain, data)
    return domain


def domain_delete(*, domain: Domain, author: str) -> None:
    if domain.is_default:
        raise ConfigError.at(
            ("name",),
            "The default domain cannot be deleted: rename it, or make another local domain "
            "the default first.",
        )
    with config_transaction(author=author, reason=f"delete domain {domain.name}"):
        domain.delete()


def domain_apply(domain: Domain, data: dict[str, Any]) -> None:
    """Validate and save (no lock, no publish). Making a local domain the default turns
    the previous default into an alias, as IIS's "Set as Default" does."""
    was_default = domain.is_default and domain.pk is not None
    for field, value in data.items():
        if field in SECRET_FIELDS:
            value = secret_replace(getattr(domain, field), value or "")
        setattr(domain, field, value)
    try:
        wildcard = domain.kind == DomainKind.REMOTE
        domain.name = canonical_domain(domain.name, allow_wildcard=wildcard)
        domain.smart_host = canonical_smart_host(domain.smart_host)
    except grammar.GrammarError:
        pass  # reported by full_clean below
    errors = _domain_errors(domain, was_default=was_default)
    try:
        _full_clean(domain)
    except ConfigError as exc:
        errors += exc.errors
    if errors:
        raise ConfigError(errors)
    if domain.is_default:
        Domain.objects.filter(server=domain.server, is_default=True).exclude(pk=domain.pk).update(
            is_default=False
        )
    domain.save()


def _domain_errors(domain: Domain, *, was_default: bool) -> list[FieldError]:
    """The rules across a domain's fields, every one that is broken (not the first only)."""
    errors = []
    if was_default and not domain.is_default:
        message = "Make another local domain the default instead; one must stay default."
        errors.append(FieldError(("default",), message))
    if domain.kind == DomainKind.LOCAL and domain.name.startswith("*."):
        errors.append(FieldError(("name",), "A local domain cannot be a wildcard."))
    if domain.is_default and domain.kind != DomainKind.LOCAL:
        errors.append(FieldError(("default",), "Only a local domain can be the default domain."))
    if domain.forward_all_to_smart_host and not domain.smart_host:
        message = "Give the smart host that all mail for this domain is forwarded to."
        errors.append(FieldError(("smart_host",), message))
    if domain.use_helo and domain.outbound_tls != OutboundTls.OPPORTUNISTIC:
        # STARTTLS is an ESMTP extension: after HELO there is none, so no mail would leave.
        message = (
            "A required TLS level needs EHLO: clear 'Send HELO instead of EHLO' or make "
            "TLS opportunistic."
        )
        errors.append(FieldError(("outbound", "tls"), message))
    return errors


def _full_clean(domain: Domain) -> None:
    try:
        domain.full_clean(validate_constraints=False)
        domain.validate_constraints(exclude={"is_default"})
    except DjangoValidationError as exc:
        paths = dict(DOMAIN_FIELD_PATHS)
        paths["__all__"] = ("name",)
        raise from_django_validation_error(exc, paths) from exc
