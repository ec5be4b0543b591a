"""manage.py purge_tenants: drop the archived tenants whose retention has ended."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from tenancy.exceptions import TenancyError
from tenancy.retention import format_when, purge_tenant, tenants_due


class Command(BaseCommand):
    help = (
        "Remove every archived tenant whose data was kept until now or before (delete_tenant "
        "--retain): its database is dropped and its row deleted. Run it daily."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="List the tenants that would be removed; change nothing.",
        )
        parser.add_argument(
            "--noinput",
            "--no-input",
            action="store_false",
            dest="interactive",
            help="Do not ask to confirm.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        now = timezone.now()
        due = list(tenants_due(now))
        if not due:
            self.stdout.write("No archived tenant is due for removal.")
            return
        for tenant in due:
            until = format_when(tenant.retained_until) if tenant.retained_until else "-"
            self.stdout.write(
                f"  {tenant.slug}: database {tenant.database_name} on server {tenant.server}, "
                f"kept until {until}"
            )
        if options["dry_run"]:
            self.stdout.write(f"{len(due)} tenant(s) would be removed (dry run).")
            return
        if options["interactive"]:
            answer = input(
                f"Remove these {len(due)} tenant(s), DROPPING their databases? Type 'yes' to "
                "confirm: "
            )
            if answer.strip().lower() != "yes":
                raise CommandError("Cancelled; nothing was removed.")
        failed = []
        for tenant in due:
            try:
                purge_tenant(tenant, now)
            except TenancyError as exc:
                failed.append(tenant.slug)
                self.stderr.write(self.style.ERROR(f"Tenant {tenant.slug}: not removed: {exc}"))
            else:
                self.stdout.write(
                    self.style.SUCCESS(
                        f"Tenant {tenant.slug}: removed, database {tenant.database_name} on "
                        f"server {tenant.server} dropped."
                    )
                )
        if failed:
            raise CommandError(
                f"{len(failed)} of {len(due)} tenant(s) were not removed: {', '.join(failed)} "
                "(the reasons are above); run purge_tenants again once they are fixed."
            )
