"""ORM rows -> ``smtpworker.core.config`` objects: the only bridge from the database to policy.

The worker, the console's relay tester and the tests all run on what this module builds,
so what the console previews cannot drift from what the worker enforces.
"""

from __future__ import annotations

from collections.abc import Iterable

from mailadmin.models import AccessList, Domain, SmtpUser, VirtualServer
from smtpworker.core import config as wc
from smtpworker.core.grammar import AccessEntry, parse_access_entry


def _kb(value: int | None) -> int | None:
    return None if value is None else value * 1024


def _security(obj: VirtualServer | Domain) -> wc.OutboundSecurity:
    return wc.OutboundSecurity(
        tls=obj.outbound_tls,
        auth_method=obj.outbound_auth_method,
        username=obj.outbound_username,
        password=obj.outbound_password,
        tls_ca=obj.outbound_tls_ca,
        cleartext_auth=obj.outbound_cleartext_auth,
    )


def domain_config(domain: Domain) -> wc.DomainConfig:
    return wc.DomainConfig(
        name=domain.name,
        kind=domain.kind,
        default=domain.is_default,
        relay_allowed=domain.relay_allowed,
        smart_host=domain.smart_host,
        forward_all_to_smart_host=domain.forward_all_to_smart_host,
        use_helo=domain.use_helo,
        security=_security(domain),
    )


def server_config(server: VirtualServer) -> wc.ServerConfig:
    """Build one server's frozen config; expects bindings, entries and domains prefetched."""
    entries = list(server.access_entries.all())

    def listed(kind: str) -> tuple[AccessEntry, ...]:
        return tuple(parse_access_entry(e.value) for e in entries if e.list == kind)

    return wc.ServerConfig(
        id=server.pk,
        name=server.name,
        state=server.state,
        node=server.node,
        bindings=tuple(b.as_grammar() for b in server.bindings.all()),
        fqdn=server.fqdn,
        home_directory=server.home_directory,
        connection_limit=server.connection_limit,
        connection_timeout=server.connection_timeout,
        client_connection_limit=server.client_connection_limit,
        logging=wc.LoggingConfig(
            enabled=server.logging_enabled,
            period=server.logging_period,
            fields=tuple(server.logging_fields),
        ),
        auth=wc.AuthConfig(
            anonymous=server.auth_anonymous,
            basic=server.auth_basic,
            basic_requires_tls=server.auth_basic_requires_tls,
            basic_default_domain=server.auth_basic_default_domain,
            integrated=server.auth_integrated,
            cram_md5=server.auth_cram_md5,
        ),
        tls=wc.TlsConfig(
            certificate=server.tls_certificate,
            private_key=server.tls_private_key,
            require=server.tls_require,
        ),
        connection=wc.AccessPolicy(
            mode=server.connection_mode, entries=listed(AccessList.CONNECTION)
        ),
        relay=wc.RelayPolicy(
            mode=server.relay_mode,
            entries=listed(AccessList.RELAY),
            allow_authenticated=server.relay_allow_authenticated,
        ),
        messages=wc.MessageLimits(
            max_message_size=_kb(server.max_message_size_kb),
            max_session_size=_kb(server.max_session_size_kb),
            max_messages_per_connection=server.max_messages_per_connection,
            max_recipients_per_message=server.max_recipients_per_message,
            ndr_copy_to=server.ndr_copy_to,
            badmail_directory=server.badmail_directory,
        ),
        delivery=wc.DeliveryConfig(
            retry_minutes=tuple(server.retry_minutes),
            delay_notification_minutes=server.delay_notification_minutes,
            expiration_minutes=server.expiration_minutes,
            local_delay_notification_minutes=server.local_delay_notification_minutes,
            local_expiration_minutes=server.local_expiration_minutes,
            max_hop_count=server.max_hop_count,
            masquerade_domain=server.masquerade_domain,
            smart_host=server.smart_host,
            attempt_direct_first=server.attempt_direct_first,
            reverse_dns_lookup=server.reverse_dns_lookup,
            dns_servers=tuple(server.dns_servers),
            outbound=wc.OutboundConfig(
                port=server.outbound_port,
                connection_limit=server.outbound_connection_limit,
                per_domain_limit=server.outbound_per_domain_limit,
                timeout=server.outbound_timeout,
                security=_security(server),
            ),
        ),
        domains=tuple(domain_config(d) for d in server.domains.all()),
        trusted_proxies=listed(AccessList.PROXY),
        auth_brake=wc.AuthBrakeConfig(
            enabled=server.auth_brake_enabled,
            failures_before_delay=server.auth_failures_before_delay,
            block_after_failures=server.auth_block_after_failures,
            window_seconds=server.auth_failure_window_minutes * 60,
            block_seconds=server.auth_block_minutes * 60,
        ),
    )


def user_config(user: SmtpUser) -> wc.UserConfig:
    return wc.UserConfig(
        username=user.username,
        active=user.is_active,
        password_hash=user.password_hash,
        scram_sha256=user.scram_sha256,
        cram_md5_context=user.cram_md5_context if user.allow_cram_md5 else "",
        servers=tuple(sorted(s.name for s in user.servers.all())),
    )


def servers_queryset() -> Iterable[VirtualServer]:
    return VirtualServer.objects.order_by("name").prefetch_related(
        "bindings", "access_entries", "domains"
    )


def site_config(version: int = 0) -> wc.SiteConfig:
    """The whole configuration as it stands in the database now."""
    users = SmtpUser.objects.order_by("username").prefetch_related("servers")
    return wc.SiteConfig(
        schema=wc.SCHEMA,
        version=version,
        servers=tuple(server_config(s) for s in servers_queryset()),
        users=tuple(user_config(u) for u in users),
    )
