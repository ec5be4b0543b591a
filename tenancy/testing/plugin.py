"""pytest plugin (entry point ``tenancy``): fixtures for tenant tests.

- ``tenant``: the test tenant, active for the test; its database is created once per run
  (kept with ``--reuse-db``) and each test's writes to it are rolled back, as on
  ``default``. Works with the ``django_db`` marker's options and ``transactional_db``.
- ``tenant_client`` / ``tenant_async_client``: Django test clients that reach the tenant.
- ``tenant_factory``: make more tenants in a test, copied from the template database;
  they are removed after the test.
- ``tenant_fields``: override it to give the test tenant more field values.

Disable the plugin with ``-p no:tenancy``.
"""

from __future__ import annotations

import copy
import itertools
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from django.test import AsyncClient, Client

    from tenancy.models import AbstractTenant

# The positional order of pytest-django's django_db marker arguments.
_DJANGO_DB_ARGS = ("transaction", "reset_sequences", "databases", "serialized_rollback")


def pytest_configure(config: pytest.Config) -> None:
    from tenancy.testing.tenant import start_test_run

    worker = getattr(config, "workerinput", {}).get("workerid", "")
    # The suffixes pytest-django gives test databases, in its order.
    start_test_run("_".join(part for part in (os.getenv("TOX_PARALLEL_ENV"), worker) if part))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Set up the test tenant's database for the tests that use it, and include it in
    their ``django_db`` databases (before pytest-django decides which to create)."""
    from django.conf import settings

    if not settings.configured:
        return
    users = [item for item in items if _uses_test_tenant(item)]
    if not users:
        return
    from tenancy.testing.tenant import publish_test_tenant

    alias = publish_test_tenant()
    for item in users:
        if not _is_unittest(item):  # a TenantTestCase lists it in its databases
            _add_database(item, alias)


def _uses_test_tenant(item: pytest.Item) -> bool:
    if "tenant" in getattr(item, "fixturenames", ()):
        return True
    if _is_unittest(item):
        from tenancy.testing.cases import _TenantTest

        return issubclass(item.cls, _TenantTest)  # type: ignore[attr-defined]
    return False


def _is_unittest(item: pytest.Item) -> bool:
    import unittest

    cls = getattr(item, "cls", None)
    return cls is not None and issubclass(cls, unittest.TestCase)


def _django_db_options(item: pytest.Item) -> dict[str, Any]:
    marker = item.get_closest_marker("django_db")
    if marker is None:
        return {}
    return dict(zip(_DJANGO_DB_ARGS, marker.args, strict=False)) | dict(marker.kwargs)


def _add_database(item: pytest.Item, alias: str) -> None:
    options = _django_db_options(item)
    databases = options.get("databases")
    if databases == "__all__":
        return
    options["databases"] = sorted({"default", *(databases or ()), alias})
    item.add_marker(pytest.mark.django_db(**options), append=False)


@pytest.fixture(scope="session")
def tenant_fields() -> dict[str, Any]:
    """Extra field values for the test tenant and the factory's tenants; override it
    (session-scoped) for a custom tenant model."""
    return {}


# The test tenant's row as committed in the main database; dropped after every test that
# may have emptied that database (a transactional one).
_committed_tenant = pytest.StashKey["AbstractTenant | None"]()


@pytest.fixture(scope="session")
def _tenancy_test_tenant(
    request: pytest.FixtureRequest,
    django_db_setup: None,
    django_db_blocker: Any,
    tenant_fields: dict[str, Any],
) -> Iterator[None]:
    """The test tenant's row, committed once, so that tests need not insert it each time."""
    from tenancy.testing.tenant import drop_shared_test_databases, ensure_test_tenant

    with django_db_blocker.unblock():
        request.config.stash[_committed_tenant] = ensure_test_tenant(tenant_fields)
    yield
    if not _reusing_databases(request):
        with django_db_blocker.unblock():
            drop_shared_test_databases()


@pytest.fixture
def tenant(
    request: pytest.FixtureRequest,
    _tenancy_test_tenant: None,
    db: None,
    tenant_fields: dict[str, Any],
) -> Iterator[AbstractTenant]:
    """The test tenant, active for the test; its writes are rolled back afterwards."""
    from tenancy.context import tenant_context
    from tenancy.testing.tenant import ensure_test_tenant

    committed = request.config.stash.get(_committed_tenant, None)
    transactional = _is_transactional(request.node)
    if committed is None or transactional:
        committed = ensure_test_tenant(tenant_fields)
        if not transactional:
            request.config.stash[_committed_tenant] = committed
    # A copy, so that changes a test makes to it end with the test, as its rows do.
    test_tenant = copy.copy(committed)
    with tenant_context(test_tenant):
        yield test_tenant


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item) -> None:
    if _is_transactional(item):
        item.config.stash[_committed_tenant] = None
    # The test's tenants and domains are rolled back or flushed: the next test looks
    # them up again.
    from tenancy.registry_cache import forget_all

    forget_all()


