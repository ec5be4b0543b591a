"""Reads from a streaming replica of a tenant's server (scripts/with-postgres --replica)."""

import contextvars
import os
import shlex
import subprocess
import time

import psycopg
import pytest
from django.db import connections
from psycopg import sql

from tenancy import atomic, replicas, tenant_context, use_primary
from tenancy.backends import get_server
from tenancy.conf import shared_database_name
from tenancy.connections import alias_for, close_all, snapshot
from tenancy.provisioning import create_tenant
from tests.settings import BACKEND, PGBOUNCER, SERVER_1
from tests.tenantapp.models import Note
from tests.test_schema_placement import SHARED_DATABASE, schema_server

REPLICA = os.environ.get("TENANCY_TEST_PG_REPLICA_1")

if os.environ.get("CI") and BACKEND == "postgresql" and not PGBOUNCER and not REPLICA:
    raise RuntimeError("The PostgreSQL run needs its replica: scripts/with-postgres --replica.")

pytestmark = pytest.mark.skipif(
    not REPLICA, reason="needs a streaming replica (scripts/with-postgres --replica)"
)


def replica_server(**values):
    host, _, port = (REPLICA or ":").rpartition(":")
    return {**SERVER_1, "REPLICAS": [{"HOST": host, "PORT": port}], **values}


@pytest.fixture
def replicated(settings, db_access):
    """Server "one" with the replica of its cluster; a fresh health record."""
    settings.TENANCY = {
        **settings.TENANCY,
        "SERVERS": {**settings.TENANCY["SERVERS"], "one": replica_server()},
    }
    replicas._health.clear()
    token = replicas._writes.set(None)
    yield
    close_all()
    replicas._health.clear()
    replicas._writes.reset(token)


def set_servers(settings, **values):
    servers = settings.TENANCY["SERVERS"]
    settings.TENANCY = {
        **settings.TENANCY,
        "SERVERS": {**servers, "one": replica_server(**values)},
    }


def replica_sql(statement):
    host, _, port = REPLICA.rpartition(":")
    with psycopg.connect(host=host, port=port, user="postgres", dbname="postgres") as connection:
        return connection.execute(statement).fetchone()


def caught_up():
    """Wait until the replica has replayed everything the primary has written so far."""
    with get_server("one")._cursor() as cursor:
        cursor.execute("SELECT pg_current_wal_insert_lsn()")
        [lsn] = cursor.fetchone()
    deadline = time.monotonic() + 30
    while not replica_sql(f"SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn")[0]:
        assert time.monotonic() < deadline, "the replica did not catch up"
        time.sleep(0.02)


def elsewhere(function, *args):
    """Run ``function`` in a context of its own (another request, say): what it writes
    does not make this context read from the primary."""
    return contextvars.copy_context().run(function, *args)


def add_note(tenant, text):
    with tenant_context(tenant):
        Note.objects.create(text=text)


def served_by(queryset):
    """The rows, and whether the connection that served them is a replica's."""
    rows = list(queryset.values_list("text", flat=True))
    with connections[queryset.db].cursor() as cursor:
        cursor.execute("SELECT pg_is_in_recovery()")
        return rows, cursor.fetchone()[0]


def made_with_note(slug, text):
    tenant = create_tenant(slug, server="one")
    add_note(tenant, text)
    return tenant


def make_tenants():
    """Two tenants on server "one", each with a note, made by another context (which
    reads its own writes from the primary) and replicated."""
    first = elsewhere(made_with_note, "replica-a", "a's note")
    second = elsewhere(made_with_note, "replica-b", "b's note")
    caught_up()
    return first, second


def test_reads_are_served_by_the_replica_each_tenant_its_own_rows(replicated):
    first, second = make_tenants()
    for tenant in (first, second):
        with tenant_context(tenant):
            queryset = Note.objects.all()
            rows, in_recovery = served_by(queryset)
            assert queryset.db == f"{alias_for(tenant)}@r0"
            assert in_recovery is True
            assert rows == [f"{tenant.slug[-1]}'s note"]


