"""Every error tenancy raises. Each message names the tenant (or model) and the fix."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.core.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from django.db.models import Model

    from tenancy.models import AbstractTenant


class TenancyError(Exception):
    """Base class of tenancy's own errors."""


class NoTenantError(TenancyError):
    """A tenant database was needed but no tenant is active in this context."""

    @classmethod
    def for_model(cls, model: type[Model]) -> NoTenantError:
        label = model._meta.label
        return cls(
            f"{label} is stored in tenant databases, but no tenant is active here. "
            "Wrap the code in `with tenancy.tenant_context(tenant):` (the middleware does "
            "this for requests); threads and background jobs start without a tenant."
        )


class TenantNotFound(TenancyError, LookupError):
    """No tenant matches the given slug or hostname."""


class TenantUnavailable(TenancyError):
    """The tenant exists but is not active (suspended, provisioning, failed or deleting)."""

    def __init__(self, tenant: AbstractTenant) -> None:
        self.tenant = tenant
        super().__init__(
            f"Tenant {tenant.slug!r} is {tenant.status}; only active tenants serve requests."
        )


class CrossTenantError(TenancyError):
    """An object of one tenant was used while another tenant is active."""


class TenantServerError(TenancyError, ImproperlyConfigured):
    """A tenant points at a server that TENANCY['SERVERS'] does not define."""
