"""Schema tenants in the main database (``tenancy.main_database``): the project's tables
and every tenant's schema on one connection per thread.

Each test here would show the main database a tenant's rows (or a tenant the project's),
or leave a connection open, if the search path or the ownership of the shared connection
went wrong.
"""

from __future__ import annotations

import time

import pytest
from django.db import DatabaseError, IntegrityError, connections, transaction
from django.db.backends.signals import connection_created

from tenancy import atomic, schema_connections, tenant_context
from tenancy.backends import get_server
from tenancy.checks import check_settings
from tenancy.connections import close_all, close_old_connections, tenant_connection
from tenancy.exceptions import TenancyError
from tenancy.main_database import holding_server
from tenancy.models import Tenant
from tenancy.provisioning import ProvisioningError, create_tenant, deprovision_tenant
from tests.conftest import client_sessions
from tests.helpers import backend_pid
from tests.settings import BACKEND, PGBOUNCER, SERVER_1
from tests.sharedapp.models import Plan
from tests.tenantapp.models import Note

pytestmark = pytest.mark.skipif(BACKEND != "postgresql", reason="schemas are PostgreSQL's")

# The project's database (tests/settings.py); Django's test database during the run.
MAIN = "tenancy"


MARKER = "tenancy-test-marker"


@pytest.fixture
def main(settings, db_access):
    """Server "main" keeps its tenants as schemas of the main database; the thread's
    main connection object is made anew, as Django makes it for a new thread."""
    if PGBOUNCER:  # refused there: test_behind_a_transaction_pooler_...
        pytest.skip("tenants in the main database are refused behind PgBouncer")
    settings.TENANCY = {
        **settings.TENANCY,
        "SERVERS": {
            **settings.TENANCY["SERVERS"],
            "main": {**SERVER_1, "PLACEMENT": "schemas", "DATABASE": MAIN},
        },
    }
    original = connections["default"]
    original.close()
    del connections["default"]
    yield connections["default"]
    for tenant in Tenant.objects.filter(server="main"):
        deprovision_tenant(tenant)
    close_all()
    connections["default"].close()
    connections["default"] = original


def with_note(slug: str) -> Tenant:
    """A tenant of server "main" with a note, and a row of its own in its schema's
    ``django_migrations`` (a table the main database has too, in ``public``)."""
    tenant = create_tenant(slug, server="main")
    with tenant_context(tenant):
        Note.objects.create(text=f"{slug} note")
        with tenant_connection().cursor() as cursor:
            cursor.execute(
                "INSERT INTO django_migrations (app, name, applied) VALUES (%s, %s, now())",
                [MARKER, slug],
            )
    return tenant


def tenant_pid(tenant: Tenant) -> int:
    with tenant_context(tenant):
        return backend_pid(tenant_connection())


def tenant_migrations_in(wrapper) -> int:
    """The tenant's own rows in ``django_migrations`` (``with_note``) as ``wrapper`` finds
    them: none in the main database's table, one in a tenant's."""
    with wrapper.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM django_migrations WHERE app = %s", [MARKER])
        return int(cursor.fetchone()[0])


def test_the_main_database_and_its_tenants_share_one_connection(main):
    one, two = with_note("main-one"), with_note("main-two")
    assert holding_server(main.settings_dict) is not None
    pids = {backend_pid(main), tenant_pid(one), tenant_pid(two), backend_pid(main)}
    assert len(pids) == 1
    assert client_sessions("one", [main.settings_dict["NAME"]]) == 1
    with tenant_context(one):
        assert list(Note.objects.values_list("text", flat=True)) == ["main-one note"]
    with tenant_context(two):
        assert list(Note.objects.values_list("text", flat=True)) == ["main-two note"]
    assert set(Tenant.objects.values_list("slug", flat=True)) >= {"main-one", "main-two"}


def test_the_main_database_never_reads_a_tenants_tables(main):
    """``django_migrations`` is in the main database's ``public`` and in every schema:
    switching back and forth, each reads its own."""
    tenant = with_note("main-rows")
    for _ in range(3):
        assert tenant_migrations_in(main) == 0
        with tenant_context(tenant):
            assert tenant_migrations_in(tenant_connection()) > 0
            assert Note.objects.count() == 1
        assert Tenant.objects.filter(slug="main-rows").exists()
    with tenant_context(tenant):
        cursor = tenant_connection().cursor()
        cursor.execute("SELECT 1")
    assert tenant_migrations_in(main) == 0  # right after a tenant's cursor, left open
    cursor.close()


