"""Spare copies of the template: provisioning renames one instead of copying."""

import contextlib
import logging
import sqlite3
import threading

import psycopg
import pytest
from django.core.exceptions import ValidationError

from tenancy import template_databases as templates
from tenancy import tenant_connection, tenant_context
from tenancy.backends import get_server
from tenancy.conf import tenancy_settings
from tenancy.connections import unregister
from tenancy.migration import applied_migrations
from tenancy.models import Tenant
from tenancy.provisioning import ProvisioningError, adopt_database, create_tenant
from tests.conftest import server_port
from tests.settings import BACKEND
from tests.tenantapp.models import Note

TEMPLATE = "test_tenancy__template"
SPARE = "test_tenancy__spare_1"


@pytest.fixture(autouse=True)
def one_spare(settings):
    settings.TENANCY = {**settings.TENANCY, "SPARE_DATABASES": 1}


@contextlib.contextmanager
def raw_connection(database: str, server: str = "one"):
    """A connection of the test's own, outside Django and PgBouncer, to a database of
    ``server``."""
    if BACKEND == "postgresql":
        config = tenancy_settings.server(server)
        with psycopg.connect(
            host=config["HOST"],
            port=server_port(server),
            user=config["USER"],
            dbname=database,
            autocommit=True,
        ) as connection:
            yield connection
    else:
        with contextlib.closing(sqlite3.connect(get_server(server).path(database))) as connection:
            yield connection
            connection.commit()


def mark(database: str) -> None:
    with raw_connection(database) as connection:
        connection.execute("CREATE TABLE spare_marker (id integer)")


def is_marked(database: str) -> bool:
    with raw_connection(database) as connection:
        tables = connection.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'spare_marker'"
            if BACKEND == "postgresql"
            else "SELECT count(*) FROM sqlite_master WHERE name = 'spare_marker'"
        ).fetchone()[0]
    return tables == 1


def test_spare_names_cannot_be_a_tenants(db_access):
    assert tenancy_settings.spare_database_names() == [SPARE]
    create_tenant("gamma")  # makes the template and a spare
    server = get_server("one")
    assert server.database_exists(SPARE)
    for name in (SPARE, "test_tenancy__spare_7"):
        with pytest.raises(ProvisioningError, match="it is a spare copy of the template"):
            adopt_database("delta", name)
        with pytest.raises(ValidationError, match="it is a spare copy of the template"):
            Tenant.objects.create(slug="delta", name="Delta", database_name=name)
    with pytest.raises(ProvisioningError, match="it is the template database"):
        adopt_database("delta", TEMPLATE)
    with pytest.raises(ValidationError, match="it is the template database"):
        Tenant.objects.create(slug="delta", name="Delta", database_name=TEMPLATE)
    assert not Tenant.objects.filter(slug="delta").exists()
    # Names that only look alike remain a tenant's to have.
    assert create_tenant("spare-1").database_name == "test_tenancy_spare_1"
    assert server.database_exists(SPARE)
    assert server.database_exists(TEMPLATE)


def test_spares_beyond_the_setting_go_with_the_template(db_access, settings):
    create_tenant("gamma")
    assert get_server("one").database_exists(SPARE)
    settings.TENANCY = {**settings.TENANCY, "SPARE_DATABASES": 0}
    templates.drop_template_databases("one")
    assert not get_server("one").database_exists(SPARE)
    assert not get_server("one").database_exists(TEMPLATE)


def test_provisioning_takes_the_spare_and_leaves_a_new_one(db_access):
    create_tenant("gamma")
    server = get_server("one")
    assert server.database_exists(SPARE)
    mark(SPARE)  # tells this spare from the next one
    delta = create_tenant("delta")
    assert is_marked(delta.database_name)  # delta's database is the spare, renamed
    assert server.database_exists(SPARE)
    assert not is_marked(SPARE)  # a new copy of the template
    with tenant_context(delta):
        assert Note.objects.count() == 0
        assert ("tenantapp", "0001_initial") in applied_migrations(tenant_connection())


