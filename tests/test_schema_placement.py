"""Tenants as schemas of a shared database, beside tenants with a database of their own.

Each test here would show another tenant's rows, or reach the wrong schema, if the
search path went stale: after rollbacks, across threads and tasks, around iterators,
errors and raw SQL.
"""

from __future__ import annotations

import asyncio
import io
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, IntegrityError, connections, transaction
from django.test import Client
from psycopg import sql

from tenancy import NoTenantError, TenantRemoved, atomic, tenant_context
from tenancy.backends import get_server
from tenancy.conf import TenancySettings, shared_database_name
from tenancy.connections import (
    alias_for,
    close_all,
    close_old_connections,
    connection_for,
    open_connection_count,
    tenant_connection,
    unregister,
)
from tenancy.exceptions import ReservedDatabaseError, TenancyError
from tenancy.migration import migration_lock
from tenancy.models import Domain, Tenant
from tenancy.provisioning import ProvisioningError, create_tenant, deprovision_tenant
from tests.conftest import client_sessions
from tests.helpers import backend_pid
from tests.settings import BACKEND, PGBOUNCER, SERVER_1, SERVER_2
from tests.tenantapp.models import Note
from tests.test_admin import client_for

postgresql_only = pytest.mark.skipif(BACKEND != "postgresql", reason="schemas are PostgreSQL's")

SHARED_DATABASE = "tenancy_shared"


def schema_server(server: dict, **values: object) -> dict:
    return {**server, "PLACEMENT": "schemas", "DATABASE": SHARED_DATABASE, **values}


# Behind PgBouncer in transaction pooling only the per-transaction search path is safe;
# straight to the server both ways are tested.
POOLING = [True] if PGBOUNCER else [False, True]


@pytest.fixture(params=POOLING, ids=lambda pooled: "per-transaction" if pooled else "session")
def schemas(request, settings, db_access):
    """Servers "shared" (cluster 1) and "shared2" (cluster 2) holding tenants as schemas,
    beside the database servers "one" and "two"; with the search path set per session
    or per transaction (TRANSACTION_POOLING)."""
    pooled = {"TRANSACTION_POOLING": True} if request.param else {}
    settings.TENANCY = {
        **settings.TENANCY,
        "SERVERS": {
            **settings.TENANCY["SERVERS"],
            "shared": schema_server(SERVER_1, **pooled),
            "shared2": schema_server(SERVER_2, **pooled),
        },
    }
    yield request.param
    close_all()
    asyncio.run(_close_in_executor())
    if BACKEND == "postgresql":
        # tenancy refuses to drop a database holding tenant schemas: the test does it,
        # by name (a test may have pointed "shared" at another database meanwhile).
        database = shared_database_name({"DATABASE": SHARED_DATABASE})
        for server in ("one", "two"):
            with get_server(server)._cursor() as cursor:
                drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                cursor.execute(drop.format(sql.Identifier(database)))


async def _close_in_executor() -> None:
    from asgiref.sync import sync_to_async

    await sync_to_async(close_all)()


def with_note(slug: str, server: str = "shared") -> Tenant:
    tenant = create_tenant(slug, server=server, domains=[f"{slug}.example.test"])
    with tenant_context(tenant):
        Note.objects.create(text=f"{slug} note")
    return tenant


def texts() -> list[str]:
    return list(Note.objects.values_list("text", flat=True))


def shared_sessions(settle_to: int | None = None) -> int:
    """Sessions on the shared database of server "shared" (on cluster 1)."""
    return client_sessions("one", [get_server("shared").database], settle_to)


# --- configuration -----------------------------------------------------------------


def validated(server: dict) -> object:
    configured = TenancySettings()
    configured.__dict__["_raw"] = {"SERVERS": {"s": server}}
    return configured.SERVERS


POSTGRES = {"ENGINE": "django.db.backends.postgresql", "HOST": "db"}


@pytest.mark.parametrize(
    ("server", "message"),
    [
        (
            {"ENGINE": "django.db.backends.sqlite3", "DIRECTORY": "/x", "PLACEMENT": "schemas"},
            "has no schemas; PLACEMENT 'schemas' needs PostgreSQL",
        ),
        ({**POSTGRES, "PLACEMENT": "schemas"}, "needs DATABASE"),
        ({**POSTGRES, "PLACEMENT": "schemas", "DATABASE": "Bad-Name"}, "needs DATABASE"),
        ({**POSTGRES, "PLACEMENT": "tables"}, "has PLACEMENT 'tables'; use 'databases'"),
        ({**POSTGRES, "DATABASE": "x"}, "sets DATABASE, which only a server with PLACEMENT"),
        (
            {**POSTGRES, "PLACEMENT": "schemas", "DATABASE": "x", "OPTIONS": {"pool": True}},
            "sets OPTIONS 'pool'",
        ),
    ],
)
def test_placement_settings_are_checked(server, message):
    with pytest.raises(ImproperlyConfigured, match=message) as raised:
        validated(server)
    assert str(raised.value).startswith("TENANCY['SERVERS']['s'] ")


def test_a_schema_server_entry_is_accepted():
    servers = validated({**POSTGRES, "PLACEMENT": "schemas", "DATABASE": "tenants"})
    assert servers["s"]["DATABASE"] == "tenants"


# --- isolation ---------------------------------------------------------------------