def test_temporary_tables_stay_with_whoever_made_them(main):
    """A tenant's temporary table named as a project table, and the main database's named
    as a tenant table, hide nothing from the other."""
    tenant = with_note("main-temp")
    with tenant_context(tenant), tenant_connection().cursor() as cursor:
        cursor.execute(f'CREATE TEMPORARY TABLE "{Tenant._meta.db_table}" (id int)')
    assert Tenant.objects.filter(slug="main-temp").count() == 1
    with main.cursor() as cursor:
        cursor.execute(f'CREATE TEMPORARY TABLE "{Note._meta.db_table}" AS SELECT 1 AS id')
    with tenant_context(tenant):
        assert list(Note.objects.values_list("text", flat=True)) == ["main-temp note"]
    assert Tenant.objects.filter(slug="main-temp").count() == 1

    # One's scratch table is gone for the other (dropped as the connection switches).
    with tenant_context(tenant), tenant_connection().cursor() as cursor:
        cursor.execute("CREATE TEMPORARY TABLE scratch AS SELECT 'tenant' AS owner")
    with pytest.raises(DatabaseError, match="scratch"), main.cursor() as cursor:
        cursor.execute("SELECT owner FROM scratch")
    with main.cursor() as cursor:
        cursor.execute("CREATE TEMPORARY TABLE scratch AS SELECT 'main' AS owner")
    with (
        tenant_context(tenant),
        pytest.raises(DatabaseError, match="scratch"),
        tenant_connection().cursor() as cursor,
    ):
        cursor.execute("SELECT owner FROM scratch")


def test_a_transaction_on_the_main_database_is_its_own(main):
    tenant = with_note("main-atomic")
    pid = backend_pid(main)
    with transaction.atomic():
        Tenant.objects.filter(slug="main-atomic").update(name="renamed")
        with tenant_context(tenant):
            assert tenant_pid(tenant) != pid  # lent another connection meanwhile
            Note.objects.create(text="written meanwhile")
            assert tenant_migrations_in(tenant_connection()) > 0
        assert tenant_migrations_in(main) == 0
        transaction.set_rollback(True)
    assert Tenant.objects.get(slug="main-atomic").name != "renamed"
    with tenant_context(tenant):  # the tenant's write was not the main database's to undo
        assert Note.objects.count() == 2


def test_a_tenants_transaction_is_its_own(main):
    tenant = with_note("main-tenant-atomic")
    with tenant_context(tenant):
        with atomic():
            Note.objects.create(text="rolled back")
            assert Tenant.objects.filter(slug="main-tenant-atomic").exists()
            assert tenant_migrations_in(main) == 0
            assert backend_pid(main) != backend_pid(tenant_connection())
            transaction.set_rollback(True, using=tenant_connection().alias)
        assert list(Note.objects.values_list("text", flat=True)) == ["main-tenant-atomic note"]


def test_a_savepoint_rolled_back_after_a_tenant_leaves_the_main_path(main):
    tenant = with_note("main-savepoint")
    with transaction.atomic():
        with transaction.atomic():
            with main.cursor() as cursor:
                cursor.execute("SET LOCAL search_path TO pg_catalog")
            transaction.set_rollback(True)
        assert tenant_migrations_in(main) == 0
    with tenant_context(tenant):
        assert Note.objects.count() == 1
    assert tenant_migrations_in(main) == 0


def test_django_connects_the_main_database_with_its_own_path(main):
    """What runs as the main database connects (Django's set-up, ``connection_created``
    receivers such as ``django.contrib.postgres``'s type lookups) sees the project's
    tables, even on a connection a tenant set up."""
    tenant = with_note("main-connect")
    paths = []

    def record(connection, **kwargs):
        if connection is main:
            paths.append(connection.connection.execute("SHOW search_path").fetchone()[0])

    main.close()
    tenant_pid(tenant)  # the thread's connection now has the tenant's path
    connection_created.connect(record)
    try:
        assert Tenant.objects.filter(slug="main-connect").exists()
    finally:
        connection_created.disconnect(record)
    assert paths == ["public, pg_temp"]


