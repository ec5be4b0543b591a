"""Migrating tenant databases: the graph loaded once, an up-to-date tenant in one query.

``migrate_tenant`` reads a tenant's ``django_migrations`` rows and compares them with the
migration graph loaded once per process. Only a tenant with unapplied migrations gets
Django's ``migrate``, under a lock held in that tenant's database (PostgreSQL advisory
lock, SQLite file lock), so two migrators never work on one database at once.

A template database (see ``tenancy.template_databases``) gets every migration except the
ones that must run in each tenant: a migration of a tenant app with Python code in it
(``RunPython``) of the project's own, which may write data for the tenant it runs in,
and every migration after one. A tenant copied from the template applies those itself,
inside its own context. Django's own data migrations (its contrib apps') know nothing of
tenants and run in the template.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, cast

import django
from django.core.management import call_command
from django.core.management.base import CommandError
from django.core.management.sql import emit_pre_migrate_signal
from django.db import DatabaseError, connections, transaction
from django.db.migrations.executor import MigrationExecutor
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.migration import Migration
from django.db.migrations.operations import SeparateDatabaseAndState
from django.db.migrations.operations.base import Operation
from django.db.migrations.operations.special import RunPython
from django.db.migrations.recorder import MigrationRecorder
from django.db.migrations.state import ProjectState, StateApps

from tenancy import ledger, replicas
from tenancy.backends.sqlite import file_lock, sqlite_path
from tenancy.conf import tenancy_settings
from tenancy.connections import alias_for
from tenancy.context import tenant_context
from tenancy.exceptions import TenancyError
from tenancy.post_migrate import emit_post_migrate
from tenancy.schema_connections import schema_of

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

    from tenancy.models import AbstractTenant

# pg_advisory_lock key: the bytes of "tenancy" as a bigint. Advisory locks are scoped to
# one database, so the same key in every tenant database locks only that database.
LOCK_KEY = int.from_bytes(b"tenancy", "big")

MigrationKey = tuple[str, str]


def lock_key(schema: str | None) -> int:
    """The advisory lock key of a tenant: ``LOCK_KEY`` in a database of its own; in a
    shared database, one per schema, so that migrators of two schemas run at once."""
    if schema is None:
        return LOCK_KEY
    digest = hashlib.blake2b(schema.encode(), digest_size=8, person=b"tenancy").digest()
    return int.from_bytes(digest, "big") >> 1  # a positive bigint


@dataclass
class _Plan:
    """What migrating a database with a given set of applied migrations takes: computed
    once and shared by every database with that set."""

    loader: MigrationLoader
    targets: list[MigrationKey]
    plan: list[tuple[Migration, bool]]
    state: ProjectState  # before migrating, with its apps rendered
    # The models after migrating, for post_migrate receivers: the same for every database
    # that follows this plan, so rendered once.
    post_apps: StateApps | None = None
    # Per migration of the plan, each operation with the project states before and after
    # it (rendered by the first database that applies it, then shared), and the state
    # after the migration: every database that follows the plan runs only the operations'
    # database work, none of the state changes and model rendering.
    steps: dict[
        MigrationKey, tuple[list[tuple[Operation, ProjectState, ProjectState]], ProjectState]
    ] = field(default_factory=dict)
    steps_lock: threading.Lock = field(default_factory=threading.Lock)
    # Whether the graph's conflicts and the applied set's history were checked: both
    # depend on nothing else, so the first database that follows the plan checks them.
    checked: bool = False

    def check(self, connection: BaseDatabaseWrapper) -> None:
        """Django's checks before migrating (conflicts in the graph, the database's
        history), once: they depend only on the graph and the applied set."""
        if self.checked:
            return
        conflicts = self.loader.detect_conflicts()
        if conflicts:
            raise CommandError(f"Conflicting migrations; run makemigrations --merge: {conflicts}")
        self.loader.check_consistent_history(connection)
        self.checked = True


def in_one_transaction(
    connection: BaseDatabaseWrapper,
    migrations: Iterable[Migration],
    unmigrated_apps: set[str],
    is_template: bool,
) -> bool:
    """Whether a run of ``migrations`` on ``connection``'s database is one transaction of
    that connection, its migration lock included: on PostgreSQL, when every migration
    of it is atomic and Django's ``migrate`` is not needed for apps without migrations."""
    return (
        connection.vendor == "postgresql"
        and connection.features.can_rollback_ddl
        and all(migration.atomic for migration in migrations)
        and (is_template or not unmigrated_apps & tenancy_settings.tenant_app_labels)
    )