@postgresql_only
def test_schema_tenants_see_only_their_rows_over_one_connection(schemas):
    acme, globex = with_note("acme"), with_note("globex")
    for _ in range(3):  # switching back and forth on the one connection
        for tenant in (acme, globex):
            with tenant_context(tenant):
                assert texts() == [f"{tenant.slug} note"]
    assert shared_sessions() == 1
    assert open_connection_count() == 1
    # Each schema has its own migration records; public has no table of a tenant app.
    with get_server("shared")._shared_cursor() as cursor:
        cursor.execute(
            "SELECT table_schema FROM information_schema.tables "
            "WHERE table_name = 'tenantapp_note' ORDER BY 1"
        )
        assert [row[0] for row in cursor.fetchall()] == [acme.database_name, globex.database_name]
        cursor.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        )
        assert cursor.fetchone()[0] == 0
    with tenant_context(acme), tenant_connection().cursor() as cursor:
        cursor.execute("SELECT count(*) FROM django_migrations WHERE app = 'tenantapp'")
        assert cursor.fetchone()[0] > 0


@postgresql_only
def test_schema_and_database_tenants_side_by_side(schemas, alpha):
    acme, far = with_note("acme"), with_note("far", server="shared2")
    with tenant_context(alpha):
        Note.objects.create(text="alpha note")
    for tenant in (alpha, acme, far, alpha, far, acme):
        with tenant_context(tenant):
            assert texts() == [f"{tenant.slug} note"]
    for host, text in [("acme.example.test", "acme note"), ("alpha.example.test", "alpha note")]:
        response = Client(HTTP_HOST=host).get("/notes/")
        assert (response.status_code, response.json()) == (200, {"notes": [text]})


@postgresql_only
def test_a_rolled_back_transaction_leaves_no_stale_search_path(schemas):
    """django-tenants #1262: a search path set inside a transaction that was rolled back
    is undone by PostgreSQL while the library still believes it is set."""
    acme, globex = with_note("acme"), with_note("globex")
    with tenant_context(globex):
        assert texts() == ["globex note"]  # the connection's path: globex
    with tenant_context(acme):
        with pytest.raises(ZeroDivisionError), atomic():
            Note.objects.create(text="rolled back")  # the path changes to acme here
            raise ZeroDivisionError
        assert texts() == ["acme note"]  # not globex's
        with atomic():
            Note.objects.create(text="acme kept")
            with pytest.raises(ZeroDivisionError), atomic():  # a savepoint
                Note.objects.create(text="savepoint rolled back")
                raise ZeroDivisionError
            assert texts() == ["acme note", "acme kept"]
    with tenant_context(globex):
        assert texts() == ["globex note"]
    with tenant_context(acme):
        assert texts() == ["acme note", "acme kept"]


@postgresql_only
def test_another_tenant_inside_a_transaction_gets_its_own_connection(schemas):
    acme, globex = with_note("acme"), with_note("globex")
    with tenant_context(acme), pytest.raises(ZeroDivisionError), atomic():
        Note.objects.create(text="acme, rolled back")
        with tenant_context(globex):
            Note.objects.create(text="globex, committed")  # not in acme's transaction
            assert texts() == ["globex note", "globex, committed"]
            assert shared_sessions() == 2
        assert texts() == ["acme note", "acme, rolled back"]
        raise ZeroDivisionError
    with tenant_context(acme):
        assert texts() == ["acme note"]
    with tenant_context(globex):
        assert texts() == ["globex note", "globex, committed"]


@postgresql_only
def test_a_cursor_of_one_tenant_cannot_run_in_another_tenants_transaction(schemas):
    acme, globex = with_note("acme"), with_note("globex")
    with tenant_context(globex):
        cursor = tenant_connection().cursor()
    with tenant_context(acme), atomic():
        Note.objects.create(text="acme's transaction")
        with tenant_context(globex), pytest.raises(TenancyError, match="transaction open"):
            cursor.execute("SELECT text FROM tenantapp_note")  # made on the same connection
    cursor.close()


@postgresql_only
def test_threads_and_tasks_each_see_their_tenants_rows(schemas):
    tenants = [with_note(f"t{number}") for number in range(6)]
    close_all()
    errors: list[str] = []
    peak = [0]

    def work(number: int) -> None:
        try:
            for step in range(30):
                tenant = tenants[(number + step) % len(tenants)]
                with tenant_context(tenant):
                    found = texts()
                if found != [f"{tenant.slug} note"]:
                    errors.append(f"{tenant.slug} saw {found}")
                peak[0] = max(peak[0], open_connection_count())
        finally:
            close_all()

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(work, range(4)))
    assert errors == []
    assert 1 <= peak[0] <= 4  # one connection per thread, whatever the number of tenants

    async def read(tenant: Tenant) -> list[str]:
        with tenant_context(tenant):
            await asyncio.sleep(0)
            chunked = [note.text async for note in Note.objects.aiterator(chunk_size=1)]
            assert chunked == [note.text async for note in Note.objects.all()]
            return chunked

    async def read_all() -> list[list[str]]:
        return await asyncio.gather(*(read(tenant) for tenant in tenants * 3))

    results = asyncio.run(read_all())
    assert results == [[f"{tenant.slug} note"] for tenant in tenants * 3]


