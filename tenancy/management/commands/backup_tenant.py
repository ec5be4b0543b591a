"""manage.py backup_tenant: one file per tenant, its dump and a manifest."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from tenancy.backups import BACKED_UP_STATUSES, BackupReport, backup_tenant
from tenancy.exceptions import TenancyError
from tenancy.fanout import for_each_tenant
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
            "--jobs",
            type=int,
            default=1,
            metavar="N",
            help="With --all-tenants: tenants backed up at once (default 1).",
        )
        parser.add_argument(
            "--json", action="store_true", help="Print one JSON object per tenant."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        output = options["output"]
        if not options["all_tenants"]:
            try:
                report = backup_tenant(options["slug"], output)
            except TenancyError as exc:
                raise CommandError(str(exc)) from exc
            self._print(report, options["json"])
            return
        if output is not None and not Path(output).is_dir():
            raise CommandError(
                f"--all-tenants writes one file per tenant: {output} must be a directory."
            )
        if options["jobs"] < 1:
            raise CommandError("--jobs must be at least 1.")
        tenants = list(
            get_tenant_model()
            ._default_manager.filter(status__in=BACKED_UP_STATUSES)
            .order_by("slug")
        )
        failed = []
        # pg_dump does the work: threads are enough.
        for result in for_each_tenant(
            lambda tenant: backup_tenant(tenant, output), tenants, jobs=options["jobs"]
        ):
            if result.failed:
                self.stderr.write(f"{result.slug}: {result.error}")
                failed.append(result.slug)
            else:
                assert result.value is not None
                self._print(result.value, options["json"])
        if failed:
            raise CommandError(
                f"{len(failed)} of {len(tenants)} tenant(s) were not backed up: "
                f"{', '.join(sorted(failed))}."
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