class MigrationState:
    """The project's migration graph, loaded from disk once."""

    # Distinct applied sets kept at once; a fleet usually has one or two.
    MAX_PLANS = 4

    def __init__(self) -> None:
        self._plans: OrderedDict[tuple[frozenset[MigrationKey], bool], _Plan] = OrderedDict()
        self._plans_lock = threading.Lock()
        # The ledger's entries read before a run (``tenancy.ledger.known_entries``): a
        # tenant whose entry says what its database says is not written again.
        self.ledger_known: dict[Any, tuple[str | None, str]] | None = None
        # What each migration set lacks of this graph (``tenancy.ledger``).
        self.pending_by_set: dict[str, list[str]] = {}

    def plan_for(
        self,
        connection: BaseDatabaseWrapper,
        applied: set[MigrationKey],
        *,
        for_template: bool = False,
    ) -> _Plan:
        key = (frozenset(applied), for_template)
        with self._plans_lock:
            plan = self._plans.get(key)
            if plan is None:
                executor = MigrationExecutor(connection)
                if set(executor.loader.applied_migrations) != _as_loaded(executor.loader, applied):
                    # Read again by the loader, the database has changed since: another
                    # migrator's work, which a plan for ``applied`` would repeat or skip.
                    raise TenancyError(
                        f"The applied migrations of database "
                        f"{connection.settings_dict['NAME']!r} changed while they were "
                        "read (another migrator at work); run migrate_tenants again."
                    )
                targets = executor.loader.graph.leaf_nodes()
                # Django's own step in `migrate` (private, unchanged from 4.x to 6.x).
                state = cast(Any, executor)._create_project_state(with_applied_migrations=True)
                state.apps  # noqa: B018 - render the models once, for every tenant
                steps = executor.migration_plan(targets)
                if for_template:
                    # What is left stays a valid forwards plan: nothing in it depends on
                    # a migration taken out.
                    per_tenant = per_tenant_migrations(executor.loader)
                    steps = [
                        (migration, backwards)
                        for migration, backwards in steps
                        if (migration.app_label, migration.name) not in per_tenant
                    ]
                plan = _Plan(executor.loader, targets, steps, state)
                self._plans[key] = plan
                if len(self._plans) > self.MAX_PLANS:
                    self._plans.popitem(last=False)
            self._plans.move_to_end(key)
            return plan

    def prepare(self, tenant: AbstractTenant) -> None:
        """Work out the plan of the databases with ``tenant``'s applied migrations (the
        graph and the project state before it, rendered) and its history check, as the
        first such database's run would: worker processes forked after this inherit it
        instead of each working it out again. A failure is left for the tenant's own run
        to report. (The states of each operation are left to each process's first
        tenant, after its ``pre_migrate``, whose receivers may add operations.)"""
        connection = connections[alias_for(tenant)]
        try:
            applied = applied_migrations(connection)
            if not self.pending(applied):
                return
            self.plan_for(connection, applied).check(connection)
        except Exception:
            return
        finally:
            connection.close()

    @cached_property
    def _loader(self) -> MigrationLoader:
        return MigrationLoader(None, ignore_no_migrations=True)

    def migrations(self, keys: Iterable[MigrationKey]) -> Iterator[Migration]:
        """The migrations of ``keys`` (graph nodes), and those a squashed one replaces
        (a database that has applied some of them runs the rest instead)."""
        found = self._loader.disk_migrations
        for key in keys:
            yield found[key]
            for replaced in self._replaces.get(key, ()):
                if replaced in found:
                    yield found[replaced]

    @property
    def unmigrated_apps(self) -> set[str]:
        return self._loader.unmigrated_apps

    @cached_property
    def nodes(self) -> frozenset[MigrationKey]:
        return frozenset(self._loader.graph.nodes)

    @cached_property
    def _replaces(self) -> dict[MigrationKey, tuple[MigrationKey, ...]]:
        return {key: tuple(m.replaces) for key, m in self._loader.replacements.items()}

    @cached_property
    def replaced(self) -> frozenset[MigrationKey]:
        """Migrations that squashed migrations in the graph replace."""
        return frozenset(key for keys in self._replaces.values() for key in keys)

    def per_tenant(self) -> frozenset[MigrationKey]:
        """The migrations a template database does not get (``per_tenant_migrations``)."""
        return per_tenant_migrations(self._loader)

    def pending(
        self, applied: set[MigrationKey], skipped: frozenset[MigrationKey] = frozenset()
    ) -> list[MigrationKey]:
        """Graph nodes not applied and not ``skipped`` (a squashed migration counts as
        applied when every migration it replaces is), in a stable order."""
        return sorted(
            node
            for node in self.nodes
            if node not in applied
            and node not in skipped
            and not (node in self._replaces and all(r in applied for r in self._replaces[node]))
        )


