"""Test clients that reach a tenant the way the configured resolver expects."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.test import AsyncClient, Client

from tenancy.conf import tenancy_settings
from tenancy.testing.tenant import TEST_TENANT_SLUG, tenant_host

if TYPE_CHECKING:
    from tenancy.models import AbstractTenant


def tenant_headers(tenant: AbstractTenant | None = None) -> dict[str, str]:
    """Request headers that select ``tenant`` (the test tenant when ``None``).

    ``host`` and custom resolvers: the tenant's primary domain; ``subdomain``:
    ``<slug>.<BASE_DOMAIN>``; ``header``: the tenant header; ``path``: none (the clients
    prefix the path instead).
    """
    slug = TEST_TENANT_SLUG if tenant is None else tenant.slug
    resolver = tenancy_settings.RESOLVER
    if resolver == "header":
        return {tenancy_settings.HEADER: slug}
    if resolver == "path":
        return {}
    if resolver == "subdomain" or tenant is None:
        return {"host": tenant_host(slug)}
    from tenancy.models import Domain

    domain = (
        Domain.objects.filter(tenant_id=tenant.pk)
        .order_by("-is_primary", "pk")
        .values_list("domain", flat=True)
        .first()
    )
    if domain is None:
        raise ValueError(f"Tenant {tenant.slug!r} has no domain for the test client to use.")
    return {"host": domain}


class _TenantRequests:
    """Adds the tenant's headers (or path prefix) to every request."""

    tenant_slug: str

    def _tenant_path(self, path: str) -> str:
        prefix = f"{tenancy_settings.PATH_PREFIX}{self.tenant_slug}"
        if path == prefix or path.startswith(f"{prefix}/"):
            return path
        return f"{prefix}{path}"


class TenantClient(_TenantRequests, Client):
    """Django's test client for one tenant (the test tenant when ``tenant`` is ``None``)::

    client = TenantClient(tenant)
    client.get("/projects/")    # resolved to tenant, whatever the resolver
    """

    def __init__(self, tenant: AbstractTenant | None = None, **kwargs: Any) -> None:
        self.tenant_slug = TEST_TENANT_SLUG if tenant is None else tenant.slug
        kwargs["headers"] = {**tenant_headers(tenant), **(kwargs.get("headers") or {})}
        super().__init__(**kwargs)

    def request(self, **request: Any) -> Any:
        if tenancy_settings.RESOLVER == "path":
            request["PATH_INFO"] = self._tenant_path(request["PATH_INFO"])
        return super().request(**request)


class TenantAsyncClient(_TenantRequests, AsyncClient):
    """Django's async test client for one tenant; see ``TenantClient``."""

    def __init__(self, tenant: AbstractTenant | None = None, **kwargs: Any) -> None:
        self.tenant_slug = TEST_TENANT_SLUG if tenant is None else tenant.slug
        kwargs["headers"] = {**tenant_headers(tenant), **(kwargs.get("headers") or {})}
        super().__init__(**kwargs)

    def request(self, **request: Any) -> Any:
        # Django's async request factory always sends "host: testserver" and appends
        # another host header after it, which joins the two; keep only the last one.
        headers = request.get("headers", [])
        hosts = [index for index, (name, _) in enumerate(headers) if name == b"host"]
        if len(hosts) > 1:
            request["headers"] = [
                header for index, header in enumerate(headers) if index not in hosts[:-1]
            ]
        if tenancy_settings.RESOLVER == "path":
            request["path"] = self._tenant_path(request["path"])
        return super().request(**request)
