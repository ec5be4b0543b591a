"""The test tenant: one tenant database per test run, set up by Django like its own.

During a test run tenancy names every tenant and template database as Django names test
databases (``test_<name>``, plus the test worker's suffix) and refuses to connect to any
other tenant database, so tests can never touch a real tenant.

The test tenant's alias (``tenant:test``) is *published*: put into ``settings.DATABASES``
before the test databases are set up, so that Django's test machinery treats it as one of
its own databases. Django creates it (or reuses it with ``--keepdb``/``--reuse-db``,
migrating it when migrations changed), wraps each test in a transaction on it as on
``default``, and refuses queries to it from tests that did not ask for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import connections

from tenancy.backends import get_server
from tenancy.conf import (
    TEST_DATABASE_PREFIX,
    is_test_run,
    server_vendor,
    tenancy_settings,
    use_test_database_names,
)
from tenancy.connections import ALIAS_PREFIX, publish
from tenancy.exceptions import ReservedDatabaseError, TenancyError

if TYPE_CHECKING:
    from tenancy.models import AbstractTenant

TEST_TENANT_SLUG = "test"
TEST_TENANT_ALIAS = f"{ALIAS_PREFIX}{TEST_TENANT_SLUG}"


def start_test_run(suffix: str = "") -> None:
    """Name tenant databases as test databases from now on (``suffix``: the worker's)."""
    use_test_database_names(suffix)


def tenant_host(slug: str) -> str:
    """The hostname tests reach tenant ``slug`` at: ``<slug>.<BASE_DOMAIN>``, or
    ``<slug>.tenants.test`` (a reserved top-level domain) without a base domain."""
    return f"{slug}.{tenancy_settings.BASE_DOMAIN or 'tenants.test'}"


def publish_test_tenant() -> str:
    """Put the test tenant's alias into ``settings.DATABASES``; returns the alias.

    Runs once per process, before the test databases are set up (the pytest plugin does
    it after collection, ``TenantTestCase`` when the test runner looks at its databases).
    """
    if TEST_TENANT_ALIAS in connections.settings:
        return TEST_TENANT_ALIAS
    if not is_test_run():
        start_test_run()
    server_name = tenancy_settings.DEFAULT_SERVER
    server = tenancy_settings.server(server_name)
    # Django names the test database after TEST["NAME"]; pytest-django appends its worker
    # suffix to it, which makes it tenancy's test name for the slug.
    test_name = TEST_DATABASE_PREFIX + tenancy_settings.DATABASE_NAME.format(slug=TEST_TENANT_SLUG)
    if server_vendor(server) == "sqlite":
        server["DIRECTORY"].mkdir(parents=True, exist_ok=True)
        test_name = str(server["DIRECTORY"] / f"{test_name}.sqlite3")
    alias = publish(_unsaved_test_tenant(), {"NAME": test_name})
    # Every tenant_host(), as Django's test environment adds "testserver".
    hosts = f".{tenant_host('x').partition('.')[2]}"
    if hosts not in settings.ALLOWED_HOSTS and "*" not in settings.ALLOWED_HOSTS:
        settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, hosts]
    return alias


def drop_test_database(server: str, database_name: str) -> bool:
    """Drop a database that tests made on ``server`` (a tenant's, a template's or a
    spare's); ``False`` if it did not exist. Only test databases (``test_...``) are
    dropped: ``ReservedDatabaseError`` for any other name."""
    if not database_name.startswith(TEST_DATABASE_PREFIX):
        raise ReservedDatabaseError(
            f"Database {database_name!r} on server {server!r} is not dropped: tests drop "
            f"only test databases, named {TEST_DATABASE_PREFIX}..."
        )
    return get_server(server).drop_database(database_name, allow_template=True)


def drop_shared_test_databases() -> None:
    """Drop the shared test databases of the schema servers (their tenants' schemas with
    them), which tenancy otherwise refuses to drop: only test databases (``test_...``)."""
    from tenancy.backends.schemas import SchemaServer

    for name in tenancy_settings.SERVERS:
        server = get_server(name)
        if isinstance(server, SchemaServer) and server.database.startswith(TEST_DATABASE_PREFIX):
            server.drop_shared_test_database()


def ensure_test_tenant(fields: dict[str, Any] | None = None) -> AbstractTenant:
    """The test tenant's row in the main database, created if missing (active, with its
    host as primary domain). ``fields``: more values for a custom tenant model."""
    from tenancy.models import Domain, get_tenant_model

    if TEST_TENANT_ALIAS not in connections.settings:
        raise TenancyError(
            "The test tenant's database is not set up. Use the `tenant` fixture (pytest) or "
            "tenancy.testing.TenantTestCase, which set it up before the test databases."
        )
    model = get_tenant_model()
    tenant = model._default_manager.filter(slug=TEST_TENANT_SLUG).first()
    expected = _unsaved_test_tenant(**(fields or {}))
    if tenant is not None and (tenant.server, tenant.database_name) != (
        expected.server,
        expected.database_name,
    ):
        tenant.delete()  # kept by --reuse-db from a run with other settings
        tenant = None
    if tenant is None:
        tenant = expected
        tenant.save()
        Domain.objects.create(
            domain=tenant_host(TEST_TENANT_SLUG), tenant_id=tenant.pk, is_primary=True
        )
    return tenant


def _unsaved_test_tenant(**fields: Any) -> AbstractTenant:
    from tenancy.models import TenantStatus, get_tenant_model

    fields.setdefault("name", "Test tenant")
    fields.setdefault("status", TenantStatus.ACTIVE)
    return get_tenant_model()(
        slug=TEST_TENANT_SLUG,
        server=tenancy_settings.DEFAULT_SERVER,
        database_name=tenancy_settings.database_name_for(TEST_TENANT_SLUG),
        **fields,
    )