def _as_loaded(loader: MigrationLoader, applied: set[MigrationKey]) -> set[MigrationKey]:
    """``applied`` (rows of ``django_migrations``) as the loader counts them: a squashed
    migration is applied when every migration it replaces is, row or not."""
    found = set(applied)
    for key, migration in loader.replacements.items():
        if all(replaced in applied for replaced in migration.replaces):
            found.add(key)
        else:
            found.discard(key)
    return found


def per_tenant_migrations(loader: MigrationLoader) -> frozenset[MigrationKey]:
    """Migrations of tenant apps that run Python code of the project's own (not Django's),
    and every migration that depends on one: they run in each tenant's own context, never
    in a template database whose rows every new tenant would get. (SQL and schema
    changes are the same in every tenant, so the template runs them.)"""
    graph = loader.graph
    labels = tenancy_settings.tenant_app_labels
    found: set[MigrationKey] = set()
    to_visit = [
        key
        for key, migration in graph.nodes.items()
        if key[0] in labels and any(map(_runs_python, migration.operations))
    ]
    while to_visit:
        key = to_visit.pop()
        if key not in found:
            found.add(key)
            to_visit.extend(child.key for child in graph.node_map[key].children)
    return frozenset(found)


def _runs_python(operation: Operation) -> bool:
    if isinstance(operation, SeparateDatabaseAndState):
        return any(map(_runs_python, operation.database_operations))
    if isinstance(operation, RunPython):
        return not _djangos(operation.code)
    # Any other operation of a project's own that cannot be written as SQL.
    return not operation.reduces_to_sql and not _djangos(type(operation))


def _djangos(code: Any) -> bool:
    """Django's own migration code (its contrib apps' data migrations, ``RunPython.noop``,
    ``CreateExtension``...): it knows nothing of tenants, so it makes the same rows in
    every database, and a template database runs it for all of them."""
    return str(getattr(code, "__module__", "")).startswith("django.")


_state_lock = threading.Lock()
_state: MigrationState | None = None


def migration_state() -> MigrationState:
    """The graph shared by every migration in this process (reset by ``reset_state``)."""
    global _state
    with _state_lock:
        if _state is None:
            _state = MigrationState()
        return _state


def reset_state() -> None:
    """Forget the loaded graph, e.g. after migration files changed on disk."""
    global _state
    with _state_lock:
        _state = None


def applied_migrations(connection: BaseDatabaseWrapper) -> set[MigrationKey]:
    """The (app, name) rows of ``django_migrations``: one query; empty without the table."""
    recorder = _Recorder(connection)
    if connection.in_atomic_block and not recorder.has_table():
        return set()  # a failed read would end the transaction
    try:
        return set(recorder.migration_qs.values_list("app", "name"))
    except DatabaseError:
        if recorder.has_table():
            raise
        return set()


