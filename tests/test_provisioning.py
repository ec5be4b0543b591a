"""create_tenant / provision_tenant / deprovision_tenant and their commands."""

import threading

import psycopg
import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, connections

from tenancy import current_tenant, tenant_context
from tenancy.backends import get_server
from tenancy.connections import alias_for, registered_aliases
from tenancy.models import Domain, Tenant, TenantStatus
from tenancy.provisioning import (
    ProvisioningError,
    create_tenant,
    deprovision_tenant,
    provision_tenant,
)
from tenancy.signals import tenant_deprovisioned, tenant_provisioned
from tests.settings import BACKEND, PGBOUNCER
from tests.tenantapp.models import Note


def database_exists(tenant):
    return get_server(tenant.server).database_exists(tenant.database_name)


@pytest.fixture
def receiver():
    """Connect a receiver to a signal for the test only."""
    connected = []

    def connect(signal, function):
        signal.connect(function, weak=False)
        connected.append((signal, function))

    yield connect
    for signal, function in connected:
        signal.disconnect(function)


def test_create_tenant_creates_migrates_and_activates(db_access):
    tenant = create_tenant("gamma", name="Gamma", domains=["gamma.example.test", "g.example.test"])
    tenant.refresh_from_db()
    assert (tenant.status, tenant.status_detail, tenant.server) == ("active", "", "one")
    assert database_exists(tenant)
    primary = {d.domain: d.is_primary for d in Domain.objects.filter(tenant=tenant)}
    assert primary == {"gamma.example.test": True, "g.example.test": False}
    with tenant_context(tenant):
        assert Note.objects.count() == 0


def test_a_new_tenant_is_recorded_in_one_statement_and_checked_twice(db_access):
    """A new tenant's row is inserted outside any transaction (nothing to undo but the
    INSERT itself), and its database name is found free once before the INSERT and once
    after it (save() does not ask a third time)."""
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connections["default"]) as queries:
        tenant = create_tenant("counted")
    statements = [query["sql"] for query in queries]
    table = Tenant._meta.db_table
    assert len([s for s in statements if s.startswith(f'INSERT INTO "{table}"')]) == 1
    assert not [s for s in statements if "SAVEPOINT" in s]
    assert len([s for s in statements if "UNION ALL SELECT 1" in s]) == 2
    assert Tenant.objects.get(slug="counted").status == TenantStatus.ACTIVE == tenant.status


def test_a_database_name_taken_between_the_check_and_the_insert_is_reported(
    db_access, monkeypatch
):
    """Another process registers the new tenant's database name (under another slug)
    after the check: the unique constraint refuses the row, and the message says whose
    database it is."""
    from tenancy import provisioning
    from tenancy.conf import tenancy_settings

    name = tenancy_settings.database_name_for("racer")
    checked = provisioning._refuse_taken_domains

    def meanwhile(slug, hostnames):
        Tenant.objects.bulk_create([Tenant(slug="other", server="one", database_name=name)])
        checked(slug, hostnames)

    monkeypatch.setattr(provisioning, "_refuse_taken_domains", meanwhile)
    with pytest.raises(ProvisioningError, match="it is the database of tenant 'other'"):
        create_tenant("racer", server="one")
    assert not Tenant.objects.filter(slug="racer").exists()


def test_create_tenant_on_another_server(db_access):
    tenant = create_tenant("gamma", server="two")
    assert tenant.server == "two"
    assert get_server("two").database_exists(tenant.database_name)
    assert not get_server("one").database_exists(tenant.database_name)


def test_provisioned_signal_seeds_inside_the_tenant(db_access, receiver):
    seen = []

    def seed(sender, tenant, **kwargs):
        seen.append(current_tenant().slug)
        Note.objects.get_or_create(text="seeded")

    receiver(tenant_provisioned, seed)
    tenant = create_tenant("gamma")
    assert seen == ["gamma"]
    with tenant_context(tenant):
        assert list(Note.objects.values_list("text", flat=True)) == ["seeded"]


def test_create_tenant_twice_is_not_an_error(db_access):
    first = create_tenant("gamma", domains=["gamma.example.test"])
    with tenant_context(first):
        Note.objects.create(text="kept")
    second = create_tenant("gamma", domains=["gamma.example.test"])
    assert second.pk == first.pk
    assert Tenant.objects.count() == 1
    assert Domain.objects.count() == 1
    with tenant_context(second):
        assert Note.objects.count() == 1