@postgresql_only
def test_an_iterator_keeps_its_tenants_rows_across_a_switch(schemas):
    acme, globex = with_note("acme"), with_note("globex")
    with tenant_context(acme):
        Note.objects.bulk_create(Note(text=f"acme {n}") for n in range(5))
        rows = Note.objects.values_list("text", flat=True).iterator(chunk_size=2)
        first = next(rows)
        with tenant_context(globex):
            assert texts() == ["globex note"]
            Note.objects.create(text="globex 2")
        rest = list(rows)
    assert [first, *rest] == ["acme note", *(f"acme {n}" for n in range(5))]


@postgresql_only
def test_a_connection_is_reused_after_an_error(schemas):
    acme, globex = with_note("acme"), with_note("globex")
    with tenant_context(acme):
        with pytest.raises(DatabaseError), tenant_connection().cursor() as cursor:
            cursor.execute("SELECT no_such_column FROM tenantapp_note")
        with pytest.raises(DatabaseError), atomic():
            list(Note.objects.raw("SELECT * FROM no_such_table"))
    with tenant_context(globex):
        assert texts() == ["globex note"]
    with tenant_context(acme):
        assert texts() == ["acme note"]


@postgresql_only
def test_raw_sql_and_a_search_path_changed_by_hand(schemas):
    acme, globex = with_note("acme"), with_note("globex")
    with tenant_context(acme), tenant_connection().cursor() as cursor:
        cursor.execute("SHOW search_path")
        assert cursor.fetchone()[0] == f"{acme.database_name}, pg_temp"
        cursor.execute("SELECT text FROM tenantapp_note")
        assert cursor.fetchall() == [("acme note",)]
        cursor.execute("SET search_path TO %s" % globex.database_name)  # noqa: UP031
        cursor.execute("SELECT text FROM tenantapp_note")  # tenancy sets it back first
        assert cursor.fetchall() == [("acme note",)]
        cursor.execute("RESET search_path")
        assert texts() == ["acme note"]
        with atomic():
            cursor.execute("SELECT text, 'reset' FROM tenantapp_note")  # a false alarm
            assert texts() == ["acme note"]
            cursor.execute("SET search_path TO %s" % globex.database_name)  # noqa: UP031
            assert texts() == ["acme note"]  # set again for the rest of the transaction
            Note.objects.create(text="acme 2")
        assert texts() == ["acme note", "acme 2"]
    with tenant_context(globex):
        assert texts() == ["globex note"]


@postgresql_only
def test_no_tenant_fails_closed_and_public_is_never_read(schemas):
    acme = with_note("acme")
    with pytest.raises(NoTenantError):
        texts()
    # A copy of the table in public, as a mistaken manual migration would leave it:
    # with the path reset where tenancy cannot see it, queries fail rather than read it.
    with get_server("shared")._shared_cursor() as cursor:
        cursor.execute("CREATE TABLE public.canary (id int)")
    try:
        with tenant_context(acme):
            connection_for(acme).ensure_connection()
            raw = connection_for(acme).connection
            raw.execute("RESET search_path")  # a raw driver cursor, unseen by tenancy
            if schemas:  # set again for every transaction
                assert texts() == ["acme note"]
            else:
                with pytest.raises(DatabaseError, match="tenantapp_note"):
                    texts()
    finally:
        with get_server("shared")._shared_cursor() as cursor:
            cursor.execute("DROP TABLE public.canary")


@postgresql_only
def test_removing_one_schema_tenant_leaves_the_threads_other_tenants_working(schemas):
    acme, globex = with_note("acme"), with_note("globex")
    ready, removed, results = threading.Event(), threading.Event(), []

    def worker() -> None:
        try:
            with tenant_context(acme):
                results.append(texts())
                held = connection_for(acme)
            ready.set()
            removed.wait(5)
            with tenant_context(globex):
                results.append(texts())  # on the connection acme's object was lent
            try:
                held.cursor().execute("SELECT 1")
            except TenantRemoved:
                results.append("acme removed")
        finally:
            close_all()

    thread = threading.Thread(target=worker)
    thread.start()
    ready.wait(5)
    unregister(acme)
    removed.set()
    thread.join(10)
    assert results == [["acme note"], ["globex note"], "acme removed"]


@postgresql_only
@pytest.mark.skipif(PGBOUNCER, reason="PgBouncer keeps its server sessions open")
def test_connections_close_as_conn_max_age_says(schemas):
    acme = with_note("acme")
    close_all()
    with tenant_context(acme):
        texts()
    assert shared_sessions() == 1
    close_old_connections()  # CONN_MAX_AGE is 0: closed at the next safe point
    assert shared_sessions(settle_to=0) == 0
    assert open_connection_count() == 0


# --- migrations and provisioning ---------------------------------------------------


@postgresql_only
def test_migrate_tenants_migrates_every_placement_with_a_lock_per_schema(schemas, alpha):
    acme, globex = with_note("acme"), with_note("globex")
    call_command("migrate_tenants", verbosity=0)
    for tenant in (acme, globex):
        with tenant_context(tenant):
            assert texts() == [f"{tenant.slug} note"]

    taken: list[bool] = []

    def try_lock(tenant: Tenant) -> None:
        with tenant_context(tenant), migration_lock(connection_for(tenant), wait=False) as ok:
            taken.append(ok)
        close_all()

    with migration_lock(connection_for(acme)):
        for tenant in (globex, acme):
            thread = threading.Thread(target=try_lock, args=(tenant,))
            thread.start()
            thread.join(10)
    assert taken == [True, False]  # another schema of the database: yes; the same: no


