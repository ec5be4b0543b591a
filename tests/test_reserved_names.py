"""Databases that are never a tenant's: the project's own, system databases, the template
and its spares, another tenant's. No tenant gets one, and no drop path drops one."""

from __future__ import annotations

import html
from collections.abc import Iterator

import pytest
from django.contrib.auth.models import User
from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connections
from django.test import Client

from tenancy import template_databases, tenant_context
from tenancy.backends import get_server
from tenancy.checks import check_settings
from tenancy.conf import tenancy_settings
from tenancy.exceptions import ReservedDatabaseError
from tenancy.models import Tenant, TenantStatus
from tenancy.provisioning import (
    ProvisioningError,
    adopt_database,
    create_tenant,
    deprovision_tenant,
)
from tenancy.testing.tenant import drop_test_database
from tests.settings import BACKEND, SERVER_1
from tests.tenantapp.models import Note

TEMPLATE = "test_tenancy__template"
SHOP = "test_tenancy_shop"  # the database of the project's second alias, "shop"


@pytest.fixture
def shop(db_access: None) -> Iterator[str]:
    """A second database of the project (``DATABASES["shop"]``) on server "one", spelled
    differently from the server's entry (another host name for the loopback, another
    path to the same file), and named as a tenant "shop" would be."""
    server = get_server("one")
    server.create_database(SHOP)
    if BACKEND == "postgresql":
        entry = {**SERVER_1, "HOST": "localhost", "NAME": SHOP}
    else:
        directory = server.directory
        entry = {**SERVER_1, "NAME": str(directory / ".." / directory.name / f"{SHOP}.sqlite3")}
        del entry["DIRECTORY"]
    entry = connections.configure_settings({"default": {}, "shop": entry})["shop"]
    connections.settings["shop"] = entry
    try:
        yield SHOP
    finally:
        del connections.settings["shop"]
        drop_test_database("one", SHOP)


@pytest.fixture(params=["default", "shop"])
def project_database(request: pytest.FixtureRequest, db_access: None) -> str:
    """The name of a database of ``settings.DATABASES`` on server "one": the main test
    database itself (PostgreSQL; on SQLite it is in memory), or the "shop" database."""
    if request.param == "shop":
        return str(request.getfixturevalue("shop"))
    if BACKEND != "postgresql":
        pytest.skip("the main test database is in memory on SQLite")
    return str(connections["default"].settings_dict["NAME"])


def test_adopting_a_database_of_the_project_is_refused(project_database):
    with pytest.raises(ProvisioningError) as refused:
        adopt_database("gamma", project_database)
    message = str(refused.value)
    assert "it is the project's database DATABASES[" in message
    assert "\n" not in message
    assert not Tenant.objects.filter(slug="gamma").exists()
    with pytest.raises(ValidationError, match="it is the project's database"):
        Tenant(slug="gamma", name="Gamma", database_name=project_database).full_clean()


@pytest.mark.skipif(BACKEND != "postgresql", reason="the main test database is in memory")
def test_the_main_database_is_reserved_under_its_own_name_too(db_access):
    # During the test run Django has replaced NAME by the test name; the project's own
    # database ("tenancy") is on the same server all the same.
    with pytest.raises(ProvisioningError, match=r"'tenancy'.*DATABASES\['default'\]"):
        adopt_database("gamma", "tenancy")


def test_a_slug_whose_database_name_is_the_projects_is_refused(shop):
    with pytest.raises(CommandError) as refused:
        call_command("create_tenant", "shop")
    assert "'test_tenancy_shop' on server 'one' cannot be the database of tenant 'shop'" in str(
        refused.value
    )
    assert "DATABASES['shop']" in str(refused.value)
    assert "\n" not in str(refused.value)
    assert not Tenant.objects.exists()
    assert get_server("one").database_exists(SHOP)


def test_adopt_command_refuses_a_database_of_the_project_in_one_line(project_database):
    with pytest.raises(CommandError) as refused:
        call_command("create_tenant", "gamma", "--adopt-database", project_database)
    message = str(refused.value)
    assert f"{project_database!r} on server 'one' cannot be the database of tenant" in message
    assert "\n" not in message
    assert not Tenant.objects.exists()


