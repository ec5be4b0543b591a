"""Creating and removing tenants: every step safe to run again after a crash.

``create_tenant`` records the tenant, then ``provision_tenant`` creates its database on
its server (an existing database is reused), migrates it, sends ``tenant_provisioned``
and marks it active. A failure marks the tenant ``failed`` with the reason; running
provisioning again continues where it stopped. ``deprovision_tenant`` closes the
tenant's connections, drops (or keeps) its database and deletes the row.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ObjectDoesNotExist
from django.db import IntegrityError, connections, transaction

from tenancy import ledger, replicas
from tenancy.backends import get_server
from tenancy.backends.base import held_connections
from tenancy.conf import tenancy_settings
from tenancy.connections import connection_for, unregister
from tenancy.context import tenant_context
from tenancy.exceptions import ReservedDatabaseError, TenancyError
from tenancy.migration import applied_migrations, migrate_tenant, migration_state
from tenancy.models import (
    MIGRATED_STATUSES,
    AbstractTenant,
    Domain,
    MoveKind,
    TenantMove,
    TenantStatus,
    get_tenant_model,
    registry_database,
)
from tenancy.registry_cache import (
    in_own_transaction,
    wait_for_other_processes,
)
from tenancy.reserved import check_tenant_drop, database_name_unavailable
from tenancy.signals import tenant_deprovisioned, tenant_provisioned
from tenancy.template_databases import (
    TemplateInUse,
    create_database_from_template,
    refill_spares,
)
from tenancy.tenant_locks import tenant_lock
from tenancy.validators import (
    is_valid_slug,
    validate_database_name,
    validate_slug,
    validate_tenant_hostname,
)

logger = logging.getLogger("tenancy.provisioning")


class ProvisioningError(TenancyError):
    """Provisioning a tenant failed; the tenant is marked failed with the reason."""


@dataclass(frozen=True)
class AdoptionReport:
    """How an adopted database's tenant-app migrations differ from the project's."""

    missing: list[str]  # in the project, not applied in the database
    unknown: list[str]  # applied in the database, not in the project

    @property
    def matches(self) -> bool:
        return not self.missing and not self.unknown

    def __str__(self) -> str:
        parts = []
        if self.missing:
            parts.append(f"not applied: {', '.join(self.missing)}")
        if self.unknown:
            parts.append(f"applied but not in this project: {', '.join(self.unknown)}")
        return "; ".join(parts) or "migrations match"


def create_tenant(
    slug: str,
    *,
    name: str = "",
    domains: Iterable[str] = (),
    server: str | None = None,
    fields: Mapping[str, Any] | None = None,
) -> AbstractTenant:
    """Record the tenant ``slug`` with its domains and provision it. Running it again for
    the same slug finishes an interrupted provisioning instead of failing. ``fields``:
    values for more fields of a custom tenant model."""
    validate_slug(slug)  # before any query: some strings cannot even be looked up
    with held_connections():  # the server is asked several things: one connection
        return _create_tenant(slug, name, domains, server, fields)


def _create_tenant(
    slug: str,
    name: str,
    domains: Iterable[str],
    server: str | None,
    fields: Mapping[str, Any] | None,
) -> AbstractTenant:
    hostnames = validate_domains(domains)
    model = get_tenant_model()
    defaults: dict[str, object] = {**(fields or {}), "name": name or slug}
    if server is not None:
        defaults["server"] = server
    existing = model._default_manager.filter(slug=slug).first()
    new = model(slug=slug, **defaults)
    if existing is None:
        _refuse_unavailable_database(new, new=True)
        name = new.database_name or tenancy_settings.database_name_for(slug)
        new._tenancy_checked_database = (new.server, name)  # save() need not ask again
    else:
        _refuse_changing_existing(existing, server, hostnames)
    _refuse_taken_domains(slug, hostnames)
    # The row and its domains together: a domain taken meanwhile leaves no tenant behind.
    with transaction.atomic(using="default") if hostnames else nullcontext():
        if existing is None:
            tenant, recorded = _insert_tenant(new)
            # Created by another process meanwhile: the same checks as for an existing one.
            _refuse_changing_existing(tenant, server, hostnames)
        else:
            tenant, recorded = model._default_manager.get_or_create(slug=slug, defaults=defaults)
        add_domains(tenant, hostnames)
    return _provision(tenant, recorded=recorded)


def _insert_tenant(new: AbstractTenant) -> tuple[AbstractTenant, bool]:
    """The new tenant's row, and whether it was inserted here (not by another process
    meanwhile). Outside a transaction that is the INSERT alone, one round trip, where
    ``get_or_create`` would look first and insert in a savepoint."""
    database = registry_database()
    atomic = transaction.atomic(using=database)
    try:
        with atomic if connections[database].in_atomic_block else nullcontext():
            new.save(force_insert=True, using=database)
            return new, True
    except IntegrityError:
        found = type(new)._default_manager.filter(slug=new.slug).first()
        if found is not None:
            return found, False
        # Not the slug: the database name, registered meanwhile by another tenant.
        _refuse_unavailable_database(new)
        raise


def validate_domains(domains: Iterable[str]) -> list[str]:
    """The hostnames in lowercase; ``ValidationError`` for one that is not a valid
    hostname or is a host of the main site (``PUBLIC_HOSTS``, ``BASE_DOMAIN``)."""
    hostnames = []
    for hostname in domains:
        hostname = hostname.lower() if isinstance(hostname, str) else hostname
        validate_tenant_hostname(hostname)
        hostnames.append(hostname)
    return hostnames


def _refuse_changing_existing(
    tenant: AbstractTenant, server: str | None, hostnames: list[str]
) -> None:
    """Running ``create_tenant`` again finishes a provisioning; it changes nothing else."""
    _refuse_in_other_hands(tenant)
    if server is not None and tenant.server != server:
        raise ProvisioningError(
            f"Tenant {tenant.slug!r} exists on server {tenant.server!r}, not {server!r}; "
            "leave --server out to finish its provisioning."
        )
    if tenant.status in (TenantStatus.PROVISIONING, TenantStatus.FAILED):
        return  # unfinished: adding its domains is part of finishing it
    new = [
        h for h in hostnames if not Domain.objects.filter(domain=h, tenant_id=tenant.pk).exists()
    ]
    if new:
        raise ProvisioningError(
            f"Tenant {tenant.slug!r} exists already ({tenant.status}); nothing was changed. "
            f"Add domain {new[0]!r} in the admin's tenant page, or with "
            f"Domain.objects.create(tenant=..., domain={new[0]!r})."
        )


def _refuse_in_other_hands(tenant: AbstractTenant) -> None:
    """An archived tenant keeps its slug, database and domains until it is purged; a
    tenant being restored or moved is another command's until it ends."""
    if tenant.status in (TenantStatus.RESTORING, TenantStatus.MOVING):
        raise ProvisioningError(
            f"Tenant {tenant.slug!r} is {tenant.status}; nothing was changed. Let that "
            "finish (or undo it) first."
        )
    if tenant.status == TenantStatus.ARCHIVED:
        slug = tenant.slug
        raise ProvisioningError(
            f"Tenant {slug!r} is archived (not served, its data kept until it is purged); "
            f"nothing was changed. `manage.py reactivate_tenant {slug}` brings it back; "
            f"`manage.py purge_tenants` removes it once its retention has ended "
            f"(`manage.py delete_tenant {slug} --retain 0` removes it now), and then the "
            "slug can be used again."
        )


