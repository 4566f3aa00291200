"""Where a virtual server's mail files live: the one statement of the mail-root layout.

IIS 6 gives every SMTP virtual server a home directory holding ``Queue/``, ``Pickup/``,
``Drop/`` and ``Badmail/``; so does this product. Both halves need the layout, with their
own mail root (the SMTP worker's ``--mailroot``, Django's ``MAILADMIN_MAILROOT``, the same
path on one node): the SMTP worker makes the directories, spools into ``Queue/``, scans
``Pickup/`` and moves what it refuses to Badmail; the delivery side reads ``Queue/``,
writes local mail to ``Drop/``, spools its reports and gives up messages to Badmail. Each
asks :func:`server_layout` and none joins a directory name itself, so a setting (a home
directory, a Badmail directory) is honoured by every writer or by none.

====================  ===============================================================
``home``              ``home_directory``, or ``<mailroot>/<server name>`` when empty
``queue``             ``<home>/Queue`` (the spool, :mod:`smtpworker.core.spool`)
``pickup``            ``<home>/Pickup``
``drop``              ``<home>/Drop``: every local domain of the server (the default
                      and its aliases) is delivered there; IIS's per-domain drop
                      directory is not modelled
``badmail``           ``badmail_directory``, or ``<home>/Badmail`` when empty
``logs``              ``<home>/LogFiles`` (W3C extended logs, one file per period)
====================  ===============================================================

Pickup/ moves a refused file to Badmail by hard link, so a ``badmail_directory`` must be on
the same filesystem as the home directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from smtpworker.core.config import ServerConfig

__all__ = ["ServerLayout", "server_layout"]


@dataclass(frozen=True, slots=True)
class ServerLayout:
    """The directories of one virtual server (absolute when the mail root is)."""

    home: Path
    queue: Path
    pickup: Path
    drop: Path
    badmail: Path
    logs: Path

    @property
    def mail_directories(self) -> tuple[Path, ...]:
        """What a worker makes (0700) when it starts serving the server: Queue, Pickup,
        Drop and the Badmail in force. ``LogFiles/`` is made when logging writes."""
        return (self.queue, self.pickup, self.drop, self.badmail)


def server_layout(
    mailroot: str | Path, name: str, server: ServerConfig | None = None
) -> ServerLayout:
    """The layout of the virtual server ``name`` under ``mailroot``.

    ``server`` is its configuration; None (a server deleted since its mail was queued, or
    not known here) gives the defaults: ``<mailroot>/<name>`` with ``Badmail/`` inside.
    Raises ValueError if ``server`` is another server's configuration.
    """
    if server is not None and server.name != name:
        raise ValueError(f"the configuration of {server.name!r} is not that of {name!r}")
    home_directory = server.home_directory if server is not None else ""
    badmail_directory = server.messages.badmail_directory if server is not None else ""
    home = Path(home_directory) if home_directory else Path(mailroot) / name
    return ServerLayout(
        home=home,
        queue=home / "Queue",
        pickup=home / "Pickup",
        drop=home / "Drop",
        badmail=Path(badmail_directory) if badmail_directory else home / "Badmail",
        logs=home / "LogFiles",
    )
