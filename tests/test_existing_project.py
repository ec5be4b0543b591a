"""An existing single-database project moved in as docs/howto/existing-project.md says:
its database becomes the first tenant's, its users move to a new main database, and no
row is lost."""

import json
import shutil

from tests.generated_project import manager

LEGACY_SETTINGS = """
SECRET_KEY = "tests-only"
USE_TZ = True
ALLOWED_HOSTS = ["localhost", ".localhost"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
ROOT_URLCONF = "shop.urls"
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "shop",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
DATABASES = {{
    "default": {{"ENGINE": "django.db.backends.sqlite3", "NAME": "{data}/legacy.sqlite3"}}
}}
"""

# The same project with tenancy: the old settings, a new main database, one server.
TENANCY_SETTINGS = """
from legacy_settings import *  # noqa: F403

INSTALLED_APPS = [*INSTALLED_APPS, "tenancy"]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "tenancy.middleware.TenantMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
SQLITE = "django.db.backends.sqlite3"
DATABASES = {{"default": {{"ENGINE": SQLITE, "NAME": "{data}/main.sqlite3"}}}}
DATABASE_ROUTERS = ["tenancy.routers.TenantRouter"]
TENANCY = {{
    "TENANT_APPS": ["shop"],
    "SERVERS": {{"one": {{"ENGINE": SQLITE, "DIRECTORY": "{data}/one"}}}},
    "DEFAULT_SERVER": "one",
    "PUBLIC_HOSTS": ["localhost"],
}}
"""

# The project's model as it was: a foreign key to a user, which cannot cross databases.
MODELS_BEFORE = """
from django.conf import settings
from django.db import models


class Order(models.Model):
    item = models.CharField(max_length=100)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE{constraint})
"""

# Step 1: the key in a plain field, on the same column.
MODELS = """
from django.db import models


class Order(models.Model):
    item = models.CharField(max_length=100)
    owner_id = models.IntegerField(db_index=True)  # a user of the main database
"""

STATE_ONLY = """
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("shop", "0002_alter_order_owner")]
    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.RemoveField("order", "owner"),
                migrations.AddField("order", "owner_id", models.IntegerField(db_index=True)),
            ],
        ),
    ]
"""

VIEWS = """
from django.http import JsonResponse

from shop.models import Order


def orders(request):
    rows = Order.objects.order_by("pk").values_list("item", "owner_id")
    return JsonResponse({"orders": list(rows)})
"""

URLS = """
from django.urls import path

from shop.views import orders

urlpatterns = [path("orders/", orders)]
"""

BEFORE = """
from django.contrib.auth.models import User
from shop.models import Order

User.objects.create_user("filler", password="-")  # ann's key is not 1
ann = User.objects.create_user("ann", password="ann's password")
for item in ("anvil", "rocket skates"):
    Order.objects.create(item=item, owner_id=ann.pk)
"""

AFTER = """
import json
from django.contrib.auth import authenticate
from django.test import Client

ann = authenticate(username="ann", password="ann's password")
response = Client(HTTP_HOST="acme.localhost").get("/orders/")
print(json.dumps({"ann": ann.pk, "status": response.status_code, "body": response.json()}))
"""


def test_a_single_database_project_becomes_the_first_tenant(tmp_path):
    (tmp_path / "legacy_settings.py").write_text(LEGACY_SETTINGS.format(data=tmp_path))
    (tmp_path / "tenancy_settings.py").write_text(TENANCY_SETTINGS.format(data=tmp_path))
    shop = tmp_path / "shop"
    (shop / "migrations").mkdir(parents=True)
    for name, text in [("__init__", ""), ("views", VIEWS), ("urls", URLS)]:
        (shop / f"{name}.py").write_text(text)
    (shop / "models.py").write_text(MODELS_BEFORE.format(constraint=""))
    (shop / "migrations" / "__init__.py").write_text("")

    # The project as it ran before, with its data.
    legacy = manager(tmp_path, "legacy_settings")
    legacy("makemigrations", "shop")
    legacy("migrate")
    legacy("shell", "-c", BEFORE)
    # Step 1: the foreign key without its constraint, then the same column as a plain
    # field, in the state only.
    (shop / "models.py").write_text(MODELS_BEFORE.format(constraint=", db_constraint=False"))
    legacy("makemigrations", "shop", "--name", "alter_order_owner")
    (shop / "models.py").write_text(MODELS)
    (shop / "migrations" / "0003_owner_id.py").write_text(STATE_ONLY)
    legacy("migrate")
    assert "No changes detected" in legacy("makemigrations", "shop", "--check", "--dry-run")
    # Step 2: the shared rows out, keeping their keys (tenant rows refer to them).
    shared = tmp_path / "shared.json"
    legacy("dumpdata", "auth.user", "auth.group", "--natural-foreign", "-o", str(shared))

    # Step 3: the new main database. A SQLite server's databases are files in its
    # DIRECTORY: the old file goes there under the name the tenant will adopt.
    (tmp_path / "one").mkdir()
    shutil.move(tmp_path / "legacy.sqlite3", tmp_path / "one" / "shop_legacy.sqlite3")
    manage = manager(tmp_path, "tenancy_settings")
    manage("migrate_tenants")
    manage("loaddata", str(shared))
    # Step 4: the old database adopted as the first tenant's.
    out = manage(
        "create_tenant", "acme", "--adopt-database", "shop_legacy", "--domain", "acme.localhost"
    )
    assert "Tenant acme is active with the existing database shop_legacy" in out

    seen = json.loads(manage("shell", "-c", AFTER).strip().splitlines()[-1])
    assert seen["status"] == 200
    assert seen["body"] == {"orders": [["anvil", seen["ann"]], ["rocket skates", seen["ann"]]]}
    # The users moved with their keys, the orders stayed: every order still names ann.
    assert seen["ann"] == 2
    # The main database holds no tenant app's table.
    tables = manage(
        "shell",
        "-c",
        "from django.db import connection; print(sorted(connection.introspection.table_names()))",
    )
    assert "shop_order" not in tables
    assert "tenancy_tenant" in tables