def _refuse_taken_domains(slug: str, hostnames: list[str]) -> None:
    if not hostnames:
        return
    taken = Domain.objects.filter(domain__in=hostnames).exclude(tenant__slug=slug)
    for domain in taken.select_related("tenant")[:1]:
        raise _domain_taken(domain, slug)


def _domain_taken(domain: Domain, slug: str) -> ProvisioningError:
    return ProvisioningError(
        f"Domain {domain.domain!r} already belongs to tenant {domain.tenant}; "
        f"remove it there before giving it to {slug!r}."
    )


def adopt_database(
    slug: str,
    database_name: str,
    *,
    name: str = "",
    domains: Iterable[str] = (),
    server: str | None = None,
) -> tuple[AbstractTenant, AdoptionReport]:
    """Register the existing database ``database_name`` as tenant ``slug``'s, creating
    nothing. The tenant becomes active when the database's tenant-app migrations match
    the project's; otherwise it is marked failed with the differences (running
    ``create_tenant SLUG`` afterwards applies missing migrations)."""
    server = server or tenancy_settings.DEFAULT_SERVER
    validate_slug(slug)
    validate_database_name(database_name)
    hostnames = validate_domains(domains)
    model = get_tenant_model()
    _refuse_unavailable_database(model(slug=slug, server=server, database_name=database_name))
    _refuse_taken_domains(slug, hostnames)
    if not get_server(server).database_exists(database_name):
        raise ProvisioningError(
            f"Database {database_name!r} does not exist on server {server!r}; nothing to adopt."
        )
    tenant, _ = model._default_manager.get_or_create(
        slug=slug,
        defaults={"name": name or slug, "server": server, "database_name": database_name},
    )
    _refuse_in_other_hands(tenant)
    if (tenant.server, tenant.database_name) != (server, database_name):
        raise ProvisioningError(
            f"Tenant {slug!r} exists already, with database {tenant.database_name!r} on "
            f"server {tenant.server!r}."
        )
    add_domains(tenant, hostnames)
    report = compare_migrations(tenant)
    if report.matches:
        set_status(tenant, TenantStatus.ACTIVE)
    else:
        set_status(tenant, TenantStatus.FAILED, f"Adopted database differs: {report}")
    return tenant, report


