"""System checks and settings validation."""

import pytest
from django.core.management import call_command
from django.db import models
from django.test.utils import isolate_apps

from tenancy.checks import check_relations, check_settings, registry_manager_warnings
from tests.generated_project import run_manage
from tests.settings import SERVER_1


def check_ids(settings, **tenancy):
    settings.TENANCY = {**settings.TENANCY, **tenancy}
    return [(message.id, message.msg) for message in check_settings()]


def test_project_passes_its_checks():
    call_command("check", fail_level="WARNING")


@isolate_apps("tests.tenantapp", "tests.sharedapp")
def test_relation_from_tenant_model_to_shared_model_is_an_error():
    class Account(models.Model):
        class Meta:
            app_label = "sharedapp"

    class Invoice(models.Model):
        account = models.ForeignKey(Account, on_delete=models.CASCADE)
        watchers = models.ManyToManyField(Account, related_name="+")

        class Meta:
            app_label = "tenantapp"

    messages = check_relations([Account, Invoice])
    assert [(m.id, m.obj.name) for m in messages] == [
        ("tenancy.E003", "account"),
        ("tenancy.E003", "watchers"),
    ]
    assert "account_id = models.BigIntegerField(db_index=True)" in messages[0].hint


@isolate_apps("tests.tenantapp", "tests.sharedapp")
def test_relation_from_shared_model_to_tenant_model_is_an_error():
    class Project(models.Model):
        class Meta:
            app_label = "tenantapp"

    class Favourite(models.Model):
        project = models.OneToOneField(Project, on_delete=models.CASCADE)

        class Meta:
            app_label = "sharedapp"

    assert [m.id for m in check_relations([Project, Favourite])] == ["tenancy.E004"]


@isolate_apps("tests.tenantapp")
def test_relations_inside_tenant_apps_are_fine():
    class Project(models.Model):
        class Meta:
            app_label = "tenantapp"

    class Task(models.Model):
        project = models.ForeignKey(Project, on_delete=models.CASCADE)

        class Meta:
            app_label = "tenantapp"

    assert check_relations([Project, Task]) == []


def test_missing_router_is_an_error(settings):
    settings.DATABASE_ROUTERS = []
    assert [m.id for m in check_settings()] == ["tenancy.E002"]


@pytest.mark.parametrize(
    ("tenancy", "message"),
    [
        ({"TENANT_APS": []}, "unknown key(s) 'TENANT_APS'"),
        ({"TENANT_APPS": ["not.installed"]}, "TENANCY['TENANT_APPS'] names 'not.installed'"),
        ({"TENANT_APPS": "tests.tenantapp"}, "TENANCY['TENANT_APPS'] must be a list"),
        ({"SERVERS": {"one": {**SERVER_1, "NAME": "x"}}}, "must not set NAME"),
        ({"SERVERS": {"one": {**SERVER_1, "ATOMIC_REQUESTS": True}}}, "ATOMIC_REQUESTS"),
        ({"SERVERS": {"one": {"ENGINE": "django.db.backends.mysql"}}}, "ENGINE"),
        ({"SERVERS": {"one": {"ENGINE": "django.db.backends.sqlite3"}}}, "needs DIRECTORY"),
        ({"DEFAULT_SERVER": "three"}, "TENANCY['DEFAULT_SERVER'] is 'three'"),
        ({"DATABASE_NAME": "tenant"}, "must be a string containing '{slug}'"),
        ({"DATABASE_NAME": "Tenant-{slug}"}, "must give a valid database name"),
        ({"MAX_OPEN_CONNECTIONS": 0}, "MAX_OPEN_CONNECTIONS'] must be a positive integer"),
        ({"MAX_OPEN_CONNECTIONS": "10"}, "MAX_OPEN_CONNECTIONS'] must be a positive integer"),
        ({"SPARE_DATABASES": -1}, "SPARE_DATABASES'] must be a whole number from 0 to 100"),
        ({"SPARE_DATABASES": True}, "SPARE_DATABASES'] must be a whole number from 0 to 100"),
        ({"IDLE_CONNECTION_TIMEOUT": 0}, "IDLE_CONNECTION_TIMEOUT'] must be a positive number"),
        ({"PUBLIC_HOSTS": "www.example.test"}, "PUBLIC_HOSTS'] must be a list"),
        ({"PUBLIC_HOSTS": ["bad host"]}, "PUBLIC_HOSTS'] contains an invalid hostname"),
        ({"PATH_PREFIX": "t"}, "PATH_PREFIX'] must start and end with '/'"),
        ({"RESOLVER": "hots"}, "TENANCY['RESOLVER'] is 'hots', which is neither"),
        ({"RESOLVER": "tests.nowhere.Resolver"}, "TENANCY['RESOLVER'] is 'tests.nowhere"),
    ],
)
def test_bad_settings_are_reported_with_the_key(settings, tenancy, message):
    messages = check_ids(settings, **tenancy)
    assert len(messages) == 1
    assert messages[0][0] == "tenancy.E001"
    assert message in messages[0][1]


def test_pooling_on_a_tenant_server_is_a_warning(settings):
    server = {"ENGINE": "django.db.backends.postgresql", "OPTIONS": {"pool": True}}
    messages = check_ids(settings, SERVERS={"one": server}, DEFAULT_SERVER="one")
    assert [message_id for message_id, _ in messages] == ["tenancy.W001"]


@isolate_apps("tests.sharedapp")
def test_a_tenant_model_whose_manager_forgets_nothing_is_a_warning():
    from tenancy.models import AbstractTenant
    from tenancy.registry_cache import RegistryQuerySet

    class PlainManagerTenant(AbstractTenant):
        objects = models.Manager()

        class Meta(AbstractTenant.Meta):
            app_label = "sharedapp"

    class RegistryManagerTenant(AbstractTenant):
        objects = models.Manager.from_queryset(RegistryQuerySet)()

        class Meta(AbstractTenant.Meta):
            app_label = "sharedapp"

    class InheritedManagerTenant(AbstractTenant):
        class Meta(AbstractTenant.Meta):
            app_label = "sharedapp"

    messages = registry_manager_warnings(
        [PlainManagerTenant, RegistryManagerTenant, InheritedManagerTenant]
    )
    assert [(m.id, m.obj) for m in messages] == [("tenancy.W002", PlainManagerTenant)]


BAD_PROJECT = """
SECRET_KEY = "tests-only"
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "tenancy",
]
DATABASES = {{"default": {{"ENGINE": "django.db.backends.sqlite3", "NAME": "{data}/main.db"}}}}
DATABASE_ROUTERS = ["tenancy.routers.TenantRouter"]
TENANCY = {tenancy}
"""


@pytest.mark.parametrize(
    ("tenancy", "message"),
    [
        ({"TENANT_APS": []}, "unknown key(s) 'TENANT_APS'"),
        ({"TENANT_APPS": ["shop"]}, "TENANCY['TENANT_APPS'] names 'shop'"),
    ],
)
def test_bad_settings_beside_the_admin_are_one_line_not_a_traceback(tmp_path, tenancy, message):
    """The admin reads tenancy's settings when Django starts: bad ones are still the
    check's one line."""
    (tmp_path / "bad_settings.py").write_text(BAD_PROJECT.format(data=tmp_path, tenancy=tenancy))
    done = run_manage(tmp_path, "bad_settings", "check")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "(tenancy.E001)" in done.stderr
    assert message in done.stderr
