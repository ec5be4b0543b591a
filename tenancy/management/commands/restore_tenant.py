"""manage.py restore_tenant: a tenant's backup into a new database, checked, then in use."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from tenancy.backups import RestoreReport, abort_restore, read_manifest, restore_tenant
from tenancy.exceptions import TenancyError

_STEPS = {
    "restored": "restored the dump into a new database (digest checked)",
    "verified": "checked its rows against the manifest",
    "migrated": "migrated it forward",
    "switched": "switched the tenant to it",
    "source dropped": "dropped the replaced database",
    "source kept": "kept the replaced database, read-only",
}


class Command(BaseCommand):
    help = (
        "Restore a tenant from a file of backup_tenant into a new database: a deleted "
        "tenant comes back, --as SLUG makes a copy beside it, --replace puts the backup in "
        "place of a live tenant's data. The restored rows are checked against the backup's "
        "manifest and migrated forward before the tenant uses them."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        which = parser.add_mutually_exclusive_group(required=True)
        which.add_argument("path", nargs="?", help="The backup file.")
        which.add_argument(
            "--abort",
            metavar="SLUG",
            help="Undo an interrupted --replace that has not switched: drop the restored "
            "database; the tenant keeps its own.",
        )
        parser.add_argument(
            "--as", dest="as_slug", metavar="SLUG", help="Restore as a new tenant."
        )
        parser.add_argument(
            "--server", help="The server to restore to (a key of TENANCY['SERVERS'])."
        )
        parser.add_argument(
            "--replace",
            action="store_true",
            help="Replace the data of the live tenant of that slug (asks to confirm).",
        )
        parser.add_argument(
            "--keep-replaced",
            action="store_true",
            help="Keep the replaced database (read-only) instead of dropping it.",
        )
        parser.add_argument(
            "--noinput",
            "--no-input",
            action="store_false",
            dest="interactive",
            help="Do not ask to type the slug to confirm --replace.",
        )
        parser.add_argument(
            "--trust",
            action="store_true",
            help="Restore a file this project did not sign (made under another SECRET_KEY): "
            "what it holds is run as SQL, so only a file you trust.",
        )
        parser.add_argument("--json", action="store_true", help="Print the report as JSON.")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            if options["abort"]:
                abort_restore(options["abort"])
                self.stdout.write(
                    self.style.SUCCESS(f"Tenant {options['abort']}: the restore was undone.")
                )
                return
            if options["replace"] and options["interactive"]:
                self._confirm(options)
            report = restore_tenant(
                options["path"],
                as_slug=options["as_slug"],
                server=options["server"],
                replace=options["replace"],
                keep_replaced=options["keep_replaced"],
                trust=options["trust"],
            )
        except TenancyError as exc:
            raise CommandError(str(exc)) from exc
        if options["json"]:
            self.stdout.write(json.dumps(report.as_dict()))
            return
        self._print(report)

    def _confirm(self, options: dict[str, Any]) -> None:
        manifest = read_manifest(options["path"])
        slug = options["as_slug"] or manifest.slug
        what = "DROPPING" if not options["keep_replaced"] else "keeping (read-only)"
        answer = input(
            f"Replace the data of tenant {slug} with the backup of tenant {manifest.slug} "
            f"made {manifest.created_at}, {what} its current database? Type the slug to "
            "confirm: "
        )
        if answer.strip() != slug:
            raise CommandError("Cancelled: the slug typed did not match; nothing was changed.")

    def _print(self, report: RestoreReport) -> None:
        if report.resumed:
            self.stdout.write(f"Tenant {report.slug}: continuing the restore recorded before.")
        for step, took in report.steps.items():
            detail = _STEPS.get(step, step)
            if step == "verified":
                detail += f": {report.tables} tables, {report.rows} rows"
            elif step == "migrated":
                detail += f": {report.migrations_applied} migration(s)"
            elif step.startswith("source"):
                detail += f" {report.replaced}"
            self.stdout.write(f"  {detail} in {took:.2f}s")
        for domain in report.domains_skipped:
            self.stdout.write(
                self.style.WARNING(
                    f"  domain {domain} not restored: another tenant has it now, or it is "
                    "not a valid tenant hostname here"
                )
            )
        self.stdout.write(
            self.style.SUCCESS(
                f"Tenant {report.slug} is restored from the backup of {report.backup_of}: "
                f"database {report.database_name} on server {report.server}."
            )
        )