def compare_migrations(tenant: AbstractTenant) -> AdoptionReport:
    """Compare the tenant apps' migrations recorded in ``tenant``'s database with the
    project's migration graph."""
    state = migration_state()
    connection = connection_for(tenant)
    try:
        applied = applied_migrations(connection)
    finally:
        connection.close()
    ledger.record(tenant, applied)
    labels = tenancy_settings.tenant_app_labels
    missing = [f"{app}.{name}" for app, name in state.pending(applied) if app in labels]
    known = state.nodes | state.replaced
    unknown = sorted(f"{app}.{name}" for app, name in applied - known if app in labels)
    return AdoptionReport(missing, unknown)


def add_domains(tenant: AbstractTenant, domains: Iterable[str]) -> None:
    """Attach hostnames to ``tenant``; the first becomes primary if it has none."""
    for hostname in domains:
        hostname = hostname.lower()
        with transaction.atomic(using="default"):
            domain = Domain.objects.select_for_update().filter(domain=hostname).first()
            if domain is None:
                has_primary = Domain.objects.filter(tenant_id=tenant.pk, is_primary=True).exists()
                try:
                    with transaction.atomic(using="default"):
                        Domain.objects.create(
                            domain=hostname, tenant_id=tenant.pk, is_primary=not has_primary
                        )
                    continue
                except IntegrityError:
                    # Added meanwhile by another process (the same tenant created twice
                    # at once, say): fine if it is this tenant's.
                    domain = Domain.objects.get(domain=hostname)
            if domain.tenant_id != tenant.pk:
                raise _domain_taken(domain, tenant.slug)


def provision_tenant(tenant: AbstractTenant) -> AbstractTenant:
    """Create (or reuse) the tenant's database, migrate it, seed it and activate it."""
    with held_connections():
        return _provision(tenant)


def _provision(tenant: AbstractTenant, *, recorded: bool = False) -> AbstractTenant:
    """``recorded``: the row was just inserted from this instance (so it says what the
    row holds)."""
    _refuse_in_other_hands(tenant)
    # Again, now that the row is committed: a tenant registering the same database
    # through another entry of the same server at the same time sees one of the two.
    _refuse_unavailable_database(tenant)
    if not recorded or (tenant.status, tenant.status_detail) != (TenantStatus.PROVISIONING, ""):
        set_status(tenant, TenantStatus.PROVISIONING)
    try:
        _create_database(tenant)
        result = migrate_tenant(tenant)  # one query when the copy is up to date
        if result.failed:
            raise ProvisioningError(result.error)
        with tenant_context(tenant):
            tenant_provisioned.send(sender=type(tenant), tenant=tenant)
    except Exception as exc:
        unregister(tenant)
        reason = f"{type(exc).__name__}: {exc}"
        set_status(tenant, TenantStatus.FAILED, reason)
        raise ProvisioningError(
            f"Provisioning tenant {tenant.slug!r} failed ({reason}). It is marked failed; "
            f"fix the cause and run `manage.py create_tenant {tenant.slug}` again to finish."
        ) from exc
    set_status(tenant, TenantStatus.ACTIVE)
    if tenancy_settings.USE_TEMPLATE_DATABASES:
        refill_spares(tenant.server)  # in the background, for the next tenant
    return tenant


def deprovision_tenant(tenant: AbstractTenant, *, keep_database: bool = False) -> None:
    """Remove ``tenant``: close its connections everywhere in this process, drop its
    database (unless ``keep_database``) and delete its row and domains. A database that
    is reserved or another tenant's is never dropped: ``ReservedDatabaseError``."""
    with locked_tenant(tenant, "deleted") as current:
        _deprovision(current, keep_database)