def test_deleting_a_tenant_never_drops_a_database_of_the_project(alpha, project_database):
    Tenant.objects.filter(pk=alpha.pk).update(database_name=project_database)
    forced = Tenant.objects.get(pk=alpha.pk)
    with pytest.raises(ReservedDatabaseError, match="was not deleted: its database") as refused:
        deprovision_tenant(forced)
    assert "--keep-database" in str(refused.value)
    assert get_server("one").database_exists(project_database)
    assert Tenant.objects.get(pk=alpha.pk).status == TenantStatus.ACTIVE  # the main one answers
    call_command("delete_tenant", "alpha", "--keep-database", "--noinput")
    assert not Tenant.objects.filter(pk=alpha.pk).exists()
    assert get_server("one").database_exists(project_database)


def test_the_drop_itself_refuses_when_the_callers_check_is_missing(
    alpha, project_database, monkeypatch
):
    monkeypatch.setattr("tenancy.provisioning.check_tenant_drop", lambda tenant: None)
    Tenant.objects.filter(pk=alpha.pk).update(database_name=project_database)
    with pytest.raises(ReservedDatabaseError, match="is not dropped: it is the project's"):
        deprovision_tenant(Tenant.objects.get(pk=alpha.pk))
    assert get_server("one").database_exists(project_database)
    assert Tenant.objects.get(pk=alpha.pk).status == TenantStatus.ACTIVE
    with pytest.raises(ReservedDatabaseError, match="it is the project's database"):
        get_server("one").drop_database(project_database, allow_template=True)
    assert get_server("one").database_exists(project_database)


def test_the_server_itself_is_asked_when_every_name_check_is_missing(
    project_database, monkeypatch
):
    # An address spelt differently (an IP address for a host name, OPTIONS host or
    # service) would defeat a comparison of settings: the server says which it is.
    if BACKEND != "postgresql":
        pytest.skip("SQLite files are compared by path")
    monkeypatch.setattr("tenancy.reserved.protected_reason", lambda server, name: None)
    with pytest.raises(ReservedDatabaseError) as refused:
        get_server("one").drop_database(project_database, allow_template=True)
    assert str(refused.value).endswith(
        "is not dropped: it is the project's database "
        f"DATABASES[{'shop' if project_database == SHOP else 'default'!r}]."
    )
    assert get_server("one").database_exists(project_database)


def test_deleting_a_tenant_whose_row_names_an_invalid_database_is_one_line(alpha):
    Tenant.objects.filter(pk=alpha.pk).update(database_name="Test_Tenancy_Alpha")
    with pytest.raises(CommandError) as refused:
        call_command("delete_tenant", "alpha", "--noinput")
    assert "not a database name tenancy accepts" in str(refused.value)
    assert "--keep-database" in str(refused.value)
    assert "\n" not in str(refused.value)
    assert Tenant.objects.filter(pk=alpha.pk).exists()
    assert get_server("one").database_exists(alpha.database_name)


@pytest.mark.parametrize("name", ["postgres", "template0", "template1"])
def test_system_databases_are_never_a_tenants(db_access, name):
    with pytest.raises(ProvisioningError, match="it is a system database of PostgreSQL"):
        adopt_database("gamma", name)
    with pytest.raises(ValidationError, match="it is a system database of PostgreSQL"):
        Tenant.objects.create(slug="gamma", name="Gamma", database_name=name)
    for server in ("one", "two"):
        with pytest.raises(ReservedDatabaseError, match="is not dropped"):
            get_server(server).drop_database(name, allow_template=True)
    assert not Tenant.objects.exists()


@pytest.mark.skipif(BACKEND != "postgresql", reason="SQLite servers have no maintenance database")
def test_the_maintenance_database_is_never_a_tenants(db_access, settings):
    servers = tenancy_settings.SERVERS
    one = {**servers["one"], "MAINTENANCE_DB": "test_tenancy_maintenance"}
    settings.TENANCY = {**settings.TENANCY, "SERVERS": {**servers, "one": one}}
    with pytest.raises(ProvisioningError, match="it is the server's maintenance database"):
        adopt_database("gamma", "test_tenancy_maintenance")
    with pytest.raises(ReservedDatabaseError, match="maintenance database"):
        get_server("one").drop_database("test_tenancy_maintenance")