def test_closing_the_main_database_closes_its_connection(main):
    tenant = with_note("main-close")
    name = main.settings_dict["NAME"]
    tenant_pid(tenant)
    backend_pid(main)
    main.close()  # Django's, at the end of a request with CONN_MAX_AGE = 0
    assert client_sessions("one", [name], settle_to=0) == 0
    with tenant_context(tenant):
        assert Note.objects.count() == 1
    assert Tenant.objects.filter(slug="main-close").exists()


def test_a_broken_statement_on_one_leaves_the_other_working(main):
    tenant = with_note("main-error")
    with pytest.raises(DatabaseError), main.cursor() as cursor:
        cursor.execute("SELECT * FROM no_such_table")
    with tenant_context(tenant):
        assert Note.objects.count() == 1
        with pytest.raises(DatabaseError), tenant_connection().cursor() as cursor:
            cursor.execute(f'SELECT * FROM "{Tenant._meta.db_table}"')  # the project's
    assert Tenant.objects.filter(slug="main-error").exists()


def test_deleting_a_tenant_drops_its_schema_and_nothing_of_the_project(main):
    tenant = with_note("main-delete")
    schema = tenant.database_name
    server = get_server("main")
    assert server.database_exists(schema)
    deprovision_tenant(tenant)
    assert not server.database_exists(schema)
    server.drop_shared_test_database()  # Django's test database: Django drops it
    assert Tenant.objects.filter(slug="main-delete").count() == 0
    assert tenant_migrations_in(main) == 0
    with main.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM django_migrations WHERE app = 'tenancy'")
        assert cursor.fetchone()[0] > 0  # the project's migrations are still recorded


def test_a_database_tenant_is_never_given_the_main_database(main):
    name = main.settings_dict["NAME"]
    with pytest.raises(ProvisioningError, match=r"DATABASES\['default'\]"):
        create_tenant("main-db", server="one", fields={"database_name": name})
    assert not Tenant.objects.filter(slug="main-db").exists()


def test_behind_a_transaction_pooler_the_main_database_holds_no_tenants(settings, db_access):
    settings.TENANCY = {
        **settings.TENANCY,
        "SERVERS": {
            **settings.TENANCY["SERVERS"],
            "main": {**SERVER_1, "PLACEMENT": "schemas", "DATABASE": MAIN},
            "pooled": {
                **SERVER_1,
                "PLACEMENT": "schemas",
                "DATABASE": MAIN,
                "TRANSACTION_POOLING": True,
            },
        },
    }
    holding = holding_server(connections["default"].settings_dict)
    # Behind PgBouncer every server of the suite is pooled, "main" too.
    assert getattr(holding, "name", None) == (None if PGBOUNCER else "main")
    with pytest.raises(ProvisioningError, match="pooler in transaction mode"):
        create_tenant("main-pooled", server="pooled")
    assert not Tenant.objects.filter(slug="main-pooled").exists()
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_namespace WHERE nspname LIKE '%%main_pooled%%'")
        assert cursor.fetchone() is None


def test_the_system_check_names_what_keeps_the_connections_apart(settings, db_access, monkeypatch):
    pooled = {**SERVER_1, "PLACEMENT": "schemas", "DATABASE": MAIN, "TRANSACTION_POOLING": True}
    direct = {key: value for key, value in pooled.items() if key != "TRANSACTION_POOLING"}
    servers = settings.TENANCY["SERVERS"]
    settings.TENANCY = {**settings.TENANCY, "SERVERS": {**servers, "pooled": pooled}}
    assert [error.id for error in check_settings() if "'pooled'" in error.msg] == ["tenancy.E012"]
    elsewhere = {**direct, "OPTIONS": {"application_name": "elsewhere"}}
    settings.TENANCY = {**settings.TENANCY, "SERVERS": {**servers, "main": elsewhere}}
    # Behind PgBouncer the main database and the server entry look pooled (they disable
    # server-side cursors): a warning for each.
    looks_pooled = ["tenancy.W003", "tenancy.W003"] if PGBOUNCER else []

    def found():
        return [error for error in check_settings() if "'main'" in error.msg]

    assert [error.id for error in found()] == [*looks_pooled, "tenancy.W005"]
    assert "OPTIONS" in found()[-1].msg
    settings.TENANCY = {**settings.TENANCY, "SERVERS": {**servers, "main": direct}}
    assert [error.id for error in found()] == looks_pooled
    # The main database reached as through a pooler, the server entry saying nothing of it.
    monkeypatch.setitem(connections["default"].settings_dict, "DISABLE_SERVER_SIDE_CURSORS", True)
    assert [error.id for error in found()] == (looks_pooled or ["tenancy.W003"])


