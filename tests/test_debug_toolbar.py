"""django-debug-toolbar on tenant hosts, against the real package."""

import re

import pytest
from django.conf import settings as django_settings
from django.core import checks
from django.test import Client

from tenancy import connections
from tenancy.connections import alias_for, attached_aliases, tenant_of_alias
from tenancy.debug_toolbar import SQL_PANEL, STORE, panels
from tests.tenantapp.models import Note

TOOLBAR_MIDDLEWARE = "debug_toolbar.middleware.DebugToolbarMiddleware"


@pytest.fixture
def toolbar(settings):
    """The toolbar on every page, set up as tenancy.debug_toolbar says, with persistent
    tenant connections (a thread keeps every tenant's it used). The toolbar's modules are
    imported once it is installed: they read the app registry."""
    registered = set(checks.registry.registry.registered_checks)
    settings.STATIC_URL = "/static/"
    settings.INSTALLED_APPS = [
        *django_settings.INSTALLED_APPS,
        "django.contrib.staticfiles",
        "debug_toolbar",
    ]
    middleware = list(settings.MIDDLEWARE)
    middleware.insert(
        middleware.index("tenancy.middleware.TenantMiddleware") + 1, TOOLBAR_MIDDLEWARE
    )
    settings.MIDDLEWARE = middleware
    settings.DEBUG = True
    settings.INTERNAL_IPS = ["127.0.0.1"]
    settings.DEBUG_TOOLBAR_PANELS = panels()
    settings.DEBUG_TOOLBAR_CONFIG = {"IS_RUNNING_TESTS": False, "TOOLBAR_STORE_CLASS": STORE}
    settings.ROOT_URLCONF = "tests.urls_debug_toolbar"
    servers = django_settings.TENANCY["SERVERS"]
    settings.TENANCY = {
        **django_settings.TENANCY,
        "SERVERS": {name: {**server, "CONN_MAX_AGE": None} for name, server in servers.items()},
    }
    yield
    connections.close_all()
    # The toolbar registers its system checks on import, for every later check run.
    checks.registry.registry.registered_checks.intersection_update(registered)


def page(host, query=None):
    """The request id of the toolbar on a page of ``host``."""
    response = Client(HTTP_HOST=host).get("/notes-page/", query or {})
    assert response.status_code == 200, response.content
    return re.search(rb'data-request-id="([0-9a-f]+)"', response.content)[1].decode()


def sql_panel(host, request_id):
    """The SQL panel of ``request_id`` rendered on ``host``, and its queries."""
    from debug_toolbar.toolbar import DebugToolbar

    from tenancy import tenant_context
    from tenancy.context import find_by_slug

    rendered = Client(HTTP_HOST=host).get(
        "/__debug__/render_panel/", {"request_id": request_id, "panel_id": "SQLPanel"}
    )
    assert rendered.status_code == 200
    with tenant_context(find_by_slug(host.partition(".")[0])):  # the store keeps it there
        stored = DebugToolbar.fetch(request_id, panel_id="SQLPanel")
        queries = stored.get_panel_by_id("SQLPanel").get_stats()["queries"]
    return rendered.json()["content"], queries


def run_again(host, action, request_id, query):
    from debug_toolbar.forms import SignedDataForm

    signed = SignedDataForm.sign(
        {"request_id": request_id, "djdt_query_id": query["djdt_query_id"]}
    )
    return Client(HTTP_HOST=host).post(f"/__debug__/{action}/", {"signed": signed})


def note_query(queries, slug="alpha", verb="SELECT"):
    return next(
        query
        for query in queries
        if tenant_of_alias(query["alias"]) == slug
        and query["sql"].startswith(verb)
        and Note._meta.db_table in query["sql"]
    )


def test_the_sql_panel_lists_the_tenants_queries_beside_the_main_databases(notes, toolbar):
    alpha, _ = notes
    request_id = page("alpha.example.test")
    content, queries = sql_panel("alpha.example.test", request_id)
    alias = alias_for(alpha)  # tenant:alpha, or tenant:alpha#N once registered N times
    assert {query["alias"] for query in queries} == {"default", alias}
    assert note_query(queries)["alias"] == alias
    assert alias in content
    assert Note._meta.db_table in content
    # The other panels render on the tenant's host too.
    client = Client(HTTP_HOST="alpha.example.test")
    for panel in ("TemplatesPanel", "CachePanel", "SettingsPanel", "HeadersPanel"):
        response = client.get(
            "/__debug__/render_panel/", {"request_id": request_id, "panel_id": panel}
        )
        assert response.status_code == 200, panel
    # Nothing is left watching the thread's connections once the request is over.
    assert connections._thread.watchers == []


