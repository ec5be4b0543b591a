"""The migration ledger: per tenant, in the main database, the migrations its database
had applied when tenancy last read or changed them, when, and the last run's error.

Status pages and checks read it instead of connecting to every tenant: the admin's list
(a constant number of queries whatever the page size), ``migrate_tenants --check``,
``--list`` and ``--plan`` (one query for the whole fleet), and ``fleet_summary``.

How it is kept true: ``migrate_tenant`` writes it after every run, migrating or only
checking, successful or not (provisioning, moves, restores and the admin's actions all go
through it), from what it read in the tenant's database after the run's transaction
ended; a ``migrate`` of Django's own on a tenant's connection (``tenant_command migrate``,
``call_command("migrate", database=...)``) is read back after it commits. What tenancy
cannot see, it cannot record: rows of ``django_migrations`` changed by hand, a database
restored by hand. ``migrate_tenants --verify`` reads every database again and corrects
the ledger. A write of the ledger that fails leaves the older entry, which can only show
a tenant behind (it never runs a migration backwards), except after a backwards
``migrate`` whose write failed: that is logged.

A tenant with no entry, or whose last run failed, is never reported current.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from typing import Any, cast

from django.conf import settings
from django.db import (
    DEFAULT_DB_ALIAS,
    DatabaseError,
    IntegrityError,
    connections,
    transaction,
)
from django.db.models import QuerySet
from django.utils import timezone

from tenancy.models import (
    MIGRATED_STATUSES,
    AbstractTenant,
    MigrationSet,
    TenantMigrations,
    get_tenant_model,
    registry_database,
)

logger = logging.getLogger("tenancy.ledger")

MigrationKey = tuple[str, str]


def migration_key(text: str) -> MigrationKey:
    """``(app, name)`` of a migration written ``app.name`` (no app label has a dot), as
    the ledger's migration sets and backups' manifests write them."""
    app, _, name = text.partition(".")
    return app, name


CURRENT = "current"
BEHIND = "behind"
FAILED = "failed"
UNKNOWN = "unknown"


def _lines(applied: Iterable[MigrationKey]) -> list[str]:
    """The sorted ``app.name`` lines of a set of applied migrations, as stored."""
    return sorted(f"{app}.{name}" for app, name in applied)


def fingerprint_of(applied: Iterable[MigrationKey]) -> str:
    """The SHA-256 of the sorted ``app.name`` lines of a set of applied migrations."""
    return hashlib.sha256("\n".join(_lines(applied)).encode()).hexdigest()


@dataclass
class Entry:
    """A tenant's entry to write: its ``applied`` migrations (``None``: its database could
    not be read, and nothing is known of it) and the run's ``error``."""

    tenant: AbstractTenant
    applied: set[MigrationKey] | frozenset[MigrationKey] | None
    error: str = ""
    seconds: float = 0.0
    # When the database was read (None: now). An entry read before the one the ledger
    # holds (another process's, written meanwhile) does not replace it.
    read_at: datetime | None = None

    @cached_property
    def fingerprint(self) -> str | None:
        return None if self.applied is None else fingerprint_of(self.applied)


def entry_of(tenant: AbstractTenant, result: Any) -> Entry:
    """The entry of ``migrate_tenant``'s ``result`` for ``tenant``."""
    read_at = None
    if result.read_at is not None:  # a time.time(), as timezone.now() would give it
        zone = UTC if settings.USE_TZ else None
        read_at = datetime.fromtimestamp(result.read_at, zone)
    return Entry(tenant, result.applied_set, result.error, result.seconds, read_at)


def record(
    tenant: AbstractTenant,
    applied: set[MigrationKey] | frozenset[MigrationKey] | None,
    *,
    error: str = "",
    seconds: float = 0.0,
    known: dict[Any, tuple[str | None, str]] | None = None,
) -> bool:
    """Write ``tenant``'s entry (``Entry``). Nothing is written when ``known`` (tenant
    pk -> (fingerprint, error), read before and kept up to date here) says the entry
    holds that already. Whether the entry is right now: a write that fails is logged,
    and the entry removed if it can be (a tenant without one is never reported current),
    never raised."""
    return not record_many([Entry(tenant, applied, error, seconds, timezone.now())], known)


