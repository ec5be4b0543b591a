"""A project whose users live in each tenant's database (``auth`` in ``TENANT_APPS``)."""

import sqlite3
import textwrap
from pathlib import Path

from django.contrib.auth.models import User

from tenancy.admin import TenantAdminSite
from tenancy.models import Tenant
from tenancy.routers import TenantRouter
from tests.generated_project import manager

SETTINGS = """
SECRET_KEY = "tests-only"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
TENANT_APPS = ["django.contrib.auth", "django.contrib.contenttypes", "tests.tenantapp"]
INSTALLED_APPS = ["tenancy", *TENANT_APPS]
SQLITE = "django.db.backends.sqlite3"
DATABASES = {{"default": {{"ENGINE": SQLITE, "NAME": "{data}/main.sqlite3"}}}}
DATABASE_ROUTERS = ["tenancy.routers.TenantRouter"]
TENANCY = {{
    "TENANT_APPS": TENANT_APPS,
    "SERVERS": {{"default": {{"ENGINE": SQLITE, "DIRECTORY": "{data}"}}}},
}}
"""

IN_TENANT = """
from django.contrib.auth import get_user_model
from tenancy import tenant_context
with tenant_context("acme"):
    get_user_model().objects.create_user("ann", password="x", is_staff=True)
    print(get_user_model().objects.get().username)
"""


def tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as connection:
        rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {name for (name,) in rows}


def test_users_per_tenant_migrate_and_provision(tmp_path):
    (tmp_path / "per_tenant_users_settings.py").write_text(SETTINGS.format(data=tmp_path))
    manage = manager(tmp_path, "per_tenant_users_settings")

    manage("check")
    manage("migrate_tenants")  # the main database's tenancy migrations need no user table
    manage("create_tenant", "acme")
    assert manage("shell", "-v", "0", "-c", textwrap.dedent(IN_TENANT)).strip() == "ann"
    main, acme = tables(tmp_path / "main.sqlite3"), tables(tmp_path / "tenant_acme.sqlite3")
    assert "tenancy_tenant" in main
    assert "auth_user" not in main
    assert "auth_user" in acme
    assert "tenancy_membership" not in main | acme  # memberships need shared users
    manage("migrate_tenants", "--check")  # exit status 0: nothing left unapplied


def test_memberships_go_nowhere_when_users_are_per_tenant(settings):
    router = TenantRouter()
    assert router.allow_migrate("default", "tenancy", model_name="membership") is None
    assert router.allow_migrate("tenant:alpha", "tenancy", model_name="membership") is False
    settings.TENANCY = {**settings.TENANCY, "TENANT_APPS": ["tests.tenantapp", "auth"]}
    assert router.allow_migrate("default", "tenancy", model_name="membership") is False
    assert router.allow_migrate("default", "tenancy", model_name="tenant") is None
    assert router.allow_migrate("tenant:alpha", "auth", model_name="user") is True


def test_tenant_admin_lets_in_the_tenants_own_staff(settings, rf):
    settings.TENANCY = {**settings.TENANCY, "TENANT_APPS": ["tests.tenantapp", "auth"]}
    site = TenantAdminSite(name="per_tenant_users_admin")
    request = rf.get("/manage/")
    request.tenant = Tenant(slug="acme", name="Acme")
    request.user = User(username="ann", is_staff=True, is_active=True)
    assert site.has_permission(request)  # no membership needed, nor looked up
    request.user = User(username="bob", is_staff=False, is_active=True)
    assert not site.has_permission(request)
