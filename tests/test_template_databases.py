"""New tenants copied from a template database: same schema, faster, self-updating."""

import logging
import os
import subprocess

import psycopg
import pytest
from django.db import connections

from tenancy import tenant_connection, tenant_context
from tenancy.backends import get_server
from tenancy.conf import tenancy_settings
from tenancy.migration import applied_migrations
from tenancy.provisioning import create_tenant
from tests.settings import BACKEND
from tests.tenantapp.models import Note

TEMPLATE = "test_tenancy__template"


def schema(tenant):
    """Tables, columns, constraints and indexes, and the recorded migrations."""
    with tenant_context(tenant):
        connection = tenant_connection()
        introspection = connection.introspection
        with connection.cursor() as cursor:
            tables = sorted(introspection.table_names(cursor))
            shape = {
                table: (
                    [
                        tuple(column)[:7]
                        for column in introspection.get_table_description(cursor, table)
                    ],
                    introspection.get_constraints(cursor, table),
                )
                for table in tables
            }
        return shape, applied_migrations(connection)


@pytest.fixture
def without_templates(settings):
    settings.TENANCY = {**settings.TENANCY, "USE_TEMPLATE_DATABASES": False}


def test_template_name_cannot_be_a_tenants():
    assert tenancy_settings.template_database_name() == TEMPLATE


@pytest.fixture
def spares(settings):
    """Keep N spare databases per server in this test."""

    def use(count: int) -> list[str]:
        settings.TENANCY = {**settings.TENANCY, "SPARE_DATABASES": count}
        return tenancy_settings.spare_database_names()

    return use


@pytest.mark.parametrize("spare_count", [0, 1], ids=["copied", "from-a-spare"])
def test_copied_tenant_equals_migrated_tenant(db_access, settings, spares, spare_count):
    spares(spare_count)
    create_tenant("beta-2")  # the template exists from here on, and the spare if any
    copied = create_tenant("gamma")
    assert get_server("one").database_exists(TEMPLATE)
    settings.TENANCY = {**settings.TENANCY, "USE_TEMPLATE_DATABASES": False}
    migrated = create_tenant("delta")
    copied_schema, copied_applied = schema(copied)
    migrated_schema, migrated_applied = schema(migrated)
    assert copied_schema == migrated_schema
    assert copied_applied == migrated_applied
    assert ("tenantapp", "0001_initial") in copied_applied


def test_without_templates_no_template_is_made(db_access, without_templates):
    get_server("two").drop_database(TEMPLATE, allow_template=True)
    create_tenant("gamma", server="two")
    assert not get_server("two").database_exists(TEMPLATE)


def test_template_follows_new_migrations(db_access, migrations):
    create_tenant("gamma")
    migrations("tests.migrations_v2")
    delta = create_tenant("delta")
    with tenant_context(delta):
        assert list(Note.objects.values_list("text", flat=True)) == ["welcome"]
        assert ("tenantapp", "0002_note_text_index") in applied_migrations(tenant_connection())


def test_seed_data_is_per_tenant_not_copied(db_access):
    gamma = create_tenant("gamma")
    with tenant_context(gamma):
        Note.objects.create(text="gamma only")
    delta = create_tenant("delta")
    with tenant_context(delta):
        assert Note.objects.count() == 0


def test_cloning_onto_an_existing_database_changes_nothing(db_access):
    gamma = create_tenant("gamma")
    with tenant_context(gamma):
        Note.objects.create(text="kept")
    connections.close_all()
    assert get_server("one").clone_database(TEMPLATE, gamma.database_name) is False
    with tenant_context(gamma):
        assert Note.objects.count() == 1


