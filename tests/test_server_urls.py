"""Server entries written as database URLs (tenancy.server_urls)."""

import logging

import pytest
from django.core.exceptions import ImproperlyConfigured

from tenancy import server_from_url, tenant_context
from tenancy.conf import tenancy_settings
from tenancy.provisioning import create_tenant, deprovision_tenant
from tenancy.server_urls import redact
from tests.settings import BACKEND, SERVER_1
from tests.tenantapp.models import Note


def test_a_postgresql_url_gives_the_servers_settings():
    url = "postgres://app%40eu:s3cr%2Ft@db-eu-1.internal:6432/?sslmode=require&connect_timeout=5"
    assert server_from_url(url, CONN_MAX_AGE=60) == {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": "db-eu-1.internal",
        "PORT": "6432",
        "USER": "app@eu",
        "PASSWORD": "s3cr/t",
        "OPTIONS": {"sslmode": "require", "connect_timeout": "5"},
        "CONN_MAX_AGE": 60,
    }


@pytest.mark.parametrize(
    ("url", "host", "port"),
    [
        ("postgresql://[::1]:5433", "::1", "5433"),
        ("pgsql://%2Fvar%2Frun%2FPostgreSQL/", "/var/run/PostgreSQL", ""),
        ("postgres://", "", ""),
    ],
)
def test_hosts_and_ports(url, host, port):
    server = server_from_url(url)
    assert (server["HOST"], server["PORT"]) == (host, port)


def test_a_sqlite_url_gives_the_servers_directory():
    assert server_from_url("sqlite:////srv/tenants") == {
        "ENGINE": "django.db.backends.sqlite3",
        "DIRECTORY": "/srv/tenants",
    }
    assert server_from_url("sqlite:///var/tenants")["DIRECTORY"] == "var/tenants"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgres://app:hunter2@db/main", "names a database"),
        ("mysql://app:hunter2@db/", "'mysql' is not one tenancy serves"),
        ("postgres://app:hunter2@db:99999/", "port is not a number"),
        ("postgres://app:hun/ter2@db:5432/", "percent-encode"),
        ("postgres://app:hun#ter2@db:5432/", "percent-encode"),
        ("postgres://app:1234?hunter2@db/", "percent-encode"),
        ("db.internal:5432", "needs a scheme"),
        ("sqlite://app:hunter2@host/dir", "sqlite:////absolute/directory"),
    ],
)
def test_a_bad_url_is_named_without_its_password(url, message):
    with pytest.raises(ImproperlyConfigured, match=message) as raised:
        server_from_url(url)
    assert "hunter2" not in str(raised.value)
    assert "ter2" not in str(raised.value)


def test_a_bad_url_in_the_settings_names_the_server_without_the_password(settings):
    settings.TENANCY = {
        **settings.TENANCY,
        "SERVERS": {**settings.TENANCY["SERVERS"], "eu": "postgres://app:hunter2@db/main"},
    }
    with pytest.raises(ImproperlyConfigured) as raised:
        tenancy_settings.validate()
    assert str(raised.value).startswith("TENANCY['SERVERS']['eu'] is a URL that cannot be read:")
    assert "postgres://app:********@db/main" in str(raised.value)
    assert "hunter2" not in str(raised.value)


def test_redact():
    assert redact("postgres://app:hunter2@db:5432/?x=1") == "postgres://app:********@db:5432/?x=1"
    assert redact("postgres://app@db/") == "postgres://app@db/"
    assert redact("sqlite:////srv/tenants") == "sqlite:////srv/tenants"
    assert redact("postgres://app:ab/cd@db/") == "postgres://app:********@db/"


def url_of(server):
    """The suite's server ``server`` as a URL (password-less: the clusters trust)."""
    if BACKEND == "postgresql":
        return f"postgres://{server['USER']}@{server['HOST']}:{server['PORT']}/?application_name=t"
    return f"sqlite:///{server['DIRECTORY']}"


def test_a_tenant_on_a_server_given_by_url_is_provisioned_and_used(settings, db_access, caplog):
    settings.TENANCY = {
        **settings.TENANCY,
        "SERVERS": {**settings.TENANCY["SERVERS"], "by-url": url_of(SERVER_1)},
    }
    caplog.set_level(logging.DEBUG)
    tenant = create_tenant("url-tenant", domains=["url-tenant.example.test"], server="by-url")
    try:
        with tenant_context(tenant):
            Note.objects.create(text="through a URL")
            assert list(Note.objects.values_list("text", flat=True)) == ["through a URL"]
            if BACKEND == "postgresql":
                from tenancy import tenant_connection

                with tenant_connection().cursor() as cursor:
                    cursor.execute("SELECT current_setting('application_name')")
                    assert cursor.fetchone() == ("t",)
    finally:
        deprovision_tenant(tenant)


@pytest.mark.parametrize(
    "server",
    [
        "postgres://app:hunter2@db/?dbname=main",
        "postgres://db/?service=main",
        "postgres://db/?+dbname=main",
        {"ENGINE": "django.db.backends.postgresql", "OPTIONS": {" dbname": "main"}},
        {"ENGINE": "django.db.backends.postgresql", "OPTIONS": {"host": "other"}},
        {"ENGINE": "django.db.backends.postgresql", "OPTIONS": {"hostaddr": "10.0.0.9"}},
        {"ENGINE": "django.db.backends.postgresql", "OPTIONS": {"port": "6543"}},
    ],
)
def test_options_that_choose_where_a_connection_goes_are_refused(settings, server):
    """Django passes OPTIONS after the database name: one of these would send every tenant
    of the server to the same database (or to another server)."""
    settings.TENANCY = {
        **settings.TENANCY,
        "SERVERS": {**settings.TENANCY["SERVERS"], "eu": server},
    }
    with pytest.raises(
        ImproperlyConfigured, match=r"choose the server or the database|plain libpq"
    ):
        tenancy_settings.validate()
