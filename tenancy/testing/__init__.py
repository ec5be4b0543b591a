"""Testing support for projects that use tenancy.

- pytest: the plugin (``tenancy.testing.plugin``, loaded automatically) provides the
  fixtures ``tenant``, ``tenant_client``, ``tenant_async_client``, ``tenant_factory`` and
  ``tenant_fields``.
- ``manage.py test``: ``TenantTestCase`` and ``TenantTransactionTestCase``.

See ``tenancy.testing.tenant`` for how the test tenant's database is set up.
"""

from tenancy.testing.cases import TenantTestCase, TenantTransactionTestCase
from tenancy.testing.client import TenantAsyncClient, TenantClient, tenant_headers
from tenancy.testing.tenant import TEST_TENANT_ALIAS, TEST_TENANT_SLUG, tenant_host

__all__ = [
    "TEST_TENANT_ALIAS",
    "TEST_TENANT_SLUG",
    "TenantAsyncClient",
    "TenantClient",
    "TenantTestCase",
    "TenantTransactionTestCase",
    "tenant_headers",
    "tenant_host",
]
