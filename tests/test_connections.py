"""Runtime registration and removal of tenant connection aliases."""

import threading
from contextlib import contextmanager

import pytest
from django.conf import settings as django_settings
from django.db import close_old_connections, connections

from tenancy import TenancyError, TenantRemoved, TenantServerError, atomic, tenant_context
from tenancy.connections import (
    alias_for,
    attached_aliases,
    close_all,
    connection_for,
    open_connection_count,
    register,
    registered_aliases,
    unregister,
)
from tenancy.connections import (
    close_old_connections as tenancy_close_old_connections,
)
from tests.conftest import (
    client_sessions,
    create_tenant_database,
    drop_tenant_database,
    make_tenant,
)
from tests.inflight import run_in_subprocess
from tests.settings import BACKEND, SERVER_2
from tests.tenantapp.models import Note


def tenant_aliases():
    return sorted(registered_aliases().values())


def configured_tenant_aliases():
    return [alias for alias in connections.settings if alias.startswith("tenant:")]


@contextmanager
def joined(threads):
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        for thread in threads:
            thread.join(timeout=60)


def open_sessions(tenant, settle_to=None):
    """Connections clients hold to the tenant's database (PostgreSQL only)."""
    return client_sessions(tenant.server, [tenant.database_name], settle_to)


def test_alias_is_registered_on_first_use_with_djangos_defaults(alpha):
    assert tenant_aliases() == []
    with tenant_context(alpha):
        Note.objects.count()
    alias = alias_for(alpha)
    assert registered_aliases() == {"alpha": alias}
    assert attached_aliases() == [alias]
    database = connections[alias].settings_dict
    for key in ("AUTOCOMMIT", "CONN_MAX_AGE", "CONN_HEALTH_CHECKS", "OPTIONS", "TIME_ZONE"):
        assert key in database
    assert database["ATOMIC_REQUESTS"] is False
    assert set(database["TEST"]) >= {"CHARSET", "COLLATION", "MIGRATE", "MIRROR", "NAME"}
    assert "DIRECTORY" not in database
    # Django's per-request walks over DATABASES never see tenant aliases.
    assert configured_tenant_aliases() == []
    assert django_settings.DATABASES is connections.settings


def test_alias_is_unknown_in_a_thread_that_did_not_reach_the_tenant(alpha):
    alias = alias_for(alpha)
    errors = []

    def work():
        try:
            connections[alias]
        except Exception as exc:
            errors.append(exc)

    with joined([threading.Thread(target=work)]):
        pass
    assert [type(error).__name__ for error in errors] == ["ConnectionDoesNotExist"]


def test_concurrent_first_use_registers_one_alias(alpha):
    count = 32
    barrier = threading.Barrier(count, timeout=60)
    aliases, errors = [], []

    def work():
        try:
            barrier.wait()
            with tenant_context(alpha):
                aliases.append(alias_for(alpha))
                Note.objects.count()
        except Exception as exc:
            errors.append(exc)
        finally:
            close_all()

    with joined([threading.Thread(target=work) for _ in range(count)]):
        pass
    assert errors == []
    assert len(aliases) == count
    assert len(set(aliases)) == 1
    assert tenant_aliases() == [aliases[0]]
    assert aliases[0].startswith("tenant:alpha")


def test_registering_while_another_thread_walks_connections_is_safe(db_access):
    stop, errors = threading.Event(), []

    def walk():
        # What Django and tenancy do at the start and end of every request.
        while not stop.is_set():
            try:
                close_old_connections()
                tenancy_close_old_connections()
            except Exception as exc:
                errors.append(exc)
                return

    with joined([threading.Thread(target=walk)]):
        try:
            for i in range(300):
                register(make_tenant(f"walker-{i}", "one"))
        finally:
            stop.set()
    assert errors == []
    assert len(tenant_aliases()) == 300
    assert configured_tenant_aliases() == []


