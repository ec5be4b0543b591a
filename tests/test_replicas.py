"""Reads from a streaming replica of a tenant's server (scripts/with-postgres --replica).

The replica is cluster 1's, made with ``pg_basebackup -R``; tests pause its replay
(``pg_wal_replay_pause()``) to hold it behind the primary.
"""

import contextlib
import contextvars
import logging
import os
import shlex
import socket
import subprocess
import threading
import time

import psycopg
import pytest
from django.db import connections, transaction
from psycopg import sql

from tenancy import atomic, replicas, tenant_context, use_primary
from tenancy.backends import get_server
from tenancy.conf import shared_database_name
from tenancy.connections import (
    alias_for,
    close_all,
    open_connection_count,
    snapshot,
    tenant_connection,
    unregister,
)
from tenancy.exceptions import CrossTenantError
from tenancy.migration import migrate_tenant
from tenancy.models import Tenant
from tenancy.provisioning import create_tenant, deprovision_tenant
from tests.settings import BACKEND, PGBOUNCER, SERVER_1
from tests.tenantapp.models import Note, Tag
from tests.test_admin import users  # noqa: F401 (a fixture)
from tests.test_schema_placement import SHARED_DATABASE, schema_server

REPLICA = os.environ.get("TENANCY_TEST_PG_REPLICA_1")

if os.environ.get("CI") and BACKEND == "postgresql" and not PGBOUNCER and not REPLICA:
    raise RuntimeError("The PostgreSQL run needs its replica: scripts/with-postgres --replica.")

pytestmark = pytest.mark.skipif(
    not REPLICA, reason="needs a streaming replica (scripts/with-postgres --replica)"
)


@pytest.fixture(scope="module", autouse=True)
def replica_running():
    """The replica, made for these tests when the harness makes it on demand
    (``--replica-on-demand``): it then replays only what is written while they run."""
    script = os.environ.get("TENANCY_TEST_PG_REPLICA_SCRIPT_1")
    if not REPLICA or not script:
        yield
        return
    subprocess.run([script, "start"], check=True, capture_output=True)
    try:
        yield
    finally:
        subprocess.run([script, "stop"], check=True, capture_output=True)


def replica_server(**values):
    host, _, port = (REPLICA or ":").rpartition(":")
    return {**SERVER_1, "REPLICAS": [{"HOST": host, "PORT": port}], **values}


def set_servers(settings, **values):
    servers = settings.TENANCY["SERVERS"]
    one = replica_server(**values)
    settings.TENANCY = {**settings.TENANCY, "SERVERS": {**servers, "one": one}}


def with_shared_server(settings):
    servers = settings.TENANCY["SERVERS"]
    settings.TENANCY = {
        **settings.TENANCY,
        "SERVERS": {**servers, "shared": schema_server(replica_server())},
    }


@pytest.fixture
def replicated(settings, db_access):
    """Server "one" with the replica of its cluster; no replica checked yet."""
    set_servers(settings)
    replicas.reset()
    token = replicas._writes.set(None)
    yield
    close_all()
    replicas.reset()
    replicas._writes.reset(token)


@pytest.fixture
def ready(replicated, alpha):
    """alpha, with the position its replica needs recorded, and replayed."""
    replicas.mark_ready(alpha)
    caught_up()
    return alpha


@pytest.fixture
def shared_server(settings, replicated):
    with_shared_server(settings)
    yield
    close_all()
    database = shared_database_name({"DATABASE": SHARED_DATABASE})
    with get_server("one")._cursor() as cursor:
        drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
        cursor.execute(drop.format(sql.Identifier(database)))


def replica_sql(statement, *, dbname="postgres"):
    host, _, port = REPLICA.rpartition(":")
    with psycopg.connect(
        host=host, port=port, user="postgres", dbname=dbname, autocommit=True
    ) as connection:
        cursor = connection.execute(statement)
        return cursor.fetchone() if cursor.description is not None else None


def caught_up():
    """Wait until the replica has replayed everything the primary has written so far."""
    with get_server("one")._cursor() as cursor:
        cursor.execute("SELECT pg_current_wal_insert_lsn()")
        [lsn] = cursor.fetchone()
    deadline = time.monotonic() + 30
    while not replica_sql(f"SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn")[0]:
        assert time.monotonic() < deadline, "the replica did not catch up"
        time.sleep(0.02)
    replicas.reset()  # the next read checks again


