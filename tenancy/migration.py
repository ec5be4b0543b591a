"""Migrating tenant databases: the graph loaded once, an up-to-date tenant in one query.

``migrate_tenant`` reads a tenant's ``django_migrations`` rows and compares them with the
migration graph loaded once per process. Only a tenant with unapplied migrations gets
Django's ``migrate``, under a lock held in that tenant's database (PostgreSQL advisory
lock, SQLite file lock), so two migrators never work on one database at once.
"""

from __future__ import annotations

import fcntl
import io
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from django.core.management import call_command
from django.db import DatabaseError, connections
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.recorder import MigrationRecorder

from tenancy.connections import alias_for
from tenancy.context import tenant_context

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

    from tenancy.models import AbstractTenant

# pg_advisory_lock key: the bytes of "tenancy" as a bigint. Advisory locks are scoped to
# one database, so the same key in every tenant database locks only that database.
LOCK_KEY = int.from_bytes(b"tenancy", "big")

MigrationKey = tuple[str, str]


class MigrationState:
    """The project's migration graph, loaded from disk once."""

    @cached_property
    def _loader(self) -> MigrationLoader:
        return MigrationLoader(None, ignore_no_migrations=True)

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

    def pending(self, applied: set[MigrationKey]) -> list[MigrationKey]:
        """Graph nodes not applied (a squashed migration counts as applied when every
        migration it replaces is), in a stable order."""
        return sorted(
            node
            for node in self.nodes
            if node not in applied
            and not (node in self._replaces and all(r in applied for r in self._replaces[node]))
        )


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
    recorder = MigrationRecorder(connection)
    try:
        return set(recorder.migration_qs.values_list("app", "name"))
    except DatabaseError:
        if recorder.has_table():
            raise
        return set()


@contextmanager
def migration_lock(connection: BaseDatabaseWrapper, *, wait: bool = True) -> Iterator[bool]:
    """Hold the migration lock of ``connection``'s database; yields whether it was taken
    (always True when ``wait``)."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            function = "pg_advisory_lock" if wait else "pg_try_advisory_lock"
            cursor.execute(f"SELECT {function}(%s)", [LOCK_KEY])
            acquired = wait or bool(cursor.fetchone()[0])
        try:
            yield acquired
        finally:
            if acquired and connection.is_usable():
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_advisory_unlock(%s)", [LOCK_KEY])
        return
    # SQLite: an exclusive lock on a file beside the database.
    path = Path(f"{connection.settings_dict['NAME']}.migrate-lock")
    with path.open("a") as lock_file:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


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

    @property
    def failed(self) -> bool:
        return self.status == FAILED

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def migrate_tenant(
    tenant: AbstractTenant,
    *,
    check_only: bool = False,
    wait_for_lock: bool = True,
    state: MigrationState | None = None,
) -> MigrationResult:
    """Bring ``tenant``'s database to the current schema; never raises for the tenant's
    own errors (they are in the result). ``check_only`` reports pending migrations only.
    """
    started = time.monotonic()
    state = state or migration_state()
    result = MigrationResult(tenant.slug, FAILED)
    connection: BaseDatabaseWrapper | None = None
    try:
        connection = connections[alias_for(tenant)]
        pending = state.pending(applied_migrations(connection))
        if not pending:
            result.status = UP_TO_DATE
        elif check_only:
            result.status = PENDING
        else:
            with migration_lock(connection, wait=wait_for_lock) as acquired:
                if not acquired:
                    result.status = LOCKED
                else:
                    # Read again under the lock: another migrator may have finished.
                    pending = state.pending(applied_migrations(connection))
                    if pending:
                        _run_migrate(tenant, connection)
                        still_pending = state.pending(applied_migrations(connection))
                        result.applied = len(pending) - len(still_pending)
                        if still_pending:
                            raise RuntimeError(
                                f"migrate left {len(still_pending)} migration(s) unapplied, "
                                f"first {still_pending[0]}"
                            )
                        pending = still_pending
                    result.status = MIGRATED if result.applied else UP_TO_DATE
        result.pending = [f"{app}.{name}" for app, name in pending]
    except Exception as exc:
        result.status = FAILED
        result.error = f"{type(exc).__name__}: {exc}".strip()
    finally:
        if connection is not None:
            # One connection per tenant at a time: close it before the next tenant.
            connection.close()
    result.seconds = round(time.monotonic() - started, 3)
    return result


def _run_migrate(tenant: AbstractTenant, connection: BaseDatabaseWrapper) -> None:
    # Inside the tenant's context, RunPython code that uses tenant models without
    # `using=` reaches this database and not NoTenantError.
    with tenant_context(tenant):
        call_command(
            "migrate",
            database=connection.alias,
            interactive=False,
            verbosity=0,
            stdout=io.StringIO(),
            skip_checks=True,
        )
