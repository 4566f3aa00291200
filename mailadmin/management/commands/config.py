"""``manage.py config export [FILE]`` / ``manage.py config import FILE``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml
from django.core.management.base import BaseCommand, CommandError, CommandParser

from mailadmin import configdoc
from mailadmin.exceptions import ConfigError


class Command(BaseCommand):
    help = "Export or import the whole configuration as one JSON or YAML document."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        export = sub.add_parser("export", help="Write the configuration (secrets left out).")
        export.add_argument("file", nargs="?", help="Output file; standard output if omitted.")
        export.add_argument("--format", choices=["json", "yaml"], default="json")
        imp = sub.add_parser("import", help="Replace the configuration with a document.")
        imp.add_argument("file", help="A JSON or YAML document; - for standard input.")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["action"] == "export":
            self._export(options["file"], options["format"])
        else:
            self._import(options["file"])

    def _export(self, file: str | None, fmt: str) -> None:
        doc = configdoc.document_export()
        if fmt == "yaml":
            text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
        else:
            text = json.dumps(doc, indent=2) + "\n"
        if file:
            Path(file).write_text(text)
        else:
            self.stdout.write(text, ending="")

    def _import(self, file: str) -> None:
        try:
            text = sys.stdin.read() if file == "-" else Path(file).read_text()
        except OSError as exc:
            raise CommandError(f"cannot read {file}: {exc}") from exc
        try:
            result = configdoc.document_import(
                configdoc.parse_text(text), author="cli:config import"
            )
        except ConfigError as exc:
            for error in exc.errors:
                self.stderr.write(f"{error.dotted or '(document)'}: {error.message}")
            raise CommandError(f"{len(exc.errors)} error(s); nothing was changed.") from exc
        state = "changed" if result.changed else "unchanged"
        self.stdout.write(f"Configuration {state}; version {result.version}.")
