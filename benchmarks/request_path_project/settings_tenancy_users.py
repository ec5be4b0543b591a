"""tenancy with users per tenant: as settings_tenancy, but users and sessions are tenant apps,
so a signed-in request reads only the tenant's database (the main database holds the
registry alone)."""

from benchmarks.request_path_project.settings_common import *  # noqa: F403
from benchmarks.request_path_project.settings_common import CONTRIB, NOTES, SERVER
from benchmarks.request_path_project.settings_tenancy import *  # noqa: F403
from benchmarks.request_path_project.settings_tenancy import TENANCY

TENANCY = {**TENANCY, "TENANT_APPS": [*CONTRIB, NOTES], "DATABASE_NAME": "bench_path_u_{slug}"}
DATABASES = {"default": {**SERVER, "NAME": "bench_path_main_users"}}
