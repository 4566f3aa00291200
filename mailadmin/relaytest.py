""" "Test relay": would this server take this mail from this client, and which rule decides?

The answer comes from ``smtpworker.inbound.policy.explain_relay`` run on the server's configuration
as ``mailadmin.snapshot`` builds it for the workers, so the console (and the API, which may
call :func:`relay_test` too) explain exactly what a worker would enforce.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from mailadmin.models import SmtpUser, VirtualServer
from mailadmin.snapshot import server_config
from smtpworker.core.grammar import GrammarError
from smtpworker.inbound.policy import Client, Decision, RecipientDecision, explain_relay


@dataclass(frozen=True, slots=True)
class RelayTestResult:
    """``steps`` are the session's decisions in order; the last one decided."""

    accepted: bool
    steps: list[Decision]
    notes: list[str]

    @property
    def deciding(self) -> Decision:
        return self.steps[-1]


def relay_test(
    server: VirtualServer,
    *,
    client_ip: str,
    authenticated_user: str | None,
    tls: bool,
    sender: str,
    recipient: str,
) -> RelayTestResult:
    """Run the worker's policy for these facts on ``server`` as stored now.

    A server that is not started is judged as if it were, so its rules can be checked
    before it goes live (a note says so). The client's reverse DNS is not looked up, so
    connection and relay entries that are domain names match no one here. Raises
    GrammarError when ``client_ip`` is not an IP address.
    """
    server = VirtualServer.objects.prefetch_related("bindings", "access_entries", "domains").get(
        pk=server.pk
    )
    cfg = server_config(server)
    notes: list[str] = []
    if cfg.state != "started":
        notes.append(f"{cfg.name} is {cfg.state}: answered as if it were started.")
        cfg = dataclasses.replace(cfg, state="started")
    user = (authenticated_user or "").strip() or None
    if user is not None:
        notes.extend(_user_notes(server, user))
    client = Client(ip=client_ip.strip(), authenticated_user=user, tls=tls)
    steps = explain_relay(cfg, client, sender=sender.strip(), recipient=recipient.strip())
    if any(e.kind == "domain" for e in (*cfg.relay.entries, *cfg.connection.entries)):
        notes.append("Reverse DNS is not looked up here: domain-name entries matched no one.")
    accepted = isinstance(steps[-1], RecipientDecision) and steps[-1].ok
    return RelayTestResult(accepted=accepted, steps=steps, notes=notes)


def _user_notes(server: VirtualServer, username: str) -> list[str]:
    account = SmtpUser.objects.filter(username=username).prefetch_related("servers").first()
    if account is None:
        return [f"There is no SMTP user {username}; the test takes the login as good."]
    if not account.is_active:
        return [f"The SMTP user {username} is disabled; a real login would fail."]
    allowed = list(account.servers.all())
    if allowed and server not in allowed:
        return [f"{username} may not log in to {server.name}; a real login would fail."]
    return []


__all__ = ["GrammarError", "RelayTestResult", "relay_test"]