def test_the_connection_object_django_made_before_tenancy_was_ready_shares_too(main):
    """Django makes the main thread's main connection object as it imports the models,
    before tenancy's ``ready()``: tenancy makes it share as well."""
    from django.db.utils import ConnectionHandler

    from tenancy.main_database import instrument_made

    tenant = with_note("main-early")
    main.close()
    made = ConnectionHandler.create_connection(connections, "default")  # not tenancy's
    connections["default"] = made
    wrappers = len(made.execute_wrappers)
    try:
        instrument_made()
        instrument_made()  # once only
        assert len(made.execute_wrappers) == wrappers + 1
        assert backend_pid(made) == tenant_pid(tenant)
        assert tenant_migrations_in(made) == 0
    finally:
        made.close()
        connections["default"] = main


# --- a transaction of the main database's is never split or lost ------------------------


def terminate(wrapper) -> None:
    """End ``wrapper``'s backend from another session, as a server restart would."""
    pid = backend_pid(wrapper)
    with get_server("one")._cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
    deadline = time.monotonic() + 5
    while client_sessions("one", [wrapper.settings_dict["NAME"]]) and time.monotonic() < deadline:
        time.sleep(0.01)


def test_closing_every_connection_inside_atomic_fails_the_block(main):
    """tenancy's ``close_all()`` inside the main database's ``atomic()``: the rest of the
    block must not run on its own (autocommitted) and the block fails."""
    tenant = with_note("main-close-all")
    with pytest.raises((TenancyError, DatabaseError)), transaction.atomic():
        Plan.objects.create(name="before")
        with tenant_context(tenant):
            Note.objects.count()
        close_all()
        Plan.objects.create(name="after")
    assert list(Plan.objects.filter(name__in=["before", "after"])) == []


@pytest.mark.parametrize("inside", ["main", "tenant"])
def test_a_connection_ended_inside_atomic_fails_the_block_at_a_safe_point(main, inside):
    tenant = with_note(f"main-ended-{inside}")
    model, field = (Plan, "name") if inside == "main" else (Note, "text")
    with tenant_context(tenant):
        block = transaction.atomic() if inside == "main" else atomic()
        with pytest.raises((TenancyError, DatabaseError)), block:
            model.objects.create(**{field: "before"})
            terminate(main if inside == "main" else tenant_connection())
            with pytest.raises(DatabaseError):
                model.objects.create(**{field: "on the ended connection"})
            close_old_connections()  # tenancy's safe point (a request, the test client)
            model.objects.create(**{field: "after"})
        assert not model.objects.filter(**{f"{field}__in": ["before", "after"]}).exists()


@pytest.mark.parametrize("who", ["main", "tenant"])
def test_a_failed_statement_in_a_savepoint_leaves_the_transaction_going(main, who):
    """A statement naming ``schema`` makes the path be set again before the next one; a
    failed statement after it must not make that ``SET`` fail the rollback to the savepoint
    (``get_or_create``'s pattern)."""
    tenant = with_note(f"main-savepoint-{who}")
    model, field = (Plan, "name") if who == "main" else (Note, "text")
    with tenant_context(tenant):
        using = "default" if who == "main" else tenant_connection().alias
        with transaction.atomic(using=using):
            kept = model.objects.create(**{field: "outer"})
            with connections[using].cursor() as cursor:
                cursor.execute("SELECT 'schema'")
            with pytest.raises(IntegrityError), transaction.atomic(using=using):
                model.objects.create(pk=kept.pk, **{field: "a duplicate"})
            model.objects.create(**{field: "after"})
        assert set(
            model.objects.filter(**{f"{field}__in": ["outer", "after"]}).values_list(
                field, flat=True
            )
        ) == {"outer", "after"}


