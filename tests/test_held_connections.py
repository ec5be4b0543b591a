"""Connections of tenancy's own to a server, kept for the length of a provisioning."""

import time

import pytest
from django.db import connections

from tenancy.backends import get_server
from tenancy.backends.base import held_connections
from tenancy.provisioning import create_tenant, deprovision_tenant
from tests.settings import BACKEND, PGBOUNCER

pytestmark = pytest.mark.skipif(BACKEND != "postgresql", reason="PostgreSQL servers")

# Server sessions told apart by their pid: behind a pooler one client connection after
# another may get the same one, and a session on template1 stays pooled after the test.
direct = pytest.mark.skipif(PGBOUNCER, reason="sessions seen straight, not through a pooler")


def backend_pid(server):
    with server._cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


@direct
def test_one_connection_per_database_within_the_block_and_none_after(db_access):
    server = get_server("one")
    assert backend_pid(server) != backend_pid(server)  # outside: one per use
    with held_connections():
        first = backend_pid(server)
        assert backend_pid(server) == first
        with held_connections():  # nested: the same
            assert backend_pid(server) == first
    with server._cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [first])
        assert cursor.fetchone()[0] == 0  # closed when the block ended


@direct
def test_a_connection_left_in_a_transaction_or_by_an_error_is_not_used_again(db_access):
    server = get_server("one")
    with held_connections():
        with server._cursor() as cursor:
            cursor.execute("BEGIN")
            cursor.execute("SELECT pg_backend_pid()")
            in_transaction = cursor.fetchone()[0]
        assert backend_pid(server) != in_transaction
        kept = backend_pid(server)
        with pytest.raises(RuntimeError), server._cursor():
            raise RuntimeError("a statement group failed")
        assert backend_pid(server) != kept


def test_provisioning_a_tenant_opens_one_maintenance_connection(db_access, monkeypatch):
    from tenancy.backends import postgresql

    opened = []
    wrapper = postgresql._unpooled_wrapper

    def counting(settings_dict, alias):
        opened.append((alias, settings_dict.get("NAME")))
        return wrapper(settings_dict, alias)

    monkeypatch.setattr(postgresql, "_unpooled_wrapper", counting)
    tenant = create_tenant("held-connections", server="one")
    try:
        maintenance = [entry for entry in opened if entry[0] == postgresql.MAINTENANCE_ALIAS]
        assert len(maintenance) == 1, opened
    finally:
        deprovision_tenant(tenant)


@direct
def test_a_kept_connection_the_server_ended_is_not_used_again(db_access):
    server = get_server("one")
    with held_connections():
        kept = backend_pid(server)
        with connections["default"].cursor() as cursor:  # as an idle timeout would
            cursor.execute("SELECT pg_terminate_backend(%s)", [kept])
        time.sleep(0.2)
        assert server.database_exists("postgres")
        assert backend_pid(server) != kept


@direct
def test_a_maintenance_database_that_is_a_template_is_never_kept(db_access, settings):
    servers = settings.TENANCY["SERVERS"]
    settings.TENANCY = {
        **settings.TENANCY,
        "SERVERS": {**servers, "one": {**servers["one"], "MAINTENANCE_DB": "template1"}},
    }
    server = get_server("one")
    with held_connections():
        assert backend_pid(server) != backend_pid(server)  # CREATE DATABASE copies it
