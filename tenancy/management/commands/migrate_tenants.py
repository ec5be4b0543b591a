"""manage.py migrate_tenants: the main database first, then every tenant database."""

from __future__ import annotations

import itertools
import json
import sys
import time
from collections.abc import Iterator
from typing import Any

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.core.management.commands.migrate import Command as DjangoMigrateCommand
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections
from django.db.backends.base.base import BaseDatabaseWrapper

from tenancy import ledger
from tenancy.connections import unregister
from tenancy.fanout import TenantResult, for_each_tenant
from tenancy.migration import (
    FAILED,
    LOCKED,
    MIGRATED,
    PENDING,
    UP_TO_DATE,
    MigrationResult,
    MigrationState,
    applied_migrations,
    check_schema_tenants,
    migrate_tenant,
    migration_lock,
)
from tenancy.models import (
    MIGRATED_STATUSES,
    AbstractTenant,
    MoveStep,
    TenantMove,
    TenantStatus,
    get_tenant_model,
)


class Command(BaseCommand):
    help = (
        "Migrate the main database, then every active or suspended tenant database, in "
        "slug order. A failing tenant is reported and the others continue."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--tenant",
            action="append",
            dest="tenants",
            metavar="SLUG",
            help="Only this tenant (repeatable).",
        )
        parser.add_argument(
            "--server",
            action="append",
            dest="servers",
            metavar="NAME",
            help="Only tenants on this server (repeatable).",
        )
        parser.add_argument(
            "--jobs", type=int, default=1, help="Tenants migrated at once (default 1)."
        )
        parser.add_argument(
            "--jobs-per-server",
            type=int,
            metavar="N",
            help="At most N tenants of one server at once (default: --jobs).",
        )
        parser.add_argument(
            "--fail-fast",
            action="store_true",
            help="Start no tenant more after the first failure (--max-failures 1).",
        )
        parser.add_argument(
            "--max-failures",
            type=int,
            metavar="N",
            help="Start no tenant more after N failures (those in work finish).",
        )
        parser.add_argument(
            "--canary",
            metavar="N|SLUG,...|FIELD=VALUE",
            help="Migrate these tenants first (the first N selected, the slugs given, or those "
            "whose tenant field FIELD is VALUE) and stop there if any of them fails.",
        )
        parser.add_argument(
            "--lock-timeout",
            type=float,
            metavar="SECONDS",
            help="PostgreSQL: a tenant's migration that waits longer than this for a lock "
            "on a busy table fails (nothing of it applied) instead of blocking the "
            "tenant's traffic; run migrate_tenants again later.",
        )
        parser.add_argument(
            "--skip-locked",
            action="store_true",
            help="Skip a database another migrator is working on, instead of waiting for it.",
        )
        report = parser.add_mutually_exclusive_group()
        report.add_argument(
            "--check",
            action="store_true",
            help="Change nothing; exit with status 1 if any migration is unapplied.",
        )
        report.add_argument(
            "--plan", action="store_true", help="Change nothing; list the unapplied migrations."
        )
        report.add_argument(
            "--list",
            action="store_true",
            help="Change nothing; count applied and unapplied migrations per database.",
        )
        report.add_argument(
            "--summary",
            action="store_true",
            help="Change nothing; one line: how many tenants are current, behind, failed, "
            "from the ledger. Exit status 1 unless all are current.",
        )
        parser.add_argument(
            "--verify",
            action="store_true",
            help="With --check, --plan or --list: read every tenant's database (and correct "
            "the ledger) instead of answering from the ledger.",
        )
        parser.add_argument(
            "--json", action="store_true", help="One JSON object per line and database."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        jobs = options["jobs"]
        per_server = options["jobs_per_server"] or jobs
        if jobs < 1 or per_server < 1:
            raise CommandError("--jobs and --jobs-per-server must be at least 1.")
        max_failures = 1 if options["fail_fast"] else options["max_failures"]
        if max_failures is not None and max_failures < 1:
            raise CommandError("--max-failures must be at least 1.")
        lock_timeout = options["lock_timeout"]
        if lock_timeout is not None and lock_timeout <= 0:
            raise CommandError("--lock-timeout must be a number of seconds above 0.")
        self.options = options
        self.read_only = options["check"] or options["plan"] or options["list"]
        if options["verify"] and not self.read_only:
            raise CommandError("--verify goes with --check, --plan or --list.")
        if options["summary"]:
            self.print_summary()
            return
        if self.read_only and options["canary"]:
            raise CommandError("--canary migrates; it does not go with --check, --plan or --list.")
        state = MigrationState()
        started = time.monotonic()
        self.progress = _Progress(self)

        default = self.migrate_default(state)
        tenants = self.selected_tenants()
        canary = self.canary(tenants, options["canary"])
        total = tenants.count()
        counts = {MIGRATED: 0, UP_TO_DATE: 0, PENDING: 0, LOCKED: 0, FAILED: 0}
        failed: list[str] = []
        self.progress.start(total)

        state.ledger_known = ledger.known_entries()

        # The ledger is written here, by this process alone, from what each tenant's
        # work read (workers and threads writing at once would fail on SQLite's lock).
        def work(tenant: AbstractTenant) -> MigrationResult:
            return migrate_tenant(
                tenant,
                check_only=self.read_only,
                wait_for_lock=not options["skip_locked"],
                state=state,
                lock_timeout=lock_timeout,
                record=False,
            )

        def check(tenant: AbstractTenant) -> MigrationResult:
            return migrate_tenant(tenant, check_only=True, state=state, record=False)

        by_slug: dict[str, AbstractTenant] = {}

        canary_failed = False
        # Filled by checked(), read by migrated() after it.
        to_migrate: list[AbstractTenant] = []

        def checked() -> Iterator[MigrationResult]:
            """Tenants the ledger calls current (every tenant, with --verify) are read
            first, many at once in threads: a check is a connection and one query, the
            server's work rather than Python's. Those found behind are migrated after."""
            found = ledger.states(tenants, state)
            to_check = []
            for tenant in tenants.iterator(chunk_size=500):
                by_slug[tenant.slug] = tenant
                entry = found.get(tenant.pk)
                if self.read_only or (entry is not None and entry.status == ledger.CURRENT):
                    to_check.append(tenant)
                else:
                    to_migrate.append(tenant)
            # Schema tenants a few queries per shared database; the rest in threads.
            answered, to_check = check_schema_tenants(to_check, state)
            per_check_server = options["jobs_per_server"] or CHECK_JOBS
            checks = for_each_tenant(check, to_check, jobs=CHECK_JOBS, per_server=per_check_server)
            for result in itertools.chain(answered, map(_migration_result, checks)):
                if result.status == PENDING and not self.read_only:
                    to_migrate.append(by_slug[result.slug])
                    continue
                yield result
            to_migrate.sort(key=lambda tenant: tenant.slug)

        def migrated() -> Iterator[MigrationResult]:
            nonlocal canary_failed
            cohorts = _cohorts(to_migrate, canary)
            for number, cohort in enumerate(cohorts):
                if canary_failed or (max_failures is not None and len(failed) >= max_failures):
                    return
                if jobs > 1 and cohort:
                    state.prepare(cohort[0])  # once, for every worker forked next
                fan_out = for_each_tenant(
                    work, cohort, jobs=jobs, per_server=per_server, processes=True
                )
                for outcome in fan_out:
                    result = _migration_result(outcome)
                    if result.failed and max_failures and len(failed) + 1 >= max_failures:
                        fan_out.stop()
                    yield result
                canary_failed = number == 0 and len(cohorts) > 1 and bool(failed)

        from_ledger = self.read_only and not options["verify"]
        results = (
            self.from_ledger(tenants, state)
            if from_ledger
            else itertools.chain(checked(), migrated())
        )
        written = ledger.Batch(state.ledger_known)
        try:
            for result in results:
                tenant = by_slug.get(result.slug)
                if tenant is not None:
                    written.add(ledger.entry_of(tenant, result))
                counts[result.status] += 1
                if result.failed:
                    failed.append(result.slug)
                self.report(result, state)
        finally:
            written.flush()
        unrecorded = [tenant.slug for tenant in written.unrecorded]

        self.progress.end()
        if unrecorded:
            self.stderr.write(
                f"The migration ledger could not be written for {len(unrecorded)} tenant(s) "
                f"({', '.join(unrecorded[:10])}); they show as never read until the next run."
            )
        if not options["json"]:
            self.summarise(counts, failed, total, time.monotonic() - started)
        unapplied = counts[PENDING] + (1 if default.status == PENDING else 0)
        if failed:
            shown = ", ".join(failed[:20]) + (" ..." if len(failed) > 20 else "")
            not_started = total - sum(counts.values())
            stopped = ""
            if canary_failed:
                stopped = f" The canary failed: {not_started} other tenant(s) were not started."
            elif not_started:
                stopped = f" {not_started} tenant(s) were not started (--max-failures)."
            if from_ledger:
                raise CommandError(
                    f"{len(failed)} tenant(s) failed: {shown}: their databases could not be "
                    "read when last tried. The ledger answered for the others; --verify "
                    "reads every database."
                )
            raise CommandError(
                f"{len(failed)} tenant(s) failed: {shown}.{stopped} Fix the cause and run "
                "migrate_tenants again: tenants already up to date are skipped in one query each."
            )
        if options["check"] and unapplied:
            sys.exit(1)

    def print_summary(self) -> None:
        summary = ledger.fleet_summary()
        if self.options["json"]:
            self.stdout.write(json.dumps(summary))
        else:
            self.stdout.write(ledger.summary_line(summary))
        if summary["current"] != summary["tenants"]:
            sys.exit(1)

    def from_ledger(self, tenants: Any, state: MigrationState) -> Iterator[MigrationResult]:
        """--check, --plan, --list from the ledger: one query for the fleet; a tenant it
        has no entry for is read from its database (and recorded)."""
        found = ledger.states(tenants, state)
        for tenant in tenants.iterator(chunk_size=500):
            entry = found.get(tenant.pk)
            if entry is None or entry.status == ledger.UNKNOWN:
                yield migrate_tenant(tenant, check_only=True, state=state)
                unregister(tenant)
            elif entry.status == ledger.FAILED:  # its last run failed, or its read
                yield MigrationResult(
                    tenant.slug, FAILED, pending=list(entry.pending or []), error=entry.error
                )
            else:
                status = PENDING if entry.pending else UP_TO_DATE
                yield MigrationResult(tenant.slug, status, pending=list(entry.pending or []))

    def canary(self, tenants: Any, canary: str | None) -> int | set[str] | None:
        """--canary: a number of tenants, or the slugs, checked to be among ``tenants``."""
        if not canary:
            return None
        if canary.isdigit():
            if int(canary) < 1:
                raise CommandError("--canary takes a number of tenants (1 or more) or slugs.")
            return int(canary)
        if "=" in canary:  # a cohort: the tenants with that value in a field of theirs
            field, _, value = canary.partition("=")
            fields = {
                f.name
                for f in tenants.model._meta.concrete_fields
                if not f.is_relation and not f.primary_key
            }
            if field not in fields:
                raise CommandError(
                    f"--canary {field[:40]}=...: the tenant model has no such field (it has "
                    f"{', '.join(sorted(fields))})."
                )
            cohort = set(tenants.filter(**{field: value}).values_list("slug", flat=True))
            if not cohort:
                raise CommandError(f"--canary {canary[:80]}: no tenant of this run has it.")
            return cohort
        slugs = {slug.strip() for slug in canary.split(",") if slug.strip()}
        missing = sorted(
            slugs - set(tenants.filter(slug__in=slugs).values_list("slug", flat=True))
        )
        if missing:
            raise CommandError(
                f"--canary names {', '.join(map(repr, missing[:5]))}, which is not among "
                "the tenants this run migrates."
            )
        return slugs

    def migrate_default(self, state: MigrationState) -> MigrationResult:
        connection = connections[DEFAULT_DB_ALIAS]
        started = time.monotonic()
        pending = state.pending(self.main_database_applied(connection))
        result = MigrationResult(DEFAULT_DB_ALIAS, PENDING if pending else UP_TO_DATE)
        if not self.read_only:
            if not self.options["json"]:
                self.stdout.write(self.style.MIGRATE_HEADING("Main database:"))
            try:
                with migration_lock(connection):
                    call_command(
                        # Django's own: tenancy's `migrate` would add its hint to this output.
                        DjangoMigrateCommand(),
                        database=DEFAULT_DB_ALIAS,
                        interactive=False,
                        verbosity=0 if self.options["json"] else self.options["verbosity"],
                        # The stream itself: through this command's wrapper every write
                        # would end a line, and "Applying x..." and " OK" would be two.
                        stdout=self.stdout._out,
                        no_color=self.options["no_color"],
                        force_color=self.options["force_color"],
                        skip_checks=True,
                    )
            except Exception as exc:
                raise CommandError(
                    f"Migrating the main database failed, so no tenant was migrated: {exc}"
                ) from exc
            still_pending = state.pending(applied_migrations(connection))
            result.applied = len(pending) - len(still_pending)
            result.status = MIGRATED if result.applied else UP_TO_DATE
            pending = still_pending
        result.pending = [f"{app}.{name}" for app, name in pending]
        result.seconds = round(time.monotonic() - started, 3)
        if self.read_only or self.options["json"]:
            self.report(result, state, position="[main]")
        return result

    def main_database_applied(self, connection: BaseDatabaseWrapper) -> set[tuple[str, str]]:
        """The main database's applied migrations; a ``CommandError`` in one line when
        there is no main database yet (or, changing nothing, no tenant registry in it)."""
        where = _database_description(connection)
        try:
            applied = applied_migrations(connection)
            table = get_tenant_model()._meta.db_table
            missing_table = self.read_only and table not in connection.introspection.table_names()
        except DatabaseError as exc:
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())
            raise CommandError(
                f"The main database {where} cannot be used ({reason}). Create it (or fix "
                "DATABASES['default']), then run `manage.py migrate_tenants`."
            ) from exc
        if missing_table:
            raise CommandError(
                f"The main database {where} has no tenant table ({table}) yet, so there are "
                "no tenants to check: run `manage.py migrate_tenants` to create it."
            )
        return applied

    def selected_tenants(self) -> Any:
        tenants = get_tenant_model()._default_manager.order_by("slug")
        slugs = self.options["tenants"]
        moving = list(tenants.filter(status=TenantStatus.MOVING).values_list("slug", flat=True))
        if slugs:
            if set(slugs) & set(moving):
                raise CommandError(
                    f"Tenant {sorted(set(slugs) & set(moving))[0]!r} is being moved; migrate "
                    "it once the move has finished (its database is read-only meanwhile)."
                )
            archived = tenants.filter(slug__in=slugs, status=TenantStatus.ARCHIVED).first()
            if archived is not None:
                raise CommandError(
                    f"Tenant {archived.slug!r} is archived (not served, its database kept "
                    f"read-only); it is migrated when it is brought back: `manage.py "
                    f"reactivate_tenant {archived.slug}`."
                )
            tenants = tenants.filter(slug__in=slugs).exclude(status=TenantStatus.DELETING)
            missing = sorted(set(slugs) - set(tenants.values_list("slug", flat=True)))
            if missing:
                raise CommandError(
                    f"No tenant to migrate with slug {', '.join(map(repr, missing))}."
                )
        else:
            tenants = tenants.filter(status__in=MIGRATED_STATUSES)
            unfinished = list(
                TenantMove.objects.filter(step=MoveStep.SWITCHED).values_list(
                    "tenant__slug", "target_server"
                )
            )
            if unfinished and not self.options["json"]:
                slug, server = unfinished[0]
                self.stderr.write(
                    f"Moves that switched but did not finish (their source databases are "
                    f"still there): {', '.join(s for s, _ in unfinished[:10])}; run `manage.py "
                    f"move_tenant {slug} --server {server}` (and so on) to finish them."
                )
            if moving and not self.options["json"]:
                self.stderr.write(
                    f"Left out, being moved: {', '.join(moving[:10])}"
                    f"{' and more' if len(moving) > 10 else ''}; run migrate_tenants again "
                    "once the moves have finished."
                )
        if self.options["servers"]:
            tenants = tenants.filter(server__in=self.options["servers"])
        if not self.options["json"] and not self.read_only:
            self.stdout.write(self.style.MIGRATE_HEADING("Tenant databases:"))
        return tenants

    def report(
        self, result: MigrationResult, state: MigrationState, position: str | None = None
    ) -> None:
        if position is None:  # a tenant's
            position = self.progress.advance(result)
            if not self.options["json"] and not self.progress.shows(result):
                return
        if self.options["json"]:
            self.stdout.write(json.dumps(result.as_dict()))
            return
        if self.options["list"] and not result.failed:
            applied = len(state.nodes) - len(result.pending)
            text = f"{applied} applied, {len(result.pending)} unapplied"
        elif result.status == MIGRATED:
            text = self.style.SUCCESS(f"{result.applied} applied")
        elif result.status == UP_TO_DATE:
            text = "up to date"
        elif result.status == PENDING:
            text = self.style.WARNING(f"{len(result.pending)} unapplied")
        elif result.status == LOCKED:
            text = self.style.WARNING("skipped: another migrator holds its lock")
        else:
            text = self.style.ERROR(f"FAILED: {result.error}")
        self.progress.clear()
        self.stdout.write(f"{position} {result.slug}  {text}  {result.seconds:.2f}s")
        if self.options["plan"]:
            for name in result.pending:
                self.stdout.write(f"    {name}")

    def summarise(
        self, counts: dict[str, int], failed: list[str], total: int, seconds: float
    ) -> None:
        parts = [
            f"{counts[status]} {label}"
            for status, label in (
                (MIGRATED, "migrated"),
                (UP_TO_DATE, "up to date"),
                (PENDING, "with unapplied migrations"),
                (LOCKED, "skipped (locked)"),
                (FAILED, "failed"),
            )
            if counts[status] or status in (MIGRATED, UP_TO_DATE, FAILED)
        ]
        style = self.style.ERROR if failed else self.style.SUCCESS
        self.stdout.write(style(f"{total} tenant(s): {', '.join(parts)} in {seconds:.1f}s."))


