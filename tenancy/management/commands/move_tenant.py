"""manage.py move_tenant: move a tenant's database to another server, verified."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from tenancy.exceptions import TenancyError
from tenancy.moving import MoveReport, abort_move, move_tenant

_STEPS = {
    "prepared": "marked moving (reads served from the source, the rest 503)",
    "waited": "waited for every process to see it",
    "copied": "copied",
    "verified": "verified the copy",
    "switched": "switched the registry",
    "source dropped": "dropped the source",
    "source kept": "kept the source, read-only",
}


class Command(BaseCommand):
    help = (
        "Move a tenant's database to another server: while its data is copied and verified "
        "the tenant serves reads from the old server (PostgreSQL) and answers 503 to the "
        "rest, then it serves from the new server. Run it again after an interruption to "
        "finish the move, or with --abort to undo it."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug")
        target = parser.add_mutually_exclusive_group(required=True)
        target.add_argument("--server", help="The server (a key of TENANCY['SERVERS']).")
        target.add_argument(
            "--abort",
            action="store_true",
            help="Undo an interrupted move that has not switched: drop the copy, serve "
            "from the source again.",
        )
        parser.add_argument(
            "--keep-source",
            action="store_true",
            help="Keep the source database (read-only) instead of dropping it.",
        )
        parser.add_argument(
            "--json", action="store_true", help="Print the steps as one JSON object."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        slug = options["slug"]
        started = time.monotonic()
        try:
            if options["abort"]:
                abort_move(slug)
                self.stdout.write(self.style.SUCCESS(f"Tenant {slug}: the move was undone."))
                return
            progress = self._progress if sys.stderr.isatty() and not options["json"] else None
            report = move_tenant(
                slug, options["server"], keep_source=options["keep_source"], progress=progress
            )
        except TenancyError as exc:
            raise CommandError(str(exc)) from exc
        if progress is not None:
            sys.stderr.write("\n")
        if options["json"]:
            self.stdout.write(json.dumps(report.as_dict()))
            return
        self._print(report, time.monotonic() - started)

    def _progress(self, step: str, done: int, total: int) -> None:
        sys.stderr.write(f"\r  copying: {done / 1e6:.1f} MB of about {total / 1e6:.1f} MB ")
        sys.stderr.flush()

    def _print(self, report: MoveReport, seconds: float) -> None:
        if report.resumed:
            self.stdout.write(f"Tenant {report.slug}: continuing the move recorded before.")
        for step, took in report.steps.items():
            detail = _STEPS.get(step, step)
            if step == "copied":
                detail += f" {report.bytes_copied / 1e6:.1f} MB"
            elif step == "verified":
                detail += (
                    f": {report.tables} tables, {report.rows} rows, {report.sequences} sequences"
                )
            elif step.startswith("source"):
                detail += f" {report.database_name} on server {report.source_server}"
            self.stdout.write(f"  {detail} in {took:.2f}s")
        self.stdout.write(
            self.style.SUCCESS(
                f"Tenant {report.slug} is on server {report.target_server} "
                f"(database {report.database_name}), moved in {seconds:.2f}s."
            )
        )