def record_many(
    entries: list[Entry], known: dict[Any, tuple[str | None, str]] | None = None
) -> list[AbstractTenant]:
    """``record`` for several tenants at once: one transaction of two statements, or of
    one per entry when that fails (a tenant deleted meanwhile fails alone). The tenants
    whose entry could not be written."""
    now = timezone.now()
    latest: dict[Any, Entry] = {}  # each tenant's entry read last
    for entry in entries:
        held = latest.get(entry.tenant.pk)
        if held is None or (entry.read_at or now) >= (held.read_at or now):
            latest[entry.tenant.pk] = entry
    entries = list(latest.values())
    if known is not None:
        entries = [e for e in entries if known.get(e.tenant.pk) != (e.fingerprint, e.error)]
    if not entries:
        return []
    try:
        _write(entries)
        failed = []
    except DatabaseError:
        failed = [entry for entry in entries if not _write_alone(entry)]
    if known is not None:
        unwritten = {entry.tenant.pk for entry in failed}
        for entry in entries:
            if entry.tenant.pk in unwritten:
                known.pop(entry.tenant.pk, None)
            else:
                known[entry.tenant.pk] = (entry.fingerprint, entry.error)
    return [entry.tenant for entry in failed]


# The migration sets this process wrote or found (registry alias, its database, the
# fingerprint). A set is never changed or deleted, so an entry naming one of these is
# written alone, outside a transaction: one statement. Should the set be gone all the
# same (a test run's flushed tables), the entry's foreign key fails at once, and the
# entry is written again with its set.
_stored: set[tuple[str, str, str]] = set()


def _write(entries: list[Entry]) -> None:
    """The entries: each tenant's entry, unless the ledger holds one read later than it
    (``INSERT ... ON CONFLICT DO UPDATE ... WHERE``, PostgreSQL's and SQLite's), after
    their sets in the same transaction, or in one statement alone when the sets are
    stored already (``_stored``)."""
    database = registry_database()
    connection = connections[database]
    place = (database, str(connection.settings_dict["NAME"]))
    sets = {e.fingerprint: e.applied for e in entries if e.fingerprint and e.applied is not None}
    if not connection.in_atomic_block and all((*place, f) in _stored for f in sets):
        try:
            _write_entries(entries, connection)
            return
        except IntegrityError:
            _stored.difference_update((*place, f) for f in sets)
    _write_with_sets(entries, connection, sets)
    _stored.update((*place, f) for f in sets)


def _write_with_sets(
    entries: list[Entry], connection: Any, sets: Mapping[str, Iterable[MigrationKey]]
) -> None:
    database = connection.alias
    with transaction.atomic(using=database):
        if sets:
            found = []
            for fingerprint, applied in sets.items():
                migrations = _lines(applied)
                found.append(
                    MigrationSet(
                        fingerprint=fingerprint,
                        migrations=json.dumps(migrations),
                        count=len(migrations),
                    )
                )
            MigrationSet.objects.using(database).bulk_create(found, ignore_conflicts=True)
        _write_entries(entries, connection)


def _write_entries(entries: list[Entry], connection: Any) -> None:
    now = timezone.now()
    quote = connection.ops.quote_name
    table = quote(TenantMigrations._meta.db_table)
    fields = ("tenant", "applied", "error", "seconds", "recorded_at")
    columns = [
        quote(cast(str, cast(Any, TenantMigrations._meta.get_field(name)).column))
        for name in fields
    ]
    tenant_column, recorded_column = columns[0], columns[-1]
    rows = [
        (
            entry.tenant.pk,
            entry.fingerprint,
            entry.error[:2000],
            entry.seconds,
            connection.ops.adapt_datetimefield_value(entry.read_at or now),
        )
        for entry in entries
    ]
    statement = (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
        + ", ".join(["(%s, %s, %s, %s, %s)"] * len(rows))
        + f" ON CONFLICT ({tenant_column}) DO UPDATE SET "
        + ", ".join(f"{column} = excluded.{column}" for column in columns[1:])
        + f" WHERE {table}.{recorded_column} <= excluded.{recorded_column}"
    )
    with connection.cursor() as cursor:
        cursor.execute(statement, [value for row in rows for value in row])


