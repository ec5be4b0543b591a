"""manage.py delete_tenant: close a tenant's connections, drop its database, delete it."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from tenancy.exceptions import TenancyError
from tenancy.models import get_tenant_model
from tenancy.provisioning import deprovision_tenant


class Command(BaseCommand):
    help = "Delete a tenant and drop its database (or keep it with --keep-database)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug")
        parser.add_argument(
            "--keep-database",
            action="store_true",
            help="Keep the database; only remove the tenant.",
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
        what = (
            "keeping its database"
            if options["keep_database"]
            else f"DROPPING database {tenant.database_name} on server {tenant.server}"
        )
        if options["interactive"]:
            answer = input(f"Delete tenant {slug}, {what}? Type the slug to confirm: ")
            if answer.strip() != slug:
                raise CommandError("Cancelled: the slug typed did not match; nothing was deleted.")
        try:
            deprovision_tenant(tenant, keep_database=options["keep_database"])
        except TenancyError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(self.style.SUCCESS(f"Deleted tenant {slug}, {what.lower()}."))
