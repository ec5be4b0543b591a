"""What both settings modules share: one PostgreSQL cluster (TENANCY_TEST_PG_1), Django's
contrib apps and a generated app with 30 migrations (``thirty``, its 31st in
``thirty.migrations_plus`` with BENCH_THIRTY_MIGRATIONS) as the tenant apps."""

import os

from benchmarks.postgres import server

SERVER = server()
SECRET_KEY = "benchmarks-only"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
CONTRIB = ["django.contrib.contenttypes", "django.contrib.auth", "django.contrib.sessions"]
TENANT_APPS = [*CONTRIB, "thirty"]
MIGRATION_MODULES = {"thirty": os.environ.get("BENCH_THIRTY_MIGRATIONS", "thirty.migrations")}