def _write_alone(entry: Entry) -> bool:
    try:
        _write([entry])
    except DatabaseError:
        logger.exception("Tenant %s: the migration ledger was not written", entry.tenant.slug)
        forget(entry.tenant.pk)
        return False
    return True


class Batch:
    """Entries of a fleet run written together (``record_many``): when ``size`` are
    waiting, when one more comes ``seconds`` or more after the oldest waiting one, and at
    ``flush``. An entry not written yet leaves the tenant's older one, which a run of
    ``migrate_tenants`` can only show behind (it migrates forwards); an entry written
    late never replaces one read after it. ``unrecorded``: the tenants whose write
    failed."""

    def __init__(
        self,
        known: dict[Any, tuple[str | None, str]] | None,
        size: int = 100,
        seconds: float = 1.0,
    ) -> None:
        self.known = known
        self.size = size
        self.seconds = seconds
        self.waiting: list[Entry] = []
        self.since = 0.0
        self.unrecorded: list[AbstractTenant] = []

    def add(self, entry: Entry) -> None:
        if not self.waiting:
            self.since = time.monotonic()
        self.waiting.append(entry)
        if len(self.waiting) >= self.size or time.monotonic() - self.since >= self.seconds:
            self.flush()

    def flush(self) -> None:
        waiting, self.waiting = self.waiting, []
        self.unrecorded += record_many(waiting, self.known)


def forget(tenant_pk: Any) -> None:
    """Remove a tenant's entry (it is then "never read", never current); logged when even
    that fails."""
    try:
        TenantMigrations.objects.using(registry_database()).filter(tenant_id=tenant_pk).delete()
    except DatabaseError:
        logger.exception("The migration ledger entry of tenant %s was not removed", tenant_pk)


# Set while tenancy's own migrate_tenant runs, which records the ledger itself.
in_tenancy_run: ContextVar[bool] = ContextVar("tenancy_ledger_run", default=False)


def unread_before_migrate(using: str = DEFAULT_DB_ALIAS, **kwargs: Any) -> None:
    """``pre_migrate``: before a ``migrate`` of Django's own on a tenant's connection,
    whose migrations commit one by one, the tenant's entry says nothing is known (a
    migrate that fails half-way, or is killed, leaves it so); ``record_after_migrate``
    records what it did."""
    from tenancy.connections import tenant_of_alias

    slug = tenant_of_alias(using)
    if slug is None or in_tenancy_run.get():
        return
    tenant = get_tenant_model()._default_manager.filter(slug=slug).first()
    if tenant is not None:
        record(tenant, None, error="a migrate of Django's own started and did not finish")


def record_after_migrate(using: str = DEFAULT_DB_ALIAS, **kwargs: Any) -> None:
    """``post_migrate`` (sent once per ``migrate`` for tenancy's app): a ``migrate`` of
    Django's own on a tenant's connection is recorded once it has committed."""
    from tenancy.connections import tenant_of_alias
    from tenancy.migration import applied_migrations

    slug = tenant_of_alias(using)
    if slug is None or in_tenancy_run.get():
        return

    def read_back() -> None:
        tenant = get_tenant_model()._default_manager.filter(slug=slug).first()
        if tenant is None:
            return
        try:
            applied = applied_migrations(connections[using])
        except DatabaseError:
            logger.exception("Tenant %s: the ledger could not read its migrations", slug)
            applied = None
        record(tenant, applied, error="" if applied is not None else "not read after migrate")

    transaction.on_commit(read_back, using=using)


def known_entries() -> dict[Any, tuple[str | None, str]]:
    """tenant pk -> (fingerprint, error) of the ledger, in one query (for ``record``)."""
    rows = TenantMigrations.objects.using(registry_database())
    return {
        pk: (applied, error)
        for pk, applied, error in rows.values_list("tenant_id", "applied_id", "error")
    }


@dataclass
class LedgerState:
    """A tenant's migration state as the ledger has it."""

    status: str  # CURRENT, BEHIND, FAILED or UNKNOWN
    applied: int = 0
    pending: list[str] | None = None
    error: str = ""
    recorded_at: Any = None