def test_unregister_reaches_connections_other_threads_hold(alpha):
    count = 4
    opened, checked = threading.Barrier(count + 1, timeout=60), threading.Event()
    seen, fresh = [], []
    old_alias = alias_for(alpha)

    def work():
        with tenant_context(alpha):
            Note.objects.count()
            wrapper = connections[old_alias]
            opened.wait()
            checked.wait(timeout=60)
            # The old connection refuses statements rather than reaching the database...
            try:
                with wrapper.cursor() as cursor:
                    cursor.execute("SELECT 1")
                stale = "ran"
            except TenantRemoved as exc:
                stale = str(exc).partition(" while")[0]
            # ...is closed at the thread's next safe point...
            tenancy_close_old_connections()
            seen.append((stale, wrapper.connection is None, old_alias in attached_aliases()))
            # ...and the tenant itself keeps working under a new alias.
            fresh.append((alias_for(alpha), Note.objects.count()))
            close_all()

    with joined([threading.Thread(target=work) for _ in range(count)]):
        opened.wait()
        if BACKEND == "postgresql":
            assert open_sessions(alpha) == count
        assert open_connection_count() == count
        assert unregister(alpha) is True
        assert registered_aliases() == {}
        try:
            if BACKEND == "postgresql":
                # psycopg serializes a connection's use: closed at once, from here.
                assert open_sessions(alpha, settle_to=0) == 0
                assert open_connection_count() == 0
            else:
                # sqlite3 does not: each thread closes its own, at its next safe point.
                assert open_connection_count() == count
        finally:
            checked.set()
    assert seen == [("Tenant 'alpha' was removed from this process", True, False)] * count
    assert open_connection_count() == 0
    new_aliases = {alias for alias, _ in fresh}
    assert len(new_aliases) == 1
    assert old_alias not in new_aliases
    assert {count for _, count in fresh} == {0}
    assert unregister(alpha) is True
    assert unregister(alpha) is False


def test_unregister_while_other_threads_are_inside_a_statement(db_access):
    """Not one thread's connection is closed under its running statement: the process
    survives, each statement returns its result (or, on PostgreSQL, a clean error), the
    next statement is refused, and no connection to the tenant is left anywhere."""
    threads, rounds = 4, 5
    outcome = run_in_subprocess(
        "queries_while_unregistered",
        database="test_tenancy_midquery",
        threads=threads,
        rounds=rounds,
    )
    queries = {record.pop("query") for record in outcome["seen"]}
    assert queries <= {"result 300000", "error OperationalError"}
    assert outcome["seen"] == [
        {
            "next statement": "TenantRemoved",
            "open after its safe point": False,
            "attached after its safe point": [],
        }
    ] * (threads * rounds)
    assert (outcome["open connections"], outcome["open files"], outcome["sessions"]) == (0, 0, 0)


def test_a_tenant_removed_during_its_transaction_is_not_reached_under_a_new_alias(alpha):
    with tenant_context(alpha):
        with pytest.raises(TenantRemoved), atomic():
            Note.objects.create(text="inside the transaction")
            with joined([threading.Thread(target=unregister, args=[alpha])]):
                pass
            Note.objects.create(text="after the removal")  # not autocommitted elsewhere
        tenancy_close_old_connections()
        assert list(Note.objects.values_list("text", flat=True)) == []


def test_unregister_in_the_same_thread_closes_through_django(alpha):
    with tenant_context(alpha):
        Note.objects.count()
    wrapper = connection_for(alpha)
    assert wrapper.connection is not None
    unregister(alpha)
    assert wrapper.connection is None


def test_tenant_moved_to_another_server_is_reregistered(alpha):
    moved = make_tenant("alpha", "two")
    create_tenant_database(moved)
    try:
        with tenant_context(moved):
            Note.objects.create(text="on server two")
        with tenant_context(alpha):
            assert Note.objects.count() == 0
        with tenant_context(moved):
            assert list(Note.objects.values_list("text", flat=True)) == ["on server two"]
    finally:
        drop_tenant_database(moved)


def test_server_settings_change_takes_effect_without_restart(alpha, settings):
    with tenant_context(alpha):
        Note.objects.create(text="on server one")
    copy_on_two = make_tenant("alpha", "two")
    create_tenant_database(copy_on_two)
    try:
        with tenant_context(copy_on_two):
            Note.objects.create(text="on server two")
        # Server "one" now points where server "two" is.
        settings.TENANCY = {**settings.TENANCY, "SERVERS": {"one": SERVER_2, "two": SERVER_2}}
        with tenant_context(alpha):
            assert list(Note.objects.values_list("text", flat=True)) == ["on server two"]
    finally:
        drop_tenant_database(copy_on_two)


def test_unknown_server_raises_naming_tenant_and_server(db_access):
    with pytest.raises(
        TenantServerError, match=r"'alpha' is on server 'nowhere'.*\(defined: one, two\)"
    ):
        alias_for(make_tenant("alpha", "nowhere"))
    assert tenant_aliases() == []


@pytest.mark.parametrize("slug", ["al'pha", "ALPHA", "a" * 300, "x; DROP DATABASE y"])
def test_invalid_tenant_is_never_registered(db_access, slug):
    tenant = make_tenant("alpha", "one")
    tenant.slug = slug
    with pytest.raises(TenancyError, match="Cannot connect to tenant"):
        alias_for(tenant)
    assert tenant_aliases() == []
