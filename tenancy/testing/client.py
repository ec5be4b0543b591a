"""Test clients that reach a tenant the way the configured resolver expects."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.test import AsyncClient, Client
from django.test.client import ClientMixin

from tenancy.conf import tenancy_settings
from tenancy.context import tenant_context
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


class _TenantRequests(ClientMixin):
    """Adds the tenant's headers (or path prefix) to every request, and signs in on the
    tenant: sessions are bound to the site they are signed in on (``tenancy.sessions``)."""

    tenant_slug: str

    def login(self, **credentials: Any) -> bool:
        with tenant_context(self.tenant_slug):
            return super().login(**credentials)

    def force_login(self, user: Any, backend: str | None = None) -> None:
        with tenant_context(self.tenant_slug):
            super().force_login(user, backend)

    async def alogin(self, **credentials: Any) -> bool:
        async with tenant_context(self.tenant_slug):
            return await super().alogin(**credentials)

    async def aforce_login(self, user: Any, backend: str | None = None) -> None:
        async with tenant_context(self.tenant_slug):
            await super().aforce_login(user, backend)

    def _set_tenant(self, tenant: AbstractTenant | None) -> dict[str, str]:
        """Remember the tenant's slug; returns its headers."""
        self.tenant_slug = TEST_TENANT_SLUG if tenant is None else tenant.slug
        return tenant_headers(tenant)

    def _tenant_path(self, path: str) -> str:
        prefix = f"{tenancy_settings.PATH_PREFIX}{self.tenant_slug}"
        if path == prefix or path.startswith(f"{prefix}/"):
            return path
        return f"{prefix}{path}"


class TenantClient(_TenantRequests, Client):
    """Django's test client for one tenant (the test tenant when ``tenant`` is ``None``).

    Requests reach the tenant the way the configured resolver expects::

        client = TenantClient(tenant)
        client.get("/projects/")  # resolved to tenant, whatever the resolver
    """

    def __init__(self, tenant: AbstractTenant | None = None, **kwargs: Any) -> None:
        kwargs["headers"] = {**self._set_tenant(tenant), **(kwargs.get("headers") or {})}
        super().__init__(**kwargs)

    def request(self, **request: Any) -> Any:
        if tenancy_settings.RESOLVER == "path":
            request["PATH_INFO"] = self._tenant_path(request["PATH_INFO"])
        return super().request(**request)


class TenantAsyncClient(_TenantRequests, AsyncClient):
    """Django's async test client for one tenant; see ``TenantClient``."""

    def __init__(self, tenant: AbstractTenant | None = None, **kwargs: Any) -> None:
        # Added to each request's ASGI headers: Django's async factory would turn a
        # default "host" header into "http-host".
        self._tenant_headers = [
            (name.lower().encode("ascii"), value.encode("latin1"))
            for name, value in self._set_tenant(tenant).items()
        ]
        super().__init__(**kwargs)

    def request(self, **request: Any) -> Any:
        # The factory starts every request with "host: testserver"; the tenant's headers
        # replace it, and headers given for this request win over the tenant's.
        given = [header for header in request.get("headers", []) if header != _DEFAULT_HOST]
        names = {name for name, _ in given}
        headers = given + [header for header in self._tenant_headers if header[0] not in names]
        if not any(name == b"host" for name, _ in headers):
            headers.insert(0, _DEFAULT_HOST)
        request["headers"] = headers
        if tenancy_settings.RESOLVER == "path":
            request["path"] = self._tenant_path(request["path"])
        return super().request(**request)


_DEFAULT_HOST = (b"host", b"testserver")
