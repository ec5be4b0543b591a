"""Tenants moved and restored between placements: a schema of a shared database and a
database of its own, both ways, and schema tenants restored under another name.

Each test would show another tenant's rows in the one moved or restored, leave a tenant's
tables in a shared database's ``public`` schema, or leave a database or schema behind
that the registry does not know, if it failed.
"""

from __future__ import annotations

import json

import pytest
from django.core.exceptions import ValidationError
from psycopg import sql

from tenancy import moving, tenant_context
from tenancy.backends import get_server
from tenancy.backups import BackupError, abort_restore, backup_tenant, restore_tenant
from tenancy.models import MoveStep, Tenant, TenantStatus
from tenancy.moving import MoveError, abort_move, move_tenant
from tenancy.provisioning import create_tenant
from tenancy.reserved import SCRATCH_PREFIX
from tests.helpers import recorded_move
from tests.tenantapp.models import Note
from tests.test_schema_placement import (  # noqa: F401 (schemas: a fixture)
    direct_route,
    postgresql_only,
    schemas,
    texts,
    with_note,
)

# The search path's way of being set plays no part here: once is enough.
pytestmark = [
    postgresql_only,
    pytest.mark.usefixtures("schemas"),
    pytest.mark.parametrize("schemas", [True], indirect=True),
]


def scratch_databases() -> list[str]:
    """Scratch databases (of schema renames) on both clusters."""
    found = []
    for server in ("one", "two"):
        with get_server(server)._cursor() as cursor:
            cursor.execute(
                "SELECT datname FROM pg_database WHERE starts_with(datname, %s)",
                [SCRATCH_PREFIX],
            )
            found += [row[0] for row in cursor.fetchall()]
    return found


def own_schemas(server: str, database: str) -> list[str]:
    """The schemas of ``database`` on ``server`` but PostgreSQL's own."""
    with get_server(server)._cursor(database) as cursor:
        cursor.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname <> 'information_schema' "
            "AND left(nspname, 3) <> 'pg_' ORDER BY 1"
        )
        return [row[0] for row in cursor.fetchall()]


def tables_in_public(server: str) -> int:
    """Tables in the ``public`` schema of schema server ``server``'s shared database."""
    shared = get_server(server)
    with shared._cursor(shared.database) as cursor:
        cursor.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
        return int(cursor.fetchone()[0])


def current(slug: str) -> Tenant:
    return Tenant.objects.get(slug=slug)


def test_a_schema_tenant_moves_to_a_database_of_its_own_and_back(settings):
    direct_route(settings)
    acme, neighbour = with_note("acme"), with_note("neighbour")
    with tenant_context(acme):
        Note.objects.create(text="acme second note")

    report = move_tenant(acme, "two")
    assert (report.source_server, report.target_server) == ("shared", "two")
    assert report.rows > 2  # its notes and its migrations
    acme = current("acme")
    assert (acme.server, acme.status) == ("two", TenantStatus.ACTIVE)
    assert not get_server("shared").database_exists(acme.database_name)
    # Its database holds its own tables in public, and nothing of its neighbour's.
    assert own_schemas("two", acme.database_name) == ["public"]
    with tenant_context(acme):
        assert sorted(texts()) == ["acme note", "acme second note"]
        Note.objects.create(text="on a database of its own")  # its sequence came along
    with tenant_context(neighbour):
        assert texts() == ["neighbour note"]

    move_tenant(acme, "shared2")
    acme = current("acme")
    assert acme.server == "shared2"
    assert not get_server("two").database_exists(acme.database_name)
    assert own_schemas("two", get_server("shared2").database) == ["public", acme.database_name]
    assert tables_in_public("shared2") == 0
    with tenant_context(acme):
        assert sorted(texts()) == ["acme note", "acme second note", "on a database of its own"]
        Note.objects.create(text="back in a schema")
    with tenant_context(neighbour):
        assert texts() == ["neighbour note"]
    assert scratch_databases() == []