def test_provisioning_interrupted_after_creating_the_database_is_finished(db_access):
    # What a crash between CREATE DATABASE and migrate leaves behind.
    tenant = Tenant.objects.create(slug="gamma", name="Gamma")
    get_server(tenant.server).create_database(tenant.database_name)
    assert tenant.status == TenantStatus.PROVISIONING
    create_tenant("gamma")
    tenant.refresh_from_db()
    assert tenant.status == TenantStatus.ACTIVE
    with tenant_context(tenant):
        assert Note.objects.count() == 0


def test_failure_marks_the_tenant_failed_and_a_rerun_finishes(db_access, receiver):
    def broken_seed(sender, tenant, **kwargs):
        raise RuntimeError("seed data unavailable")

    receiver(tenant_provisioned, broken_seed)
    with pytest.raises(ProvisioningError, match=r"'gamma' failed.*create_tenant gamma"):
        create_tenant("gamma")
    tenant = Tenant.objects.get(slug="gamma")
    assert tenant.status == TenantStatus.FAILED
    assert tenant.status_detail == "RuntimeError: seed data unavailable"
    assert "gamma" not in registered_aliases()

    tenant_provisioned.disconnect(broken_seed)
    provision_tenant(tenant)
    tenant.refresh_from_db()
    assert (tenant.status, tenant.status_detail) == (TenantStatus.ACTIVE, "")


@pytest.mark.parametrize(
    "slug", ["Gamma", "gam'ma", "gamma; DROP DATABASE x", "g" * 300, "gamma\x00"]
)
def test_hostile_slug_creates_nothing(db_access, slug):
    before = {name: get_server(name).list_databases() for name in ("one", "two")}
    with pytest.raises(ValidationError):
        create_tenant(slug)
    assert Tenant.objects.count() == 0
    assert {name: get_server(name).list_databases() for name in ("one", "two")} == before


def test_domain_of_another_tenant_is_refused(alpha):
    with pytest.raises(
        ProvisioningError, match=r"'alpha\.example\.test' already belongs to tenant alpha"
    ):
        create_tenant("gamma", domains=["alpha.example.test"])


@pytest.mark.parametrize(
    ("domain", "reason"),
    [
        ("gamma example.test", "not a valid hostname"),
        ("g" * 64 + ".example.test", "at most 63 characters between dots"),
        ("alpha.example.test", "already belongs to tenant alpha"),
        ("admin.example.test", "is a host of the main site"),  # PUBLIC_HOSTS
    ],
)
def test_create_tenant_command_with_a_refused_domain_leaves_nothing(alpha, domain, reason):
    before = get_server("one").list_databases()
    with pytest.raises(CommandError, match=reason) as refused:
        call_command(
            "create_tenant", "gamma", "--domain", "gamma.example.test", "--domain", domain
        )
    assert "\n" not in str(refused.value)
    assert not Tenant.objects.filter(slug="gamma").exists()
    assert list(Domain.objects.values_list("domain", flat=True)) == ["alpha.example.test"]
    assert get_server("one").list_databases() == before


def test_base_domain_is_refused_as_a_tenant_domain(db_access, settings):
    settings.TENANCY = {**settings.TENANCY, "BASE_DOMAIN": "example.test"}
    with pytest.raises(ValidationError, match="is a host of the main site"):
        create_tenant("gamma", domains=["Example.test"])
    assert not Tenant.objects.exists()


def test_create_tenant_again_refuses_to_add_a_domain_to_an_active_tenant(db_access):
    create_tenant("gamma", domains=["gamma.example.test"])
    with pytest.raises(CommandError, match=r"exists already .*Add domain 'new\.example\.test'"):
        call_command("create_tenant", "gamma", "--domain", "new.example.test")
    assert list(Domain.objects.values_list("domain", flat=True)) == ["gamma.example.test"]
    # A tenant whose provisioning is unfinished gets its domains while it is finished.
    Tenant.objects.create(slug="delta", name="Delta", status=TenantStatus.FAILED)
    create_tenant("delta", domains=["delta.example.test"])
    delta = Tenant.objects.get(slug="delta")
    assert delta.status == TenantStatus.ACTIVE
    assert [d.domain for d in delta.domains.all()] == ["delta.example.test"]


def test_existing_tenant_on_another_server_is_refused(db_access):
    create_tenant("gamma", server="one")
    with pytest.raises(ProvisioningError, match="exists on server 'one', not 'two'"):
        create_tenant("gamma", server="two")