def test_a_main_database_whose_tables_are_found_elsewhere_keeps_its_connection(main, monkeypatch):
    """A schema named after the main database's role (PostgreSQL's "$user" on its default
    path, where a project may keep its tables): tenancy's ``public`` would find others, so
    the main database keeps a connection of its own, with its own path."""
    from tenancy import main_database

    tenant = with_note("main-role-path")
    role = main.settings_dict["USER"]
    with get_server("main")._shared_cursor() as cursor:
        cursor.execute(f'CREATE SCHEMA "{role}"')
        cursor.execute(
            f'CREATE TABLE "{role}".django_migrations '
            "AS SELECT * FROM public.django_migrations WHERE false"
        )
    monkeypatch.setattr(main_database, "_in_public", {})  # asked again, once
    try:
        main.close()
        assert backend_pid(main) != tenant_pid(tenant)
        with main.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM django_migrations")  # the role's schema's
            assert cursor.fetchone()[0] == 0
        with tenant_context(tenant):
            assert tenant_migrations_in(tenant_connection()) == 1
    finally:
        main.close()
        with get_server("main")._shared_cursor() as cursor:
            cursor.execute(f'DROP SCHEMA "{role}" CASCADE')


def test_a_schema_is_never_named_after_a_role_the_project_connects_as(main, settings):
    """A session of that role (psql, a report, another program) would find the tenant's
    tables first on its default search path ("$user", public)."""
    role = "test_reporting"  # a test run's tenant names start so
    reporting = {**SERVER_1, "PLACEMENT": "schemas", "DATABASE": MAIN, "USER": role}
    servers = settings.TENANCY["SERVERS"]
    settings.TENANCY = {**settings.TENANCY, "SERVERS": {**servers, "reporting": reporting}}
    for server in ("main", "reporting"):  # refused on every server of that database
        with pytest.raises(ProvisioningError, match="database role"):
            create_tenant("main-role", server=server, fields={"database_name": role})
    assert not Tenant.objects.filter(slug="main-role").exists()
    assert not get_server("main").database_exists(role)
    # A role the project's sessions take on (Django's OPTIONS["assume_role"]) as well.
    owner = {**reporting, "USER": SERVER_1["USER"], "OPTIONS": {"assume_role": "test_owner"}}
    settings.TENANCY = {**settings.TENANCY, "SERVERS": {**servers, "reporting": owner}}
    with pytest.raises(ProvisioningError, match="database role"):
        create_tenant("main-role", server="main", fields={"database_name": "test_owner"})


def test_the_role_a_main_database_takes_on_is_the_one_asked_about(main, monkeypatch):
    """With ``OPTIONS["assume_role"]`` the main database's "$user" is that role: a schema
    of its name (where such a project keeps its tables) keeps the connections apart."""
    from tenancy import main_database

    with get_server("main")._shared_cursor() as cursor:
        cursor.execute("CREATE ROLE test_owner")
        cursor.execute("CREATE SCHEMA test_owner AUTHORIZATION test_owner")
    options = main.settings_dict["OPTIONS"]
    try:
        monkeypatch.setattr(main_database, "_in_public", {})
        assert main_database._finds_its_tables_in_public(main, "asked")
        main.settings_dict["OPTIONS"] = {**options, "assume_role": "test_owner"}
        assert not main_database._finds_its_tables_in_public(main, "asked again")
    finally:
        main.settings_dict["OPTIONS"] = options
        with get_server("main")._shared_cursor() as cursor:
            cursor.execute("DROP SCHEMA test_owner")
            cursor.execute("DROP ROLE test_owner")


def test_django_drops_the_main_test_database_past_the_shared_connection(main, monkeypatch):
    """A tenant opened the thread's connection, and the main database's connection object
    is closed already: Django's DROP DATABASE of the test database would meet the shared
    connection, which tenancy closes first."""
    from django.db.backends.postgresql.creation import DatabaseCreation

    tenant = with_note("main-drop")
    main.close()
    tenant_pid(tenant)
    open_when_dropped = []

    def drop(creation, *args, **kwargs):  # Django's, without the DROP
        open_when_dropped.append(schema_connections.open_count())

    monkeypatch.setattr(DatabaseCreation, "_destroy_test_db", drop)
    main.creation._destroy_test_db("test_database_name", verbosity=0)
    assert open_when_dropped == [0]
