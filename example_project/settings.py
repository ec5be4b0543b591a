"""Settings of the example project: a small SaaS with one SQLite file per tenant."""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("TENANCY_EXAMPLE_DATA", BASE_DIR / "var" / "example"))
DATA_DIR.mkdir(parents=True, exist_ok=True)

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-secret")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["localhost", ".localhost", "127.0.0.1"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "tenancy",
    "example_project.projects",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "tenancy.middleware.TenantMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "example_project.urls"
WSGI_APPLICATION = "example_project.wsgi.application"
ASGI_APPLICATION = "example_project.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "example_project" / "templates"],
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


# The main database: tenant registry, users, sessions, admin. SQLite files under DATA_DIR by
# default; PostgreSQL with TENANCY_EXAMPLE_POSTGRES=host:port (user "postgres", or
# TENANCY_EXAMPLE_PGUSER/PGPASSWORD), and a second server for some tenants with
# TENANCY_EXAMPLE_POSTGRES_2=host:port.
def _postgres(address: str) -> dict[str, object]:
    host, _, port = address.rpartition(":")
    return {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": host,
        "PORT": port,
        "USER": os.environ.get("TENANCY_EXAMPLE_PGUSER", "postgres"),
        "PASSWORD": os.environ.get("TENANCY_EXAMPLE_PGPASSWORD", ""),
    }


if os.environ.get("TENANCY_EXAMPLE_POSTGRES"):
    SERVERS = {"main": _postgres(os.environ["TENANCY_EXAMPLE_POSTGRES"])}
    if os.environ.get("TENANCY_EXAMPLE_POSTGRES_2"):
        SERVERS["second"] = _postgres(os.environ["TENANCY_EXAMPLE_POSTGRES_2"])
    DATABASES = {"default": {**SERVERS["main"], "NAME": "tenancy_example"}}
else:
    # Writers from several threads or processes (a threaded server, commands): take the
    # write lock when a transaction starts and wait for it, instead of failing with
    # "database is locked" when a reading transaction wants to write.
    SQLITE_OPTIONS = {"transaction_mode": "IMMEDIATE", "timeout": 20}
    SERVERS = {
        "main": {
            "ENGINE": "django.db.backends.sqlite3",
            "DIRECTORY": DATA_DIR / "tenants",
            "OPTIONS": SQLITE_OPTIONS,
        },
        # Another directory stands in for another server: `manage.py move_tenant SLUG
        # --server second` moves a tenant there.
        "second": {
            "ENGINE": "django.db.backends.sqlite3",
            "DIRECTORY": DATA_DIR / "tenants-second",
            "OPTIONS": SQLITE_OPTIONS,
        },
    }
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": DATA_DIR / "main.sqlite3",
            "OPTIONS": SQLITE_OPTIONS,
        },
    }
DATABASE_ROUTERS = ["tenancy.routers.TenantRouter"]

TENANCY = {
    "TENANT_APPS": ["example_project.projects"],
    "SERVERS": SERVERS,
    "DEFAULT_SERVER": "main",
    "RESOLVER": "host",
    "PUBLIC_HOSTS": ["localhost", "127.0.0.1"],
    "DATABASE_NAME": "example_tenant_{slug}",
    # The platform admin only on the main site, the tenants' pages only on tenants' hosts.
    "PUBLIC_URLCONF": "example_project.urls",
    "TENANT_URLCONF": "example_project.tenant_urls",
}

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

USE_TZ = True
STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
