"""The configuration as the SMTP workers run it now, for the delivery side.

The delivery services route, name themselves and find a server's directories with the
same :class:`~smtpworker.core.config.ServerConfig` the workers run, built from the rows
by :mod:`mailadmin.snapshot` (the only ORM-to-runtime bridge).
"""

from __future__ import annotations

from mailadmin.models import ConfigSnapshot, VirtualServer
from mailadmin.snapshot import server_config
from smtpworker.core.config import ServerConfig

# Built configs and server ids by (server, version, digest): a delivery run needs its
# server's config several times (routing, home directory, reports) and the version changes
# on every configuration commit; the digest guards against a version number reused by a
# reset database (tests).
_CONFIGS: dict[tuple[str, int, str], tuple[ServerConfig | None, int | None]] = {}


def current_server(server_name: str) -> tuple[ServerConfig | None, int | None]:
    """The server's configuration as the workers run it now, and its row's id (None,
    None: no such server). One small query while the configuration is unchanged."""
    latest = ConfigSnapshot.objects.order_by("-id").values_list("id", "digest")[:1]
    key = (server_name, *(latest[0] if latest else (0, "")))
    if key not in _CONFIGS:
        if len(_CONFIGS) > 1000:
            _CONFIGS.clear()
        server = (
            VirtualServer.objects.filter(name=server_name)
            .prefetch_related("bindings", "access_entries", "domains")
            .order_by()[:1]
        )
        _CONFIGS[key] = (server_config(server[0]), server[0].pk) if server else (None, None)
    return _CONFIGS[key]


def current_config(server_name: str) -> ServerConfig | None:
    """The server's configuration as the workers run it now (None: no such server)."""
    return current_server(server_name)[0]
