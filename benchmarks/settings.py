"""Settings of the benchmark project: Django's contrib apps and a generated app with 100
migrations are tenant apps; tenants live on one PostgreSQL cluster (TENANCY_TEST_PG_1),
addressed as three servers so that runs can pick disjoint groups of tenants.

With BENCH_STATIC_TENANTS=name,name,... the tenant databases are listed in DATABASES
instead and no router is installed: plain single-database Django, the baseline.
"""

import os

host, _, port = os.environ["TENANCY_TEST_PG_1"].rpartition(":")
SERVER = {
    "ENGINE": "django.db.backends.postgresql",
    "HOST": host,
    "PORT": port,
    "USER": "postgres",
}

SECRET_KEY = "benchmarks-only"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
TENANT_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "hundred",
]
INSTALLED_APPS = ["tenancy", *TENANT_APPS]
MIGRATION_MODULES = {"hundred": os.environ.get("BENCH_HUNDRED_MIGRATIONS", "hundred.migrations")}

DATABASES = {"default": {**SERVER, "NAME": "bench_main"}}
DATABASE_ROUTERS = ["tenancy.routers.TenantRouter"]
TENANCY = {
    "TENANT_APPS": TENANT_APPS,
    "SERVERS": {"fleet": SERVER, "jobs1": SERVER, "jobs4": SERVER, "ledger": SERVER},
    "DEFAULT_SERVER": "fleet",
    "DATABASE_NAME": "bench_{slug}",
}

STATIC_TENANTS = [name for name in os.environ.get("BENCH_STATIC_TENANTS", "").split(",") if name]
if STATIC_TENANTS:
    DATABASES.update({name: {**SERVER, "NAME": name} for name in STATIC_TENANTS})
    DATABASE_ROUTERS = []
    INSTALLED_APPS = TENANT_APPS