@postgresql_only
def test_a_fleet_check_reads_every_schema_in_one_go_and_misses_nothing_behind(schemas, migrations):
    """A run reads the schemas of a shared database a few queries at a time, none on the
    tenants' own connections: the server's fingerprint of each schema's rows is the
    ledger's, and one schema's rows per fingerprint say which set it is. A schema without
    the table and a database tenant are read one by one; a migration added to the code is
    found pending."""
    import json
    from unittest import mock

    from django.test.utils import CaptureQueriesContext

    from tenancy import ledger
    from tenancy.backends import schemas as schema_backend
    from tenancy.connections import alias_for
    from tenancy.management.commands import migrate_tenants as command
    from tenancy.migration import _set_of, applied_migrations

    acme, globex, initech = with_note("acme"), with_note("globex"), with_note("initech")
    with_note("hooli", server="one")
    applied = applied_migrations(connection_for(acme))
    found = get_server("shared").migration_fingerprints(
        [acme.database_name, globex.database_name, "nothing"]
    )
    assert found == {
        acme.database_name: ledger.fingerprint_of(applied),
        globex.database_name: ledger.fingerprint_of(applied),
    }
    # A schema's rows name its set only while they still have the fingerprint read.
    assert _set_of(get_server("shared"), acme.database_name, found[acme.database_name]) == (
        applied
    )
    assert _set_of(get_server("shared"), acme.database_name, "0" * 64) is None
    with connection_for(globex).cursor() as cursor:  # a set of its own
        cursor.execute(
            "INSERT INTO django_migrations (app, name, applied) VALUES ('gone', %s, now())",
            [uuid.uuid4().hex],
        )
    with connection_for(initech).cursor() as cursor:
        cursor.execute("DROP TABLE django_migrations")
    close_all()

    def run(read_on_acme: bool = False) -> tuple[dict[str, str], list[tuple[str, bool]]]:
        calls: list[tuple[str, bool]] = []
        migrate = command.migrate_tenant

        def noted(tenant: Tenant, **options: object) -> object:
            calls.append((tenant.slug, bool(options.get("check_only"))))
            return migrate(tenant, **options)

        out = io.StringIO()
        with (
            CaptureQueriesContext(connections[alias_for(acme)]) as on_acme,
            mock.patch.object(schema_backend, "FINGERPRINT_BATCH", 2),
            mock.patch.object(command, "migrate_tenant", noted),
            pytest.raises(CommandError, match=r"1 tenant\(s\) failed: initech"),
        ):
            call_command("migrate_tenants", "--json", stdout=out)
        if not read_on_acme:  # nothing read on acme's own connection
            assert not [query for query in on_acme if "django_migrations" in query["sql"]]
        lines = map(json.loads, out.getvalue().splitlines())
        return {line["slug"]: line["status"] for line in lines if "slug" in line}, calls

    statuses, calls = run()
    assert statuses == {
        "default": "up-to-date",
        "acme": "up-to-date",  # from its fingerprint
        "globex": "up-to-date",  # an extra row is not a pending migration
        "initech": "failed",  # read alone: its tables exist, its record of them not
        "hooli": "up-to-date",
    }
    # initech is found pending alone, and its migrating fails.
    assert sorted(calls) == [("hooli", True), ("initech", False), ("initech", True)]

    migrations("tests.migrations_v2")
    statuses, calls = run(read_on_acme=True)
    assert statuses["acme"] == statuses["globex"] == "migrated"
    assert ("acme", False) in calls
    assert ("acme", True) not in calls  # found pending in the batch
    with tenant_context(acme):
        assert sorted(texts()) == ["acme note", "welcome"]


@postgresql_only
def test_deleting_a_schema_tenant_drops_its_schema_only(schemas):
    acme, globex = with_note("acme"), with_note("globex")
    server = get_server("shared")
    deprovision_tenant(acme)
    assert not server.database_exists(acme.database_name)
    assert server.database_exists(globex.database_name)
    assert server.shared_database_exists()
    with tenant_context(globex):
        assert texts() == ["globex note"]


@postgresql_only
@pytest.mark.parametrize("schema", ["public", "information_schema", "pg_catalog"])
def test_a_system_schema_is_never_dropped_or_given(schemas, schema):
    server = get_server("shared")
    server.create_shared_database()
    with pytest.raises(ReservedDatabaseError):
        server.drop_database(schema, allow_template=True)
    with pytest.raises(ProvisioningError, match="cannot be the database of tenant"):
        from tenancy.provisioning import adopt_database

        adopt_database("acme", schema, server="shared")
    with get_server("shared")._shared_cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", [schema])
        assert cursor.fetchone() is not None


@postgresql_only
def test_spare_schemas_are_claimed_then_made_again(settings, schemas):
    settings.TENANCY = {**settings.TENANCY, "SPARE_DATABASES": 1}
    acme = with_note("acme")  # no spare yet: made by migrating; then one is made
    from tenancy.conf import tenancy_settings

    spare = tenancy_settings.spare_database_names()[0]
    server = get_server("shared")
    with server._shared_cursor() as cursor:  # marks the spare
        cursor.execute(f"CREATE TABLE {spare}.marker (id int)")
    globex = with_note("globex")  # the spare, renamed
    with server._shared_cursor() as cursor:
        cursor.execute(
            "SELECT table_schema FROM information_schema.tables WHERE table_name = 'marker'"
        )
        assert cursor.fetchall() == [(globex.database_name,)]
    assert server.database_exists(spare)  # made again
    assert not server.database_exists(tenancy_settings.template_database_name())
    for tenant in (acme, globex):
        with tenant_context(tenant):
            assert texts() == [f"{tenant.slug} note"]
    assert Domain.objects.filter(tenant__server="shared").count() == 2