def test_a_database_that_a_schema_cannot_hold_is_not_moved_into_one(settings):
    direct_route(settings)
    tenant = create_tenant("wide", server="one")
    with tenant_context(tenant):
        Note.objects.create(text="wide note")
    with get_server("one")._cursor(tenant.database_name) as cursor:
        cursor.execute("CREATE SCHEMA reports; CREATE TABLE reports.monthly (id int)")

    with pytest.raises(MoveError, match=r"holds schema\(s\) reports besides public.*serves from"):
        move_tenant(tenant, "shared")
    tenant = current("wide")
    assert (tenant.server, tenant.status) == ("one", TenantStatus.ACTIVE)
    assert not get_server("shared").database_exists(tenant.database_name)
    assert scratch_databases() == []
    with tenant_context(tenant):
        assert texts() == ["wide note"]
        Note.objects.create(text="still writable")


def test_a_schema_tenants_backup_is_restored_as_another_and_in_its_place(settings, tmp_path):
    direct_route(settings)
    acme, neighbour = with_note("acme"), with_note("neighbour")
    path = backup_tenant(acme, tmp_path).path

    # Beside it, as a schema of another name: its own rows, nothing of acme's changes.
    restore_tenant(path, as_slug="acme-copy")
    copy = current("acme-copy")
    assert (copy.server, copy.status) == ("shared", TenantStatus.SUSPENDED)
    assert copy.database_name != acme.database_name
    with tenant_context(copy):
        assert texts() == ["acme note"]
        Note.objects.create(text="written in the copy")
    with tenant_context(acme):
        assert texts() == ["acme note"]
        Note.objects.filter(text="acme note").delete()
        Note.objects.create(text="after the backup")

    # In its place: the backup's rows, under a new schema; the replaced one is dropped.
    report = restore_tenant(path, replace=True)
    acme_now = current("acme")
    assert acme_now.database_name == report.database_name != acme.database_name
    assert not get_server("shared").database_exists(acme.database_name)
    with tenant_context(acme_now):
        assert texts() == ["acme note"]
    with tenant_context(neighbour):
        assert texts() == ["neighbour note"]
    with tenant_context(copy):
        assert sorted(texts()) == ["acme note", "written in the copy"]

    # Into a server of databases, and a database tenant's backup into a schema.
    restore_tenant(path, as_slug="acme-db", server="one")
    own = current("acme-db")
    assert own_schemas("one", own.database_name) == ["public"]
    with tenant_context(own):
        assert texts() == ["acme note"]
    restore_tenant(backup_tenant(own, tmp_path).path, as_slug="acme-back", server="shared2")
    with tenant_context(current("acme-back")):
        assert texts() == ["acme note"]
    assert tables_in_public("shared") == tables_in_public("shared2") == 0
    assert scratch_databases() == []


def test_what_an_interrupted_rename_left_is_dropped(settings, tmp_path):
    direct_route(settings)
    wide = create_tenant("wide", server="one")
    with get_server("one")._cursor(wide.database_name) as cursor:
        cursor.execute("CREATE SCHEMA reports")
    path = backup_tenant(wide, tmp_path).path

    # A restore that fails after its scratch database was made leaves neither it, nor a
    # tenant, nor a schema.
    with pytest.raises(BackupError, match=r"holds schema\(s\) reports besides public"):
        restore_tenant(path, as_slug="wide-copy", server="shared")
    assert not Tenant.objects.filter(slug="wide-copy").exists()
    assert scratch_databases() == []
    assert "wide-copy" not in " ".join(get_server("shared").list_databases())

    # A move killed while its copy was being renamed: the abort drops the scratch
    # database too, which the registry never knew.
    acme = with_note("acme", server="shared2")
    recorded_move(acme, MoveStep.COPYING, source_server="shared2", target_server="shared")
    Tenant.objects.filter(pk=acme.pk).update(status=TenantStatus.MOVING)
    shared = get_server("shared")
    scratch = shared._scratch_name(acme.database_name)
    with get_server("one")._cursor() as cursor:
        cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(scratch)))
    assert scratch_databases() == [scratch]
    abort_move("acme")
    assert scratch_databases() == []

    # A restore of a new tenant killed while renaming: the abort drops it all.
    Tenant.objects.create(slug="half", name="Half", server="shared", status="restoring")
    half = current("half")
    with get_server("one")._cursor() as cursor:
        name = sql.Identifier(shared._scratch_name(half.database_name))
        cursor.execute(sql.SQL("CREATE DATABASE {}").format(name).as_string(cursor.connection))
    abort_restore("half")
    assert not Tenant.objects.filter(slug="half").exists()
    assert scratch_databases() == []
    acme = current("acme")
    assert (acme.server, acme.status) == ("shared2", TenantStatus.ACTIVE)
    with tenant_context(acme):
        assert texts() == ["acme note"]