@pytest.mark.parametrize("store", [STORE, "debug_toolbar.store.MemoryStore"])
def test_a_tenants_query_runs_again_only_on_its_own_host(notes, toolbar, settings, store):
    # With the toolbar's own store (which tenancy.W004 reports), beta's host can read
    # alpha's recorded query: the panel's views still refuse to run it there.
    settings.DEBUG_TOOLBAR_CONFIG = {**settings.DEBUG_TOOLBAR_CONFIG, "TOOLBAR_STORE_CLASS": store}
    request_id = page("alpha.example.test")
    _, queries = sql_panel("alpha.example.test", request_id)
    select = note_query(queries)
    own = run_again("alpha.example.test", "sql_select", request_id, select)
    assert own.status_code == 200
    assert "alpha note" in own.json()["content"]
    explained = run_again("alpha.example.test", "sql_explain", request_id, select)
    assert explained.status_code == 200

    page("beta.example.test")
    # This thread now holds a connection to each tenant's database, so only the checks
    # stand between beta's host and alpha's rows.
    assert {tenant_of_alias(alias) for alias in attached_aliases()} == {"alpha", "beta"}
    for host in ("beta.example.test", "admin.example.test"):
        for action in ("sql_select", "sql_explain", "sql_profile"):
            other = run_again(host, action, request_id, select)
            assert other.status_code == 400, (host, action)
            assert b"alpha note" not in other.content
            if store != STORE:  # found, and refused by the panel's views
                assert b"tenant 'alpha'" in other.content


def test_a_write_is_never_run_again(notes, toolbar):
    request_id = page("alpha.example.test", {"write": "written once"})
    _, queries = sql_panel("alpha.example.test", request_id)
    insert = note_query(queries, verb="INSERT")
    for action in ("sql_select", "sql_explain"):
        response = run_again("alpha.example.test", action, request_id, insert)
        assert response.status_code == 400
        assert b"Only a SELECT" in response.content
    alpha, _ = notes
    from tenancy import tenant_context

    with tenant_context(alpha):
        assert Note.objects.filter(text="written once").count() == 1


def test_each_sites_requests_are_kept_to_that_site(notes, toolbar):
    secret = "alpha-secret-value-7"
    request_id = page("alpha.example.test", {"write": secret})
    content, _ = sql_panel("alpha.example.test", request_id)
    assert secret in content  # the toolbar shows the query's values
    for host in ("beta.example.test", "admin.example.test"):
        client = Client(HTTP_HOST=host)
        history = client.get(
            "/__debug__/history_refresh/", {"request_id": request_id, "exclude_history": True}
        )
        assert request_id not in history.content.decode()
        rendered = client.get(
            "/__debug__/render_panel/", {"request_id": request_id, "panel_id": "SQLPanel"}
        )
        assert secret not in rendered.json()["content"]
        assert "available anymore" in rendered.json()["content"]


def test_a_panel_left_watching_sees_no_later_request(notes, toolbar, monkeypatch):
    from debug_toolbar.panels.cache import CachePanel

    def fail(self):
        raise RuntimeError("a panel failed to start")

    # A panel enabled after the SQL panel fails: the toolbar never disables the SQL panel.
    monkeypatch.setattr(CachePanel, "enable_instrumentation", fail)
    with pytest.raises(RuntimeError):
        Client(HTTP_HOST="alpha.example.test").get("/notes-page/")
    monkeypatch.undo()
    [left] = connections._thread.watchers
    panel = left.callback.__self__
    recorded = len(panel._queries)
    # The thread's next request, of another tenant, without the toolbar.
    response = Client(HTTP_HOST="beta.example.test", REMOTE_ADDR="10.0.0.9").get("/notes/")
    assert response.json() == {"notes": ["beta note"]}
    assert connections._thread.watchers == []
    assert len(panel._queries) == recorded


def test_a_toolbar_not_set_up_for_tenants_is_reported(toolbar, settings):
    def reported():
        return [m.msg for m in checks.run_checks() if m.id == "tenancy.W004"]

    assert SQL_PANEL in panels()
    assert not [panel for panel in panels() if panel.startswith("debug_toolbar.panels.sql")]
    assert reported() == []
    settings.DEBUG_TOOLBAR_PANELS = ["debug_toolbar.panels.sql.panel.SQLPanel"]
    settings.DEBUG_TOOLBAR_CONFIG = {"IS_RUNNING_TESTS": False}
    settings.MIDDLEWARE = [TOOLBAR_MIDDLEWARE, *django_settings.MIDDLEWARE]
    found = reported()
    assert len(found) == 3
    assert "own SQL panel" in found[0]
    assert "one store" in found[1]
    assert "comes before tenancy.middleware.TenantMiddleware" in found[2]


def test_the_sql_panel_lists_the_tenants_queries_under_asgi(notes, toolbar):
    from asgiref.sync import async_to_sync

    from tenancy.testing import TenantAsyncClient

    alpha, _ = notes
    client = TenantAsyncClient(alpha)  # finds alpha's host: not in the event loop

    async def get():
        return await client.get("/notes-page/")

    response = async_to_sync(get)()
    assert response.status_code == 200
    request_id = re.search(rb'data-request-id="([0-9a-f]+)"', response.content)[1].decode()
    _, queries = sql_panel("alpha.example.test", request_id)
    assert tenant_of_alias(note_query(queries)["alias"]) == "alpha"
    assert "default" in {query["alias"] for query in queries}
