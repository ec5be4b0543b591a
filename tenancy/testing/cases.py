"""TestCase classes for projects tested with ``manage.py test`` (they work under pytest too)."""

from __future__ import annotations

import unittest
from typing import TYPE_CHECKING, Any, ClassVar

from django.db import DEFAULT_DB_ALIAS
from django.test import AsyncClient, Client, TestCase, TransactionTestCase

from tenancy.context import tenant_context
from tenancy.testing.client import TenantAsyncClient, TenantClient
from tenancy.testing.tenant import ensure_test_tenant, publish_test_tenant

if TYPE_CHECKING:
    from tenancy.models import AbstractTenant


class _WithTestTenant:
    """``databases``: the main database and the test tenant's, which this publishes the
    first time the test runner asks (before it sets up the test databases)."""

    def __get__(self, instance: object, owner: type) -> set[str]:
        return {DEFAULT_DB_ALIAS, publish_test_tenant()}


class _TenantTest(unittest.TestCase):
    tenant: AbstractTenant
    # Extra field values for the test tenant, for a custom tenant model.
    tenant_fields: ClassVar[dict[str, Any]] = {}
    databases: Any = _WithTestTenant()
    client_class: type[Client] = TenantClient
    async_client_class: type[AsyncClient] = TenantAsyncClient

    def run(self, result: unittest.TestResult | None = None) -> unittest.TestResult | None:
        with tenant_context(self._test_tenant()):
            return super().run(result)

    def _test_tenant(self) -> AbstractTenant:
        return self.tenant


class TenantTestCase(_TenantTest, TestCase):
    """``TestCase`` with the test tenant active in every test (``self.tenant``) and in
    ``setUpTestData``. Each test's writes to the tenant's database are rolled back, as
    Django rolls back those to ``default``; ``self.client`` reaches the tenant."""

    @classmethod
    def setUpClass(cls) -> None:
        publish_test_tenant()
        cls.tenant = ensure_test_tenant(cls.tenant_fields)
        with tenant_context(cls.tenant):
            super().setUpClass()


class TenantTransactionTestCase(_TenantTest, TransactionTestCase):
    """``TransactionTestCase`` with the test tenant active in every test. After each test
    Django empties the tenant's tables as it does those of ``default``."""

    def _test_tenant(self) -> AbstractTenant:
        # Emptying default after each test removes the tenant's row; make it again.
        self.tenant = ensure_test_tenant(self.tenant_fields)
        return self.tenant
