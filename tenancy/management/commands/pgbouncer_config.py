"""manage.py pgbouncer_config: a PgBouncer configuration for one tenant server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from tenancy.exceptions import TenancyError
from tenancy.pgbouncer import AUTH_TYPES, bouncer_settings, render
from tenancy.private_files import replace_file


class Command(BaseCommand):
    help = (
        "Write a PgBouncer configuration for a tenant server whose HOST and PORT lead to "
        "PgBouncer and whose DIRECT is the server itself: every database to the server, "
        "the fleet's server connections capped at the entry's CONNECTION_BUDGET."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("server", help="The server's name in TENANCY['SERVERS'].")
        parser.add_argument(
            "-o", "--output", help="Write the file here (atomically); default: standard output."
        )
        parser.add_argument(
            "--pool-size",
            type=_positive,
            help="Server connections per database (per tenant on a database-per-tenant "
            "server); default 5, at most the budget.",
        )
        parser.add_argument(
            "--budget",
            type=_positive,
            help="Server connections for the whole fleet; default: the entry's CONNECTION_BUDGET.",
        )
        parser.add_argument(
            "--max-client-conn",
            type=_positive,
            help="Client connections PgBouncer accepts (all processes' tenant and main "
            "connections); default 2000.",
        )
        parser.add_argument("--auth-type", choices=AUTH_TYPES)
        parser.add_argument("--auth-file", help="PgBouncer's userlist file.")
        parser.add_argument(
            "--include",
            help="A file of PgBouncer settings (key = value lines) read last: "
            "authentication, logging, the pid file.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            settings = bouncer_settings(
                options["server"],
                pool_size=options["pool_size"],
                budget=options["budget"],
                max_client_connections=options["max_client_conn"],
            )
        except TenancyError as exc:
            raise CommandError(str(exc)) from None
        text = render(
            settings,
            auth_type=options["auth_type"],
            auth_file=options["auth_file"],
            include=options["include"],
        )
        output = options["output"]
        if output is None:
            self.stdout.write(text, ending="")
            return
        replace_file(Path(output), text)
        self.stderr.write(f"Wrote {output} for server {settings.server!r}.")


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError(value)
    return number
