"""Settings for the test suite.

TENANCY_TEST_BACKEND selects where the main database and the two tenant servers live:
"postgresql" (two clusters, TENANCY_TEST_PG_1 and TENANCY_TEST_PG_2 as host:port, as
scripts/with-postgres exports them) or "sqlite" (two directories).
"""

import os
import tempfile
from pathlib import Path
from typing import Any

from django.core.exceptions import ImproperlyConfigured

BACKEND = os.environ.get("TENANCY_TEST_BACKEND", "sqlite")
PGBOUNCER = bool(os.environ.get("TENANCY_TEST_PGBOUNCER"))

SECRET_KEY = "tests-only-not-secret"
DEBUG = False
USE_TZ = True
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "tests.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.messages",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "tenancy",
    "tests.sharedapp",
    "tests.tenantapp",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "tenancy.middleware.TenantMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]
DATABASE_ROUTERS = ["tenancy.routers.TenantRouter"]


def _postgres(variable: str) -> dict[str, Any]:
    address = os.environ.get(variable)
    if not address:
        raise ImproperlyConfigured(
            f"TENANCY_TEST_BACKEND=postgresql needs {variable} (host:port); run the suite "
            "with `make test`, which starts the clusters."
        )
    host, _, port = address.rpartition(":")
    return {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": host,
        "PORT": port,
        "USER": "postgres",
        # Behind PgBouncer in transaction pooling (scripts/with-postgres --pgbouncer), a
        # server-side cursor would outlive its transaction's server connection.
        "DISABLE_SERVER_SIDE_CURSORS": PGBOUNCER,
    }


# Behind PgBouncer: the fleet's server connections per cluster (PgBouncer's
# max_user_connections, in the configuration manage.py pgbouncer_config writes).
CONNECTION_BUDGET = 250


def _direct(server: dict[str, Any], variable: str) -> dict[str, Any]:
    """Behind PgBouncer, the cluster's own address for pg_dump and pg_restore."""
    if not PGBOUNCER:
        return server
    host, _, port = os.environ[variable].rpartition(":")
    return {
        **server,
        "DIRECT": {"HOST": host, "PORT": port},
        "TRANSACTION_POOLING": True,
        "CONNECTION_BUDGET": CONNECTION_BUDGET,
    }


if BACKEND == "postgresql":
    SERVER_1, SERVER_2 = _postgres("TENANCY_TEST_PG_1"), _postgres("TENANCY_TEST_PG_2")
    DATABASES = {"default": {**SERVER_1, "NAME": "tenancy"}}
    SERVER_1 = _direct(SERVER_1, "TENANCY_TEST_PG_DIRECT_1")
    SERVER_2 = _direct(SERVER_2, "TENANCY_TEST_PG_DIRECT_2")
elif BACKEND == "sqlite":
    _files = Path(tempfile.mkdtemp(prefix="tenancy-tests-"))
    SERVER_1 = {"ENGINE": "django.db.backends.sqlite3", "DIRECTORY": _files / "server1"}
    SERVER_2 = {"ENGINE": "django.db.backends.sqlite3", "DIRECTORY": _files / "server2"}
    DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": _files / "main.db"}}
else:
    raise ImproperlyConfigured(f"TENANCY_TEST_BACKEND must be postgresql or sqlite, not {BACKEND}")

TENANCY = {
    "TENANT_APPS": ["tests.tenantapp"],
    # The main site (and the admin) in the tests.
    "PUBLIC_HOSTS": ["admin.example.test"],
    "SERVERS": {"one": SERVER_1, "two": SERVER_2},
    "DEFAULT_SERVER": "one",
    # Spares are tested by the tests that ask for them (and the example project's, which
    # runs with the default): elsewhere they would only add a copy wherever a test makes
    # the template again.
    "SPARE_DATABASES": 0,
    # Under pytest, tenancy's plugin names them test_tenancy_<slug>, as Django names
    # test databases, so tests never touch a real tenant.
    "DATABASE_NAME": "tenancy_{slug}",
}
