"""tenancy's test support, run by pytest (and Django's test runner) in a small project.

Each test copies tests/plugin_project into a temporary directory and runs its own pytest
there in a subprocess, on the backend this suite runs on.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tenancy.backends import get_server
from tests.settings import BACKEND

pytest_plugins = ["pytester"]

PROJECT = Path(__file__).parent / "plugin_project"

# Tests of the test tenant's rollbacks, whatever its placement.
ROLLBACKS = """
import pytest

from notes.models import Note


def test_writes_of_other_tests_are_rolled_back(tenant):
    assert Note.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_transactional_write(tenant):
    Note.objects.create(text="committed")
    assert Note.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_transactional_writes_are_emptied(tenant):
    assert Note.objects.count() == 0
"""

ISOLATION = (
    """
import pytest
from django.db import connections

from notes.models import Note
from tenancy.testing import TEST_TENANT_ALIAS


def test_writes_go_to_the_test_tenant(tenant):
    Note.objects.create(text="first")
    assert Note.objects.count() == 1
    assert tenant.slug == "test" and tenant.is_active
    name = str(connections[TEST_TENANT_ALIAS].settings_dict["NAME"])
    assert "test_shop_test" in name
    assert "notes_note" in connections[TEST_TENANT_ALIAS].introspection.table_names()
    assert "notes_note" not in connections["default"].introspection.table_names()
"""
    + ROLLBACKS
)

CLIENTS = """
from asgiref.sync import async_to_sync

from notes.models import Note


def test_client_reaches_the_tenant(tenant_client):
    Note.objects.create(text="hello")
    response = tenant_client.get("/notes/")
    assert response.json() == {"tenant": "test", "notes": ["hello"]}


def test_async_client_reaches_the_tenant(tenant_async_client):
    Note.objects.create(text="async hello")
    response = async_to_sync(tenant_async_client.get)("/notes/")
    assert response.json() == {"tenant": "test", "notes": ["async hello"]}


def test_api_client_reaches_the_tenant(tenant_api_client):
    Note.objects.create(text="api hello")
    response = tenant_api_client.get("/notes/", format="json")
    assert response.json() == {"tenant": "test", "notes": ["api hello"]}
"""

GUARDS = """
import pytest
from django.db import connections
from django.test.testcases import DatabaseOperationForbidden

from notes.models import Note
from tenancy import TenancyError, tenant_context
from tenancy.models import Tenant
from tenancy.testing import TEST_TENANT_ALIAS


@pytest.mark.django_db
def test_a_test_without_the_tenant_cannot_query_its_database():
    with pytest.raises(DatabaseOperationForbidden, match="tenant:test"):
        connections[TEST_TENANT_ALIAS].cursor()


@pytest.mark.django_db
def test_a_real_tenant_database_is_refused():
    real = Tenant(slug="acme", server="main", database_name="shop_acme")
    with tenant_context(real), pytest.raises(TenancyError, match="not a test database"):
        Note.objects.count()
"""

FACTORY = """
from notes.models import Note
from tenancy import tenant_context
from tenancy.backends import get_server
from tenancy.testing import TenantClient


def test_factory_tenants_are_separate(tenant, tenant_factory):
    acme = tenant_factory("acme")
    other = tenant_factory(server="second")
    assert (acme.database_name, acme.status) == ("test_shop_acme", "active")
    assert (other.slug, other.server) == ("tenant-1", "second")
    with tenant_context(acme):
        Note.objects.create(text="acme note")
    with tenant_context(other):
        assert Note.objects.count() == 0
    assert Note.objects.count() == 0  # the test tenant is still the active one
    response = TenantClient(acme).get("/notes/")
    assert response.json() == {"tenant": "acme", "notes": ["acme note"]}


def test_factory_tenants_are_removed_after_the_test(db):
    assert not get_server("main").database_exists("test_shop_acme")
    assert not get_server("second").database_exists("test_shop_tenant_1")
"""

CASES = """
from django.db import connections
from django.test import TestCase
from django.test.testcases import DatabaseOperationForbidden

from notes.models import Note
from tenancy.testing import TEST_TENANT_ALIAS, TenantTestCase, TenantTransactionTestCase


class NotesTests(TenantTestCase):
    @classmethod
    def setUpTestData(cls):
        Note.objects.create(text="from setUpTestData")

    def test_write(self):
        Note.objects.create(text="one")
        self.assertEqual(Note.objects.count(), 2)

    def test_writes_of_other_tests_are_rolled_back(self):
        self.assertEqual(list(Note.objects.values_list("text", flat=True)), ["from setUpTestData"])

    def test_client(self):
        response = self.client.get("/notes/")
        self.assertEqual(response.json(), {"tenant": "test", "notes": ["from setUpTestData"]})


