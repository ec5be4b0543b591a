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
from collections import Counter
from collections.abc import Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections, transaction
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

CURRENT = "current"
BEHIND = "behind"
FAILED = "failed"
UNKNOWN = "unknown"


def fingerprint_of(applied: Iterable[MigrationKey]) -> str:
    """The SHA-256 of the sorted ``app.name`` lines of a set of applied migrations."""
    lines = sorted(f"{app}.{name}" for app, name in applied)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def record(
    tenant: AbstractTenant,
    applied: set[MigrationKey] | frozenset[MigrationKey] | None,
    *,
    error: str = "",
    seconds: float = 0.0,
    known: dict[Any, tuple[str | None, str]] | None = None,
) -> bool:
    """Write ``tenant``'s entry: its ``applied`` migrations (``None``: its database could
    not be read, and nothing is known of it) and the run's ``error``. Nothing is
    written when ``known`` (tenant pk -> (fingerprint, error), read before and kept up
    to date here) says the entry holds that already. Whether the entry is right now: a
    write that fails is logged, and the entry removed if it can be (a tenant without
    one is never reported current), never raised."""
    fingerprint = None if applied is None else fingerprint_of(applied)
    if known is not None and known.get(tenant.pk) == (fingerprint, error):
        return True
    database = registry_database()
    try:
        with transaction.atomic(using=database):
            if applied is not None and fingerprint is not None:
                migrations = sorted(f"{app}.{name}" for app, name in applied)
                MigrationSet.objects.using(database).get_or_create(
                    fingerprint=fingerprint,
                    defaults={"migrations": json.dumps(migrations), "count": len(migrations)},
                )
            TenantMigrations.objects.using(database).update_or_create(
                tenant_id=tenant.pk,
                defaults={
                    "applied_id": fingerprint,
                    "error": error[:2000],
                    "seconds": seconds,
                    "recorded_at": timezone.now(),
                },
            )
    except DatabaseError:
        logger.exception("Tenant %s: the migration ledger was not written", tenant.slug)
        forget(tenant.pk)
        if known is not None:
            known.pop(tenant.pk, None)
        return False
    if known is not None:
        known[tenant.pk] = (fingerprint, error)
    return True


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
        applied = {tuple(name.split(".", 1)) for name in json.loads(migrations)}
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
