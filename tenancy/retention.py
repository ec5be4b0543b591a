"""Deleting a tenant with a grace period: archived first, its data removed days later.

``archive_tenant`` takes a tenant out of service without dropping anything: it is marked
``archived`` with the date its data is kept until (``retained_until``), every process
answers its requests with 404 as for an unknown host, and its database is made read-only.
Its slug, database and domains stay taken meanwhile, so nobody else can claim them.
``reactivate_tenant`` brings it back before that date (migrated to the current schema);
``purge_tenants``, run daily (cron, a scheduled task), removes the tenants whose date has
passed as ``deprovision_tenant`` removes a tenant::

    archive_tenant(tenant, days=30)     # delete_tenant SLUG --retain 30
    reactivate_tenant("acme")           # reactivate_tenant acme
    purge_tenants()                     # purge_tenants --noinput
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from pathlib import Path

from django.db import DatabaseError
from django.db.models import QuerySet
from django.utils import timezone

from tenancy import replicas
from tenancy.backends import get_server
from tenancy.backups import BackupError, backup_locked, restore_locked
from tenancy.conf import tenancy_settings
from tenancy.connections import unregister
from tenancy.exceptions import TenancyError, one_line
from tenancy.migration import migrate_tenant
from tenancy.models import AbstractTenant, TenantStatus, get_tenant_model
from tenancy.provisioning import _deprovision, locked_tenant
from tenancy.registry_cache import wait_for_other_processes

logger = logging.getLogger("tenancy.retention")

# The statuses a tenant is archived from: in use, or given up on (a failed provisioning).
# A tenant being provisioned, deleted, moved or restored finishes that first.
ARCHIVABLE_STATUSES = (TenantStatus.ACTIVE, TenantStatus.SUSPENDED, TenantStatus.FAILED)


class RetentionError(TenancyError):
    """Archiving, reactivating or purging a tenant was refused or failed."""


class PurgeError(RetentionError):
    """Some of the tenants due could not be purged; the others were. ``purged``: their
    slugs; ``failures``: slug -> why, for the others."""

    def __init__(self, purged: list[str], failures: dict[str, str]) -> None:
        self.purged, self.failures = purged, failures
        slug, reason = next(iter(failures.items()))
        super().__init__(
            f"{len(failures)} tenant(s) due could not be purged ({', '.join(failures)}), "
            f"{len(purged)} purged. Tenant {slug!r}: {reason}"
        )


def archive_tenant(tenant: AbstractTenant | str, days: int) -> AbstractTenant:
    """Take ``tenant`` out of service and keep its data, read-only, for ``days`` days
    (``purge_tenants`` removes it afterwards); returns the tenant as archived::

        archive_tenant(tenant, days=30)

    Only an active, suspended or failed tenant is archived. The tenant's requests are
    answered with 404 in every process once this returns; its domains stay attached to it.
    """
    slug = tenant if isinstance(tenant, str) else tenant.slug
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise RetentionError(
            f"Tenant {slug!r} is not archived: keep its data for a whole number of days, 1 "
            f"or more, not {days!r} (0 days is deleting it now: delete_tenant --retain 0)."
        )
    now = timezone.now()
    try:
        until = now + timedelta(days=days)
    except OverflowError:
        raise RetentionError(
            f"Tenant {slug!r} is not archived: {days} days is past the last date there is."
        ) from None
    with locked_tenant(tenant, "archived") as current:
        if current.status not in ARCHIVABLE_STATUSES:
            raise _not_archivable(current)
        previous = (current.status, current.status_detail)
        detail = f"archived from {current.status} on {format_when(now)}"
        type(current)._default_manager.filter(pk=current.pk).update(
            status=TenantStatus.ARCHIVED, status_detail=detail, retained_until=until
        )
        current.status, current.status_detail, current.retained_until = (
            TenantStatus.ARCHIVED,
            detail,
            until,
        )
        # Every process answers 404 from now on, and this one's connections close.
        wait_for_other_processes()
        unregister(current)
        directory = tenancy_settings.RETENTION_BACKUP_DIRECTORY
        if directory is not None:
            _retain_as_backup(current, directory, previous)
            return current
        try:
            _keep_read_only(current)
        except Exception as exc:
            raise RetentionError(
                f"Tenant {slug!r} is archived (not served, its data kept until "
                f"{format_when(until)}), but its database {current.database_name!r} on "
                f"server {current.server!r} could not be made read-only "
                f"({one_line(exc)}); make it read-only by hand, or run `manage.py "
                f"reactivate_tenant {slug}` and archive it again once the server answers."
            ) from exc
    return current


def reactivate_tenant(tenant: AbstractTenant | str) -> AbstractTenant:
    """Serve an archived tenant again: its database made writable and migrated to the
    current schema, then the tenant active; returns it::

        reactivate_tenant("acme")

    A migration that fails leaves the tenant archived, its database read-only again.
    """
    with locked_tenant(tenant, "reactivated") as current:
        slug = current.slug
        if current.status != TenantStatus.ARCHIVED:
            raise RetentionError(
                f"Tenant {slug!r} is {current.status}, not archived; only an archived tenant "
                "is reactivated."
            )
        server = get_server(current.server)
        if current.retained_backup:
            return _reactivate_from_backup(current)
        if not server.database_exists(current.database_name):
            raise RetentionError(
                f"Tenant {slug!r} cannot be reactivated: its database "
                f"{current.database_name!r} on server {current.server!r} does not exist any "
                f"more. Restore it from a backup into that name, or remove the tenant with "
                f"`manage.py delete_tenant {slug} --retain 0`."
            )
        try:
            if not server.holds_schemas:
                server.allow_writes(current.database_name)
        except (DatabaseError, OSError) as exc:
            raise RetentionError(
                f"Tenant {slug!r} stays archived: its database could not be made writable "
                f"({one_line(exc)}). Run `manage.py reactivate_tenant {slug}` again once "
                f"server {current.server!r} answers."
            ) from exc
        # migrate_tenants leaves archived tenants out: it may be behind.
        result = migrate_tenant(current)
        if result.failed:
            unregister(current)
            try:
                _keep_read_only(current)
            except (DatabaseError, OSError):
                logger.exception("Tenant %s: its database stays writable", slug)
            raise RetentionError(
                f"Tenant {slug!r} stays archived: migrating its database failed "
                f"({one_line(result.error)}). Fix the cause and run `manage.py "
                f"reactivate_tenant {slug}` again."
            )
        current.ready_lsn = replicas.ready_mark(current)  # served as it is from now
        type(current)._default_manager.filter(pk=current.pk).update(
            status=TenantStatus.ACTIVE,
            status_detail="",
            retained_until=None,
            ready_lsn=current.ready_lsn,
        )
        current.status, current.status_detail, current.retained_until = (
            TenantStatus.ACTIVE,
            "",
            None,
        )
    return current


def tenants_due(now: datetime | None = None) -> QuerySet[AbstractTenant]:
    """The archived tenants whose data is kept until ``now`` (default: now) or before, by
    slug. An archived tenant without a date is kept."""
    return (
        get_tenant_model()
        ._default_manager.filter(
            status=TenantStatus.ARCHIVED, retained_until__lte=now or timezone.now()
        )
        .order_by("slug")
    )


def purge_tenant(tenant: AbstractTenant | str, now: datetime | None = None) -> None:
    """Remove an archived tenant whose retention has ended by ``now`` (default: now): its
    database dropped, its row and domains deleted, as ``deprovision_tenant`` does.
    ``RetentionError`` for a tenant that is not archived, or whose date is later."""
    now = now or timezone.now()
    with locked_tenant(tenant, "purged") as current:
        # Read under the lock: it may have been reactivated since it was listed.
        until = current.retained_until
        if current.status != TenantStatus.ARCHIVED or until is None or until > now:
            kept = f", kept until {format_when(until)}" if until is not None else ""
            raise RetentionError(
                f"Tenant {current.slug!r} is not purged: it is {current.status}{kept}."
            )
        _deprovision(current, keep_database=False)
        if current.retained_backup:
            _remove_retained_backup(current)


def purge_tenants(now: datetime | None = None, *, dry_run: bool = False) -> list[str]:
    """Remove every archived tenant whose retention has ended by ``now`` (default: now);
    the slugs removed, or with ``dry_run`` the slugs that would be::

        purge_tenants()                  # daily, from cron or a scheduled task

    A tenant that fails does not stop the others: ``PurgeError`` afterwards names the
    failures (and the slugs purged).
    """
    now = now or timezone.now()
    slugs = list(tenants_due(now).values_list("slug", flat=True))
    if dry_run:
        return slugs
    purged, failures = [], {}
    for slug in slugs:
        try:
            purge_tenant(slug, now)
        except Exception as exc:
            logger.error("Tenant %s could not be purged: %s", slug, exc)
            failures[slug] = one_line(exc)
        else:
            purged.append(slug)
    if failures:
        raise PurgeError(purged, failures)
    return purged


def format_when(moment: datetime) -> str:
    """A date and time for messages, in the current time zone: ``2026-01-31 14:05 UTC``."""
    if timezone.is_aware(moment):
        moment = timezone.localtime(moment)
    return moment.strftime("%Y-%m-%d %H:%M %Z").strip()


def _keep_read_only(tenant: AbstractTenant) -> None:
    """Nothing writes to the tenant's retained data: new sessions are read-only, and the
    sessions opened before end (PostgreSQL), or the file is read-only (SQLite). A schema
    of a shared database cannot be made read-only on its own: it is left as it is."""
    server = get_server(tenant.server)
    if server.holds_schemas or not server.database_exists(tenant.database_name):
        return
    server.keep_read_only(tenant.database_name)
    server.end_sessions(tenant.database_name)


def _retain_as_backup(tenant: AbstractTenant, directory: Path, previous: tuple[str, str]) -> None:
    """Keep the archived tenant's data as a backup in ``directory`` (its path recorded on
    the tenant), then drop its database. A backup that fails gives the tenant its status
    and detail back (``previous``): nothing was archived."""
    slug, server = tenant.slug, get_server(tenant.server)
    if not server.database_exists(tenant.database_name):
        return  # nothing to keep (a provisioning that failed before making it)
    try:
        report = backup_locked(tenant, directory)
    except BackupError as exc:
        status, detail = previous
        type(tenant)._default_manager.filter(pk=tenant.pk).update(
            status=status, status_detail=detail, retained_until=None
        )
        tenant.status, tenant.status_detail, tenant.retained_until = status, detail, None
        raise RetentionError(
            f"Tenant {slug!r} is not archived, it is {status} as before: its backup into "
            f"{directory} failed ({exc})."
        ) from exc
    type(tenant)._default_manager.filter(pk=tenant.pk).update(retained_backup=report.path)
    tenant.retained_backup = report.path
    # The backup is linked into place and synced, and recorded: the database can go. A
    # crash before the drop leaves both; reactivating or purging handles either.
    server.drop_database(tenant.database_name)


def _reactivate_from_backup(tenant: AbstractTenant) -> AbstractTenant:
    """The archived tenant's database made again from its backup (migrated forward), the
    tenant active, the backup file removed."""
    slug = tenant.slug
    try:
        restore_locked(tenant, tenant.retained_backup)
    except BackupError as exc:
        raise RetentionError(
            f"Tenant {slug!r} stays archived: restoring its backup {tenant.retained_backup} "
            f"failed ({exc}). Fix the cause and run `manage.py reactivate_tenant {slug}` again."
        ) from exc
    retained = Path(tenant.retained_backup)
    # Its database was made again from the backup: replicas serve it once they have that.
    tenant.ready_lsn = replicas.ready_mark(tenant)
    type(tenant)._default_manager.filter(pk=tenant.pk).update(
        status=TenantStatus.ACTIVE,
        status_detail="",
        retained_until=None,
        retained_backup="",
        ready_lsn=tenant.ready_lsn,
    )
    tenant.status, tenant.status_detail, tenant.retained_until, tenant.retained_backup = (
        TenantStatus.ACTIVE,
        "",
        None,
        "",
    )
    _remove_retained_backup(tenant, retained)
    return tenant


def _remove_retained_backup(tenant: AbstractTenant, path: Path | None = None) -> None:
    """Remove the tenant's retained backup: only a file retention wrote (named for the
    tenant, in RETENTION_BACKUP_DIRECTORY); anything else the row names is left, logged."""
    path = path or Path(tenant.retained_backup)
    directory = tenancy_settings.RETENTION_BACKUP_DIRECTORY
    if (
        directory is None
        or path.resolve().parent != directory.resolve()
        or not path.name.startswith(f"{tenant.slug}-")
        or not path.name.endswith(".tar")
    ):
        logger.warning(
            "Tenant %s: its retained backup %s is not a file of RETENTION_BACKUP_DIRECTORY "
            "named for it; it is left where it is",
            tenant.slug,
            path,
        )
        return
    path.unlink(missing_ok=True)


def _not_archivable(tenant: AbstractTenant) -> RetentionError:
    slug = tenant.slug
    if tenant.status == TenantStatus.ARCHIVED:
        until = tenant.retained_until
        kept = f"until {format_when(until)}" if until is not None else "with no date"
        return RetentionError(
            f"Tenant {slug!r} is archived already, its data kept {kept}. "
            f"`manage.py reactivate_tenant {slug}` brings it back; "
            f"`manage.py delete_tenant {slug} --retain 0` removes it now."
        )
    if tenant.status == TenantStatus.DELETING:
        return RetentionError(
            f"Tenant {slug!r} is being deleted (a deletion stopped before it finished); "
            f"run `manage.py delete_tenant {slug} --retain 0` to finish it."
        )
    return RetentionError(
        f"Tenant {slug!r} is {tenant.status}; only an active, suspended or failed tenant is "
        f"archived. Let its provisioning finish (`manage.py create_tenant {slug}`), or "
        f"remove it now with `manage.py delete_tenant {slug} --retain 0`."
    )