class NotesTransactionTests(TenantTransactionTestCase):
    def test_a_write(self):
        Note.objects.create(text="committed")
        self.assertEqual(Note.objects.count(), 1)

    def test_b_emptied(self):
        self.assertEqual(Note.objects.count(), 0)
        self.assertEqual(self.client.get("/notes/").json()["tenant"], "test")


class PlainTests(TestCase):
    def test_tenant_database_not_allowed(self):
        with self.assertRaisesRegex(DatabaseOperationForbidden, "tenant:test"):
            connections[TEST_TENANT_ALIAS].cursor()
"""

IDENTITY = """
import os
from pathlib import Path

from django.db import connections

from notes.models import Note
from tenancy.connections import alias_for
from tenancy.testing import TEST_TENANT_ALIAS


def columns(alias):
    with connections[alias].cursor() as cursor:
        description = connections[alias].introspection.get_table_description(cursor, "notes_note")
    return sorted(column.name for column in description)


def test_record_identity(tenant, tenant_factory):
    acme = tenant_factory("acme")
    with connections[TEST_TENANT_ALIAS].cursor() as cursor:
        # When the database was made: its first migration's timestamp.
        cursor.execute("SELECT min(applied) FROM django_migrations")
        made = cursor.fetchone()[0]
    Path(os.environ["IDENTITY_FILE"]).write_text(str(made))
    fields = sorted(field.column for field in Note._meta.fields)
    assert columns(TEST_TENANT_ALIAS) == fields
    assert columns(alias_for(acme)) == fields
"""

NEW_MIGRATION = """
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("notes", "0001_initial")]
    operations = [
        migrations.AddField("note", "done", models.BooleanField(default=False)),
    ]
"""

WORKERS = """
import os

import pytest
from django.db import connections

from notes.models import Note
from tenancy import tenant_context
from tenancy.testing import TEST_TENANT_ALIAS


@pytest.mark.parametrize("number", range(4))
def test_each_worker_has_its_own_databases(tenant, tenant_factory, number):
    worker = os.environ["PYTEST_XDIST_WORKER"]
    assert str(connections[TEST_TENANT_ALIAS].settings_dict["NAME"]).endswith(worker)
    other = tenant_factory("acme")
    assert other.database_name == f"test_shop_acme_{worker}"
    with tenant_context(other):
        Note.objects.create(text=str(number))
        assert Note.objects.count() == 1
"""


SCHEMAS = (
    """
import pytest
from django.db import connections

from notes.models import Note
from tenancy import tenant_context
from tenancy.testing import TEST_TENANT_ALIAS


def schema_of(alias):
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT current_schema()")
        return cursor.fetchone()[0]


def test_the_test_tenant_is_a_schema_of_the_shared_test_database(tenant):
    Note.objects.create(text="first")
    assert Note.objects.count() == 1
    assert str(connections[TEST_TENANT_ALIAS].settings_dict["NAME"]) == "test_shop_schemas"
    assert schema_of(TEST_TENANT_ALIAS) == "test_shop_test"


def test_factory_tenants_of_either_placement(tenant, tenant_factory):
    schema, database = tenant_factory("acme"), tenant_factory("initech", server="main")
    for other in (schema, database):
        with tenant_context(other):
            Note.objects.create(text=other.slug)
            assert list(Note.objects.values_list("text", flat=True)) == [other.slug]
    assert schema.server == "schemas"
    assert Note.objects.count() == 0  # the test tenant's
"""
    + ROLLBACKS
)


@pytest.fixture
def project(
    pytester: pytest.Pytester, db_access: None, monkeypatch: pytest.MonkeyPatch
) -> Iterator[pytest.Pytester]:
    shutil.copytree(PROJECT, pytester.path, dirs_exist_ok=True)
    monkeypatch.delenv("DJANGO_SETTINGS_MODULE")  # this suite's; the project's is in pytest.ini
    yield pytester
    for name in ("one", "two"):
        server = get_server(name)
        for database in server.list_databases():
            if database.startswith("test_shop"):
                server.drop_database(database, allow_template=True)


def test_tenant_fixture_isolates_tests(project: pytest.Pytester) -> None:
    project.makepyfile(check_isolation=ISOLATION, check_clients=CLIENTS, check_guards=GUARDS)
    project.makepyfile(check_factory=FACTORY)
    result = project.runpytest_subprocess("-p", "no:randomly")
    result.assert_outcomes(passed=11)


IN_MAIN = (
    """