def _pending_of(state: Any, fingerprint: str, migrations: str | None) -> list[str]:
    """What the code's graph (``state``) has that migration set ``fingerprint`` lacks,
    computed once per set and kept on the state (a fleet has a few sets)."""
    cache: dict[str, list[str]] = state.pending_by_set
    found = cache.get(fingerprint)
    if found is None:
        if migrations is None:
            migrations = (
                MigrationSet.objects.using(registry_database())
                .values_list("migrations", flat=True)
                .get(pk=fingerprint)
            )
        applied = {migration_key(name) for name in json.loads(migrations)}
        found = [f"{app}.{name}" for app, name in state.pending(applied)]
        cache[fingerprint] = found
    return found


def states(tenants: Iterable[AbstractTenant], state: Any = None) -> dict[Any, LedgerState]:
    """tenant pk -> its ``LedgerState``: one query for the entries, and one per migration
    set this process has not seen with this graph."""
    from tenancy.migration import migration_state

    state = state or migration_state()
    rows = TenantMigrations.objects.using(registry_database())
    if isinstance(tenants, QuerySet):  # a fleet: a subquery, not thousands of ids
        ids = list(tenants.values_list("pk", flat=True))
        rows = rows.filter(tenant_id__in=tenants.values("pk"))
    else:
        ids = [tenant.pk for tenant in tenants]
        rows = rows.filter(tenant_id__in=ids)
    entries = {
        row["tenant_id"]: row
        for row in rows.values("tenant_id", "applied_id", "applied__count", "error", "recorded_at")
    }
    found = {}
    for pk in ids:
        entry = entries.get(pk)
        if entry is None:
            found[pk] = LedgerState(UNKNOWN)
            continue
        found[pk] = _state_of(entry, state)
    return found


def _state_of(entry: Any, state: Any) -> LedgerState:
    found = state_for(entry["applied_id"], entry["error"], entry["recorded_at"], state)
    found.applied = entry["applied__count"] or 0
    return found


def state_for(
    applied: str | None, error: str | None, recorded_at: Any = None, state: Any = None
) -> LedgerState:
    """The ``LedgerState`` of an entry's values (``applied``: its set's fingerprint);
    ``UNKNOWN`` for a tenant without an entry (both ``None``)."""
    from tenancy.migration import migration_state

    if applied is None:
        return LedgerState(
            FAILED if error else UNKNOWN, error=error or "", recorded_at=recorded_at
        )
    pending = _pending_of(state or migration_state(), applied, None)
    status = FAILED if error else (BEHIND if pending else CURRENT)
    return LedgerState(status, 0, pending, error or "", recorded_at)


def fleet_summary(tenants: Any = None, state: Any = None) -> dict[str, Any]:
    """How many tenants (default: active and suspended) are at which state, from the
    ledger: ``{"tenants": N, "current": .., "behind": .., "failed": .., "unknown": ..,
    "errors": {slug: error, ...} (the first ten)}``."""
    if tenants is None:
        tenants = get_tenant_model()._default_manager.filter(status__in=MIGRATED_STATUSES)
    found = states(tenants, state)
    counts = Counter(entry.status for entry in found.values())
    failed = [pk for pk, entry in found.items() if entry.status == FAILED]
    slugs = dict(tenants.filter(pk__in=failed[:10]).values_list("pk", "slug"))
    errors = {slugs[pk]: found[pk].error for pk in failed[:10] if pk in slugs}
    return {
        "tenants": len(found),
        **{status: counts[status] for status in (CURRENT, BEHIND, FAILED, UNKNOWN)},
        "errors": dict(list(errors.items())[:10]),
    }


def summary_line(summary: dict[str, Any]) -> str:
    """The fleet summary in one line."""
    line = (
        f"{summary['tenants']} tenant(s): {summary['current']} current, {summary['behind']} "
        f"behind, {summary['failed']} failed, {summary['unknown']} never read"
    )
    if summary["errors"]:
        slug, error = next(iter(summary["errors"].items()))
        line += f" (first failure: {slug}: {error[:200]})"
    return line + "."


__all__ = [
    "BEHIND",
    "CURRENT",
    "FAILED",
    "UNKNOWN",
    "LedgerState",
    "fingerprint_of",
    "fleet_summary",
    "forget",
    "known_entries",
    "record",
    "state_for",
    "states",
    "summary_line",
]
