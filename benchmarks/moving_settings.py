"""Settings of benchmarks/moving.py: two servers, the clusters of TENANCY_TEST_PG_1 and
TENANCY_TEST_PG_2; the tenant app is request_path's ``notes``."""

from benchmarks.postgres import server

SECRET_KEY = "benchmarks-only"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
NOTES = "benchmarks.request_path_project.notes"
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "tenancy", NOTES]
DATABASES = {"default": {**server(1), "NAME": "bench_move_main"}}
DATABASE_ROUTERS = ["tenancy.routers.TenantRouter"]
TENANCY = {
    "TENANT_APPS": [NOTES],
    "SERVERS": {"one": server(1), "two": server(2)},
    "DEFAULT_SERVER": "one",
    "DATABASE_NAME": "bench_move_{slug}",
    "USE_TEMPLATE_DATABASES": False,
    "SPARE_DATABASES": 0,
}
