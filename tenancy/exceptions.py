"""Every error tenancy raises. Each message names the tenant (or model) and the fix."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError

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

    @classmethod
    def for_instance(
        cls, instance: Model, loaded_from: str | None, active: str | None
    ) -> CrossTenantError:
        """``loaded_from`` and ``active`` are tenant slugs; ``None`` is the main database
        (no tenant active)."""
        source = "the main database" if loaded_from is None else f"tenant {loaded_from!r}"
        current = "no tenant is active" if active is None else f"tenant {active!r} is active"
        advice = "Use objects of a tenant only inside that tenant's context."
        if loaded_from is None or active is None:
            advice += " Objects of the main database belong outside any tenant's."
        return cls(
            f"{instance._meta.label} object {instance.pk!r} was loaded from {source} but "
            f"{current}. {advice}"
        )


class TenantServerError(TenancyError, ImproperlyConfigured):
    """A tenant points at a server that TENANCY['SERVERS'] does not define."""


class ReservedDatabaseError(TenancyError):
    """A database that is never a tenant's (the project's own, a system database, the
    template or a spare) or that belongs to another tenant was about to be dropped."""


class TenantRemoved(TenancyError, DatabaseError):
    """A connection was used after its tenant was removed from the process (deleted,
    moved to another server or unregistered) while it was held."""

    def __init__(self, slug: str) -> None:
        self.slug = slug
        super().__init__(
            f"Tenant {slug!r} was removed from this process while this connection to its "
            "database was held. Use the tenant again (tenant_context) to reach it as it is "
            "now, if it still exists."
        )


def one_line(error: BaseException | str) -> str:
    """An error on one line (a server's message may take several): tenancy's own as it is,
    any other with its type."""
    text = " ".join(str(error).split())
    if isinstance(error, str | TenancyError):
        return text
    return f"{type(error).__name__}: {text}"


class ConnectionLimitReached(TenancyError):
    """A tenant's connection would exceed ``MAX_OPEN_CONNECTIONS`` (the process's, or its
    server's), and no connection was released within ``CONNECTION_WAIT_TIMEOUT``."""

    def __init__(self, slug: str, server: str, cap: int, scope: str, waited: float) -> None:
        self.slug, self.server, self.cap = slug, server, cap
        holder = "this process" if scope == "process" else f"server {server!r} in this process"
        setting = (
            "TENANCY['MAX_OPEN_CONNECTIONS']"
            if scope == "process"
            else f"TENANCY['SERVERS'][{server!r}]['MAX_OPEN_CONNECTIONS']"
        )
        super().__init__(
            f"Tenant {slug!r} cannot get a database connection: {holder} holds {cap} tenant "
            f"connection{'s' if cap != 1 else ''} ({setting}), all in use, and none was "
            f"released within {waited:g} s. Raise {setting} or CONNECTION_WAIT_TIMEOUT, "
            "or run fewer threads per process."
        )
