"""tenancy.testing's clients reach a tenant whatever the resolver."""

from __future__ import annotations

import pytest
from asgiref.sync import async_to_sync

from tenancy.testing import TenantAsyncClient, TenantClient, tenant_headers

RESOLVERS = {
    "host": {},
    "subdomain": {"BASE_DOMAIN": "example.test"},
    "header": {},
    "path": {},
}


@pytest.mark.parametrize("resolver", list(RESOLVERS))
def test_clients_reach_the_tenant(settings, alpha, beta, resolver):
    settings.TENANCY = {**settings.TENANCY, "RESOLVER": resolver, **RESOLVERS[resolver]}
    for tenant in (alpha, beta):
        expected = {"tenant": tenant.slug, "request_tenant": tenant.slug, "path_info": "/whoami/"}
        assert TenantClient(tenant).get("/whoami/").json() == expected
        response = async_to_sync(TenantAsyncClient(tenant).get)("/whoami/")
        assert response.json() == expected


def test_headers_per_resolver(settings, alpha):
    assert tenant_headers(alpha) == {"host": "alpha.example.test"}
    settings.TENANCY = {**settings.TENANCY, "RESOLVER": "header", "HEADER": "X-Customer"}
    assert tenant_headers(alpha) == {"X-Customer": "alpha"}
    settings.TENANCY = {**settings.TENANCY, "RESOLVER": "path"}
    assert tenant_headers(alpha) == {}
    client = TenantClient(alpha)
    assert client.get("/t/alpha/whoami/").json()["path_info"] == "/whoami/"  # not prefixed twice
