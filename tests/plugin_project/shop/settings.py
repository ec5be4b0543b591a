"""A small project using tenancy, for the tests of tenancy's test support.

It runs on the backend the suite runs on (TENANCY_TEST_BACKEND): two PostgreSQL servers
from TENANCY_TEST_PG_1/2, or two SQLite directories beside this file.
"""

import os
from pathlib import Path

BASE = Path(__file__).resolve().parent.parent

SECRET_KEY = "tests-only-not-secret"
USE_TZ = True
ROOT_URLCONF = "shop.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "tenancy",
    "notes",
]
MIDDLEWARE = ["tenancy.middleware.TenantMiddleware"]
DATABASE_ROUTERS = ["tenancy.routers.TenantRouter"]


def _postgres(variable):
    # One cluster stands in for both servers when only one is given (the benchmarks). Not
    # through PgBouncer, when the suite runs behind one: Django cannot drop a test database
    # that PgBouncer still holds a server connection to.
    address = os.environ.get(variable, os.environ["TENANCY_TEST_PG_1"])
    address = os.environ.get(variable.replace("_PG_", "_PG_DIRECT_"), address)
    host, _, port = address.rpartition(":")
    return {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": host,
        "PORT": port,
        "USER": "postgres",
    }


if os.environ.get("TENANCY_TEST_BACKEND") == "postgresql":
    SERVERS = {"main": _postgres("TENANCY_TEST_PG_1"), "second": _postgres("TENANCY_TEST_PG_2")}
    DATABASES = {"default": {**SERVERS["main"], "NAME": "shop"}}
else:
    SERVERS = {
        "main": {"ENGINE": "django.db.backends.sqlite3", "DIRECTORY": BASE / "tenants"},
        "second": {"ENGINE": "django.db.backends.sqlite3", "DIRECTORY": BASE / "tenants2"},
    }
    DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": BASE / "main.db"}}

TENANCY = {
    "TENANT_APPS": ["notes"],
    "SERVERS": SERVERS,
    "DEFAULT_SERVER": "main",
    "DATABASE_NAME": "shop_{slug}",
}

if os.environ.get("SHOP_SCHEMAS"):  # tenants as schemas of a shared database (PostgreSQL)
    SERVERS["schemas"] = {**SERVERS["second"], "PLACEMENT": "schemas", "DATABASE": "shop_schemas"}
    TENANCY["DEFAULT_SERVER"] = "schemas"

if os.environ.get("SHOP_MAIN_SCHEMAS"):  # tenants as schemas of the main database
    SERVERS["inmain"] = {**SERVERS["main"], "PLACEMENT": "schemas", "DATABASE": "shop"}
    TENANCY["DEFAULT_SERVER"] = "inmain"
