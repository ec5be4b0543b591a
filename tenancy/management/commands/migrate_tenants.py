"""manage.py migrate_tenants: the main database first, then every tenant database."""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import (
    FIRST_COMPLETED,
    Executor,
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
    wait,
)
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.core.management.commands.migrate import Command as DjangoMigrateCommand
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections
from django.db.backends.base.base import BaseDatabaseWrapper

from tenancy.connections import forget_inherited_connections, unregister
from tenancy.migration import (
    FAILED,
    LOCKED,
    MIGRATED,
    PENDING,
    UP_TO_DATE,
    MigrationResult,
    MigrationState,
    applied_migrations,
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
            "--fail-fast", action="store_true", help="Stop at the first failing tenant."
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
        parser.add_argument(
            "--json", action="store_true", help="One JSON object per line and database."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        jobs = options["jobs"]
        per_server = options["jobs_per_server"] or jobs
        if jobs < 1 or per_server < 1:
            raise CommandError("--jobs and --jobs-per-server must be at least 1.")
        self.options = options
        self.read_only = options["check"] or options["plan"] or options["list"]
        state = MigrationState()
        started = time.monotonic()

        default = self.migrate_default(state)
        tenants = self.selected_tenants()
        total = tenants.count()
        counts = {MIGRATED: 0, UP_TO_DATE: 0, PENDING: 0, LOCKED: 0, FAILED: 0}
        failed: list[str] = []
        width = len(str(total))

        def work(tenant: AbstractTenant) -> MigrationResult:
            try:
                return migrate_tenant(
                    tenant,
                    check_only=self.read_only,
                    wait_for_lock=not options["skip_locked"],
                    state=state,
                )
            finally:
                # Keep nothing per tenant: the process's aliases stay few however many
                # tenants there are.
                unregister(tenant)

        results = _run_in_parallel(
            tenants.iterator(chunk_size=500), work, jobs, per_server, options["fail_fast"]
        )
        for done, result in enumerate(results, start=1):
            counts[result.status] += 1
            if result.failed:
                failed.append(result.slug)
            self.report(result, f"[{done:>{width}}/{total}]", state)

        if not options["json"]:
            self.summarise(counts, failed, total, time.monotonic() - started)
        unapplied = counts[PENDING] + (1 if default.status == PENDING else 0)
        if failed:
            shown = ", ".join(failed[:20]) + (" ..." if len(failed) > 20 else "")
            raise CommandError(
                f"{len(failed)} tenant(s) failed: {shown}. Fix the cause and run migrate_tenants "
                "again: tenants already up to date are skipped in one query each."
            )
        if options["check"] and unapplied:
            sys.exit(1)

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
            self.report(result, "[main]", state)
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

    def report(self, result: MigrationResult, position: str, state: MigrationState) -> None:
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


def _run_in_parallel(
    tenants: Iterable[AbstractTenant],
    work: Callable[[AbstractTenant], MigrationResult],
    jobs: int,
    per_server: int,
    fail_fast: bool,
) -> Iterator[MigrationResult]:
    """Results in completion order. Tenants are read lazily and at most 2 x jobs wait in
    a backlog, so memory stays flat however many tenants there are.

    With more than one job, each job is a process forked from this one (the loaded
    migration graph and settings come along; most of migrating is Python, which threads
    would run one at a time) on Linux, or a thread elsewhere.
    """
    if jobs == 1:
        for tenant in tenants:
            result = work(tenant)
            yield result
            if fail_fast and result.failed:
                return
        return

    def in_thread(tenant: AbstractTenant) -> MigrationResult:
        try:
            return work(tenant)
        finally:
            connections.close_all()

    def make_pool() -> tuple[Executor, Callable[[AbstractTenant], MigrationResult]]:
        # Linux only: macOS lists fork too, but system libraries there may crash in a
        # forked child (the reason Python defaults to spawn on macOS).
        if sys.platform.startswith("linux"):
            global _worker_work
            _worker_work = work  # inherited by the forked workers
            pool = ProcessPoolExecutor(
                jobs,
                mp_context=multiprocessing.get_context("fork"),
                initializer=_start_worker,
                initargs=(os.getpid(),),
            )
            return pool, _work_in_worker
        return ThreadPoolExecutor(jobs, thread_name_prefix="migrate_tenants"), in_thread

    backlog: deque[AbstractTenant] = deque()
    source = iter(tenants)
    running: dict[Future[MigrationResult], AbstractTenant] = {}
    busy: Counter[str] = Counter()  # tenants in work per server
    stop = broken = False
    pool, task = make_pool()
    try:
        while True:
            for tenant in itertools.islice(source, 2 * jobs - len(backlog)):
                backlog.append(tenant)
            if broken and not running:
                pool.shutdown()
                pool, task = make_pool()  # for the tenants still to come
                broken = False
            for tenant in list(backlog):
                if stop or broken or len(running) >= jobs:
                    break
                if busy[tenant.server] < per_server:
                    backlog.remove(tenant)
                    busy[tenant.server] += 1
                    running[pool.submit(task, tenant)] = tenant
            if not running:
                return
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                tenant = running.pop(future)
                busy[tenant.server] -= 1
                try:
                    result = future.result()
                except BrokenProcessPool:
                    broken = True
                    result = MigrationResult(
                        tenant.slug,
                        FAILED,
                        error="A worker process died while migrating this tenant or another "
                        "one (killed, out of memory?); run migrate_tenants again.",
                    )
                stop = stop or (fail_fast and result.failed)
                yield result
    finally:
        pool.shutdown(cancel_futures=True)


# The per-tenant work of the running command, for its workers (set before they start).
_worker_work: Callable[[AbstractTenant], MigrationResult] | None = None


def _start_worker(parent: int) -> None:
    """In a worker process, just forked: connections of its own, and an end with the
    parent (a killed command must not leave workers behind)."""
    forget_inherited_connections()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)  # the database rolls back what this worker had in progress

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _work_in_worker(tenant: AbstractTenant) -> MigrationResult:
    assert _worker_work is not None
    try:
        return _worker_work(tenant)
    finally:
        connections.close_all()  # `work` unregistered the tenant, closing its connection
