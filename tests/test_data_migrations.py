"""Data migrations (RunPython) run in each tenant, with that tenant current, and never in
the template database that new tenants are copied from."""

import pytest
from django.core.management import call_command

from tenancy import tenant_connection, tenant_context
from tenancy.backends import get_server
from tenancy.connections import alias_for, unregister
from tenancy.migration import applied_migrations
from tenancy.models import Tenant
from tenancy.provisioning import ProvisioningError, create_tenant
from tenancy.template_databases import template_for
from tests.tenantapp.models import Note

DATA_MIGRATION = ("tenantapp", "0002_hello")


def test_new_tenants_run_data_migrations_themselves(db_access, migrations, settings):
    # With a spare: the first tenant is copied from the template, the second from the
    # spare copied after it.
    settings.TENANCY = {**settings.TENANCY, "SPARE_DATABASES": 1}
    migrations("tests.migrations_data")
    gamma = create_tenant("gamma")
    delta = create_tenant("delta")
    for tenant in (gamma, delta):
        with tenant_context(tenant):
            assert list(Note.objects.values_list("text", flat=True)) == [f"hello {tenant.slug}"]
            assert DATA_MIGRATION in applied_migrations(tenant_connection())
    template = template_for("one")
    assert get_server("one").database_exists(template.database_name)
    with tenant_context(template):
        applied = applied_migrations(tenant_connection())
    unregister(template.slug)
    assert ("tenantapp", "0001_initial") in applied
    assert DATA_MIGRATION not in applied


def test_template_that_ran_a_data_migration_is_not_copied(db_access, migrations):
    migrations("tests.migrations_data")
    template = template_for("one")
    get_server("one").create_database(template.database_name)
    # As `migrate` on the template would leave it: a row written for the template.
    with tenant_context(template):
        call_command("migrate", database=alias_for(template), verbosity=0)
    unregister(template.slug)
    with pytest.raises(ProvisioningError, match=r"tenantapp\.0002_hello applied.*drop the"):
        create_tenant("gamma")
    assert Tenant.objects.get(slug="gamma").status == "failed"
