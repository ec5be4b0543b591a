"""tenancy with the tenants as schemas of the main database (django-tenants' layout): as
settings_tenancy_schemas, but the schema server names the main database, so that the main
database's statements and the tenant's share one connection per thread."""

from benchmarks.request_path_project.settings_common import *  # noqa: F403
from benchmarks.request_path_project.settings_tenancy import *  # noqa: F403
from benchmarks.request_path_project.settings_tenancy import SERVER, TENANCY

DATABASES = {"default": {**SERVER, "NAME": "bench_path_main_in"}}
TENANCY = {
    **TENANCY,
    "SERVERS": {"pg": {**SERVER, "PLACEMENT": "schemas", "DATABASE": "bench_path_main_in"}},
}