@postgresql_only
def test_provisioning_beside_served_tenants_sets_up_no_connection_of_its_own(settings, schemas):
    """On a thread serving tenants of the server, provisioning asks the shared database's
    catalog (is the name free, claim a spare) on the connection they share, outside a
    pooler in transaction mode; every tenant still reads its own rows."""
    from django.db.backends.signals import connection_created

    from tenancy.backends.schemas import SHARED_ALIAS
    from tenancy.signals import tenant_provisioned

    settings.TENANCY = {**settings.TENANCY, "SPARE_DATABASES": 1}
    acme = with_note("acme")  # a spare is made after it
    with tenant_context(acme):
        assert texts() == ["acme note"]  # the thread's shared connection is open, and free
    own, provisioned = [], []

    def opened(sender, connection, **kwargs):
        if not provisioned:  # not the spare made afterwards (in the test's thread)
            own.append(connection.alias == SHARED_ALIAS)

    def done(sender, tenant, **kwargs):
        provisioned.append(tenant.slug)

    connection_created.connect(opened)
    tenant_provisioned.connect(done)
    try:
        globex = create_tenant("globex", server="shared")
    finally:
        connection_created.disconnect(opened)
        tenant_provisioned.disconnect(done)
    assert provisioned == ["globex"]
    assert any(own) is bool(schemas)  # its own connection only behind a pooler
    with tenant_context(globex):
        Note.objects.create(text="globex note")
    for tenant in (acme, globex):
        with tenant_context(tenant):
            assert texts() == [f"{tenant.slug} note"]


@postgresql_only
@pytest.mark.skipif(PGBOUNCER, reason="PgBouncer gives one server session to several clients")
def test_a_connection_lent_to_the_catalog_is_no_tenants_meanwhile(schemas):
    """While tenancy's statements run on the tenants' shared connection, a tenant's
    statement is lent another one; a transaction left open on it closes it."""
    acme, globex = with_note("acme"), with_note("globex")
    with tenant_context(acme):
        assert texts() == ["acme note"]
    server = get_server("shared")
    with server._catalog_cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        catalogs = cursor.fetchone()[0]
        with tenant_context(globex):
            assert texts() == ["globex note"]
            assert backend_pid(connections[alias_for(globex)]) != catalogs
        cursor.execute("BEGIN")
    with tenant_context(acme):
        assert texts() == ["acme note"]
        # the one left in a transaction closed
        assert backend_pid(connections[alias_for(acme)]) != catalogs


@postgresql_only
@pytest.mark.skipif(PGBOUNCER, reason="PgBouncer keeps its client connections")
def test_provisioning_after_the_server_ended_the_shared_connection(schemas):
    """A shared connection the server has ended (a restart, idle_session_timeout) is not
    lent to provisioning, nor to a tenant, and is closed at the thread's next safe point."""
    import time

    acme = with_note("acme")
    pid = backend_pid(connections[alias_for(acme)])
    with get_server("one")._cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s, 5000)", [pid])
    time.sleep(0.05)  # the goodbye message reaches the client
    globex = with_note("globex")
    close_old_connections()  # a request's end: the ended connection is closed
    for tenant in (acme, globex):
        with tenant_context(tenant):
            assert texts() == [f"{tenant.slug} note"]


@postgresql_only
@pytest.mark.skipif(PGBOUNCER, reason="LISTEN needs a session of its own")
def test_a_notification_waiting_on_the_shared_connection_is_no_goodbye(schemas):
    """A notification (LISTEN) waiting on the shared connection does not make it look
    ended: a thread's safe point keeps it, and an iterator open across it."""
    import time

    if schemas:
        pytest.skip("LISTEN needs a session: refused with TRANSACTION_POOLING")
    acme = with_note("acme")
    Note.objects.using(alias_for(acme)).bulk_create(Note(text=f"{n}") for n in range(3))

    with connections[alias_for(acme)].cursor() as cursor:
        cursor.execute("LISTEN tenancy_test")
    listening = backend_pid(connections[alias_for(acme)])
    with tenant_context(acme):
        rows = Note.objects.order_by("text").values_list("text", flat=True).iterator(1)
        assert next(rows) == "0"
        raw = connections[alias_for(acme)].connection
        with get_server("shared")._shared_cursor() as other:
            other.execute("NOTIFY tenancy_test")
        time.sleep(0.05)
        close_old_connections()
        # The notification the safe point read is still the driver's to deliver.
        assert [n.channel for n in raw.notifies(timeout=1, stop_after=1)] == ["tenancy_test"]
        assert list(rows) == ["1", "2", "acme note"]
    assert backend_pid(connections[alias_for(acme)]) == listening


