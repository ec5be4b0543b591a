"""manage.py create_tenant: record a tenant, create and migrate its database, activate it."""

from __future__ import annotations

import time
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from tenancy.exceptions import TenancyError
from tenancy.provisioning import create_tenant


class Command(BaseCommand):
    help = (
        "Create a tenant with its database. Running it again for the same slug finishes an "
        "interrupted or failed provisioning."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug", help="Lowercase letters, digits and hyphens, e.g. acme-corp.")
        parser.add_argument("--name", default="", help="Display name (default: the slug).")
        parser.add_argument(
            "--domain",
            action="append",
            default=[],
            dest="domains",
            metavar="HOST",
            help="A hostname for the tenant (repeatable); the first is primary.",
        )
        parser.add_argument(
            "--server", help="A key of TENANCY['SERVERS'] (default: DEFAULT_SERVER)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        started = time.monotonic()
        try:
            tenant = create_tenant(
                options["slug"],
                name=options["name"],
                domains=options["domains"],
                server=options["server"],
            )
        except ValidationError as exc:
            raise CommandError(
                f"Tenant {options['slug'][:80]!r} was not created: {'; '.join(exc.messages)}"
            ) from exc
        except TenancyError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(
            self.style.SUCCESS(
                f"Tenant {tenant.slug} is active on server {tenant.server} "
                f"(database {tenant.database_name}) in {time.monotonic() - started:.2f}s."
            )
        )