@contextmanager
def locked_tenant(tenant: AbstractTenant | str, action: str) -> Iterator[AbstractTenant]:
    """Hold ``tenant``'s lock (``tenancy.tenant_locks``, taken by moves and deletions) and
    yield its row as it is now: a move that ended meanwhile may have changed its server.
    ``TenancyError`` inside a transaction on the main database, when another run holds the
    lock, and for a tenant gone or being moved or restored. ``action`` says what is done
    to the tenant, for the messages ("deleted")."""
    slug = tenant if isinstance(tenant, str) else tenant.slug
    if not is_valid_slug(slug):
        raise TenancyError(f"{slug[:80]!r} is not a valid tenant slug, so no tenant has it.")
    if in_own_transaction(connections[registry_database()]):
        raise TenancyError(
            f"Tenant {slug!r} cannot be {action} inside a transaction on the main "
            "database: other processes must see its new status before its database "
            "changes, and that change is not rolled back. Do it outside "
            "transaction.atomic() (a view: mark it transaction.non_atomic_requests)."
        )
    with tenant_lock(slug, wait=False) as locked:
        if not locked:
            raise TenancyError(
                f"Tenant {slug!r} is being moved or deleted by another run; try again when "
                "it has finished."
            )
        try:
            if isinstance(tenant, AbstractTenant):
                tenant.refresh_from_db()
                current = tenant
            else:
                current = get_tenant_model()._default_manager.get(slug=slug)
        except ObjectDoesNotExist:
            raise TenancyError(f"Tenant {slug[:80]!r} does not exist (any more).") from None
        move = TenantMove.objects.filter(tenant_id=current.pk).first()
        # Restoring without a record, under the lock: a restore of a new tenant that was
        # killed, whose incomplete database may go with it.
        restoring = current.status == TenantStatus.RESTORING and action != "deleted"
        if current.status == TenantStatus.MOVING or restoring or move is not None:
            raise _being_moved(current, move, action)
        yield current


def _being_moved(tenant: AbstractTenant, move: TenantMove | None, action: str) -> TenancyError:
    if tenant.status == TenantStatus.RESTORING or (move and move.kind == MoveKind.RESTORE):
        return TenancyError(
            f"Tenant {tenant.slug!r} is being restored from a backup; it can be {action} "
            "once the restore has finished or been undone."
        )
    return TenancyError(
        f"Tenant {tenant.slug!r} is being moved; finish the move (`manage.py move_tenant "
        f"{tenant.slug} --server NAME`) or undo it (`--abort`), then it can be {action}."
    )


def _deprovision(tenant: AbstractTenant, keep_database: bool) -> None:
    if not keep_database:
        check_tenant_drop(tenant)
    status, detail = tenant.status, tenant.status_detail
    set_status(tenant, TenantStatus.DELETING)
    # Until every process has seen "deleting" (a process may still know the tenant as
    # active, even when it was suspended just before), one may send a request to the
    # database; after it none does, nor reaches a database made later under its name.
    wait_for_other_processes()
    try:
        unregister(tenant)
        if not keep_database:
            get_server(tenant.server).drop_database(tenant.database_name)
        with tenant_context(None):
            tenant_deprovisioned.send(
                sender=type(tenant), tenant=tenant, keep_database=keep_database
            )
        tenant.delete()
    except ReservedDatabaseError:
        set_status(tenant, status, detail)  # refused before anything was dropped
        raise
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        set_status(tenant, TenantStatus.DELETING, reason)
        raise TenancyError(
            f"Deleting tenant {tenant.slug!r} failed ({reason}). It stays marked deleting; "
            f"run `manage.py delete_tenant {tenant.slug}` again to finish."
        ) from exc


def _refuse_unavailable_database(tenant: AbstractTenant, *, new: bool = False) -> None:
    """``ProvisioningError`` when ``tenant``'s database is reserved or another tenant's
    (or, for a tenant not recorded yet, exists already)."""
    message = database_name_unavailable(tenant, new=new)
    if message is not None:
        raise ProvisioningError(message)


def _create_database(tenant: AbstractTenant) -> None:
    if tenancy_settings.USE_TEMPLATE_DATABASES:
        try:
            create_database_from_template(tenant)
            return
        except TemplateInUse as exc:
            logger.warning(
                "Template database in use, creating %s by migrating instead: %s", tenant.slug, exc
            )
    get_server(tenant.server).create_database(tenant.database_name)


def set_status(tenant: AbstractTenant, status: str, detail: str = "") -> None:
    """Give ``tenant`` (the instance and its row) ``status`` and ``detail``."""
    tenant.status, tenant.status_detail = status, detail
    fields = {"status": status, "status_detail": detail}
    if status in MIGRATED_STATUSES and replicas.replicated(tenant.server):
        # Its database is what it serves from now: replicas serve it once they have it.
        fields["ready_lsn"] = tenant.ready_lsn = replicas.ready_mark(tenant)
    type(tenant)._default_manager.filter(pk=tenant.pk).update(**fields)