def test_a_schema_server_that_looks_pooled_is_warned_about(settings):
    from tenancy.checks import check_settings

    looks_pooled = {**POSTGRES, "PLACEMENT": "schemas", "DATABASE": "t"}
    looks_pooled["DISABLE_SERVER_SIDE_CURSORS"] = True
    settings.TENANCY = {**settings.TENANCY, "SERVERS": {"s": looks_pooled}, "DEFAULT_SERVER": "s"}
    assert [message.id for message in check_settings()] == ["tenancy.W003"]
    looks_pooled["TRANSACTION_POOLING"] = True
    settings.TENANCY = {**settings.TENANCY, "SERVERS": {"s": looks_pooled}}
    assert check_settings() == []


@postgresql_only
def test_the_admin_list_shows_each_tenants_placement(schemas, alpha):
    from django.contrib.auth.models import User

    with_note("acme")
    try:
        page = client_for(superuser=True).get("/admin/tenancy/tenant/").content.decode()
    finally:
        User.objects.all().delete()
    assert page.count("schema in tenancy_shared") == 1
    assert page.count(">database<") == 1  # alpha's


# --- what a shared connection must not share (each would show another tenant's rows) --


@postgresql_only
def test_temporary_tables_never_reach_another_tenant(schemas):
    acme, globex = with_note("acme"), with_note("globex")
    with tenant_context(acme), tenant_connection().cursor() as cursor:
        cursor.execute("CREATE TEMP TABLE tenantapp_note AS SELECT * FROM tenantapp_note")
        cursor.execute("CREATE TEMP TABLE scratch AS SELECT 'acme secret' AS text")
        cursor.execute("SELECT text FROM scratch")
        assert cursor.fetchall() == [("acme secret",)]
    with tenant_context(globex):
        assert texts() == ["globex note"]  # its own table, not acme's temporary copy
        with tenant_connection().cursor() as cursor, pytest.raises(DatabaseError, match="scratch"):
            cursor.execute("SELECT text FROM scratch")


@postgresql_only
def test_callproc_and_copy_run_in_the_tenants_schema(schemas):
    acme, globex = with_note("acme"), with_note("globex")
    with tenant_context(globex):
        assert texts() == ["globex note"]  # the connection's path: globex
    with tenant_context(acme):
        if schemas:  # per transaction: the driver's calls need one
            with tenant_connection().cursor() as cursor, pytest.raises(TenancyError):
                cursor.callproc("current_schema")
        with atomic(), tenant_connection().cursor() as cursor:
            cursor.callproc("current_schema")
            assert cursor.fetchall() == [(acme.database_name,)]
        with tenant_context(globex):
            assert texts() == ["globex note"]
        with (
            atomic(),
            tenant_connection().cursor() as cursor,
            cursor.copy("COPY tenantapp_note (text) FROM STDIN") as copy,
        ):
            copy.write_row(["acme, copied"])
        assert texts() == ["acme note", "acme, copied"]
    with tenant_context(globex):
        assert texts() == ["globex note"]


@postgresql_only
@pytest.mark.skipif(PGBOUNCER, reason="server-side cursors are off behind PgBouncer")
def test_iterators_of_several_tenants_keep_their_own_cursors(schemas):
    acme, globex, initech = with_note("acme"), with_note("globex"), with_note("initech")
    with tenant_context(acme):
        Note.objects.create(text="acme 2")
        rows = Note.objects.values_list("text", flat=True).iterator(chunk_size=1)
        first = next(rows)
        for tenant in (globex, initech):
            with tenant_context(tenant):
                inner = list(Note.objects.values_list("text", flat=True).iterator(chunk_size=1))
                assert inner == [f"{tenant.slug} note"]
        assert [first, *rows] == ["acme note", "acme 2"]


@postgresql_only
@pytest.mark.skipif(PGBOUNCER, reason="server-side cursors are off behind PgBouncer")
def test_an_open_iterator_keeps_the_shared_connection_open(schemas):
    acme, globex = with_note("acme"), with_note("globex")
    with tenant_context(globex):
        Note.objects.create(text="globex 2")
        rows = Note.objects.values_list("text", flat=True).iterator(chunk_size=1)
        first = next(rows)
    with tenant_context(acme), atomic():  # takes the connection: globex's object lets go
        Note.objects.create(text="acme 2")
    close_old_connections()  # CONN_MAX_AGE is 0
    assert [first, *rows] == ["globex note", "globex 2"]
    with tenant_context(acme):
        assert texts() == ["acme note", "acme 2"]


@postgresql_only
def test_a_transaction_begun_by_hand_belongs_to_its_tenant(schemas):
    from django.db import transaction

    from tenancy.connections import alias_for

    acme, globex = with_note("acme"), with_note("globex")
    with tenant_context(globex):
        texts()  # globex's object holds the connection too
    with tenant_context(acme), tenant_connection().cursor() as cursor:
        cursor.execute("BEGIN")
        Note.objects.create(text="acme, rolled back")
        with tenant_context(globex):
            transaction.commit(using=alias_for(globex))  # not acme's transaction
            assert texts() == ["globex note"]
        cursor.execute("ROLLBACK")
        assert texts() == ["acme note"]


@postgresql_only
def test_a_connection_closed_inside_atomic_runs_nothing_more(schemas):
    from django.db import transaction

    acme = with_note("acme")
    closed = pytest.raises(TenancyError, match="closed inside atomic")
    with tenant_context(acme), closed, atomic():
        connection = tenant_connection()
        Note.objects.create(text="acme, rolled back")
        connection.close()
        transaction.set_rollback(False, using=connection.alias)
        Note.objects.create(text="acme, after the close")
    with tenant_context(acme):
        assert texts() == ["acme note"]


