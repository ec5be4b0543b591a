"""manage.py tenant_command: run any management command inside one or more tenants."""

from __future__ import annotations

import argparse
import contextlib
import io
from typing import Any

from django.core.management import call_command, get_commands, load_command_class
from django.core.management.base import BaseCommand, CommandError, CommandParser

from tenancy.connections import alias_for
from tenancy.context import tenant_context
from tenancy.fanout import for_each_tenant
from tenancy.models import AbstractTenant, TenantStatus, get_tenant_model


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
        parser.add_argument(
            "--jobs",
            type=int,
            default=1,
            metavar="N",
            help="Tenants worked on at once, each in a process of its own; a tenant's output "
            "is printed in one piece when it finishes (default 1: in turn, as it comes).",
        )
        parser.add_argument("command_name", metavar="COMMAND")
        parser.add_argument("command_args", nargs=argparse.REMAINDER, metavar="ARGS")

    def handle(self, *args: Any, **options: Any) -> None:
        name, command_args = options["command_name"], options["command_args"]
        self.verbosity = options["verbosity"]
        if name not in get_commands():
            raise CommandError(f"Unknown command: {name!r}.")
        give_database = _takes_database_option(name) and not any(
            a == "--database" or a.startswith("--database=") for a in command_args
        )
        jobs = options["jobs"]
        if jobs < 1:
            raise CommandError("--jobs must be at least 1.")
        tenants = self.selected_tenants(options)

        def run_in(tenant: AbstractTenant, streams: dict[str, Any] | None = None) -> None:
            if self.verbosity >= 1 and streams is None:
                self.stderr.write(self.style.MIGRATE_HEADING(f"== {tenant.slug}"))
            extra = {"database": alias_for(tenant)} if give_database else {}
            with tenant_context(tenant):
                call_command(name, *command_args, **extra, **(streams or {}))

        if not options["all_tenants"] and len(tenants) == 1 and jobs == 1:
            run_in(tenants[0])  # one tenant: its errors as they are
            return

        def work(tenant: AbstractTenant) -> str:
            if jobs == 1:
                run_in(tenant)
                return ""
            # In a worker process of its own: what the command prints, in one piece.
            output = io.StringIO()
            with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
                run_in(tenant, {"stdout": output, "stderr": output})
            return output.getvalue()

        failed = []
        for result in for_each_tenant(work, tenants, jobs=jobs, processes=True):
            if jobs > 1:
                if options["verbosity"] >= 1:
                    self.stderr.write(self.style.MIGRATE_HEADING(f"== {result.slug}"))
                self.stdout.write(result.value or "", ending="")
            if result.failed:
                failed.append(result.slug)
                self.stderr.write(self.style.ERROR(f"{result.slug}: {result.error}"))
        if failed:
            raise CommandError(f"{name} failed for {len(failed)} tenant(s): {', '.join(failed)}.")

    def selected_tenants(self, options: dict[str, Any]) -> Any:
        tenants = get_tenant_model()._default_manager.order_by("slug")
        if options["all_tenants"]:
            return list(tenants.filter(status=TenantStatus.ACTIVE))
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
