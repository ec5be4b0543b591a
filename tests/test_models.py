"""The tenant registry: validation of untrusted names, immutability, uniqueness."""

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from tenancy import get_tenant_model
from tenancy.backends import get_server
from tenancy.models import Domain, Tenant, TenantStatus

HOSTILE_SLUGS = [
    "",
    "Acme",
    "ac me",
    "acme.example",
    "ac'me",
    'ac"me',
    "acme;drop database x",
    "x' OR '1'='1",
    "-acme",
    "acme-",
    "tenant_x",
    "../etc",
    "ünïcödé",
    "acme\n",
    "ac\x00me",
    "a" * 64,
    "a" * 300,
]

HOSTILE_HOSTS = [
    "",
    "acme.example.test:8000",
    "acme example.test",
    "acme'.example.test",
    'ac"me.example.test',
    "acme.example.test;drop table x",
    "http://acme.example.test",
    "acme..example.test",
    ".acme.example.test",
    "*.example.test",
    "ümlaut.example.test",
    "a" * 64 + ".example.test",
    "a." * 130 + "test",
]


def tenant_tables_rows():
    return Tenant.objects.count(), Domain.objects.count()


@pytest.mark.parametrize("slug", HOSTILE_SLUGS)
def test_hostile_slug_is_rejected_and_nothing_is_created(db_access, slug):
    before = get_server("one").list_databases()
    tenant = Tenant(slug=slug, name="Hostile")
    with pytest.raises(ValidationError) as saving:
        tenant.save()
    assert "slug" in saving.value.message_dict
    with pytest.raises(ValidationError) as cleaning:
        tenant.full_clean()
    assert "slug" in cleaning.value.message_dict
    assert tenant_tables_rows() == (0, 0)
    assert get_server("one").list_databases() == before


@pytest.mark.parametrize("host", HOSTILE_HOSTS)
def test_hostile_hostname_is_rejected(alpha, host):
    with pytest.raises(ValidationError) as saving:
        Domain(domain=host, tenant=alpha).save()
    assert "domain" in saving.value.message_dict
    assert list(Domain.objects.values_list("domain", flat=True)) == ["alpha.example.test"]


def test_hostname_limits_are_named(alpha):
    with pytest.raises(ValidationError, match="at most 63 characters between dots and 253"):
        Domain(domain="a" * 64 + ".example.test", tenant=alpha).save()


def test_a_host_of_the_main_site_is_not_a_tenant_domain(alpha):
    domain = Domain(domain="admin.example.test", tenant=alpha)  # in PUBLIC_HOSTS
    with pytest.raises(ValidationError) as cleaning:
        domain.full_clean()
    assert cleaning.value.message_dict["domain"] == [
        "'admin.example.test' is a host of the main site (TENANCY['PUBLIC_HOSTS'] or "
        "TENANCY['BASE_DOMAIN']), which never reaches a tenant: choose another domain."
    ]
    with pytest.raises(ValidationError, match="is a host of the main site"):
        Domain.objects.create(domain="Admin.Example.Test", tenant=alpha)  # save() too
    assert not Domain.objects.filter(domain="admin.example.test").exists()


def test_hostname_is_stored_in_lowercase(alpha):
    domain = Domain.objects.create(domain="WWW.Alpha.Example.Test", tenant=alpha)
    assert domain.domain == "www.alpha.example.test"


@pytest.mark.parametrize("name", ["Tenant", "1tenant", "a-b", "x;drop", "a" * 64, "ümlaut"])
def test_hostile_database_name_is_rejected(db_access, name):
    with pytest.raises(ValidationError) as saving:
        Tenant(slug="gamma", name="Gamma", database_name=name).save()
    assert "database_name" in saving.value.message_dict
    with pytest.raises(ValidationError):
        get_server("one").create_database(name)
    assert Tenant.objects.count() == 0


def test_database_name_is_derived_from_the_slug(db_access):
    tenant = Tenant.objects.create(slug="my-shop", name="My shop")
    assert tenant.database_name == "test_tenancy_my_shop"
    assert tenant.server == "one"
    assert tenant.status == TenantStatus.PROVISIONING


def test_slug_cannot_be_changed(alpha):
    alpha.slug = "gamma"
    with pytest.raises(ValidationError, match="cannot be changed"):
        alpha.save()
    reloaded = Tenant.objects.get(pk=alpha.pk)
    reloaded.slug = "gamma"
    with pytest.raises(ValidationError, match="cannot be changed"):
        reloaded.full_clean()
    assert Tenant.objects.get(pk=alpha.pk).slug == "alpha"


def test_server_must_be_configured(db_access):
    with pytest.raises(ValidationError) as saving:
        Tenant(slug="gamma", name="Gamma", server="elsewhere").save()
    assert "'elsewhere' is not configured" in saving.value.message_dict["server"][0]


def test_slug_is_unique(alpha):
    with pytest.raises(IntegrityError), transaction.atomic():
        Tenant.objects.create(slug="alpha", name="Again", database_name="test_tenancy_other")


def test_one_database_holds_one_tenant(alpha):
    with pytest.raises(ValidationError, match="it is the database of tenant 'alpha'"):
        Tenant.objects.create(slug="gamma", name="Gamma", database_name=alpha.database_name)
    # The constraint holds where save() is bypassed too.
    with pytest.raises(IntegrityError), transaction.atomic():
        Tenant.objects.bulk_create(
            [Tenant(slug="gamma", name="Gamma", server="one", database_name=alpha.database_name)]
        )


def test_a_tenant_has_at_most_one_primary_domain(alpha):
    Domain.objects.create(domain="www.alpha.example.test", tenant=alpha, is_primary=False)
    with pytest.raises(IntegrityError), transaction.atomic():
        Domain.objects.create(domain="other.alpha.example.test", tenant=alpha, is_primary=True)


def test_get_tenant_model_is_the_configured_model():
    assert get_tenant_model() is Tenant


@pytest.mark.parametrize("name", ["order", "user", "select"])
def test_database_names_are_quoted_as_identifiers(db_access, name):
    # Reserved words only work as database names when quoted.
    server = get_server("two")
    try:
        assert server.create_database(name) is True
        assert server.create_database(name) is False  # idempotent
        assert server.database_exists(name)
        assert name in server.list_databases()
    finally:
        assert server.drop_database(name) is True
    assert not server.database_exists(name)
    assert server.drop_database(name) is False