@postgresql_only
def test_the_shared_database_is_never_a_database_tenants(schemas, alpha, settings):
    from tenancy.provisioning import adopt_database

    with_note("acme")
    shared = get_server("shared").database
    with pytest.raises(ProvisioningError, match="holding the tenant schemas of server"):
        adopt_database("victim", shared, server="one")
    assert get_server("one").database_exists(shared)
    # Nor the other way round: a schema server pointed at a tenant's database (alpha's,
    # on server "one", which addresses the same cluster as "shared").
    servers = settings.TENANCY["SERVERS"]
    taken = {**servers["shared"], "DATABASE": alpha.database_name.removeprefix("test_")}
    settings.TENANCY = {**settings.TENANCY, "SERVERS": {**servers, "shared": taken}}
    assert get_server("shared").database == alpha.database_name
    with pytest.raises(ProvisioningError, match="the database of tenant 'alpha'"):
        create_tenant("initech", server="shared")


@postgresql_only
def test_a_schema_holding_an_extension_is_not_dropped(schemas):
    acme, globex = with_note("acme"), with_note("globex")
    with tenant_context(acme), tenant_connection().cursor() as cursor:
        cursor.execute("CREATE EXTENSION citext")  # lands in acme's schema
    with pytest.raises(ReservedDatabaseError, match="holds the extension"):
        deprovision_tenant(acme)
    with get_server("shared")._shared_cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_extension WHERE extname = 'citext'")
        assert cursor.fetchone()[0] == 1
        cursor.execute(f"DROP EXTENSION citext")  # noqa: F541
    with tenant_context(globex):
        assert texts() == ["globex note"]


# --- second review: savepoints, statements as psycopg SQL, streams, drops -------------


@postgresql_only
def test_a_nested_atomic_block_runs_in_the_tenants_schema(schemas):
    """Per transaction, a transaction whose first statement is a savepoint still gets the
    path; a savepoint's rollback cannot undo it. The session's own path is another
    tenant's here, as a pooled server connection's could be."""
    acme, globex = with_note("acme"), with_note("globex")
    close_all()
    with tenant_context(acme):
        connection_for(acme).ensure_connection()  # a new connection: no path known yet
        raw = connection_for(acme).connection
        raw.execute(f'SET search_path TO "{globex.database_name}"')
        with atomic(), atomic():
            assert texts() == ["acme note"]
        with atomic():
            with pytest.raises(ZeroDivisionError), atomic():
                Note.objects.create(text="rolled back")
                raise ZeroDivisionError
            Note.objects.create(text="acme 2")
        assert texts() == ["acme note", "acme 2"]
    with tenant_context(globex):
        assert texts() == ["globex note"]


@postgresql_only
def test_transaction_statements_as_psycopg_sql_or_after_a_comment(schemas):
    acme = with_note("acme")
    with tenant_context(acme), tenant_connection().cursor() as cursor:
        cursor.execute(sql.SQL("BEGIN"))
        cursor.execute("/* a comment */ INSERT INTO tenantapp_note (text) VALUES ('gone')")
        cursor.execute("-- a comment\nROLLBACK")
        assert texts() == ["acme note"]
        cursor.execute("SET SCHEMA 'public'")  # SET search_path's other spelling
        assert texts() == ["acme note"]


@postgresql_only
def test_a_begin_of_the_callers_own_drops_another_tenants_temporary_tables(schemas):
    acme, globex = with_note("acme"), with_note("globex")
    with tenant_context(acme), tenant_connection().cursor() as cursor:
        cursor.execute("CREATE TEMP TABLE scratch AS SELECT 'acme secret' AS text")
    with tenant_context(globex), tenant_connection().cursor() as cursor:
        cursor.execute("BEGIN")
        with pytest.raises(DatabaseError, match="scratch"):
            cursor.execute("SELECT text FROM scratch")
        cursor.execute("ROLLBACK")


@postgresql_only
def test_streams_and_copies_read_their_tenant_when_they_run(schemas):
    acme, globex = with_note("acme"), with_note("globex")
    with tenant_context(acme), atomic(), tenant_connection().cursor() as cursor:
        rows = cursor.stream("SELECT text FROM tenantapp_note")  # sent on the first row
        copying = cursor.copy("COPY tenantapp_note (text) TO STDOUT")  # sent on entering
        with tenant_context(globex):
            assert texts() == ["globex note"]
        assert [row[0] for row in rows] == ["acme note"]
        with copying as copy:
            assert b"".join(copy) == b"acme note\n"


@postgresql_only
def test_another_tenant_is_read_while_a_stream_is_open(schemas):
    """Copying one tenant's rows into another: the stream keeps its connection busy, the
    other tenant is lent another one."""
    acme, globex = with_note("acme"), with_note("globex")
    with tenant_context(acme):
        Note.objects.create(text="acme 2")
    copied = []
    with tenant_context(acme), atomic(), tenant_connection().cursor() as cursor:
        for (text,) in cursor.stream("SELECT text FROM tenantapp_note ORDER BY id"):
            with tenant_context(globex):
                Note.objects.create(text=f"from {text}")
                copied.append(Note.objects.count())
    assert copied == [2, 3]
    with tenant_context(globex):
        assert texts() == ["globex note", "from acme note", "from acme 2"]