def test_deprovision_drops_database_and_row(db_access, receiver):
    sent = []
    receiver(
        tenant_deprovisioned,
        lambda sender, tenant, keep_database, **kw: sent.append((tenant.slug, keep_database)),
    )
    tenant = create_tenant("gamma", domains=["gamma.example.test"])
    with tenant_context(tenant):
        Note.objects.create(text="x")
    deprovision_tenant(tenant)
    assert not database_exists(tenant)
    assert Tenant.objects.count() == Domain.objects.count() == 0
    assert "gamma" not in registered_aliases()
    assert sent == [("gamma", False)]


@pytest.mark.parametrize("transaction_kind", ["atomic", "autocommit off"])
def test_deprovision_inside_a_transaction_is_refused_before_anything_happens(
    db_access, transaction_kind
):
    from django.db import transaction

    from tenancy import TenancyError

    tenant = create_tenant("gamma", domains=["gamma.example.test"])
    with tenant_context(tenant):
        Note.objects.create(text="kept")
    if transaction_kind == "atomic":
        with transaction.atomic(), pytest.raises(TenancyError, match="inside a transaction"):
            deprovision_tenant(tenant)
    else:
        transaction.set_autocommit(False)
        try:
            with pytest.raises(TenancyError, match="inside a transaction"):
                deprovision_tenant(tenant)
        finally:
            transaction.rollback()
            transaction.set_autocommit(True)
    tenant.refresh_from_db()
    assert tenant.status == TenantStatus.ACTIVE
    assert database_exists(tenant)
    with tenant_context(tenant):
        assert list(Note.objects.values_list("text", flat=True)) == ["kept"]


def test_the_admin_views_that_delete_tenants_run_outside_atomic_requests(db_access):
    from django.urls import resolve

    for path in ("/admin/tenancy/tenant/", "/admin/tenancy/tenant/1/delete/"):
        assert "default" in resolve(path).func._non_atomic_requests


def test_deprovision_with_sessions_open(db_access):
    tenant = create_tenant("gamma")
    alias = alias_for(tenant)
    opened, finish = threading.Event(), threading.Event()

    def hold_connection():
        with tenant_context(tenant):
            Note.objects.count()
            opened.set()
            finish.wait(timeout=60)

    thread = threading.Thread(target=hold_connection)
    thread.start()
    outside = None
    try:
        assert opened.wait(timeout=60)
        if BACKEND == "postgresql":
            settings = connections[alias].settings_dict
            outside = psycopg.connect(
                host=settings["HOST"],
                port=settings["PORT"],
                user=settings["USER"],
                dbname=tenant.database_name,
            )
        deprovision_tenant(tenant)
        assert not database_exists(tenant)
    finally:
        finish.set()
        thread.join(timeout=60)
        if outside is not None:
            outside.close()


def test_a_kept_database_is_never_handed_to_a_new_tenant_of_that_slug(db_access):
    tenant = create_tenant("gamma")
    with tenant_context(tenant):
        Note.objects.create(text="the departed customer's")
    deprovision_tenant(tenant, keep_database=True)
    assert database_exists(tenant)
    assert Tenant.objects.count() == 0
    # A newcomer signing up as "gamma" must not see the departed customer's rows.
    with pytest.raises(ProvisioningError, match=r"exists already on server .* is no tenant's"):
        create_tenant("gamma", domains=["gamma.example.test"])
    assert not Tenant.objects.exists()
    assert not Domain.objects.exists()
    with pytest.raises(CommandError, match="--adopt-database"):
        call_command("create_tenant", "gamma")
    # The admin's add form validates the row the same way.
    with pytest.raises(ValidationError) as refused:
        Tenant(slug="gamma", name="gamma").full_clean()
    assert "is no tenant's" in str(refused.value.message_dict["database_name"])
    # Taken over on purpose, the data comes back.
    call_command("create_tenant", "gamma", "--adopt-database", tenant.database_name)
    with tenant_context("gamma"):
        assert list(Note.objects.values_list("text", flat=True)) == ["the departed customer's"]


def test_create_tenant_command(db_access, capsys):
    call_command(
        "create_tenant",
        "gamma",
        "--name",
        "Gamma",
        "--domain",
        "gamma.example.test",
        "--server",
        "two",
    )
    assert (
        "Tenant gamma is active on server two (database test_tenancy_gamma)"
        in capsys.readouterr().out
    )
    assert Tenant.objects.get(slug="gamma").domains.get().is_primary


def test_create_tenant_command_reports_invalid_slug(db_access):
    with pytest.raises(
        CommandError, match=r"'Bad Slug' was not created: .*not a valid tenant slug"
    ):
        call_command("create_tenant", "Bad Slug")


