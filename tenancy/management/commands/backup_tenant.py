"""manage.py backup_tenant: one file per tenant, its dump and a manifest."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from tenancy.backups import BACKED_UP_STATUSES, BackupReport, backup_tenant
from tenancy.exceptions import TenancyError
from tenancy.models import get_tenant_model


class Command(BaseCommand):
    help = (
        "Back a tenant up to one file (a tar of the database's dump and a manifest of what "
        "it holds) while it goes on serving; --all-tenants backs up every tenant."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        which = parser.add_mutually_exclusive_group(required=True)
        which.add_argument("slug", nargs="?")
        which.add_argument(
            "--all-tenants",
            action="store_true",
            help="Every active, suspended and archived tenant, one file each, in slug order.",
        )
        parser.add_argument(
            "-o",
            "--output",
            help="The file to write, or a directory for files named <slug>-<UTC time>.tar "
            "(default: the current directory). An existing file is never replaced.",
        )
        parser.add_argument(
            "--json", action="store_true", help="Print one JSON object per tenant."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        output = options["output"]
        if options["all_tenants"]:
            if output is not None and not Path(output).is_dir():
                raise CommandError(
                    f"--all-tenants writes one file per tenant: {output} must be a directory."
                )
            slugs = list(
                get_tenant_model()
                ._default_manager.filter(status__in=BACKED_UP_STATUSES)
                .order_by("slug")
                .values_list("slug", flat=True)
            )
        else:
            slugs = [options["slug"]]
        failed = []
        for slug in slugs:
            try:
                report = backup_tenant(slug, output)
            except TenancyError as exc:
                if not options["all_tenants"]:
                    raise CommandError(str(exc)) from exc
                self.stderr.write(f"{slug}: {exc}")
                failed.append(slug)
                continue
            self._print(report, options["json"])
        if failed:
            raise CommandError(
                f"{len(failed)} of {len(slugs)} tenant(s) were not backed up: {', '.join(failed)}."
            )

    def _print(self, report: BackupReport, as_json: bool) -> None:
        if as_json:
            self.stdout.write(json.dumps(report.as_dict()))
            return
        self.stdout.write(
            self.style.SUCCESS(
                f"Tenant {report.slug}: {report.path} ({report.bytes / 1e6:.1f} MB, "
                f"{report.tables} tables, {report.rows} rows) in {report.seconds:.2f}s."
            )
        )
