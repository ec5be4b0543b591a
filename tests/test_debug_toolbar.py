"""django-debug-toolbar on tenant hosts, against the real package."""

import re

import pytest
from django.conf import settings as django_settings
from django.core import checks
from django.test import Client

from tenancy.connections import alias_for, tenant_of_alias
from tenancy.debug_toolbar import SQL_PANEL, TOOLBAR_SQL_PANEL, panels
from tests.tenantapp.models import Note


@pytest.fixture
def toolbar(settings):
    """The toolbar on every page, with tenancy's SQL panel (the toolbar's modules are
    imported once it is installed: they read the app registry)."""
    registered = set(checks.registry.registry.registered_checks)
    settings.STATIC_URL = "/static/"
    settings.INSTALLED_APPS = [
        *django_settings.INSTALLED_APPS,
        "django.contrib.staticfiles",
        "debug_toolbar",
    ]
    settings.MIDDLEWARE = ["debug_toolbar.middleware.DebugToolbarMiddleware", *settings.MIDDLEWARE]
    settings.DEBUG = True
    settings.INTERNAL_IPS = ["127.0.0.1"]
    settings.DEBUG_TOOLBAR_PANELS = panels()
    settings.DEBUG_TOOLBAR_CONFIG = {"IS_RUNNING_TESTS": False}
    settings.ROOT_URLCONF = "tests.urls_debug_toolbar"
    yield
    # The toolbar registers its system checks on import, for every later check run.
    checks.registry.registry.registered_checks.intersection_update(registered)


def sql_panel(host):
    """The SQL panel's queries of a page of ``host`` and the panel as rendered."""
    from debug_toolbar.toolbar import DebugToolbar  # once the app is installed

    client = Client(HTTP_HOST=host)
    page = client.get("/notes-page/")
    assert page.status_code == 200, page.content
    request_id = re.search(rb'data-request-id="([0-9a-f]+)"', page.content)[1].decode()
    rendered = client.get(
        "/__debug__/render_panel/", {"request_id": request_id, "panel_id": "SQLPanel"}
    )
    assert rendered.status_code == 200
    stored = DebugToolbar.fetch(request_id, panel_id="SQLPanel")
    queries = stored.get_panel_by_id("SQLPanel").get_stats()["queries"]
    return request_id, queries, rendered.json()["content"]


def run_again(host, action, request_id, query):
    from debug_toolbar.forms import SignedDataForm

    signed = SignedDataForm.sign(
        {"request_id": request_id, "djdt_query_id": query["djdt_query_id"]}
    )
    return Client(HTTP_HOST=host).post(f"/__debug__/{action}/", {"signed": signed})


def test_the_sql_panel_lists_the_tenants_queries_beside_the_main_databases(notes, toolbar):
    alpha, _ = notes
    request_id, queries, content = sql_panel("alpha.example.test")
    alias = alias_for(alpha)  # tenant:alpha, or tenant:alpha#N once registered N times
    assert {query["alias"] for query in queries} == {"default", alias}
    tenant_queries = [query for query in queries if query["alias"] == alias]
    assert any(Note._meta.db_table in query["sql"] for query in tenant_queries)
    assert alias in content
    assert Note._meta.db_table in content
    # The other panels render on the tenant's host too.
    client = Client(HTTP_HOST="alpha.example.test")
    for panel in ("TemplatesPanel", "CachePanel", "SettingsPanel", "HeadersPanel"):
        response = client.get(
            "/__debug__/render_panel/", {"request_id": request_id, "panel_id": panel}
        )
        assert response.status_code == 200, panel


def test_a_tenants_query_runs_again_only_on_its_own_host(notes, toolbar):
    request_id, queries, _ = sql_panel("alpha.example.test")
    note_query = next(
        query
        for query in queries
        if tenant_of_alias(query["alias"]) == "alpha" and Note._meta.db_table in query["sql"]
    )
    own = run_again("alpha.example.test", "sql_select", request_id, note_query)
    assert own.status_code == 200
    assert "alpha note" in own.json()["content"]
    explained = run_again("alpha.example.test", "sql_explain", request_id, note_query)
    assert explained.status_code == 200

    # beta's page first, so that this thread holds a connection to each tenant's database.
    sql_panel("beta.example.test")
    for host in ("beta.example.test", "admin.example.test"):
        for action in ("sql_select", "sql_explain"):
            other = run_again(host, action, request_id, note_query)
            assert other.status_code == 400, (host, action)
            assert b"alpha note" not in other.content
            assert b"tenant 'alpha'" in other.content


def test_the_toolbars_own_sql_panel_is_reported(toolbar, settings):
    assert TOOLBAR_SQL_PANEL not in panels()
    assert SQL_PANEL in panels()
    assert not [m for m in checks.run_checks() if m.id == "tenancy.W004"]
    settings.DEBUG_TOOLBAR_PANELS = [TOOLBAR_SQL_PANEL]
    assert [m.id for m in checks.run_checks() if m.id == "tenancy.W004"] == ["tenancy.W004"]
