"""manage.py delete_tenant: close a tenant's connections, drop its database, delete it; or,
with a retention period, archive it and keep its data until purge_tenants drops it."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from tenancy.conf import tenancy_settings
from tenancy.exceptions import TenancyError
from tenancy.models import TenantStatus, get_tenant_model
from tenancy.provisioning import deprovision_tenant
from tenancy.retention import archive_tenant, format_when


class Command(BaseCommand):
    help = (
        "Delete a tenant and drop its database (or keep it with --keep-database). With "
        "--retain DAYS (default: TENANCY['RETENTION_DAYS']) the tenant is archived instead: "
        "not served, its data kept read-only until purge_tenants drops it after DAYS days."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug")
        keep = parser.add_mutually_exclusive_group()
        keep.add_argument(
            "--keep-database",
            action="store_true",
            help="Keep the database; only remove the tenant.",
        )
        keep.add_argument(
            "--retain",
            type=int,
            metavar="DAYS",
            help="Archive the tenant and keep its data for DAYS days (0: drop it now). "
            "Default: TENANCY['RETENTION_DAYS'].",
        )
        parser.add_argument(
            "--noinput",
            "--no-input",
            action="store_false",
            dest="interactive",
            help="Do not ask to type the slug to confirm.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        slug = options["slug"]
        model = get_tenant_model()
        try:
            tenant = model._default_manager.get(slug=slug)
        except model.DoesNotExist:
            raise CommandError(f"No tenant with slug {slug[:80]!r}.") from None
        days = options["retain"]
        if days is None:
            # Keeping the database, or finishing a deletion that stopped half-way, removes
            # the tenant now whatever the retention.
            at_once = options["keep_database"] or tenant.status == TenantStatus.DELETING
            days = 0 if at_once else tenancy_settings.RETENTION_DAYS
        if days < 0:
            raise CommandError(f"--retain takes a number of days, 0 or more, not {days}.")
        if days:
            try:
                until = timezone.now() + timedelta(days=days)
            except OverflowError:
                raise CommandError(f"--retain {days} is past the last date there is.") from None
            what = (
                f"keeping its data (database {tenant.database_name} on server "
                f"{tenant.server}) until {format_when(until)}"
            )
        elif options["keep_database"]:
            what = "keeping its database"
        else:
            what = f"DROPPING database {tenant.database_name} on server {tenant.server}"
        if options["interactive"]:
            verb = "Archive" if days else "Delete"
            answer = input(f"{verb} tenant {slug}, {what}? Type the slug to confirm: ")
            if answer.strip() != slug:
                raise CommandError("Cancelled: the slug typed did not match; nothing was deleted.")
        try:
            if days:
                tenant = archive_tenant(tenant, days)
            else:
                deprovision_tenant(tenant, keep_database=options["keep_database"])
        except TenancyError as exc:
            raise CommandError(str(exc)) from exc
        if days:
            until = tenant.retained_until or until
            self.stdout.write(
                self.style.SUCCESS(
                    f"Archived tenant {slug}: it is not served; its data is kept, read-only, "
                    f"until {format_when(until)}. `manage.py reactivate_tenant {slug}` brings "
                    f"it back before then; `manage.py purge_tenants` drops it after."
                )
            )
            return
        self.stdout.write(self.style.SUCCESS(f"Deleted tenant {slug}, {what.lower()}."))