def test_another_tenants_database_is_refused_naming_the_tenant(alpha):
    with pytest.raises(ProvisioningError) as refused:
        adopt_database("gamma", alpha.database_name)
    assert str(refused.value) == (
        "Database 'test_tenancy_alpha' on server 'one' cannot be the database of tenant "
        "'gamma': it is the database of tenant 'alpha'. Choose another database name (or slug)."
    )
    with pytest.raises(CommandError, match="it is the database of tenant 'alpha'"):
        call_command("create_tenant", "gamma", "--adopt-database", alpha.database_name)
    with pytest.raises(ValidationError, match="it is the database of tenant 'alpha'"):
        Tenant(slug="gamma", name="Gamma", database_name=alpha.database_name).full_clean()
    assert list(Tenant.objects.values_list("slug", flat=True)) == ["alpha"]


@pytest.fixture
def one_again(settings) -> str:
    """A second entry of TENANCY['SERVERS'] for server "one"."""
    servers = {**settings.TENANCY["SERVERS"], "one-again": dict(SERVER_1)}
    settings.TENANCY = {**settings.TENANCY, "SERVERS": servers}
    return "one-again"


def test_another_tenants_database_under_another_server_entry_is_refused(alpha, one_again):
    with pytest.raises(ProvisioningError, match="it is the database of tenant 'alpha'"):
        adopt_database("gamma", alpha.database_name, server=one_again)
    assert not Tenant.objects.filter(slug="gamma").exists()


def test_deleting_a_tenant_never_drops_another_tenants_database(alpha, one_again):
    with tenant_context(alpha):
        Note.objects.create(text="alpha's")
    (gamma,) = Tenant.objects.bulk_create(  # as registered before names were checked
        [Tenant(slug="gamma", name="Gamma", server=one_again, database_name=alpha.database_name)]
    )
    with pytest.raises(ReservedDatabaseError, match="is the database of tenant 'alpha'"):
        deprovision_tenant(Tenant.objects.get(slug="gamma"))
    with tenant_context(alpha):
        assert list(Note.objects.values_list("text", flat=True)) == ["alpha's"]
    assert Tenant.objects.filter(pk=gamma.pk).exists()


def test_template_and_spares_are_never_dropped_as_a_tenants(db_access):
    gamma = create_tenant("gamma")  # makes the template
    Tenant.objects.filter(pk=gamma.pk).update(database_name=TEMPLATE)
    with pytest.raises(ReservedDatabaseError, match="is the template database"):
        deprovision_tenant(Tenant.objects.get(pk=gamma.pk))
    # Nor do the template's own drops take it while the registry names it a tenant's.
    with pytest.raises(
        ReservedDatabaseError, match="registered as the database of tenant 'gamma'"
    ):
        template_databases.drop_template_databases("one")
    assert get_server("one").database_exists(TEMPLATE)
    Tenant.objects.filter(pk=gamma.pk).update(database_name="test_tenancy_gamma")


def test_backends_drop_the_template_and_spares_only_when_asked(db_access):
    spare = "test_tenancy__spare_9"
    server = get_server("two")
    server.create_database(spare)
    with pytest.raises(ReservedDatabaseError, match="it is a spare copy of the template"):
        server.drop_database(spare)
    assert server.database_exists(spare)
    assert server.drop_database(spare, allow_template=True) is True
    assert not server.database_exists(spare)
    with pytest.raises(ReservedDatabaseError, match="it is the template database"):
        server.drop_database(TEMPLATE)


def test_tests_drop_only_test_databases(db_access):
    with pytest.raises(ReservedDatabaseError, match="tests drop only test databases"):
        drop_test_database("one", "tenancy_alpha")


@pytest.fixture
def admin_client_for_tenants(db_access: None) -> Iterator[Client]:
    user = User.objects.create_user("operator", is_staff=True, is_superuser=True)
    client = Client(HTTP_HOST="admin.example.test")
    client.force_login(user)
    yield client
    User.objects.all().delete()


