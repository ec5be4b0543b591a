"""Fixtures: two tenant databases on two servers, created once per session.

Tenant aliases are registered at runtime, after Django's test-case machinery has looked
at the configured databases, so these tests do not use the ``django_db`` marker: they
unblock database access themselves (``db_access``) and clean up after each test.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.core.management import call_command
from django.db import connections
from django.test.utils import setup_databases, teardown_databases
from psycopg import sql

from tenancy import template_databases
from tenancy.backends import get_server
from tenancy.conf import is_test_run, tenancy_settings
from tenancy.connections import alias_for, unregister_all
from tenancy.connections import close_all as close_tenant_connections
from tenancy.context import tenant_context
from tenancy.models import Domain, Tenant, TenantMove, TenantStatus
from tenancy.testing.tenant import drop_test_database
from tests.settings import PGBOUNCER
from tests.sharedapp.models import Plan
from tests.tenantapp.models import Note, Tag

# slug -> server; alpha and beta live on different servers.
TEST_TENANTS = {"alpha": "one", "beta": "two"}


def pytest_sessionstart(session: pytest.Session) -> None:
    if not is_test_run():
        raise pytest.UsageError(
            "tenancy's pytest plugin is not active (is the package installed?); without it "
            "tenant databases would not get test names."
        )


def make_tenant(slug: str, server: str, **fields: object) -> Tenant:
    """An unsaved tenant whose database is the session's test database for ``slug``."""
    fields.setdefault("database_name", tenancy_settings.database_name_for(slug))
    return Tenant(slug=slug, name=slug.title(), server=server, **fields)


def create_tenant_database(tenant: Tenant) -> None:
    drop_test_database(tenant.server, tenant.database_name)
    get_server(tenant.server).create_database(tenant.database_name)
    with tenant_context(tenant):
        call_command("migrate", database=alias_for(tenant), verbosity=0)


def drop_tenant_database(tenant: Tenant) -> None:
    unregister_all()
    drop_test_database(tenant.server, tenant.database_name)


def drop_test_databases_except(slugs: object) -> None:
    """Drop the tenant databases a test created on the test servers."""
    keep = {tenancy_settings.database_name_for(slug) for slug in slugs}  # type: ignore[attr-defined]
    keep.add(tenancy_settings.template_database_name())
    keep.update(tenancy_settings.spare_database_names())
    for name in ("one", "two"):
        server = get_server(name)
        for database in server.list_databases():
            if database.startswith("test_tenancy_") and database not in keep:
                drop_test_database(name, database)


@pytest.fixture(scope="session")
def django_db_setup(
    request: pytest.FixtureRequest,
    django_test_environment: None,
    django_db_blocker: object,
    django_db_keepdb: bool,
    django_db_createdb: bool,
    django_db_modify_db_settings: None,
) -> Iterator[None]:
    """The default test database, always: pytest-django creates only the databases that
    ``django_db`` markers name, and these tests do without the marker."""
    keepdb = django_db_keepdb and not django_db_createdb
    verbosity = request.config.option.verbose
    with django_db_blocker.unblock():  # type: ignore[attr-defined]
        config = setup_databases(
            verbosity=verbosity, interactive=False, aliases={"default"}, keepdb=keepdb
        )
    yield
    if not keepdb:
        if PGBOUNCER:  # PgBouncer keeps server connections that would block the DROP
            with pgbouncer_console("one") as console:
                name = connections["default"].settings_dict["NAME"]
                console.execute(sql.SQL("KILL {}").format(sql.Identifier(name)))
        with django_db_blocker.unblock():  # type: ignore[attr-defined]
            teardown_databases(config, verbosity=verbosity)


@pytest.fixture(scope="session")
def tenant_databases(django_db_setup: None, django_db_blocker: object) -> Iterator[None]:
    tenants = [make_tenant(slug, server) for slug, server in TEST_TENANTS.items()]
    with django_db_blocker.unblock():  # type: ignore[attr-defined]
        for tenant in tenants:
            create_tenant_database(tenant)
        unregister_all()
    yield
    with django_db_blocker.unblock():  # type: ignore[attr-defined]
        for tenant in tenants:
            drop_tenant_database(tenant)


@pytest.fixture
def db_access(tenant_databases: None, django_db_blocker: object) -> Iterator[None]:
    """Database access for one test; afterwards every row it wrote is removed."""
    name = str(connections["default"].settings_dict["NAME"])
    assert name.startswith("test_") or "memorydb" in name, f"not a test database: {name}"
    with django_db_blocker.unblock():  # type: ignore[attr-defined]
        yield
        unregister_all()
        for slug, server in TEST_TENANTS.items():
            with tenant_context(make_tenant(slug, server)):
                Tag.objects.all().delete()
                Note.objects.all().delete()
        unregister_all()
        Domain.objects.all().delete()
        TenantMove.objects.all().delete()
        Tenant.objects.all().delete()
        drop_test_databases_except(TEST_TENANTS)
        unregister_all()
        Plan.objects.all().delete()
        connections.close_all()
        # The async ORM runs queries in asgiref's thread-sensitive executor thread:
        # close the connections it opened there as well, Django's and the tenants' (a
        # removed tenant's SQLite connection waits there for its thread's next safe point).
        asyncio.run(sync_to_async(connections.close_all)())
        asyncio.run(sync_to_async(close_tenant_connections)())


