"""Plain single-database Django: the notes are in ``default``."""

from benchmarks.request_path_project.settings_common import *  # noqa: F403
from benchmarks.request_path_project.settings_common import CONTRIB, NOTES, SERVER

INSTALLED_APPS = [*CONTRIB, NOTES]
DATABASES = {"default": {**SERVER, "NAME": "bench_path_plain"}}
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
