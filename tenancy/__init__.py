"""Database-per-tenant multi-tenancy for Django.

Public API::

    from tenancy import tenant_context, current_tenant, require_tenant

    with tenant_context("acme"):
        Project.objects.all()     # acme's database
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tenancy.context import current_tenant, require_tenant, tenant_context
from tenancy.exceptions import (
    ConnectionLimitReached,
    CrossTenantError,
    NoTenantError,
    TenancyError,
    TenantNotFound,
    TenantRemoved,
    TenantServerError,
    TenantUnavailable,
)
from tenancy.server_urls import server_from_url
from tenancy.transactions import atomic, on_commit

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from django.db.backends.base.base import BaseDatabaseWrapper

    from tenancy.models import AbstractTenant

__all__ = [
    "ConnectionLimitReached",
    "CrossTenantError",
    "NoTenantError",
    "TenancyError",
    "TenantNotFound",
    "TenantRemoved",
    "TenantServerError",
    "TenantUnavailable",
    "atomic",
    "current_tenant",
    "get_tenant_model",
    "on_commit",
    "require_tenant",
    "server_from_url",
    "tenant_connection",
    "tenant_context",
    "use_primary",
]


def get_tenant_model() -> type[AbstractTenant]:
    """The tenant model in use (``settings.TENANCY_TENANT_MODEL``)."""
    from tenancy.models import get_tenant_model

    return get_tenant_model()


def tenant_connection() -> BaseDatabaseWrapper:
    """The connection to the current tenant's database, for raw SQL.

    Raises ``NoTenantError`` when no tenant is active::

        with tenant_context("acme"), tenant_connection().cursor() as cursor:
            cursor.execute("SELECT count(*) FROM app_project")
    """
    from tenancy.connections import tenant_connection

    return tenant_connection()


def use_primary() -> AbstractContextManager[None]:
    """A block whose reads go to the tenants' primaries, never a read replica.

    For example::

        with tenancy.use_primary():
            invoice = Invoice.objects.get(pk=pk)  # just written by another process
    """
    from tenancy.replicas import use_primary

    return use_primary()