def replica_position():
    return replicas.lsn(replica_sql("SELECT pg_last_wal_replay_lsn()::text")[0])


def flushed_record():
    """A WAL record on the primary, written and sent before this returns."""
    with get_server("one")._cursor() as cursor:
        cursor.execute("BEGIN")
        cursor.execute("SET LOCAL synchronous_commit = on")
        cursor.execute("SELECT pg_logical_emit_message(true, 'tenancy', 'test')")
        cursor.execute("COMMIT")


@contextlib.contextmanager
def replay_paused():
    """The replica replays nothing more in the block: paused, and seen not to replay a
    record written since."""
    replica_sql("SELECT pg_wal_replay_pause()")
    try:
        deadline = time.monotonic() + 30
        while True:
            assert time.monotonic() < deadline, "the replica did not pause"
            flushed_record()
            if replica_sql("SELECT pg_get_wal_replay_pause_state()")[0] != "paused":
                time.sleep(0.01)
                continue
            before = replica_position()
            flushed_record()
            time.sleep(0.1)
            if replica_position() == before:
                break
        yield
    finally:
        replica_sql("SELECT pg_wal_replay_resume()")


def elsewhere(function, *args):
    """Run ``function`` in a context of its own (another request, say): what it writes
    does not make this context read from the primary."""
    return contextvars.copy_context().run(function, *args)


def add_note(tenant, text, **fields):
    with tenant_context(tenant):
        return Note.objects.create(text=text, **fields).pk


def served_by(queryset):
    """The rows, and whether the connection that served them is a replica's."""
    rows = list(queryset.values_list("text", flat=True))
    with connections[queryset.db].cursor() as cursor:
        cursor.execute("SELECT pg_is_in_recovery()")
        return rows, cursor.fetchone()[0]


def made_with_note(slug, text, server="one"):
    tenant = create_tenant(slug, server=server)
    add_note(tenant, text)
    return tenant


def make_tenants():
    """Two tenants on server "one", each with a note, made by another context (which
    reads its own writes from the primary) and replicated."""
    first = elsewhere(made_with_note, "replica-a", "a's note")
    second = elsewhere(made_with_note, "replica-b", "b's note")
    caught_up()
    return first, second


def start_stop(action):
    subprocess.run(
        [*shlex.split(os.environ["TENANCY_TEST_PG_REPLICA_CTL_1"]), action],
        check=True,
        capture_output=True,
    )


# --- where reads go ---------------------------------------------------------------------


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


def test_transactions_of_every_kind_read_from_the_primary(ready):
    primary = alias_for(ready)
    with tenant_context(ready):
        with transaction.atomic(using=primary):
            assert Note.objects.all().db == primary
        transaction.set_autocommit(False, using=primary)
        try:
            assert Note.objects.all().db == primary
        finally:
            transaction.rollback(using=primary)
            transaction.set_autocommit(True, using=primary)
        assert Note.objects.all().db == f"{primary}@r0"
        with tenant_connection().cursor() as cursor:
            cursor.execute("BEGIN")
            assert Note.objects.all().db == primary
            cursor.execute("ROLLBACK")


def test_a_write_is_sticky_from_the_end_of_its_transaction(replicated, settings, alpha):
    set_servers(settings, REPLICA_STICKY_SECONDS=0.3, REPLICA_MAX_LAG=60)
    replicas.mark_ready(alpha)
    elsewhere(add_note, alpha, "old")
    caught_up()
    with replay_paused(), tenant_context(alpha):
        with atomic():
            Note.objects.create(text="mine")
            time.sleep(0.5)  # a transaction longer than REPLICA_STICKY_SECONDS
        # Committed a moment ago by this very context: its own write is read back.
        assert served_by(Note.objects.order_by("id")) == (["old", "mine"], False)
        time.sleep(0.4)
        assert served_by(Note.objects.order_by("id")) == (["old"], True)  # the window ended


def test_writes_past_the_router_are_sticky_too(ready):
    with tenant_context(ready):
        Note.objects.using(alias_for(ready)).create(text="via using()")
        assert Note.objects.all().db == alias_for(ready)
    replicas.forget_writes()
    with tenant_context(ready):
        assert Note.objects.all().db == f"{alias_for(ready)}@r0"
        with tenant_connection().cursor() as cursor:
            cursor.execute("SELECT count(*) FROM tenantapp_note")  # a read: not sticky
        assert Note.objects.all().db == f"{alias_for(ready)}@r0"
        with tenant_connection().cursor() as cursor:
            cursor.execute("/* a comment */ INSERT INTO tenantapp_note (text) VALUES ('raw')")
        assert Note.objects.all().db == alias_for(ready)


