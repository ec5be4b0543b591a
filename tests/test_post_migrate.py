"""``post_migrate`` after a tenant's migrations, in a project whose tenants hold
``contenttypes`` and ``auth``: Django's content type and permission receivers are left
out only when they have nothing to create, and every tenant ends with the rows Django
would have made."""

import json
import textwrap

import pytest

from tests.generated_project import manager
from tests.test_users_per_tenant import SETTINGS as PER_TENANT_USERS

# The users-per-tenant project (contenttypes and auth in TENANT_APPS), its tenant app's
# migrations chosen by the environment.
SETTINGS = (
    PER_TENANT_USERS
    + """
import os
PACKAGE = os.environ.get("TENANTAPP_MIGRATIONS", "tests.tenantapp.migrations")
MIGRATION_MODULES = {{"tenantapp": PACKAGE}}
"""
)

# Each tenant's content types and permissions, as (app, model) and (app, model, codename).
ROWS = """
import json
from django.contrib.auth.models import Permission
from django.contrib.contenttypes.models import ContentType
from tenancy import tenant_context
rows = {}
for slug in ("acme", "globex", "hooli"):
    with tenant_context(slug):
        rows[slug] = [
            sorted(ContentType.objects.values_list("app_label", "model")),
            sorted(
                Permission.objects.values_list(
                    "content_type__app_label", "content_type__model", "codename", "name"
                )
            ),
        ]
print(json.dumps(rows))
"""

# A receiver of the project's own, in a module of the project.
HOOKS = """
received = {}

def receiver(sender, using, apps, **kwargs):
    assert apps.get_model("tenantapp", "Note")  # the state after migrating
    received.setdefault(using, []).append(sender.label)
"""

# Migrate the fleet, noting for each tenant which apps were found with rows missing each
# time that was read, and which apps the project's receiver ran for.
MIGRATE = """
import json
from django.core.management import call_command
from django.db.models.signals import post_migrate
from tenancy import post_migrate as tenancy_post_migrate
from project_hooks import receiver, received
decided = {}
check = tenancy_post_migrate._apps_missing_rows

def noted(using, state_apps):
    found = check(using, state_apps)
    decided.setdefault(using, []).append(sorted(found))
    return found

tenancy_post_migrate._apps_missing_rows = noted
post_migrate.connect(receiver)
call_command("migrate_tenants", verbosity=0)
print(json.dumps([decided, received]))
"""

DELETE = """
from django.contrib.auth.models import Permission
from django.contrib.contenttypes.models import ContentType
from tenancy import tenant_context
with tenant_context("acme"):
    Permission.objects.filter(codename="view_note").delete()
with tenant_context("globex"):
    ContentType.objects.filter(app_label="tenantapp", model="label").delete()
"""


def test_djangos_receivers_run_exactly_when_they_have_something_to_create(tmp_path, monkeypatch):
    (tmp_path / "post_migrate_settings.py").write_text(SETTINGS.format(data=tmp_path))
    (tmp_path / "project_hooks.py").write_text(HOOKS)
    manage = manager(tmp_path, "post_migrate_settings")

    def shell(code: str) -> str:
        return manage("shell", "-v", "0", "-c", textwrap.dedent(code))

    manage("migrate_tenants")
    for slug in ("acme", "globex", "initech"):
        manage("create_tenant", slug)
    shell(DELETE)  # acme lacks a permission; globex a content type (and its permissions)

    monkeypatch.setenv("TENANTAPP_MIGRATIONS", "tests.migrations_v3")
    decided, received = json.loads(shell(MIGRATE).strip().splitlines()[-1])
    manage("create_tenant", "hooli")  # made by Django's receivers alone, at v3
    rows = json.loads(shell(ROWS).strip().splitlines()[-1])

    # Read before each app's turn (the project's receiver ran after the app before, and
    # may have removed rows): Django's receivers ran for the app with rows missing only.
    assert decided == {
        "tenant:acme": [["tenantapp"]] * 4,
        "tenant:globex": [["tenantapp"]] * 4,
        "tenant:initech": [[]] * 4,
    }
    # Every other receiver ran once per app with models, in Django's order.
    apps = ["tenancy", "auth", "contenttypes", "tenantapp"]
    del received["default"]  # the main database's migrate, Django's own
    assert received == {f"tenant:{slug}": apps for slug in ("acme", "globex", "initech")}
    # What Django's receivers made again is what they make for a new tenant.
    assert rows["acme"] == rows["hooli"]
    assert rows["globex"] == rows["hooli"]
    assert ["tenantapp", "label", "view_label", "Can view label"] in rows["globex"][1]


def test_an_asynchronous_receiver_leaves_the_signal_to_django():
    from django.apps import apps
    from django.db.models.signals import post_migrate

    from tenancy.post_migrate import _sync_receivers

    async def receiver(sender, **kwargs):
        pass

    app_config = apps.get_app_config("tenantapp")
    assert _sync_receivers(app_config) is not None
    post_migrate.connect(receiver)
    try:
        assert _sync_receivers(app_config) is None  # Django runs those together, last
    finally:
        post_migrate.disconnect(receiver)


RENAMED = """
import json
from django.contrib.contenttypes.models import ContentType
from tenancy import tenant_context
rows = {}
for slug in ("acme", "globex", "initech"):
    with tenant_context(slug):
        rows[slug] = sorted(
            ContentType.objects.filter(
                app_label="tenantapp", model__in=["attachment", "enclosure"]
            ).values_list("model", flat=True)
        )
print(json.dumps(rows))
"""


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_renamed_model_keeps_its_content_type(tmp_path, monkeypatch, jobs):
    """contenttypes' pre_migrate adds a RenameContentType after each RenameModel: every
    tenant gets it, in one process or in workers."""
    (tmp_path / "post_migrate_settings.py").write_text(SETTINGS.format(data=tmp_path))
    manage = manager(tmp_path, "post_migrate_settings")
    manage("migrate_tenants")
    for slug in ("acme", "globex", "initech"):
        manage("create_tenant", slug)
    monkeypatch.setenv("TENANTAPP_MIGRATIONS", "tests.migrations_rename")
    manage("migrate_tenants", "--jobs", jobs)
    rows = json.loads(
        manage("shell", "-v", "0", "-c", textwrap.dedent(RENAMED)).strip().splitlines()[-1]
    )
    assert rows == {slug: ["enclosure"] for slug in ("acme", "globex", "initech")}


def test_only_djangos_named_receivers_count_as_harmless():
    """A receiver written in ``manage.py shell`` has a module name of Django's: it may
    remove rows, and what is missing is read again after it."""
    from django.contrib.sites.management import create_default_site

    from tenancy.post_migrate import _djangos_own

    def receiver(**kwargs):
        pass

    receiver.__module__ = "django.core.management.commands.shell"
    assert _djangos_own(create_default_site)
    assert not _djangos_own(receiver)