@postgresql_only
def test_statements_that_need_a_session_are_refused_behind_a_pooler(schemas):
    acme = with_note("acme")
    with tenant_context(acme), tenant_connection().cursor() as cursor:
        statement = "CREATE INDEX CONCURRENTLY note_text ON tenantapp_note (text)"
        if schemas:  # per transaction
            with pytest.raises(TenancyError, match="needs a session of its own"):
                cursor.execute(statement)
        else:
            cursor.execute(statement)


@postgresql_only
def test_a_shared_database_reached_by_another_spelling_is_not_dropped(schemas, settings):
    from tenancy.provisioning import adopt_database

    with_note("acme")
    shared = get_server("shared").database
    servers = settings.TENANCY["SERVERS"]
    other_spelling = {**servers["one"], "HOST": "127.1"}  # the same cluster as 127.0.0.1
    settings.TENANCY = {**settings.TENANCY, "SERVERS": {**servers, "alias": other_spelling}}
    if get_server("alias").address == get_server("one").address:
        pytest.skip("the suite's servers are not reached as 127.0.0.1")
    victim, _ = adopt_database("victim", shared, server="alias")
    with pytest.raises(ReservedDatabaseError, match="holds the tenant schemas of server"):
        deprovision_tenant(victim)
    assert get_server("one").database_exists(shared)


@postgresql_only
def test_a_schema_another_tenant_depends_on_is_not_dropped(schemas):
    acme, globex = with_note("acme"), with_note("globex")
    with tenant_context(globex), tenant_connection().cursor() as cursor:
        cursor.execute(
            f'CREATE VIEW report AS SELECT text FROM "{acme.database_name}".tenantapp_note'
        )
    with pytest.raises(ReservedDatabaseError, match="depend on it"):
        deprovision_tenant(acme)
    with tenant_context(globex), tenant_connection().cursor() as cursor:
        cursor.execute("SELECT text FROM report")
        assert cursor.fetchall() == [("acme note",)]


# --- backups and retention of schema tenants -------------------------------------


def direct_route(settings) -> None:
    """Give the schema servers the clusters' own addresses, as a deployment behind a pooler
    in transaction mode must for pg_dump and pg_restore."""
    servers = dict(settings.TENANCY["SERVERS"])
    for name, plain in (("shared", "one"), ("shared2", "two")):
        own = servers[plain].get("DIRECT", servers[plain])
        servers[name] = {**servers[name], "DIRECT": {"HOST": own["HOST"], "PORT": own["PORT"]}}
    settings.TENANCY = {**settings.TENANCY, "SERVERS": servers}


@postgresql_only
def test_a_schema_tenant_is_backed_up_and_restored_beside_its_neighbours(
    schemas, settings, tmp_path, client
):
    from tenancy.backups import backup_tenant, read_manifest, restore_tenant

    direct_route(settings)
    acme, neighbour = with_note("acme"), with_note("neighbour")
    with tenant_context(acme):
        Note.objects.create(text="acme second note")
    report = backup_tenant(acme, tmp_path)
    manifest = read_manifest(report.path)
    assert manifest.placement == "schemas"
    # Only its own schema is in the backup.
    assert {name.split(".")[0] for name in manifest.tables} == {acme.database_name}
    assert sum(rows for name, rows in manifest.tables.items() if "note" in name) == 2

    deprovision_tenant(acme)
    assert not get_server("shared").database_exists(acme.database_name)
    restore_tenant(report.path)
    restored = Tenant.objects.get(slug="acme")
    assert restored.database_name == acme.database_name
    with tenant_context(restored):
        assert sorted(texts()) == ["acme note", "acme second note"]
        Note.objects.create(text="after the restore")  # its sequence came back too
    with tenant_context(neighbour):
        assert texts() == ["neighbour note"]
    response = client.get("/notes/", HTTP_HOST="acme.example.test")
    assert "acme second note" in response.content.decode()
    assert "neighbour note" not in response.content.decode()


@postgresql_only
def test_a_schema_tenant_archived_as_a_backup_comes_back(schemas, settings, tmp_path):
    from tenancy.retention import archive_tenant, reactivate_tenant

    direct_route(settings)
    settings.TENANCY = {**settings.TENANCY, "RETENTION_BACKUP_DIRECTORY": str(tmp_path)}
    acme, neighbour = with_note("acme"), with_note("neighbour")
    archive_tenant(acme, days=7)
    assert not get_server("shared").database_exists(acme.database_name)
    with tenant_context(neighbour):
        assert texts() == ["neighbour note"]
    reactivate_tenant("acme")
    with tenant_context(Tenant.objects.get(slug="acme")):
        assert texts() == ["acme note"]


@postgresql_only
def test_a_failed_statement_in_a_savepoint_leaves_the_tenants_transaction_going(schemas):
    """After a statement that makes the path be set again (it names ``schema``), a failed
    statement in a savepoint: the rollback to the savepoint must run without a ``SET``
    first (which would fail in the failed transaction), as ``get_or_create`` needs."""
    acme = with_note("acme")
    with tenant_context(acme):
        alias = tenant_connection().alias
        with atomic():
            kept = Note.objects.create(text="outer")
            with tenant_connection().cursor() as cursor:
                cursor.execute("SELECT 'schema'")
            with pytest.raises(IntegrityError), transaction.atomic(using=alias):
                Note.objects.create(pk=kept.pk, text="a duplicate")
            Note.objects.create(text="after")
        assert sorted(texts()) == ["acme note", "after", "outer"]