from django.db import connections, transaction

from notes.models import Note
from tenancy import tenant_context
from tenancy.models import Tenant
from tenancy.testing import TEST_TENANT_ALIAS


def test_the_test_tenant_is_a_schema_of_the_main_test_database(tenant):
    Note.objects.create(text="first")
    assert Note.objects.count() == 1
    assert connections[TEST_TENANT_ALIAS].settings_dict["NAME"] == "test_shop"
    assert "notes_note" not in connections["default"].introspection.table_names()
    assert Tenant.objects.filter(slug="test").exists()


def test_factory_tenants_and_the_main_database_in_one_block(tenant, tenant_factory):
    acme = tenant_factory("acme")
    with transaction.atomic():
        Tenant.objects.filter(slug="acme").update(name="Acme")
        with tenant_context(acme):
            Note.objects.create(text="acme")
            assert list(Note.objects.values_list("text", flat=True)) == ["acme"]
    assert Note.objects.count() == 0  # the test tenant's
"""
    + ROLLBACKS
)


@pytest.mark.skipif(BACKEND != "postgresql", reason="schemas are PostgreSQL's")
def test_fixtures_with_tenants_in_the_main_database(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The test tenant as a schema of Django's test database, under pytest and Django's
    runner: each run ends with the test database dropped (past the shared connection)."""
    monkeypatch.setenv("SHOP_MAIN_SCHEMAS", "1")
    project.makepyfile(check_in_main=IN_MAIN, check_cases=CASES)
    result = project.runpytest_subprocess("-p", "no:randomly", "-W", "error::pytest.PytestWarning")
    result.assert_outcomes(passed=11)
    assert not get_server("one").database_exists("test_shop")  # dropped by Django
    result = project.run(
        sys.executable, "-m", "django", "test", "-p", "check_cases.py", "--settings=shop.settings"
    )
    assert result.ret == 0, result.stderr.str()
    result.stderr.fnmatch_lines(["Ran 6 tests in *", "OK"])


@pytest.mark.skipif(BACKEND != "postgresql", reason="schemas are PostgreSQL's")
def test_fixtures_on_a_schema_server(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHOP_SCHEMAS", "1")
    project.makepyfile(check_schemas=SCHEMAS, check_cases=CASES)
    project.runpytest_subprocess("-p", "no:randomly").assert_outcomes(passed=11)
    shared = [d for d in get_server("two").list_databases() if d.startswith("test_shop_sch")]
    assert shared == []  # the shared test database is dropped at the end
    result = project.run(
        sys.executable, "-m", "django", "test", "-p", "check_*.py", "--settings=shop.settings"
    )
    assert result.ret == 0, result.stderr.str()
    result.stderr.fnmatch_lines(["Ran 6 tests in *", "OK"])


def test_case_classes_under_pytest_and_django(project: pytest.Pytester) -> None:
    project.makepyfile(check_cases=CASES)
    project.runpytest_subprocess().assert_outcomes(passed=6)
    result = project.run(
        sys.executable, "-m", "django", "test", "-p", "check_*.py", "--settings=shop.settings"
    )
    assert result.ret == 0, result.stderr.str()
    result.stderr.fnmatch_lines(["Ran 6 tests in *", "OK"])
    shared = [d for d in get_server("two").list_databases() if d.startswith("test_shop_sch")]
    assert shared == []


def test_reuse_db_keeps_the_tenant_database_between_runs(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    project.makepyfile(check_identity=IDENTITY)
    identity = project.path / "identity.txt"
    monkeypatch.setenv("IDENTITY_FILE", str(identity))
    made = []
    for run, option in enumerate(("--reuse-db", "--reuse-db", "--reuse-db", "--create-db")):
        if run == 2:  # a new migration: the kept databases follow it
            models = project.path / "notes" / "models.py"
            models.write_text(
                models.read_text() + "    done = models.BooleanField(default=False)\n"
            )
            (project.path / "notes" / "migrations" / "0002_note_done.py").write_text(NEW_MIGRATION)
        project.runpytest_subprocess(option).assert_outcomes(passed=1)
        made.append(identity.read_text())
    assert made[0] == made[1] == made[2] != made[3]


def test_xdist_workers_get_their_own_databases(project: pytest.Pytester) -> None:
    project.makepyfile(check_workers=WORKERS)
    result = project.runpytest_subprocess("-n", "2")
    result.assert_outcomes(passed=4)