@contextmanager
def _run_lock(
    connection: BaseDatabaseWrapper, in_transaction: bool, *, wait: bool = True
) -> Iterator[bool]:
    """The migration lock of a run: with ``in_transaction``, taken in a transaction of
    the database's own connection that the block runs in, and released when it ends
    (the same lock as ``migration_lock``'s, without a connection of its own); otherwise
    ``migration_lock``."""
    if not in_transaction:
        with migration_lock(connection, wait=wait) as acquired:
            yield acquired
        return
    function = "pg_advisory_xact_lock" if wait else "pg_try_advisory_xact_lock"
    with transaction.atomic(using=connection.alias):
        with connection.cursor() as cursor:
            # What is read again under the lock must be read in a snapshot taken after
            # it, each statement's own, whatever the server's or the role's default
            # (default_transaction_isolation): before the transaction's first query.
            cursor.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
            cursor.execute(
                f"SELECT {function}(%s)", [lock_key(schema_of(connection.settings_dict))]
            )
            acquired = wait or bool(cursor.fetchone()[0])
        yield acquired


@contextmanager
def migration_lock(connection: BaseDatabaseWrapper, *, wait: bool = True) -> Iterator[bool]:
    """Hold the migration lock of ``connection``'s database; yields whether it was taken
    (always True when ``wait``)."""
    if connection.vendor == "postgresql":
        from tenancy.backends.postgresql import advisory_lock

        key = lock_key(schema_of(connection.settings_dict))
        with advisory_lock(connection.settings_dict, key, wait=wait) as acquired:
            yield acquired
        return
    if connection.is_in_memory_db():  # type: ignore[attr-defined]
        yield True  # no other process can reach it
        return
    # SQLite: an exclusive lock on a file beside the database.
    database = sqlite_path(str(connection.settings_dict["NAME"]))
    with file_lock(database.with_name(f"{database.name}.migrate-lock"), wait=wait) as acquired:
        yield acquired


UP_TO_DATE = "up-to-date"
MIGRATED = "migrated"
PENDING = "pending"
LOCKED = "locked"
FAILED = "failed"


@dataclass
class MigrationResult:
    """What happened to one database."""

    slug: str
    status: str
    applied: int = 0
    pending: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str = ""
    # What the database had applied when the run ended (None: not read), for the ledger.
    applied_set: frozenset[MigrationKey] | None = field(default=None, repr=False)
    read_at: float | None = field(default=None, repr=False)  # time.time() of that read

    @property
    def failed(self) -> bool:
        return self.status == FAILED

    def as_dict(self) -> dict[str, Any]:
        found = asdict(self)
        del found["applied_set"], found["read_at"]
        return found