@pytest.mark.skipif(BACKEND != "postgresql", reason="only PostgreSQL locks a template in use")
def test_a_session_on_the_template_is_ended_before_the_copy(db_access, caplog, spares):
    # A session someone left on the template (or a pool's, such as PgBouncer's server
    # connections) would make PostgreSQL refuse the copy.
    spares(0)
    create_tenant("gamma")  # makes sure the template exists
    server = tenancy_settings.server("one")
    session = psycopg.connect(
        host=server["HOST"], port=server["PORT"], user=server["USER"], dbname=TEMPLATE
    )
    session.execute("SELECT 1")
    try:
        with caplog.at_level(logging.WARNING, logger="tenancy.provisioning"):
            delta = create_tenant("delta")
    finally:
        session.close()
    assert "Template database in use" not in caplog.text  # copied, not migrated
    delta.refresh_from_db()
    assert delta.status == "active"
    with tenant_context(delta):
        assert Note.objects.count() == 0


@pytest.mark.parametrize("spare_count", [0, 1])
def test_template_dropped_behind_our_back_is_rebuilt(db_access, spares, spare_count):
    spares(spare_count)
    create_tenant("gamma")  # the template is now known to be current in this process
    get_server("one").drop_database(TEMPLATE, allow_template=True)
    delta = create_tenant("delta")  # from the spare made before the drop, if any
    epsilon = create_tenant("epsilon")
    assert get_server("one").database_exists(TEMPLATE)
    for tenant in (delta, epsilon):
        with tenant_context(tenant):
            assert Note.objects.count() == 0
            assert ("tenantapp", "0001_initial") in applied_migrations(tenant_connection())


def test_missing_sqlite_template_is_not_created_empty(db_access, tmp_path, settings):
    from tenancy.backends.base import TemplateMissing
    from tenancy.backends.sqlite import SQLiteServer

    server = SQLiteServer("scratch", {"DIRECTORY": tmp_path / "dir with ?#% chars"})
    with pytest.raises(TemplateMissing):
        server.clone_database("absent", "copy")
    assert not server.database_exists("absent")
    assert not server.database_exists("copy")


@pytest.mark.skipif(BACKEND != "sqlite", reason="SQLite copies through a private file")
def test_private_files_of_killed_copies_are_removed_by_the_next_copy(db_access):
    create_tenant("gamma")  # the template exists from here on
    server = get_server("one")
    target = server.path(tenancy_settings.database_name_for("delta"))
    dead = subprocess.Popen(["true"])  # once ended, no process has its pid
    dead.wait()
    left_by_dead = target.with_name(f".{target.name}.{dead.pid}.1")
    left_by_dead_journal = target.with_name(f".{target.name}.{dead.pid}.1-journal")
    in_progress = target.with_name(f".{target.name}.{os.getpid()}.1")  # a live copy's
    for path in (left_by_dead, left_by_dead_journal, in_progress):
        path.write_bytes(b"partial")
    create_tenant("delta")
    assert not left_by_dead.exists()
    assert not left_by_dead_journal.exists()
    assert in_progress.exists()
    in_progress.unlink()


def test_djangos_own_data_migrations_run_in_the_template_the_projects_per_tenant(
    db_access, settings, migrations
):
    from django.db.migrations.loader import MigrationLoader

    from tenancy.migration import per_tenant_migrations

    settings.TENANCY = {
        **settings.TENANCY,
        "TENANT_APPS": [*settings.TENANCY["TENANT_APPS"], "auth", "contenttypes"],
    }
    migrations("tests.migrations_v2")  # its 0002 seeds a welcome note with RunPython
    per_tenant = per_tenant_migrations(MigrationLoader(None, ignore_no_migrations=True))
    # The project's RunPython seeds each tenant in its own context.
    assert ("tenantapp", "0002_note_text_index") in per_tenant
    # Django's own (a proxy permission fix-up, a no-op) make the same rows everywhere.
    assert ("auth", "0011_update_proxy_permissions") not in per_tenant
    assert ("contenttypes", "0002_remove_content_type_name") not in per_tenant
    assert not [key for key in per_tenant if key[0] in ("auth", "contenttypes")]