def test_delete_tenant_command(db_access, capsys):
    tenant = create_tenant("gamma")
    call_command("delete_tenant", "gamma", "--noinput")
    assert "Deleted tenant gamma, dropping database test_tenancy_gamma" in capsys.readouterr().out
    assert not database_exists(tenant)


def test_delete_tenant_command_asks_for_the_slug(db_access, monkeypatch):
    tenant = create_tenant("gamma")
    monkeypatch.setattr("builtins.input", lambda prompt: "gamm")
    with pytest.raises(CommandError, match="Cancelled"):
        call_command("delete_tenant", "gamma")
    assert Tenant.objects.filter(slug="gamma").exists()
    assert database_exists(tenant)
    monkeypatch.setattr("builtins.input", lambda prompt: "gamma")
    call_command("delete_tenant", "gamma", "--keep-database")
    assert not Tenant.objects.filter(slug="gamma").exists()
    assert database_exists(tenant)


def test_delete_unknown_tenant(db_access):
    with pytest.raises(CommandError, match="No tenant with slug 'nobody'"):
        call_command("delete_tenant", "nobody", "--noinput")


def legacy_database(name):
    """An existing database as a single-database project would have it."""
    from tests.conftest import create_tenant_database, make_tenant

    legacy = make_tenant("legacy", "one", database_name=name)
    create_tenant_database(legacy)
    with tenant_context(legacy):
        Note.objects.create(text="from before")
    connections.close_all()
    return legacy


def test_adopt_database_registers_existing_data(db_access, capsys):
    legacy_database("test_tenancy_legacy")
    call_command(
        "create_tenant",
        "gamma",
        "--adopt-database",
        "test_tenancy_legacy",
        "--domain",
        "gamma.example.test",
    )
    assert (
        "Tenant gamma is active with the existing database test_tenancy_legacy"
        in capsys.readouterr().out
    )
    tenant = Tenant.objects.get(slug="gamma")
    assert (tenant.status, tenant.database_name) == (TenantStatus.ACTIVE, "test_tenancy_legacy")
    with tenant_context(tenant):
        assert list(Note.objects.values_list("text", flat=True)) == ["from before"]


def test_adopt_reports_missing_migrations_and_create_tenant_applies_them(db_access):
    get_server("one").create_database("test_tenancy_empty")
    with pytest.raises(CommandError, match=r"not applied: tenantapp\.0001_initial") as adopting:
        call_command("create_tenant", "gamma", "--adopt-database", "test_tenancy_empty")
    assert "marked failed" in str(adopting.value)
    tenant = Tenant.objects.get(slug="gamma")
    assert tenant.status == TenantStatus.FAILED
    assert "tenantapp.0001_initial" in tenant.status_detail
    # The ledger has what the adopted database has: nothing, so every migration pending.
    from tenancy import ledger

    assert "tenantapp.0001_initial" in ledger.states([tenant])[tenant.pk].pending
    call_command("create_tenant", "gamma")
    tenant.refresh_from_db()
    assert tenant.status == TenantStatus.ACTIVE
    with tenant_context(tenant):
        assert Note.objects.count() == 0


def test_adopt_reports_migrations_the_project_does_not_know(db_access, migrations):
    migrations("tests.migrations_v2")
    legacy_database("test_tenancy_newer")
    migrations(None)  # the project's own migrations: it has no 0002
    with pytest.raises(
        CommandError, match=r"applied but not in this project: tenantapp\.0002_note_text_index"
    ):
        call_command("create_tenant", "gamma", "--adopt-database", "test_tenancy_newer")


def test_adopt_missing_database(db_access):
    with pytest.raises(
        CommandError, match="'test_tenancy_nowhere' does not exist on server 'one'"
    ):
        call_command("create_tenant", "gamma", "--adopt-database", "test_tenancy_nowhere")
    assert not Tenant.objects.exists()


@pytest.mark.skipif(
    PGBOUNCER,
    reason="PgBouncer holds a client for a missing database until query_wait_timeout, then "
    "refuses the database name for server_login_retry: the next test's tenant of that name",
)
def test_a_late_query_for_a_deleted_tenant_does_not_bring_its_database_back(db_access):
    """A request still in flight when its tenant is deleted fails; on SQLite, opening the
    file must not create an empty one again."""
    gamma = create_tenant("gamma")
    deprovision_tenant(gamma)
    with tenant_context(gamma), pytest.raises(DatabaseError):
        Note.objects.count()
    assert gamma.database_name not in get_server("one").list_databases()
