"""tenancy with schema placement: as settings_tenancy, but the tenant is a schema of the
shared database ``bench_path_shared`` (one connection per thread for all its tenants)."""

from benchmarks.request_path_project.settings_common import *  # noqa: F403
from benchmarks.request_path_project.settings_tenancy import *  # noqa: F403
from benchmarks.request_path_project.settings_tenancy import SERVER, TENANCY

TENANCY = {
    **TENANCY,
    "SERVERS": {"pg": {**SERVER, "PLACEMENT": "schemas", "DATABASE": "bench_path_shared"}},
}
DATABASES = {"default": {**SERVER, "NAME": "bench_path_main_schemas"}}
