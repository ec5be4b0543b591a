"""Creating and removing tenants: every step safe to run again after a crash.

``create_tenant`` records the tenant, then ``provision_tenant`` creates its database on
its server (an existing database is reused), migrates it, sends ``tenant_provisioned``
and marks it active. A failure marks the tenant ``failed`` with the reason; running
provisioning again continues where it stopped. ``deprovision_tenant`` closes the
tenant's connections, drops (or keeps) its database and deletes the row.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from django.db import transaction

from tenancy.backends import get_server
from tenancy.conf import tenancy_settings
from tenancy.connections import unregister
from tenancy.context import tenant_context
from tenancy.exceptions import TenancyError
from tenancy.migration import migrate_tenant
from tenancy.models import AbstractTenant, Domain, TenantStatus, get_tenant_model
from tenancy.signals import tenant_deprovisioned, tenant_provisioned
from tenancy.template_databases import TemplateInUse, create_database_from_template

logger = logging.getLogger("tenancy.provisioning")


class ProvisioningError(TenancyError):
    """Provisioning a tenant failed; the tenant is marked failed with the reason."""


def create_tenant(
    slug: str,
    *,
    name: str = "",
    domains: Iterable[str] = (),
    server: str | None = None,
) -> AbstractTenant:
    """Record the tenant ``slug`` with its domains and provision it. Running it again for
    the same slug finishes an interrupted provisioning instead of failing."""
    model = get_tenant_model()
    defaults: dict[str, object] = {"name": name or slug}
    if server is not None:
        defaults["server"] = server
    tenant, created = model._default_manager.get_or_create(slug=slug, defaults=defaults)
    if not created and server is not None and tenant.server != server:
        raise ProvisioningError(
            f"Tenant {slug!r} exists on server {tenant.server!r}, not {server!r}; leave "
            "--server out to finish its provisioning."
        )
    add_domains(tenant, domains)
    provision_tenant(tenant)
    return tenant


def add_domains(tenant: AbstractTenant, domains: Iterable[str]) -> None:
    """Attach hostnames to ``tenant``; the first becomes primary if it has none."""
    for hostname in domains:
        hostname = hostname.lower()
        with transaction.atomic(using="default"):
            domain = Domain.objects.select_for_update().filter(domain=hostname).first()
            if domain is not None and domain.tenant_id != tenant.pk:
                raise ProvisioningError(
                    f"Domain {hostname!r} already belongs to tenant {domain.tenant}; "
                    f"remove it there before giving it to {tenant.slug!r}."
                )
            if domain is None:
                has_primary = Domain.objects.filter(tenant_id=tenant.pk, is_primary=True).exists()
                Domain.objects.create(
                    domain=hostname, tenant_id=tenant.pk, is_primary=not has_primary
                )


def provision_tenant(tenant: AbstractTenant) -> AbstractTenant:
    """Create (or reuse) the tenant's database, migrate it, seed it and activate it."""
    _set_status(tenant, TenantStatus.PROVISIONING)
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
        _set_status(tenant, TenantStatus.FAILED, reason)
        raise ProvisioningError(
            f"Provisioning tenant {tenant.slug!r} failed ({reason}). It is marked failed; "
            f"fix the cause and run `manage.py create_tenant {tenant.slug}` again to finish."
        ) from exc
    _set_status(tenant, TenantStatus.ACTIVE)
    return tenant


def deprovision_tenant(tenant: AbstractTenant, *, keep_database: bool = False) -> None:
    """Remove ``tenant``: close its connections everywhere in this process, drop its
    database (unless ``keep_database``) and delete its row and domains."""
    _set_status(tenant, TenantStatus.DELETING)
    try:
        unregister(tenant)
        if not keep_database:
            get_server(tenant.server).drop_database(tenant.database_name)
        with tenant_context(None):
            tenant_deprovisioned.send(
                sender=type(tenant), tenant=tenant, keep_database=keep_database
            )
        tenant.delete()
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        _set_status(tenant, TenantStatus.DELETING, reason)
        raise TenancyError(
            f"Deleting tenant {tenant.slug!r} failed ({reason}). It stays marked deleting; "
            f"run `manage.py delete_tenant {tenant.slug}` again to finish."
        ) from exc


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


def _set_status(tenant: AbstractTenant, status: str, detail: str = "") -> None:
    tenant.status, tenant.status_detail = status, detail
    type(tenant)._default_manager.filter(pk=tenant.pk).update(status=status, status_detail=detail)