def test_reads_after_a_write_in_a_transaction_or_asked_for_go_to_the_primary(replicated, settings):
    first, _ = make_tenants()
    with tenant_context(first):
        Note.objects.create(text="just written")
        rows, in_recovery = served_by(Note.objects.filter(text="just written"))
        assert (rows, in_recovery) == (["just written"], False)
    set_servers(settings, REPLICA_STICKY_SECONDS=0)
    with tenant_context(first):
        with atomic():
            Note.objects.create(text="in a transaction")
            assert served_by(Note.objects.filter(text="in a transaction")) == (
                ["in a transaction"],
                False,
            )
        with use_primary():
            assert served_by(Note.objects.none())[1] is False
        assert served_by(Note.objects.none())[1] is True


def start_stop(action):
    subprocess.run(
        [*shlex.split(os.environ["TENANCY_TEST_PG_REPLICA_CTL_1"]), action],
        check=True,
        capture_output=True,
    )


def test_a_stopped_replica_is_skipped_and_used_again_when_back(replicated, settings, caplog):
    set_servers(settings, CONN_MAX_AGE=None)  # a connection kept open across the stop
    first, _ = make_tenants()
    with tenant_context(first):
        assert served_by(Note.objects.all()) == (["a's note"], True)
    start_stop("stop")
    try:
        with tenant_context(first):
            assert served_by(Note.objects.all()) == (["a's note"], False)
        assert any("Replica 0 of server one is skipped" in r.message for r in caplog.records), (
            replicas.replica_states()
        )
    finally:
        start_stop("start")
    caught_up()
    replicas._health[("one", 0)].checked_at = float("-inf")  # the next check is due
    with tenant_context(first):
        assert served_by(Note.objects.all()) == (["a's note"], True)
    assert any("Replica 0 of server one is used again" in r.message for r in caplog.records)


def test_a_lagging_replica_is_skipped(replicated, settings):
    set_servers(settings, REPLICA_MAX_LAG=0.3, REPLICA_STICKY_SECONDS=0)
    first, _ = make_tenants()
    replica_sql("SELECT pg_wal_replay_pause()")
    try:
        elsewhere(add_note, first, "while the replica is paused")
        time.sleep(0.5)
        replicas._health.clear()  # the next check is due
        with tenant_context(first):
            rows, in_recovery = served_by(Note.objects.order_by("text"))
        assert in_recovery is False
        assert rows == ["a's note", "while the replica is paused"]
        assert replicas.replica_states()["one"][0]["usable"] is False
        assert "one replica 0: skipped (" in snapshot().summary()
    finally:
        replica_sql("SELECT pg_wal_replay_resume()")


def test_replica_connections_count_against_the_cap(replicated, settings):
    first, second = make_tenants()
    settings.TENANCY = {**settings.TENANCY, "MAX_OPEN_CONNECTIONS": 1}
    set_servers(settings, CONN_MAX_AGE=None)
    with tenant_context(first):
        assert served_by(Note.objects.all())[1] is True
    with tenant_context(second):
        assert served_by(Note.objects.all())[1] is True
    assert snapshot().servers["one"].open == 1


def test_schema_tenants_read_their_own_schema_on_the_replica(replicated, settings):
    settings.TENANCY = {
        **settings.TENANCY,
        "SERVERS": {
            **settings.TENANCY["SERVERS"],
            "shared": schema_server(replica_server()),
        },
    }
    try:
        first = elsewhere(made_in_schema, "replica-s1")
        second = elsewhere(made_in_schema, "replica-s2")
        caught_up()
        for tenant in (first, second, first):
            with tenant_context(tenant):
                queryset = Note.objects.all()
                assert served_by(queryset) == ([f"{tenant.slug} note"], True)
                assert queryset.db == f"{alias_for(tenant)}@r0"
    finally:
        close_all()
        database = shared_database_name({"DATABASE": SHARED_DATABASE})
        with get_server("one")._cursor() as cursor:
            drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
            cursor.execute(drop.format(sql.Identifier(database)))


def made_in_schema(slug):
    tenant = create_tenant(slug, server="shared")
    add_note(tenant, f"{slug} note")
    return tenant