def migrate_tenant(
    tenant: AbstractTenant,
    *,
    check_only: bool = False,
    wait_for_lock: bool = True,
    state: MigrationState | None = None,
    lock_timeout: float | None = None,
    record: bool = True,
) -> MigrationResult:
    """Bring ``tenant``'s database to the current schema; never raises for the tenant's
    own errors (they are in the result). ``check_only`` reports pending migrations only.
    ``lock_timeout`` (seconds, PostgreSQL): a migration that waits longer for a lock on a
    table fails, and nothing of the tenant's run is applied. The ledger is written unless
    ``record`` is false (a caller that writes it from ``result.applied_set`` itself).
    """
    started = time.monotonic()
    state = state or migration_state()
    result = MigrationResult(tenant.slug, FAILED)
    connection: BaseDatabaseWrapper | None = None
    is_template = getattr(tenant, "is_template", False)
    applied: set[MigrationKey] | None = None  # as the database has them now
    read_at = time.time()  # when ``applied`` was read last, for the ledger
    migrating = False
    ready_mark = None  # the tenant's new ready_lsn, when it changes
    try:
        connection = connections[alias_for(tenant)]
        skipped = state.per_tenant() if is_template else frozenset()
        read_at, applied = time.time(), applied_migrations(connection)
        if applied & skipped:
            raise TenancyError(
                f"The template database {tenant.database_name!r} has "
                f"{'.'.join(min(applied & skipped))} applied, which must run in each tenant; "
                "drop the template (tenancy.template_databases.drop_template_databases"
                f"({tenant.server!r})) and the next provisioning makes it again."
            )
        pending = state.pending(applied, skipped)
        if not pending:
            result.status = UP_TO_DATE
        elif check_only:
            result.status = PENDING
        else:
            in_transaction = in_one_transaction(
                connection,
                state.migrations(pending),
                state.unmigrated_apps,
                is_template,
            )
            with _run_lock(connection, in_transaction, wait=wait_for_lock) as acquired:
                if not acquired:
                    result.status = LOCKED
                else:
                    # Read again under the lock: another migrator may have finished.
                    read_at, applied = time.time(), applied_migrations(connection)
                    pending = state.pending(applied, skipped)
                    if pending:
                        before, applied = applied, None  # unknown until read again
                        migrating = True
                        token = ledger.in_tenancy_run.set(True)
                        try:
                            _run_migrate(
                                tenant,
                                connection,
                                state,
                                before,
                                is_template,
                                lock_timeout,
                                in_transaction,
                            )
                        finally:
                            ledger.in_tenancy_run.reset(token)
            if migrating:  # read after the run's transaction ended
                read_at, applied = time.time(), applied_migrations(connection)
                still_pending = state.pending(applied, skipped)
                result.applied = len(pending) - len(still_pending)
                if still_pending:
                    raise RuntimeError(
                        f"migrate left {len(still_pending)} migration(s) unapplied, "
                        f"first {still_pending[0]}"
                    )
                pending = still_pending
            if result.status != LOCKED:
                result.status = MIGRATED if result.applied else UP_TO_DATE
        if not check_only and result.status in (MIGRATED, UP_TO_DATE) and _in_ledger(tenant):
            ready_mark = _new_ready_mark(tenant, result)
        result.pending = [f"{app}.{name}" for app, name in pending]
    except Exception as exc:
        result.status = FAILED
        result.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if lock_timeout is not None and _waited_for_a_lock(exc):
            result.error = (
                f"a migration waited more than {lock_timeout:g}s for a lock on a busy table "
                "(--lock-timeout) and was rolled back with the tenant's whole run; run "
                "migrate_tenants again when the tenant is quieter"
            )
    finally:
        if connection is not None:
            # One connection per tenant at a time: close it before the next tenant.
            connection.close()
    result.seconds = round(time.monotonic() - started, 3)
    if result.failed and applied is None and migrating and connection is not None:
        read_at, applied = time.time(), _read_again(connection)
    result.applied_set = None if applied is None else frozenset(applied)
    result.read_at = read_at
    if record and _in_ledger(tenant):
        ledger.record_many([ledger.entry_of(tenant, result)])
    if ready_mark is not None:
        replicas.save_mark(tenant, ready_mark)
    return result


