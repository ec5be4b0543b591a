"""django-tenants as its installation guide sets it up, in ``bench_sc_dt``: the same tenant
apps in every schema, the contrib apps also shared in public."""

import os

from benchmarks.schema_project.settings_common import *  # noqa: F403
from benchmarks.schema_project.settings_common import CONTRIB, SERVER
from benchmarks.schema_project.settings_common import TENANT_APPS as _TENANT_APPS

CUSTOMERS = "benchmarks.request_path_project.customers"
SHARED_APPS = ["django_tenants", CUSTOMERS, *CONTRIB]
TENANT_APPS = _TENANT_APPS
INSTALLED_APPS = [*SHARED_APPS, "thirty"]
TENANT_MODEL = "customers.Client"
TENANT_DOMAIN_MODEL = "customers.Domain"
DATABASES = {
    "default": {**SERVER, "ENGINE": "django_tenants.postgresql_backend", "NAME": "bench_sc_dt"}
}
DATABASE_ROUTERS = ("django_tenants.routers.TenantSyncRouter",)
TENANT_MULTIPROCESSING_MAX_PROCESSES = 4

if os.environ.get("BENCH_BASE_SCHEMA"):  # provisioning by its clone_schema function
    TENANT_BASE_SCHEMA = os.environ["BENCH_BASE_SCHEMA"]