def _database_description(connection: BaseDatabaseWrapper) -> str:
    """Which database on which server, for messages (no credentials)."""
    settings = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"{str(settings['NAME'])!r} (SQLite)"
    host = settings.get("HOST") or "localhost"
    port = settings.get("PORT") or "default port"
    return f"{str(settings['NAME'])!r} on server {host}:{port}"


# Tenants checked at once (threads), and at most of one server unless --jobs-per-server.
CHECK_JOBS = 8


def _cohorts(
    to_migrate: list[AbstractTenant], canary: int | set[str] | None
) -> list[list[AbstractTenant]]:
    """The tenants to migrate in the order they are: the canary first, then the rest."""
    if canary is None:
        return [to_migrate]
    if isinstance(canary, int):
        first = to_migrate[:canary]
    else:
        first = [tenant for tenant in to_migrate if tenant.slug in canary]
    chosen = {tenant.slug for tenant in first}
    return [first, [tenant for tenant in to_migrate if tenant.slug not in chosen]]


def _migration_result(outcome: TenantResult[MigrationResult]) -> MigrationResult:
    """A tenant's result (``migrate_tenant`` reports its own failures; the fan-out those
    of a worker that died)."""
    if outcome.value is not None:
        return outcome.value
    return MigrationResult(outcome.slug, FAILED, error=outcome.error)