def check_schema_tenants(
    tenants: list[AbstractTenant], state: MigrationState
) -> tuple[list[MigrationResult], list[AbstractTenant]]:
    """``migrate_tenant(tenant, check_only=True)`` for the schema tenants of ``tenants``,
    a few queries for each 500 of a shared database: the server computes the fingerprint
    of each schema's applied migrations (``SchemaServer.migration_fingerprints``, the
    ledger's), and the rows of one schema per distinct fingerprint, read and fingerprinted
    here, say which set it is. Their results, and the tenants left to check one by one:
    of a database placement, without the table, whose set changed while it was read, or
    on a server that could not be read (the check one by one reports why)."""
    from tenancy.backends import get_server

    by_server: dict[str, list[AbstractTenant]] = {}
    rest: list[AbstractTenant] = []
    servers: dict[str, Any] = {}  # name -> the server, if it holds schemas
    for tenant in tenants:
        if tenant.server not in servers:
            try:
                server = get_server(tenant.server)
            except Exception:
                server = None
            servers[tenant.server] = server if server and server.holds_schemas else None
        holds_schemas = servers[tenant.server] is not None
        (by_server.setdefault(tenant.server, []) if holds_schemas else rest).append(tenant)
    results = []
    for name, group in by_server.items():
        server = servers[name]
        started, read_at = time.monotonic(), time.time()
        try:
            found = server.migration_fingerprints([tenant.database_name for tenant in group])
        except Exception:
            rest += group
            continue
        sets: dict[str, frozenset[MigrationKey] | None] = {}
        for tenant in group:
            fingerprint = found.get(tenant.database_name)
            if fingerprint is not None and fingerprint not in sets:
                sets[fingerprint] = _set_of(server, tenant.database_name, fingerprint)
            applied = None if fingerprint is None else sets[fingerprint]
            if applied is None:
                rest.append(tenant)
                continue
            pending = state.pending(set(applied))
            results.append(
                MigrationResult(
                    tenant.slug,
                    PENDING if pending else UP_TO_DATE,
                    pending=[f"{app}.{name}" for app, name in pending],
                    seconds=round((time.monotonic() - started) / len(group), 3),
                    applied_set=applied,
                    read_at=read_at,
                )
            )
    return results, rest


def _set_of(server: Any, schema: str, fingerprint: str) -> frozenset[MigrationKey] | None:
    """The applied migrations of ``schema``, if they are still the set ``fingerprint``."""
    try:
        applied = frozenset(server.migrations_of(schema))
    except Exception:
        return None
    return applied if ledger.fingerprint_of(applied) == fingerprint else None


def _new_ready_mark(tenant: AbstractTenant, result: MigrationResult) -> str | None:
    """``tenant``'s ``ready_lsn`` after this run, when it changes: migrations were
    applied, or none is recorded for its database on a server with read replicas."""
    if not replicas.replicated(tenant.server):
        return None
    if not result.applied and replicas.ready_position(tenant) is not None:
        return None
    return replicas.ready_mark(tenant)


def _in_ledger(tenant: AbstractTenant) -> bool:
    """Whether ``tenant`` is a registered tenant (not a template or a stand-in)."""
    return (
        getattr(tenant, "pk", None) is not None
        and not getattr(tenant, "is_template", False)
        and not getattr(tenant, "is_stand_in", False)
    )


def _read_again(connection: BaseDatabaseWrapper) -> set[MigrationKey] | None:
    """After a failed run: what the database has applied now (its transaction rolled
    back), ``None`` when it cannot be read."""
    try:
        return applied_migrations(connection)
    except Exception:
        return None
    finally:
        connection.close()