@pytest.mark.parametrize("database_name", [TEMPLATE, "test_tenancy_alpha", "template1"])
def test_admin_add_form_refuses_a_reserved_or_taken_database(
    admin_client_for_tenants, alpha, database_name
):
    from tests.test_admin import CHANGELIST, add_form

    response = admin_client_for_tenants.post(
        f"{CHANGELIST}add/", add_form("gamma", database_name=database_name)
    )
    assert response.status_code == 200  # the form again, with the error
    assert "cannot be the database of tenant 'gamma'" in html.unescape(response.content.decode())
    assert not Tenant.objects.filter(slug="gamma").exists()


@pytest.mark.parametrize("pattern", ["{slug}", "{slug}1", "db{slug}", "_{slug}", "x{slug}y"])
def test_database_name_pattern_needs_a_fixed_part_with_an_underscore(settings, pattern):
    settings.TENANCY = {**settings.TENANCY, "DATABASE_NAME": pattern}
    with pytest.raises(ImproperlyConfigured, match="needs a fixed part of at least 2"):
        tenancy_settings.validate()
    assert [message.id for message in check_settings()] == ["tenancy.E001"]


@pytest.mark.parametrize("pattern", ["t_{slug}", "{slug}_db", "tenant_{slug}_x"])
def test_database_name_patterns_with_a_fixed_part_are_accepted(settings, pattern):
    settings.TENANCY = {**settings.TENANCY, "DATABASE_NAME": pattern}
    tenancy_settings.validate()
    assert "tenancy.E001" not in [message.id for message in check_settings()]


@pytest.mark.parametrize("parent_table", [False, True], ids=["sql", "orm"])
def test_a_database_is_claimed_by_its_tenant_and_by_a_move_from_or_to_it(
    db_access, settings, monkeypatch, parent_table
):
    """The one query behind every free-name check: a tenant's database on any entry of
    the same server, the source of a move, its named target, and a restore's target
    under the source's name, each claim it; the tenant asking is left out. Alike through
    the ORM's queries, which a tenant model whose columns are a parent's gets."""
    from tenancy import reserved
    from tenancy.models import MoveKind, MoveStep, TenantMove
    from tenancy.reserved import unavailable_reason

    if parent_table:
        monkeypatch.setattr(reserved, "_columns_in_own_table", lambda tenants: False)

    servers = settings.TENANCY["SERVERS"]
    settings.TENANCY = {**settings.TENANCY, "SERVERS": {**servers, "alias": servers["one"]}}
    Tenant.objects.create(slug="owner", server="alias", database_name="test_db_owned")
    mover = Tenant.objects.create(slug="mover", server="two", database_name="test_db_moving")
    assert unavailable_reason("one", "test_db_owned", slug="other") == (
        "the database of tenant 'owner'"
    )
    assert unavailable_reason("alias", "test_db_owned", slug="owner") is None
    assert unavailable_reason("one", "test_db_free", slug="other") is None

    def move(**fields: str) -> None:
        TenantMove.objects.all().delete()
        values = {"source_server": "two", "target_server": "one", "database_name": "x"}
        TenantMove.objects.create(
            tenant=mover,
            kind=MoveKind.MOVE,
            previous_status=TenantStatus.ACTIVE,
            step=MoveStep.COPYING,
            **{**values, **fields},
        )

    moving = "where tenant 'mover' is being moved"
    move(source_server="one", database_name="test_db_a")  # from test_db_a on server one
    assert unavailable_reason("alias", "test_db_a", slug="other") == moving
    assert unavailable_reason("one", "test_db_a", slug="mover") is None
    move(target_database="test_db_b")  # to test_db_b on server one
    assert unavailable_reason("one", "test_db_b", slug="other") == moving
    assert unavailable_reason("two", "test_db_b", slug="other") is None
    move(target_database="", database_name="test_db_c")  # to server one, the same name
    assert unavailable_reason("alias", "test_db_c", slug="other") == moving
    assert unavailable_reason("one", "test_db_owned", slug="other") == (
        "the database of tenant 'owner'"  # a tenant's before a move's
    )
    move(target_database="test_db_owned")
    assert unavailable_reason("one", "test_db_owned", slug="other") == (
        "the database of tenant 'owner'"
    )