class _Progress:
    """On a terminal at verbosity 1: one live line (done/total, failures, an estimate of
    the time left) and a line per tenant that did not end up to date or migrated; with
    -v 2, or not on a terminal, a line per tenant."""

    def __init__(self, command: Command) -> None:
        self.command = command
        self.total = self.width = self.done = self.failures = 0
        self.started = time.monotonic()
        options = command.options
        self.live = (
            not options["json"]
            and options["verbosity"] == 1
            and command.stdout.isatty()
            and not (options["plan"] or options["list"])
        )
        self.shown = False

    def start(self, total: int) -> None:
        self.total, self.width = total, len(str(total))
        self.started = time.monotonic()

    def advance(self, result: MigrationResult) -> str:
        self.done += 1
        self.failures += result.failed
        if self.live:
            elapsed = time.monotonic() - self.started
            left = elapsed / self.done * (self.total - self.done)
            self.command.stdout.write(
                f"\r[{self.done:>{self.width}}/{self.total}] {self.failures} failed, "
                f"about {left:.0f}s left ",
                ending="",
            )
            self.command.stdout.flush()
            self.shown = True
        return f"[{self.done:>{self.width}}/{self.total}]"

    def shows(self, result: MigrationResult) -> bool:
        """Whether the tenant gets a line of its own."""
        return not self.live or result.status not in (MIGRATED, UP_TO_DATE)

    def clear(self) -> None:
        if self.shown:
            self.command.stdout.write("\r\033[K", ending="")
            self.shown = False

    def end(self) -> None:
        if self.shown:
            self.command.stdout.write("")
            self.shown = False