def _is_transactional(item: pytest.Item) -> bool:
    """Whether Django empties the test databases after ``item`` (as pytest-django decides)."""
    if _is_unittest(item):
        from django.test import TestCase, TransactionTestCase

        cls: type = item.cls  # type: ignore[attr-defined]
        return issubclass(cls, TransactionTestCase) and not issubclass(cls, TestCase)
    fixtures = getattr(item, "fixturenames", ())
    if {"transactional_db", "live_server", "django_db_reset_sequences"} & set(fixtures):
        return True
    options = _django_db_options(item)
    return bool(options.get("transaction") or options.get("reset_sequences"))


@pytest.fixture
def tenant_client(tenant: AbstractTenant) -> Client:
    """A Django test client whose requests reach the test tenant."""
    from tenancy.testing.client import TenantClient

    return TenantClient(tenant)


@pytest.fixture
def tenant_api_client(tenant: AbstractTenant) -> Any:
    """Django REST framework's test client whose requests reach the test tenant (needs
    ``djangorestframework``)."""
    from tenancy.testing.drf import TenantAPIClient

    return TenantAPIClient(tenant)


@pytest.fixture
def tenant_async_client(tenant: AbstractTenant) -> AsyncClient:
    """A Django async test client whose requests reach the test tenant."""
    from tenancy.testing.client import TenantAsyncClient

    return TenantAsyncClient(tenant)


@pytest.fixture(scope="session")
def _tenancy_templates(
    request: pytest.FixtureRequest, django_db_setup: None, django_db_blocker: Any
) -> Iterator[None]:
    """Template databases of this test run: rebuilt with ``--create-db``, kept with
    ``--reuse-db``, dropped at the end otherwise."""
    from tenancy.conf import tenancy_settings
    from tenancy.template_databases import drop_template_databases, wait_for_spares
    from tenancy.testing.tenant import drop_shared_test_databases

    reuse = _reusing_databases(request)

    def drop() -> None:
        wait_for_spares()
        with django_db_blocker.unblock():
            for server in tenancy_settings.SERVERS:
                drop_template_databases(server)

    if not reuse:
        drop()
    yield
    if not reuse:
        drop()
        with django_db_blocker.unblock():
            drop_shared_test_databases()


def _reusing_databases(request: pytest.FixtureRequest) -> bool:
    """``--reuse-db`` without ``--create-db``: test databases are kept between runs."""
    return bool(request.config.getvalue("reuse_db") and not request.config.getvalue("create_db"))


@pytest.fixture
def tenant_factory(
    db: None, _tenancy_templates: None, tenant_fields: dict[str, Any]
) -> Iterator[Callable[..., AbstractTenant]]:
    """Make tenants in a test: ``tenant_factory("acme", domains=[...], server=...)``.

    Each is provisioned as in production (copied from its server's template database),
    active, reached at ``<slug>.tenants.test`` (or under ``BASE_DOMAIN``) unless
    ``domains`` says otherwise, and removed with its database after the test. Its writes
    are not rolled back: the database is dropped instead.
    """
    from tenancy.conf import tenancy_settings
    from tenancy.connections import unregister
    from tenancy.models import get_tenant_model
    from tenancy.provisioning import create_tenant, deprovision_tenant
    from tenancy.testing.tenant import TEST_TENANT_SLUG, drop_test_database, tenant_host

    made: list[AbstractTenant] = []
    numbers = itertools.count(1)

    def make(
        slug: str | None = None,
        *,
        name: str = "",
        domains: list[str] | None = None,
        server: str | None = None,
        **fields: Any,
    ) -> AbstractTenant:
        slug = slug or f"tenant-{next(numbers)}"
        if slug == TEST_TENANT_SLUG:
            raise ValueError(f"{slug!r} is the test tenant's slug; give tenant_factory another.")
        # A database left by an interrupted run must not be reused with its old data.
        server_name = server or tenancy_settings.DEFAULT_SERVER
        drop_test_database(server_name, tenancy_settings.database_name_for(slug))
        tenant = create_tenant(
            slug,
            name=name,
            domains=[tenant_host(slug)] if domains is None else domains,
            server=server,
            fields={**tenant_fields, **fields},
        )
        made.append(tenant)
        return tenant

    yield make
    model = get_tenant_model()
    for tenant in reversed(made):
        stored = model._default_manager.filter(pk=tenant.pk).first()
        if stored is not None:
            deprovision_tenant(stored)
        else:
            unregister(tenant)
            drop_test_database(tenant.server, tenant.database_name)