def test_a_request_starts_with_no_writes_of_its_own(ready):
    from django.core.signals import request_started

    with tenant_context(ready):
        Note.objects.create(text="earlier request")
        assert Note.objects.all().db == alias_for(ready)
        request_started.send(sender=None)
        assert Note.objects.all().db == f"{alias_for(ready)}@r0"


def test_migrations_read_from_the_primary(ready):
    with tenant_context(ready):
        with use_primary():
            assert Note.objects.all().db == alias_for(ready)
        assert Note.objects.all().db == f"{alias_for(ready)}@r0"


def test_threads_spread_over_replicas(ready, settings):
    host, _, port = REPLICA.rpartition(":")
    set_servers(settings, REPLICAS=[{"HOST": host, "PORT": port}, {"HOST": host, "PORT": port}])
    chosen = []

    def read():
        with tenant_context(ready):
            chosen.append(Note.objects.all().db)
        close_all()

    threads = [threading.Thread(target=read) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(set(chosen)) == [f"{alias_for(ready)}@r0", f"{alias_for(ready)}@r1"]


# --- what a replica that is behind must never serve -------------------------------------


def test_a_reused_slug_never_reads_the_deleted_tenants_database(replicated):
    old = elsewhere(made_with_note, "replica-reuse", "the previous owner's secret")
    caught_up()
    with replay_paused():
        elsewhere(deprovision_tenant, old)
        new = elsewhere(create_tenant, "replica-reuse")
        assert new.database_name == old.database_name
        replicas.reset()
        with tenant_context(new):
            rows, on_replica = served_by(Note.objects.all())
        assert (rows, on_replica) == ([], False)
        assert replicas.replica_states()["one"][0]["usable"] is True  # only not for it
    caught_up()
    with tenant_context(new):
        assert served_by(Note.objects.all()) == ([], True)


def test_a_new_tenant_not_replayed_yet_reads_from_the_primary(replicated):
    caught_up()
    with replay_paused():
        new = elsewhere(made_with_note, "replica-new", "n")
        replicas.reset()
        with tenant_context(new):
            assert served_by(Note.objects.all()) == (["n"], False)
        assert replicas.replica_states()["one"][0]["usable"] is True


def test_a_new_schema_tenant_not_replayed_yet_reads_from_the_primary(shared_server):
    elsewhere(made_with_note, "replica-s1", "s1", "shared")
    caught_up()
    with replay_paused():
        new = elsewhere(made_with_note, "replica-s2", "hello", "shared")
        replicas.reset()
        with tenant_context(new):
            assert served_by(Note.objects.all()) == (["hello"], False)


def test_schema_tenants_read_their_own_schema_on_the_replica(shared_server):
    first = elsewhere(made_with_note, "replica-s1", "replica-s1 note", "shared")
    second = elsewhere(made_with_note, "replica-s2", "replica-s2 note", "shared")
    caught_up()
    for tenant in (first, second, first):
        with tenant_context(tenant):
            queryset = Note.objects.all()
            assert served_by(queryset) == ([f"{tenant.slug} note"], True)
            assert queryset.db == f"{alias_for(tenant)}@r0"


def test_a_tenant_is_read_from_a_replica_only_past_its_recorded_position(ready):
    recorded = ready.ready_lsn
    position = replicas.ready_position(ready)
    ahead = position + (1 << 32)  # where the replica has not replayed to
    ready.ready_lsn = f"{ahead >> 32:X}/{ahead & 0xFFFFFFFF:X}:one:{ready.database_name}"
    with tenant_context(ready):
        assert served_by(Note.objects.all()) == ([], False)
    ready.ready_lsn = recorded
    with tenant_context(ready):
        assert served_by(Note.objects.all()) == ([], True)


def test_a_changed_database_is_read_from_the_primary_until_replayed(ready):
    try:
        with replay_paused():
            elsewhere(run_sql, ready, "CREATE TABLE migrated (id int)")  # a migration, say
            replicas.mark_ready(ready)  # what migrate_tenant does once it has applied one
            assert replica_position() < replicas.ready_position(ready)
            replicas.reset()
            with tenant_context(ready):
                assert Note.objects.all().db == alias_for(ready)
        caught_up()
        with tenant_context(ready):
            assert Note.objects.all().db == f"{alias_for(ready)}@r0"
    finally:
        elsewhere(run_sql, ready, "DROP TABLE IF EXISTS migrated")


def run_sql(tenant, statement):
    with tenant_context(tenant), tenant_connection().cursor() as cursor:
        cursor.execute(statement)


def test_a_position_is_recorded_by_migrate_and_bound_to_the_database(replicated, alpha):
    assert alpha.ready_lsn == ""
    with tenant_context(alpha):
        assert Note.objects.all().db == alias_for(alpha)  # nothing recorded: the primary
    migrate_tenant(alpha)  # nothing to apply, but no position either
    stored = Tenant.objects.get(pk=alpha.pk)
    assert stored.ready_lsn.endswith(f":one:{alpha.database_name}")
    assert replicas.ready_position(stored) is not None
    stored.database_name = "tenant_elsewhere"  # another database: that position is not its
    assert replicas.ready_position(stored) is None


# --- lag, failures ----------------------------------------------------------------------


def test_a_lagging_replica_is_skipped(replicated, settings):
    set_servers(settings, REPLICA_MAX_LAG=0.3, REPLICA_STICKY_SECONDS=0)
    first, _ = make_tenants()
    with replay_paused():
        elsewhere(add_note, first, "while the replica is paused")
        time.sleep(0.5)
        replicas.reset()
        with tenant_context(first):
            rows, in_recovery = served_by(Note.objects.order_by("text"))
        assert in_recovery is False
        assert rows == ["a's note", "while the replica is paused"]
        assert replicas.replica_states()["one"][0]["usable"] is False
        assert "one replica 0: skipped (" in snapshot().summary()


def test_a_replica_cut_off_from_its_primary_is_skipped_once_the_primary_writes(ready, settings):
    set_servers(settings, REPLICA_MAX_LAG=1, REPLICA_STICKY_SECONDS=0)
    [conninfo] = replica_sql("SHOW primary_conninfo")
    try:
        replica_sql("ALTER SYSTEM SET primary_conninfo = ''")
        replica_sql("SELECT pg_reload_conf()")
        deadline = time.monotonic() + 20
        while replica_sql("SELECT count(*) FROM pg_stat_wal_receiver")[0]:
            assert time.monotonic() < deadline, "the replica kept its primary"
            time.sleep(0.1)
        elsewhere(add_note, ready, "after the cut")
        time.sleep(1.5)
        replicas.reset()
        with tenant_context(ready):
            rows, on_replica = served_by(Note.objects.order_by("id"))
        assert (rows, on_replica) == (["after the cut"], False)
        assert "behind (limit 1 s)" in replicas.replica_states()["one"][0]["problem"]
    finally:
        escaped = conninfo.replace("'", "''")
        replica_sql(f"ALTER SYSTEM SET primary_conninfo = '{escaped}'")
        replica_sql("SELECT pg_reload_conf()")
    caught_up()


def test_a_stopped_replica_is_skipped_and_used_again_when_back(
    replicated, settings, caplog, monkeypatch
):
    # Another test's logging set-up (Celery's test worker) may have raised the root's level.
    monkeypatch.setattr(replicas.logger, "disabled", False)
    caplog.set_level(logging.WARNING, logger="tenancy.replicas")
    set_servers(settings, CONN_MAX_AGE=None)  # a connection kept open across the stop
    first, _ = make_tenants()
    with tenant_context(first):
        assert served_by(Note.objects.all()) == (["a's note"], True)
    start_stop("stop")
    try:
        replicas.reset()
        with tenant_context(first):
            assert served_by(Note.objects.all()) == (["a's note"], False)
        assert any("Replica 0 of server one is skipped" in r.message for r in caplog.records)
        assert replicas.replica_states()["one"][0]["problem"].startswith("unreachable")
    finally:
        start_stop("start")
    caught_up()
    with tenant_context(first):
        assert served_by(Note.objects.all()) == (["a's note"], True)


def test_an_unresponsive_replica_costs_a_timeout_then_is_skipped(ready, settings):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted = []

    def accept():
        with contextlib.suppress(OSError):
            while True:
                accepted.append(listener.accept()[0])  # and never answers

    threading.Thread(target=accept, daemon=True).start()
    port = str(listener.getsockname()[1])
    set_servers(settings, REPLICAS=[{"HOST": "127.0.0.1", "PORT": port}])
    try:
        started = time.monotonic()
        with tenant_context(ready):
            assert served_by(Note.objects.all()) == ([], False)
        first = time.monotonic() - started
        started = time.monotonic()
        with tenant_context(ready):
            assert served_by(Note.objects.all()) == ([], False)
        again = time.monotonic() - started
    finally:
        listener.close()
        for connection in accepted:
            connection.close()
    assert accepted, "the check never reached the replica"
    assert first < 5, first  # the connect timeout (2 s), once
    assert again < 1, again  # then skipped until the next check
    assert "unreachable" in replicas.replica_states()["one"][0]["problem"]


def test_replica_connections_count_against_the_cap(replicated, settings):
    first, second = make_tenants()
    settings.TENANCY = {**settings.TENANCY, "MAX_OPEN_CONNECTIONS": 1}
    set_servers(settings, CONN_MAX_AGE=None)
    with tenant_context(first):
        assert served_by(Note.objects.all())[1] is True
    with tenant_context(second):
        assert served_by(Note.objects.all())[1] is True
    assert snapshot().servers["one"].open == 1


def test_unregister_closes_replica_connections(ready):
    with tenant_context(ready):
        queryset = Note.objects.all()
        list(queryset)
        assert queryset.db == f"{alias_for(ready)}@r0"
        assert connections[queryset.db].connection is not None
        old = queryset.db
        assert open_connection_count() >= 1
        unregister(ready)
        assert open_connection_count() == 0
        again = Note.objects.all()
        list(again)
        assert again.db == f"{alias_for(ready)}@r0" != old


# --- objects read from a replica --------------------------------------------------------


def test_objects_read_from_a_replica_relate_save_and_delete_as_their_tenants(ready, beta):
    pk = elsewhere(add_note, ready, "parent")
    caught_up()
    with tenant_context(ready):
        note = Note.objects.get(pk=pk)
        assert note._state.db == f"{alias_for(ready)}@r0"
        Tag.objects.create(note=note, label="child")  # related to a replica's object
        assert Tag.objects.using(alias_for(ready)).get().note_id == pk
    caught_up()
    replicas.forget_writes()  # as in a later request
    with tenant_context(ready):
        tag = Tag.objects.get()
        assert tag._state.db.endswith("@r0")
        parent = Note.objects.using(alias_for(ready)).get()
        parent.tags.add(tag)  # a replica's object added to a primary's
        replicas.forget_writes()  # as in a later request
        note = Note.objects.get(pk=pk)
        assert note._state.db.endswith("@r0")
        note.text = "changed"
        note.save()
        assert note._state.db == alias_for(ready)
    with tenant_context(beta), pytest.raises(CrossTenantError):
        note.save()  # still alpha's: never written to beta
    with tenant_context(ready):
        Tag.objects.all().delete()
        note.delete()
        assert not Note.objects.using(alias_for(ready)).filter(pk=pk).exists()


def test_saving_an_object_with_deferred_fields_writes_only_what_it_loaded(ready, settings):
    set_servers(settings, REPLICA_STICKY_SECONDS=0, REPLICA_MAX_LAG=60)
    pk = elsewhere(lambda: add_note(ready, "t", author_id=1))
    caught_up()
    with replay_paused():

        def change_author():
            with tenant_context(ready):
                Note.objects.filter(pk=pk).update(author_id=2)

        elsewhere(change_author)  # another request changes another column
        with tenant_context(ready):
            note = Note.objects.only("text").get(pk=pk)
            assert note._state.db.endswith("@r0")
            note.text = "edited"
            note.save()  # Django writes only the loaded fields
            fresh = Note.objects.using(alias_for(ready)).get(pk=pk)
            assert (fresh.text, fresh.author_id) == ("edited", 2)


# --- what operators see -----------------------------------------------------------------


def test_the_admin_page_and_the_metrics_show_each_replica(ready, settings, users):  # noqa: F811
    from prometheus_client import CollectorRegistry, generate_latest

    from tenancy.metrics import register
    from tests.test_admin import client_for

    with tenant_context(ready):
        assert served_by(Note.objects.all()) == ([], True)
    page = client_for("view_tenant").get("/admin/tenancy/tenant/connections/")
    assert "<tr><td>one</td><td>0</td><td>yes</td><td>0.0</td><td></td></tr>" in (
        page.content.decode()
    )
    registry = CollectorRegistry()
    register(registry)
    text = generate_latest(registry).decode()
    assert 'tenancy_replica_usable{replica="0",server="one"} 1.0' in text
    assert 'tenancy_replica_lag_seconds{replica="0",server="one"} 0.0' in text


def test_a_job_starts_with_no_writes_of_its_own(ready):
    from tenancy.jobs import running_in

    with tenant_context(ready):
        Note.objects.create(text="written before the job")
        assert Note.objects.all().db == alias_for(ready)
    with running_in(ready.slug):
        assert Note.objects.all().db == f"{alias_for(ready)}@r0"


# --- what a replica's trouble must not do ------------------------------------------------


def primary_sql(statement, params=()):
    host, port = SERVER_1["HOST"], SERVER_1["PORT"]
    with psycopg.connect(
        host=host, port=port, user="postgres", dbname="postgres", autocommit=True
    ) as connection:
        return connection.execute(statement, params).fetchall()


def test_a_check_whose_connection_was_ended_is_no_error_for_the_user(ready):
    with tenant_context(ready):
        assert served_by(Note.objects.all()) == ([], True)
    health = replicas._health[("one", 0)]
    for probe in (health.primary, health.replica):
        pid = probe.pgconn.backend_pid  # ended: a restart, an idle timeout, a failover
        (primary_sql if probe is health.primary else replica_sql)(
            f"SELECT pg_terminate_backend({int(pid)})"
        )
    time.sleep(0.3)
    health.next_check = float("-inf")  # the next check is due
    with tenant_context(ready):
        assert served_by(Note.objects.all()) == ([], False)
    assert replicas.replica_states()["one"][0]["problem"].startswith("its primary did not")


def test_at_the_cap_a_read_uses_the_primarys_open_connection(ready, settings):
    settings.TENANCY = {
        **settings.TENANCY,
        "MAX_OPEN_CONNECTIONS": 1,
        "CONNECTION_WAIT_TIMEOUT": 0.2,
    }
    close_all()
    with tenant_context(ready):
        cursor = tenant_connection().cursor()
        cursor.execute("SELECT 1")  # a read, its cursor still open: the primary is held
        queryset = Note.objects.all()
        assert list(queryset) == []
        assert queryset.db == alias_for(ready)
        cursor.close()


def test_a_stale_check_does_not_vouch_for_a_replica_while_another_thread_checks(ready, settings):
    set_servers(settings, REPLICA_STICKY_SECONDS=0, REPLICA_MAX_LAG=1)
    with tenant_context(ready):
        assert served_by(Note.objects.all())[1] is True  # checked now: usable
    health = replicas._health[("one", 0)]
    with replay_paused():
        elsewhere(add_note, ready, "written while the replica is stuck")
        time.sleep(2.5)  # more than REPLICA_MAX_LAG and a check interval, without a read
        holding, release = threading.Event(), threading.Event()

        def checking():  # another request's thread, in the middle of the due check
            with health.lock:
                holding.set()
                release.wait(5)

        thread = threading.Thread(target=checking)
        thread.start()
        holding.wait()
        try:
            with tenant_context(ready):
                rows, on_replica = served_by(Note.objects.all())
        finally:
            release.set()
            thread.join()
    assert (rows, on_replica) == (["written while the replica is stuck"], False)


def test_a_tenant_reactivated_from_its_backup_reads_from_the_primary_until_replayed(
    replicated, settings, tmp_path
):
    from unittest import mock

    from tenancy.backends.postgresql import PostgreSQLServer
    from tenancy.retention import archive_tenant, reactivate_tenant

    settings.TENANCY = {**settings.TENANCY, "RETENTION_BACKUP_DIRECTORY": str(tmp_path)}
    tenant = elsewhere(made_with_note, "replica-r", "r's note")
    archive_tenant(tenant, days=1)
    caught_up()
    restore = PostgreSQLServer._restore_into
    paused = contextlib.ExitStack()

    def restore_into(self, name, source, *rest):
        caught_up()  # the replica has the new database, still empty
        paused.enter_context(replay_paused())
        return restore(self, name, source, *rest)

    with paused:
        with mock.patch.object(PostgreSQLServer, "_restore_into", restore_into):
            reactivated = elsewhere(reactivate_tenant, "replica-r")
        replicas.reset()
        with tenant_context(reactivated):
            assert served_by(Note.objects.all()) == (["r's note"], False)
    caught_up()
    with tenant_context(reactivated):
        assert served_by(Note.objects.all()) == (["r's note"], True)
    elsewhere(deprovision_tenant, reactivated)