def test_spares_of_an_old_schema_are_dropped_when_the_template_is_migrated(db_access, migrations):
    create_tenant("gamma")
    mark(SPARE)
    migrations("tests.migrations_index")  # a schema change: the template gets it
    delta = create_tenant("delta")
    assert not is_marked(delta.database_name)  # copied from the migrated template
    with tenant_context(delta):
        assert ("tenantapp", "0002_note_text_index") in applied_migrations(tenant_connection())
    assert get_server("one").database_exists(SPARE)
    assert not is_marked(SPARE)


def test_a_stale_spare_is_brought_to_the_current_schema(db_access):
    # A spare made from an older schema by a process that died before it could drop it
    # (or an empty one, as here) is still a valid start: it is migrated after the claim.
    create_tenant("gamma")
    server = get_server("one")
    server.drop_database(SPARE, allow_template=True)
    server.create_database(SPARE)
    mark(SPARE)
    delta = create_tenant("delta")
    assert is_marked(delta.database_name)
    with tenant_context(delta):
        assert Note.objects.count() == 0
        applied = applied_migrations(tenant_connection())
    with tenant_context(Tenant.objects.get(slug="gamma")):
        assert applied == applied_migrations(tenant_connection())


def test_claims_at_once_take_each_spare_once(db_access):
    server = get_server("one")
    candidates = [f"test_tenancy_spare_race_{n}" for n in range(3)]
    targets = [f"test_tenancy_claimed_{n}" for n in range(8)]
    for name in candidates:
        server.create_database(name)
        mark(name)
    results: dict[str, bool] = {}
    start = threading.Barrier(len(targets))

    def claim(target: str) -> None:
        start.wait()
        results[target] = server.claim_database(candidates, target)

    threads = [threading.Thread(target=claim, args=(target,)) for target in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    claimed = sorted(target for target, ok in results.items() if ok)
    assert len(claimed) == 3
    assert all(server.database_exists(target) for target in claimed)
    assert not any(server.database_exists(target) for target in set(targets) - set(claimed))
    assert not any(server.database_exists(name) for name in candidates)
    for target in claimed:
        server.drop_database(target)


def test_a_claim_never_replaces_an_existing_database(db_access):
    gamma = create_tenant("gamma")
    with tenant_context(gamma):
        Note.objects.create(text="kept")
    unregister(gamma)  # no session of ours left on it
    assert get_server("one").claim_database([SPARE], gamma.database_name) is False
    with tenant_context(gamma):
        assert list(Note.objects.values_list("text", flat=True)) == ["kept"]
    assert get_server("one").database_exists(SPARE)  # still there for the next tenant


def test_no_spares_when_set_to_zero(db_access, settings):
    settings.TENANCY = {**settings.TENANCY, "SPARE_DATABASES": 0}
    templates.drop_template_databases("two")
    create_tenant("gamma", server="two")
    assert get_server("two").database_exists(TEMPLATE)
    assert not get_server("two").database_exists(SPARE)


def test_outside_tests_the_spare_is_made_in_the_background(db_access, monkeypatch):
    monkeypatch.setattr(templates, "_background_in_tests", True)
    templates.drop_template_databases("two")
    made_in: list[str] = []
    clone = type(get_server("two")).clone_database

    def recording_clone(self, template, name):
        made_in.append(threading.current_thread().name)
        return clone(self, template, name)

    monkeypatch.setattr(type(get_server("two")), "clone_database", recording_clone)
    create_tenant("gamma", server="two")
    templates.wait_for_spares()
    assert get_server("two").database_exists(SPARE)
    # The tenant's own copy in the caller's thread, the spare in the background.
    assert made_in == [threading.current_thread().name, "tenancy-spares-two"]


def test_a_spare_that_cannot_be_made_fails_no_provisioning(db_access, monkeypatch, caplog):
    templates.drop_template_databases("two")
    clone = type(get_server("two")).clone_database

    def no_spares(self, template, name):
        if name == SPARE:
            raise RuntimeError("disk full")
        return clone(self, template, name)

    monkeypatch.setattr(type(get_server("two")), "clone_database", no_spares)
    with caplog.at_level(logging.ERROR, logger="tenancy.templates"):
        gamma = create_tenant("gamma", server="two")
    assert gamma.status == "active"
    assert "Making spare databases on server two failed" in caplog.text
    assert not get_server("two").database_exists(SPARE)