def _run_migrate(
    tenant: AbstractTenant,
    connection: BaseDatabaseWrapper,
    state: MigrationState,
    applied: set[MigrationKey],
    is_template: bool = False,
    lock_timeout: float | None = None,
    in_transaction: bool = False,
) -> None:
    """What Django's `migrate` command does for one database, with the loaded graph, the
    plan and the pre-migration project state shared between databases (computing the
    state from hundreds of applied migrations is most of `migrate`'s time).
    ``in_transaction``: the run is in the transaction its lock was taken in."""
    plan = state.plan_for(connection, applied, for_template=is_template)
    migrations = (migration for migration, _ in plan.plan)
    if in_transaction and not in_one_transaction(
        connection, migrations, plan.loader.unmigrated_apps, is_template
    ):
        raise TenancyError(
            f"The migrations of tenant {tenant.slug!r} changed while its migration lock was "
            "awaited; run migrate_tenants again."
        )
    # Inside the tenant's context, RunPython code that uses tenant models without
    # `using=` reaches this database and not NoTenantError; never a read replica, which
    # may not have replayed what the migration wrote.
    with tenant_context(tenant), replicas.use_primary():
        # Not for a template: Django's whole `migrate` would apply what must run per tenant.
        if not is_template and plan.loader.unmigrated_apps & tenancy_settings.tenant_app_labels:
            _call_migrate(connection)  # tables of apps without migrations need syncdb
            return
        plan.check(connection)
        connection.prepare_database()
        with (
            _all_or_nothing(connection, plan, in_transaction),
            _lock_timeout(connection, lock_timeout),
        ):
            quiet = {"stdout": io.StringIO(), "apps": plan.state.apps, "plan": plan.plan}
            # What pre_migrate adds to a migration whose steps are kept (contenttypes'
            # RenameContentType, once per database) would not run again: taken out again,
            # so that the plan's migrations do not grow with every database.
            with plan.steps_lock:
                kept = [(m, list(m.operations)) for m, _ in plan.plan if _key(m) in plan.steps]
            emit_pre_migrate_signal(0, False, connection.alias, **quiet)
            for migration, operations in kept:
                cast(list[Operation], migration.operations)[:] = operations
            executor = _SharedPlanExecutor(connection, plan.loader, plan, bool(applied))
            post_state = executor.migrate(plan.targets, plan=plan.plan, state=plan.state.clone())
            if plan.post_apps is None:
                post_state.clear_delayed_apps_cache()
                plan.post_apps = post_state.apps
            emit_post_migrate(
                connection.alias, plan.post_apps, stdout=quiet["stdout"], plan=plan.plan
            )


@contextmanager
def _all_or_nothing(
    connection: BaseDatabaseWrapper, plan: _Plan, in_transaction: bool = False
) -> Iterator[None]:
    """One transaction for a tenant's whole plan and its post_migrate handlers, where the
    database can roll DDL back and every migration of the plan is atomic.

    Django alone commits each migration before it records it when the migration has
    deferred SQL (indexes, foreign keys): a process killed in between leaves a migration
    applied but unrecorded, and every later run fails on "table already exists". In one
    transaction a killed migrator leaves the tenant exactly as it was before the run.
    A plan with a non-atomic migration (``atomic = False``, e.g. for
    ``CREATE INDEX CONCURRENTLY``) runs as Django runs it. ``in_transaction``: that
    transaction is open already (``_run_lock``).
    """
    if in_transaction:
        yield
        return
    if not connection.features.can_rollback_ddl or not all(
        migration.atomic for migration, _ in plan.plan
    ):
        yield
        return
    # SQLite cannot switch foreign key checks inside a transaction, and its schema
    # editor refuses to start with them on: switch them off around the transaction (each
    # schema change still checks the constraints before it ends).
    checks_disabled = connection.vendor == "sqlite" and connection.disable_constraint_checking()
    try:
        with transaction.atomic(using=connection.alias):
            yield
    finally:
        if checks_disabled:
            connection.enable_constraint_checking()


@contextmanager
def _lock_timeout(connection: BaseDatabaseWrapper, seconds: float | None) -> Iterator[None]:
    """PostgreSQL's ``lock_timeout`` for the block: for its transaction (``SET LOCAL``,
    which a pooler cannot hand on) in one, else for the session, reset afterwards."""
    if seconds is None or connection.vendor != "postgresql":
        yield
        return
    milliseconds = max(1, round(seconds * 1000))
    local = connection.in_atomic_block
    with connection.cursor() as cursor:
        cursor.execute(f"SET {'LOCAL ' if local else ''}lock_timeout = {milliseconds:d}")
    try:
        yield
    finally:
        # Behind a pooler in transaction mode a session setting would outlive the session.
        if not local and connection.connection is not None:
            with contextlib.suppress(DatabaseError), connection.cursor() as cursor:
                cursor.execute("RESET lock_timeout")


