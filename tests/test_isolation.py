"""Each tenant's rows live in its own database, on its own server, and nowhere else."""

import asyncio

from django.db import connections
from django.test.utils import CaptureQueriesContext

from tenancy import tenant_connection, tenant_context
from tenancy.connections import connection_for
from tests.conftest import server_port
from tests.settings import BACKEND
from tests.tenantapp.models import Note


def test_rows_written_in_one_tenant_are_invisible_in_the_other(alpha, beta):
    with tenant_context(alpha):
        Note.objects.create(text="alpha's secret")
    with tenant_context(beta):
        Note.objects.create(text="beta's plan")
        Note.objects.create(text="beta's other plan")

    with tenant_context(alpha):
        assert list(Note.objects.values_list("text", flat=True)) == ["alpha's secret"]
    with tenant_context(beta):
        assert sorted(Note.objects.values_list("text", flat=True)) == [
            "beta's other plan",
            "beta's plan",
        ]


def test_tenant_rows_are_absent_from_the_default_database(alpha):
    with tenant_context(alpha):
        Note.objects.create(text="only in alpha")
    default_tables = connections["default"].introspection.table_names()
    assert Note._meta.db_table not in default_tables
    with tenant_context(alpha), tenant_connection().cursor() as cursor:
        cursor.execute(f"SELECT text FROM {Note._meta.db_table}")
        assert cursor.fetchall() == [("only in alpha",)]


def test_the_two_tenants_are_on_different_servers(alpha, beta):
    one, two = connection_for(alpha).settings_dict, connection_for(beta).settings_dict
    if BACKEND == "postgresql":
        assert (one["HOST"], one["PORT"]) != (two["HOST"], two["PORT"])
        with connection_for(alpha).cursor() as c1, connection_for(beta).cursor() as c2:
            c1.execute("SELECT inet_server_port(), current_database()")
            c2.execute("SELECT inet_server_port(), current_database()")
            (port1, db1), (port2, db2) = c1.fetchone(), c2.fetchone()
        assert (str(port1), db1) == (server_port("one"), alpha.database_name)
        assert (str(port2), db2) == (server_port("two"), beta.database_name)
    else:
        assert one["NAME"] != two["NAME"]
        assert one["NAME"].rsplit("/", 2)[1] == "server1"
        assert two["NAME"].rsplit("/", 2)[1] == "server2"


def test_tenant_queries_never_reach_the_default_database(alpha):
    with CaptureQueriesContext(connections["default"]) as default_queries, tenant_context(alpha):
        Note.objects.create(text="x")
        list(Note.objects.all())
        Note.objects.filter(text="x").update(text="y")
        Note.objects.all().delete()
    assert default_queries.captured_queries == []


def test_async_iteration_reads_each_tenants_own_rows(notes):
    """QuerySet.aiterator() runs its chunks through sync_to_async, in a context that has
    not seen the thread's connection objects; tenants read at once stay apart."""
    alpha, beta = notes
    for tenant in (alpha, beta):
        with tenant_context(tenant):
            Note.objects.create(text=f"{tenant.slug} 2")

    async def read(tenant):
        with tenant_context(tenant):
            chunked = [n.text async for n in Note.objects.aiterator(chunk_size=1)]
            whole = [n.text async for n in Note.objects.all()]
            return chunked, whole

    async def read_all():
        return await asyncio.gather(*(read(tenant) for tenant in (alpha, beta, alpha, beta)))

    for tenant, (chunked, whole) in zip(
        (alpha, beta, alpha, beta), asyncio.run(read_all()), strict=True
    ):
        expected = [f"{tenant.slug} note", f"{tenant.slug} 2"]
        assert (chunked, whole) == (expected, expected)
