"""manage.py tenant_command: run any management command inside one or more tenants."""

from __future__ import annotations

import argparse
from typing import Any

from django.core.management import call_command, get_commands, load_command_class
from django.core.management.base import BaseCommand, CommandError, CommandParser

from tenancy.connections import alias_for
from tenancy.context import tenant_context
from tenancy.models import TenantStatus, get_tenant_model


class Command(BaseCommand):
    help = (
        "Run a management command inside a tenant's context, e.g. "
        "`tenant_command --tenant acme loaddata fixture.json`. A command with a --database "
        "option gets the tenant's database unless you pass one."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        which = parser.add_mutually_exclusive_group(required=True)
        which.add_argument("--tenant", action="append", dest="tenants", metavar="SLUG")
        which.add_argument(
            "--all-tenants", action="store_true", help="Every active tenant, in slug order."
        )
        parser.add_argument("command_name", metavar="COMMAND")
        parser.add_argument("command_args", nargs=argparse.REMAINDER, metavar="ARGS")

    def handle(self, *args: Any, **options: Any) -> None:
        name, command_args = options["command_name"], options["command_args"]
        if name not in get_commands():
            raise CommandError(f"Unknown command: {name!r}.")
        takes_database = _takes_database_option(name)
        passes_database = any(
            a == "--database" or a.startswith("--database=") for a in command_args
        )
        failed = []
        for tenant in self.selected_tenants(options):
            if options["verbosity"] >= 1:
                self.stderr.write(self.style.MIGRATE_HEADING(f"== {tenant.slug}"))
            extra = (
                {"database": alias_for(tenant)} if takes_database and not passes_database else {}
            )
            try:
                with tenant_context(tenant):
                    call_command(name, *command_args, **extra)
            except Exception as exc:
                if not options["all_tenants"]:
                    raise
                failed.append(tenant.slug)
                self.stderr.write(self.style.ERROR(f"{tenant.slug}: {type(exc).__name__}: {exc}"))
        if failed:
            raise CommandError(f"{name} failed for {len(failed)} tenant(s): {', '.join(failed)}.")

    def selected_tenants(self, options: dict[str, Any]) -> Any:
        tenants = get_tenant_model()._default_manager.order_by("slug")
        if options["all_tenants"]:
            return tenants.filter(status=TenantStatus.ACTIVE).iterator()
        slugs = options["tenants"]
        found = list(tenants.filter(slug__in=slugs))
        missing = sorted(set(slugs) - {tenant.slug for tenant in found})
        if missing:
            raise CommandError(f"No tenant with slug {', '.join(map(repr, missing))}.")
        return found


def _takes_database_option(name: str) -> bool:
    app_name = get_commands()[name]
    command = app_name if isinstance(app_name, BaseCommand) else load_command_class(app_name, name)
    parser = command.create_parser("manage.py", name)
    return any(action.dest == "database" for action in parser._actions)