def test_a_write_to_a_schema_source_after_the_copy_keeps_the_source(settings, monkeypatch):
    """A schema source cannot be made read-only: a process that still had the tenant
    open writes to it after the copy was verified. Its rows are compared and the schema
    dropped in one transaction, under a lock that keeps writers out: the write is never
    dropped with it."""
    from tenancy.backends import schemas as schema_backend

    direct_route(settings)
    monkeypatch.setattr(schema_backend, "DROP_LOCK_TIMEOUT_MS", 300)
    monkeypatch.setattr(moving, "SOURCE_QUERIES_TIMEOUT", 0.3)
    acme = with_note("acme")
    move_tenant(acme, "two", keep_source=True)
    verified = get_server("shared").fingerprint(acme.database_name)
    recorded_move(
        acme,
        MoveStep.SWITCHED,
        source_server="shared",
        target_server="two",
        verified=json.dumps(verified.as_json()),
    )
    shared = get_server("shared")
    table = sql.Identifier(acme.database_name, "tenantapp_note")
    with shared._cursor(shared.database) as writer:
        # A writer's transaction still open: the drop waits for it, then gives up.
        writer.execute(
            sql.SQL("BEGIN; INSERT INTO {} (text) VALUES ('late write')")
            .format(table)
            .as_string(writer.connection)
        )
        with pytest.raises(MoveError, match=r"serves from server 'two' already.*again"):
            move_tenant("acme", "two")
        writer.execute("COMMIT")
    # Committed now: the source differs from what was verified, so it is kept.
    report = move_tenant("acme", "two")
    assert report.source_kept
    with shared._cursor(shared.database) as cursor:
        cursor.execute(
            sql.SQL("SELECT text FROM {} ORDER BY 1").format(table).as_string(cursor.connection)
        )
        assert [row[0] for row in cursor.fetchall()] == ["acme note", "late write"]


def test_a_scratch_database_name_is_never_a_tenants_nor_dropped_as_one(settings):
    from tenancy.exceptions import ReservedDatabaseError
    from tenancy.reserved import unavailable_reason

    shared = get_server("shared")
    scratch = shared._scratch_name("tenant_acme")
    assert "scratch databases" in unavailable_reason("one", scratch, slug="victim")
    with pytest.raises(ValidationError, match="named as tenancy's scratch databases are"):
        Tenant.objects.create(slug="victim", name="V", server="one", database_name=scratch)
    # One registered past the model (an UPDATE by hand) is not dropped as a leftover.
    Tenant.objects.create(slug="victim", name="Victim", server="one", status="active")
    Tenant.objects.filter(slug="victim").update(database_name=scratch)
    get_server("one").create_database(scratch)
    with pytest.raises(ReservedDatabaseError, match="tenant 'victim'"):
        shared.drop_leftovers("tenant_acme")
    assert get_server("one").database_exists(scratch)
    Tenant.objects.filter(slug="victim").delete()
    shared.drop_leftovers("tenant_acme")
    assert scratch_databases() == []


def test_a_move_through_a_pooler_to_or_from_a_schema_server_is_refused(settings):
    settings.TENANCY = {
        **settings.TENANCY,
        "SERVERS": {
            **settings.TENANCY["SERVERS"],
            "shared": {**settings.TENANCY["SERVERS"]["shared"], "TRANSACTION_POOLING": True},
        },
    }
    settings.TENANCY["SERVERS"]["shared"].pop("DIRECT", None)
    acme = with_note("acme")
    with pytest.raises(MoveError, match=r"reached through a pooler.*DIRECT"):
        move_tenant(acme, "one")
    assert current("acme").server == "shared"
