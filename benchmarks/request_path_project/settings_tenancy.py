"""tenancy (one database per tenant): users and sessions in the main database, the notes in
the tenant's database, the tenant found by its host in ``tenancy.Domain``."""

from benchmarks.request_path_project.settings_common import *  # noqa: F403
from benchmarks.request_path_project.settings_common import CONTRIB, NOTES, SERVER

INSTALLED_APPS = ["tenancy", *CONTRIB, NOTES]
DATABASES = {"default": {**SERVER, "NAME": "bench_path_main"}}
DATABASE_ROUTERS = ["tenancy.routers.TenantRouter"]
TENANCY = {
    "TENANT_APPS": [NOTES],
    "SERVERS": {"pg": SERVER},
    "DEFAULT_SERVER": "pg",
    "DATABASE_NAME": "bench_path_t_{slug}",
    "RESOLVER": "host",
    "USE_TEMPLATE_DATABASES": False,
    "SPARE_DATABASES": 0,
}
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "tenancy.middleware.TenantMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
