"""manage.py reactivate_tenant: serve an archived tenant again, its data as it was kept."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from tenancy.exceptions import TenancyError
from tenancy.retention import reactivate_tenant


class Command(BaseCommand):
    help = (
        "Bring back an archived tenant (delete_tenant --retain) before its data is purged: "
        "its database is made writable and migrated, and the tenant is served again."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug")

    def handle(self, *args: Any, **options: Any) -> None:
        slug = options["slug"]
        try:
            tenant = reactivate_tenant(slug)
        except TenancyError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(
            self.style.SUCCESS(
                f"Tenant {slug} is active again (database {tenant.database_name} on server "
                f"{tenant.server})."
            )
        )
