"""What the three settings modules share. BENCH_CONN_MAX_AGE: the connections' CONN_MAX_AGE."""

import os

host, _, port = os.environ.get("TENANCY_TEST_PG_1", "127.0.0.1:5432").rpartition(":")
SERVER = {
    "ENGINE": "django.db.backends.postgresql",
    "HOST": host,
    "PORT": port,
    "USER": "postgres",
    "CONN_MAX_AGE": int(os.environ.get("BENCH_CONN_MAX_AGE", "600")),
}
SECRET_KEY = "benchmarks-only"
DEBUG = False
USE_TZ = True
ALLOWED_HOSTS = [".localhost"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
ROOT_URLCONF = "benchmarks.request_path_project.urls"
NOTES = "benchmarks.request_path_project.notes"
CONTRIB = ["django.contrib.contenttypes", "django.contrib.auth", "django.contrib.sessions"]
