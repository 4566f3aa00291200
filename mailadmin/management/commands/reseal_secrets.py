"""``manage.py reseal_secrets``: re-seal stored secrets under the configured key.

For a changed ``MAILADMIN_ENCRYPTION_KEY``: every stored secret (TLS private keys,
smart-host passwords, CRAM-MD5 contexts) that does not open with the configured key but
opens with an old one is sealed again with the configured key, as one configuration
change. ``--old-key-file FILE`` names a file holding an old key (repeatable);
``--public-development-key`` tries the public key older versions fell back to, which
`make run` passes on every start so an install from before generated keys keeps its
secrets. Secrets that open with no key given are listed (exit status 1): restore the key
they were stored with, or enter them again in the console.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from mailadmin.services.config.secrets import reseal_secrets
from smtpworker.core.contract import PUBLIC_DEVELOPMENT_KEY
from smtpworker.core.secretbox import key_problem


class Command(BaseCommand):
    help = "Re-seal stored secrets that were sealed under an old key with the configured key."
    # Its job is to repair what the database check (mailadmin.W003) reports.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--old-key-file", action="append", default=[], type=Path, metavar="FILE"
        )
        parser.add_argument("--public-development-key", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        problem = key_problem("MAILADMIN_ENCRYPTION_KEY", settings.MAILADMIN_ENCRYPTION_KEY)
        if problem:
            raise CommandError(problem)
        old_keys = []
        for path in options["old_key_file"]:
            try:
                old_keys.append(path.read_text().strip())
            except OSError as exc:
                raise CommandError(f"--old-key-file {path}: {exc}") from exc
        if options["public_development_key"]:
            old_keys.append(PUBLIC_DEVELOPMENT_KEY)
        count, unreadable = reseal_secrets(old_keys)
        if count:
            self.stdout.write(f"Re-sealed {count} stored secret(s) under the configured key.")
        if unreadable:
            raise CommandError(
                f"{len(unreadable)} stored secret(s) open with none of the keys: "
                f"{', '.join(unreadable)}. Start with the key they were stored with, or enter "
                "them again in the console."
            )
