"""django-tenants (one schema per tenant), as its installation guide sets it up: users and
sessions in the public schema, the notes in the tenant's schema."""

from benchmarks.request_path_project.settings_common import *  # noqa: F403
from benchmarks.request_path_project.settings_common import CONTRIB, NOTES, SERVER

CUSTOMERS = "benchmarks.request_path_project.customers"
SHARED_APPS = ["django_tenants", CUSTOMERS, *CONTRIB]
TENANT_APPS = ["django.contrib.contenttypes", NOTES]
INSTALLED_APPS = [*SHARED_APPS, NOTES]
TENANT_MODEL = "customers.Client"
TENANT_DOMAIN_MODEL = "customers.Domain"
DATABASES = {
    "default": {**SERVER, "ENGINE": "django_tenants.postgresql_backend", "NAME": "bench_path_dt"}
}
DATABASE_ROUTERS = ("django_tenants.routers.TenantSyncRouter",)
MIDDLEWARE = [
    "django_tenants.middleware.main.TenantMainMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
