"""tenancy with one server holding its tenants as schemas of ``bench_sc_shared``; the
registry in ``bench_sc_main``."""

from benchmarks.schema_project.settings_common import *  # noqa: F403
from benchmarks.schema_project.settings_common import SERVER, TENANT_APPS

INSTALLED_APPS = ["tenancy", *TENANT_APPS]
DATABASES = {"default": {**SERVER, "NAME": "bench_sc_main"}}
DATABASE_ROUTERS = ["tenancy.routers.TenantRouter"]
TENANCY = {
    "TENANT_APPS": TENANT_APPS,
    "SERVERS": {"shared": {**SERVER, "PLACEMENT": "schemas", "DATABASE": "bench_sc_shared"}},
    "DEFAULT_SERVER": "shared",
    "DATABASE_NAME": "t_{slug}",
}
