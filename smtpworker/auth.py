"""SMTP AUTH against the snapshot's verifiers, and the brake on password guessing.

:class:`Accounts` answers "is this the password of that user, on this server?" from the
verifiers in a :class:`~smtpworker.config.SiteConfig`; it never sees a stored password.
:class:`AuthThrottle` slows a client down after failed attempts and then cuts it off.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections import OrderedDict
from dataclasses import dataclass

from smtpworker import credentials
from smtpworker.config import ServerConfig, SiteConfig, UserConfig
from smtpworker.secretbox import SecretBox, SecretBoxError


class Accounts:
    """The users of one server, with lookups that honour the basic default domain."""

    def __init__(
        self, site: SiteConfig, server: ServerConfig, box: SecretBox, mock_key: bytes
    ) -> None:
        self._users = {u.username: u for u in site.users if u.may_use(server.name)}
        # Unknown names are checked against a real hash (the result is discarded) so they
        # cost the same time as known ones and timing does not reveal which names exist.
        self._decoy = next((u.password_hash for u in site.users if u.password_hash), "")
        self._default_domain = server.auth.basic_default_domain
        self._box = box
        self.mock_key = mock_key

    def find(self, username: str) -> UserConfig | None:
        """The account for a name as the client typed it.

        Like IIS's basic authentication default domain: a name without a domain is also
        tried as ``name@<default domain>``.
        """
        user = self._users.get(username)
        if user is None and self._default_domain and "@" not in username and "\\" not in username:
            user = self._users.get(f"{username}@{self._default_domain}")
        return user

    def check_password(self, username: str, password: str) -> str | None:
        """The account name if the password is right (slow: PBKDF2, run it off the loop)."""
        user = self.find(username)
        if user is None or not user.password_hash:
            if self._decoy:
                credentials.verify_password(password, self._decoy)
            return None
        return user.username if credentials.verify_password(password, user.password_hash) else None

    def scram_verifier(self, username: str) -> credentials.ScramVerifier | None:
        user = self.find(username)
        if user is None or not user.scram_sha256:
            return None
        try:
            return credentials.ScramVerifier.from_text(user.scram_sha256)
        except ValueError:
            return None

    def check_cram_md5(self, username: str, challenge: bytes, digest_hex: str) -> str | None:
        user = self.find(username)
        if user is None or not user.cram_md5_context:
            return None
        try:
            context = self._box.open(user.cram_md5_context)
        except SecretBoxError:
            return None
        ok = credentials.verify_cram_md5(context, challenge, digest_hex)
        return user.username if ok else None


def mock_key_for(encryption_key: str) -> bytes:
    """The SCRAM mock-salt key: a server secret, the same on every node."""
    return hmac.new(encryption_key.encode(), b"mailadmin scram mock salt", hashlib.sha256).digest()


@dataclass(slots=True)
class _Record:
    failures: int
    first: float
    blocked_until: float


class AuthThrottle:
    """Per client address: delay each failed AUTH reply, then refuse the address for a while.

    After ``free`` failures each further failure waits ``delay * 2**n`` seconds (capped at
    ``max_delay``) before its 535 is sent; ``limit`` failures within ``window`` seconds
    block the address for ``block`` seconds (the session is cut off with 421 and new
    connections are refused). Memory is bounded to ``capacity`` addresses.
    """

    def __init__(
        self,
        *,
        free: int = 2,
        delay: float = 1.0,
        max_delay: float = 8.0,
        limit: int = 10,
        window: float = 600.0,
        block: float = 600.0,
        capacity: int = 10_000,
    ) -> None:
        self.free, self.delay, self.max_delay = free, delay, max_delay
        self.limit, self.window, self.block = limit, window, block
        self.capacity = capacity
        self._records: OrderedDict[str, _Record] = OrderedDict()

    def blocked(self, ip: str, now: float | None = None) -> bool:
        record = self._records.get(ip)
        return record is not None and record.blocked_until > (
            time.monotonic() if now is None else now
        )

    def failure(self, ip: str, now: float | None = None) -> tuple[float, bool]:
        """Record a failure; return (seconds to wait before replying, cut off now?)."""
        now = time.monotonic() if now is None else now
        record = self._records.pop(ip, None)
        if record is None or now - record.first > self.window:
            record = _Record(0, now, 0.0)
        record.failures += 1
        self._records[ip] = record
        while len(self._records) > self.capacity:
            self._records.popitem(last=False)
        if record.failures >= self.limit:
            record.blocked_until = now + self.block
            return 0.0, True
        excess = record.failures - self.free
        wait = 0.0 if excess <= 0 else min(self.max_delay, self.delay * 2 ** (excess - 1))
        return wait, False

    def success(self, ip: str) -> None:
        record = self._records.get(ip)
        if record is not None and record.blocked_until == 0.0:
            del self._records[ip]
