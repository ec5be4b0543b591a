"""Sphinx configuration: ``make docs`` builds the site into docs/_build/html."""

import sys
from pathlib import Path

import django
from django.conf import settings

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "docs" / "_ext"))

# The API reference imports tenancy's modules, which need Django set up.
settings.configure(
    SECRET_KEY="docs",
    INSTALLED_APPS=[
        "django.contrib.admin",
        "django.contrib.auth",
        "django.contrib.contenttypes",
        "django.contrib.messages",
        "django.contrib.sessions",
        "tenancy",
    ],
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
    DATABASE_ROUTERS=["tenancy.routers.TenantRouter"],
    USE_TZ=True,
)
django.setup()

try:
    import django.tasks
except ImportError:  # Django 5.2: tenancy.tasks needs Django 6's task framework
    autodoc_mock_imports = ["django.tasks"]

project = "tenancy"
author = "tenancy contributors"
copyright = "2026, tenancy contributors"

extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx_rtd_theme", "django_commands"]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build"]
myst_heading_anchors = 4
myst_enable_extensions = ["deflist"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
html_theme = "sphinx_rtd_theme"
html_title = "tenancy"
