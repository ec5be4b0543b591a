"""What the background-job integrations share (``tenancy.celery``, ``tenancy.tasks``).

A job carries its tenant as the slug, taken when the job is sent; the worker looks the
tenant up again when the job runs, so a job never works on a tenant that was removed or
suspended in between (more than ``RESOLUTION_CACHE_TTL`` before it runs, when the change
was made by another process: the lookup is answered by ``tenancy.registry_cache``, as
requests are).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, TypeVar

from tenancy import registry_cache
from tenancy.connections import close_old_connections
from tenancy.context import _not_found, current_tenant, find_by_slug, tenant_context
from tenancy.exceptions import TenantUnavailable
from tenancy.replicas import forget_writes
from tenancy.resolvers import SlugResolver
from tenancy.validators import is_valid_slug

if TYPE_CHECKING:
    from tenancy.models import AbstractTenant

T = TypeVar("T")

# Jobs share the slug resolvers' cached answers: their lookup is find_by_slug too.
_SLUG_ANSWERS = str(SlugResolver.cache_kind())


def current_slug() -> str | None:
    """The slug to send with a job: the current tenant's, or ``None`` without one."""
    tenant = current_tenant()
    return None if tenant is None else tenant.slug


def job_tenant(slug: str | None) -> AbstractTenant | None:
    """The tenant a job sent with ``slug`` runs in: ``None`` for none;
    ``TenantNotFound`` when it no longer exists, ``TenantUnavailable`` when not active."""
    if slug is None:
        return None
    if not is_valid_slug(slug):
        raise _not_found(slug)
    tenant = registry_cache.lookup(_SLUG_ANSWERS, slug, find_by_slug)
    if tenant is None:
        raise _not_found(slug)
    if not tenant.is_active:
        raise TenantUnavailable(tenant)
    return tenant


def active_tenants() -> Iterator[AbstractTenant]:
    """Every active tenant, by slug, read in chunks (for thousands of tenants)."""
    from tenancy.models import TenantStatus, get_tenant_model

    manager = get_tenant_model()._default_manager
    return manager.filter(status=TenantStatus.ACTIVE).order_by("slug").iterator()


@contextmanager
def running_in(slug: str | None) -> Iterator[AbstractTenant | None]:
    """The worker's side of a job sent with ``slug``: inside its tenant (see
    ``job_tenant``); afterwards the thread's tenant connections are closed as Django
    would close them (``CONN_MAX_AGE``, ``MAX_OPEN_CONNECTIONS``). A job starts with no
    writes of its own: its reads go to read replicas until it writes."""
    forget_writes()
    try:
        with tenant_context(job_tenant(slug)) as tenant:
            yield tenant
    finally:
        close_old_connections()


def send_for_each_tenant(send: Callable[[], T]) -> list[T]:
    """Call ``send`` once inside every active tenant; its results, in slug order."""
    results = []
    for tenant in active_tenants():
        with tenant_context(tenant):
            results.append(send())
    return results
