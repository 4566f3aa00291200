"""SMTP AUTH against the snapshot's verifiers.

:class:`Accounts` answers "is this the password of that user, on this server?" from the
verifiers in a :class:`~smtpworker.core.config.SiteConfig`; it never sees a stored password.
The brake on password guessing is ``smtpworker.inbound.authbrake``.
"""

from __future__ import annotations

from smtpworker.core import credentials
from smtpworker.core.config import ServerConfig, SiteConfig, UserConfig
from smtpworker.core.secretbox import SecretBox, SecretBoxError


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
    return credentials.hmac_sha256(encryption_key.encode(), b"mailadmin scram mock salt")
