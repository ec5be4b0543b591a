"""manage.py create_tenant: record a tenant, create and migrate its database, activate it."""

from __future__ import annotations

import time
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from tenancy.exceptions import TenancyError
from tenancy.provisioning import adopt_database, create_tenant


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
        parser.add_argument(
            "--adopt-database",
            metavar="NAME",
            help="Register this existing database as the tenant's instead of creating one; "
            "its tenant-app migrations are compared with the project's.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        started = time.monotonic()
        if options["adopt_database"]:
            self.adopt(options)
            return
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

    def adopt(self, options: dict[str, Any]) -> None:
        slug, database = options["slug"], options["adopt_database"]
        try:
            tenant, report = adopt_database(
                slug,
                database,
                name=options["name"],
                domains=options["domains"],
                server=options["server"],
            )
        except ValidationError as exc:
            raise CommandError(f"Nothing adopted: {'; '.join(exc.messages)}") from exc
        except TenancyError as exc:
            raise CommandError(str(exc)) from exc
        if not report.matches:
            raise CommandError(
                f"Tenant {slug} was registered with database {database}, but its migrations "
                f"differ from the project's ({report}). It is marked failed. Run "
                f"`manage.py create_tenant {slug}` to apply missing migrations; migrations the "
                "project does not know must be reconciled by hand."
            )
        self.stdout.write(
            self.style.SUCCESS(
                f"Tenant {slug} is active with the existing database {database} on server "
                f"{tenant.server}; its tenant-app migrations match."
            )
        )