def _saved_tenant(slug: str) -> Tenant:
    tenant = make_tenant(slug, TEST_TENANTS[slug], status=TenantStatus.ACTIVE)
    tenant.save()
    Domain.objects.create(domain=f"{slug}.example.test", tenant=tenant, is_primary=True)
    return tenant


@pytest.fixture
def alpha(db_access: None) -> Tenant:
    """Active tenant on server "one", reached at alpha.example.test."""
    return _saved_tenant("alpha")


@pytest.fixture
def beta(db_access: None) -> Tenant:
    """Active tenant on server "two", reached at beta.example.test."""
    return _saved_tenant("beta")


@pytest.fixture
def notes(alpha: Tenant, beta: Tenant) -> tuple[Tenant, Tenant]:
    """alpha and beta, each with one note: "alpha note", "beta note"."""
    for tenant in (alpha, beta):
        with tenant_context(tenant):
            Note.objects.create(text=f"{tenant.slug} note")
    return alpha, beta


def client_sessions(server: str, database_names: list[str], settle_to: int | None = None) -> int:
    """Connections clients hold to these databases on a test server (PostgreSQL): the
    server's sessions, or PgBouncer's clients when the suite runs behind PgBouncer.

    A server session ends a moment after its client closes it: with ``settle_to``, count
    again for up to 5 s until the count is that, and return the last count either way.
    """
    deadline = time.monotonic() + 5
    count = _client_sessions(server, database_names)
    while settle_to is not None and count != settle_to and time.monotonic() < deadline:
        time.sleep(0.01)
        count = _client_sessions(server, database_names)
    return count


def _client_sessions(server: str, database_names: list[str]) -> int:
    if not PGBOUNCER:
        with get_server(server)._cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = ANY(%s) AND backend_type = 'client backend'",
                [database_names],
            )
            return int(cursor.fetchone()[0])
    with pgbouncer_console(server) as console:
        cursor = console.execute("SHOW CLIENTS")
        database = [column.name for column in cursor.description or ()].index("database")
        return sum(1 for row in cursor.fetchall() if row[database] in database_names)


def pgbouncer_console(server: str) -> Any:
    """A connection to the admin console of the PgBouncer in front of test server ``server``."""
    import psycopg

    template = tenancy_settings.server(server)
    return psycopg.connect(
        host=template["HOST"],
        port=template["PORT"],
        user="postgres",
        dbname="pgbouncer",
        autocommit=True,
        cursor_factory=psycopg.ClientCursor,
    )


def server_port(server: str) -> str:
    """The port of the PostgreSQL server behind test server ``server`` (not PgBouncer's)."""
    number = {"one": 1, "two": 2}[server]
    direct = os.environ.get(f"TENANCY_TEST_PG_DIRECT_{number}")
    return direct.rpartition(":")[2] if direct else str(tenancy_settings.server(server)["PORT"])


def drop_template_databases() -> None:
    for name in ("one", "two"):
        template_databases.drop_template_databases(name)


@pytest.fixture
def migrations(settings: object) -> Iterator[object]:
    """Switch an app's migrations to another package for one test."""
    from tenancy.migration import reset_state

    def use(package: str | None, app: str = "tenantapp") -> None:
        """``None``: the app's own migrations again."""
        modules = {app: package} if package else {}
        settings.MIGRATION_MODULES = modules  # type: ignore[attr-defined]
        reset_state()

    yield use
    reset_state()
    # Template databases migrated with these packages must not serve later tests.
    drop_template_databases()


FLEET = ["beta-two", "gamma", "omega"]  # beta-two on server "two"


@pytest.fixture
def fleet(db_access: None) -> Iterator[list[Tenant]]:
    """Three provisioned tenants (``FLEET``), the first on server "two"; the migration
    graph is loaded again afterwards (tests change the migrations)."""
    from tenancy.migration import reset_state
    from tenancy.provisioning import create_tenant

    yield [create_tenant(slug, server="two" if slug == "beta-two" else "one") for slug in FLEET]
    reset_state()


@pytest.fixture
def gamma(db_access: None) -> Tenant:
    """A tenant provisioned for the test on server "one", reached at gamma.example.test,
    with 25 notes ("note 00" to "note 24") and a tag on the first."""
    from tenancy.provisioning import create_tenant

    tenant = create_tenant("gamma", domains=["gamma.example.test"])
    with tenant_context(tenant):
        for number in range(25):
            Note.objects.create(text=f"note {number:02}")
        Tag.objects.create(note=Note.objects.first(), label="first")
    return tenant