def _waited_for_a_lock(exc: BaseException) -> bool:
    """Whether PostgreSQL ended a statement at ``lock_timeout`` (SQLSTATE 55P03)."""
    seen: BaseException | None = exc
    for _ in range(10):  # a chain of causes, never a cycle
        if seen is None:
            return False
        if getattr(seen, "sqlstate", None) == "55P03":
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class _SharedPlanExecutor(MigrationExecutor):
    """An executor on an already loaded graph: MigrationExecutor.__init__ would load
    the graph from disk and the applied migrations from the database again."""

    def __init__(
        self,
        connection: BaseDatabaseWrapper,
        loader: MigrationLoader,
        plan: _Plan,
        has_table: bool = False,
    ) -> None:
        self.connection = connection
        self.loader = loader
        self.recorder = _Recorder(connection, has_table)
        self.progress_callback = None
        self.shared = plan

    def apply_migration(
        self,
        state: ProjectState,
        migration: Migration,
        fake: bool = False,
        fake_initial: bool = False,
    ) -> ProjectState:
        """``Migration.apply`` with the states of the plan's first database (see
        ``_Plan.steps``), then recorded as Django records it."""
        if fake or fake_initial:
            return super().apply_migration(state, migration, fake, fake_initial)
        operations, after = self._steps(state, migration)
        recorded = False
        with self.connection.schema_editor(atomic=migration.atomic) as schema_editor:
            for operation, before, changed in operations:
                atomic_operation = operation.atomic or (
                    migration.atomic and operation.atomic is not False
                )
                if not schema_editor.atomic_migration and atomic_operation:
                    with transaction.atomic(schema_editor.connection.alias):
                        operation.database_forwards(
                            migration.app_label, schema_editor, before, changed
                        )
                else:
                    operation.database_forwards(
                        migration.app_label, schema_editor, before, changed
                    )
            if not schema_editor.deferred_sql:
                self._record(migration)
                recorded = True
        if not recorded:
            self._record(migration)
        return after

    def _record(self, migration: Migration) -> None:
        """``record_migration``, which takes the migration before Django 6 and its app
        label and name since."""
        executor = cast(Any, self)
        if django.VERSION >= (6,):
            executor.record_migration(migration.app_label, migration.name)
        else:
            executor.record_migration(migration)

    def _steps(
        self, state: ProjectState, migration: Migration
    ) -> tuple[list[tuple[Operation, ProjectState, ProjectState]], ProjectState]:
        key = _key(migration)
        with self.shared.steps_lock:
            found = self.shared.steps.get(key)
            if found is None:
                # The states Migration.apply would make, kept apart from the caller's.
                current = state.clone()
                operations = []
                for operation in migration.operations:
                    before = current.clone()
                    if isinstance(operation, RunPython):
                        # RunPython drops a delayed state's models to render them afresh;
                        # this one is rendered afresh once (its models may lag behind a
                        # delayed change) and kept, for every database after the first.
                        before.__dict__.pop("apps", None)
                        before.is_delayed = False
                    operation.state_forwards(migration.app_label, current)
                    operations.append((operation, before, current.clone()))
                found = (operations, current)
                self.shared.steps[key] = found
        return found


def _key(migration: Migration) -> MigrationKey:
    return (migration.app_label, migration.name)


class _Recorder(MigrationRecorder):
    """A recorder that knows ``django_migrations`` exists when its rows were just read
    (``has_table``): Django asks by listing every table the search path sees, which in a
    shared database of 1,000 tenant schemas takes longer than a migration."""

    def __init__(self, connection: BaseDatabaseWrapper, has_table: bool = False) -> None:
        super().__init__(connection)
        self._known_table = has_table

    def has_table(self) -> bool:
        if self._known_table:
            return True
        if self.connection.vendor != "postgresql":
            return super().has_table()
        # The table the search path finds, as Django's list of visible tables would.
        with self.connection.cursor() as cursor:
            table = self.connection.ops.quote_name(self.Migration._meta.db_table)
            cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [table])
            self._known_table = bool(cursor.fetchone()[0])
        return self._known_table


def _call_migrate(connection: BaseDatabaseWrapper) -> None:
    call_command(
        "migrate",
        database=connection.alias,
        interactive=False,
        verbosity=0,
        stdout=io.StringIO(),
        skip_checks=True,
    )
