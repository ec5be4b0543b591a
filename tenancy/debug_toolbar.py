"""django-debug-toolbar on tenant hosts: the tenant's queries in the SQL panel, and each
site's toolbar data kept to that site.

Tenant connections are not in ``settings.DATABASES``, so the toolbar's own SQL panel,
which instruments ``connections.all()``, shows none of a tenant page's queries. This
module's ``SQLPanel`` instruments the tenant connections of the request's thread too;
each query is listed under its alias, ``tenant:<slug>``, beside the main database's. Its
SELECT and EXPLAIN buttons run a tenant's query again only on that tenant's own host.

The toolbar keeps what it recorded of each request (SQL with its values, headers,
templates' context) in one store for the whole process, which any host's toolbar can
read back. ``TenantStore`` keeps each tenant's requests, and the main site's, apart: a
toolbar opened on one site finds no other site's requests::

    # settings.py
    from tenancy.debug_toolbar import panels

    DEBUG_TOOLBAR_PANELS = panels()  # the toolbar's default panels, this SQL panel in
    DEBUG_TOOLBAR_CONFIG = {"TOOLBAR_STORE_CLASS": "tenancy.debug_toolbar.TenantStore"}
    MIDDLEWARE = [
        ...,
        "tenancy.middleware.TenantMiddleware",
        "debug_toolbar.middleware.DebugToolbarMiddleware",  # after TenantMiddleware
        ...,
    ]

The classes are made on first use, after Django is set up (the toolbar's modules read the
app registry when imported): ``panels()`` is safe to call in a settings module.
"""

from __future__ import annotations

import functools
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

TOOLBAR_SQL_PANELS = frozenset(
    {"debug_toolbar.panels.sql.SQLPanel", "debug_toolbar.panels.sql.panel.SQLPanel"}
)
SQL_PANEL = "tenancy.debug_toolbar.SQLPanel"
STORE = "tenancy.debug_toolbar.TenantStore"


def panels(base: Iterable[str] | None = None) -> list[str]:
    """``base`` (the toolbar's default panels if ``None``) with its SQL panel replaced by
    the one that shows tenant queries."""
    if base is None:
        from debug_toolbar.settings import PANELS_DEFAULTS

        base = PANELS_DEFAULTS
    return [SQL_PANEL if panel in TOOLBAR_SQL_PANELS else panel for panel in base]


@functools.cache
def _sql_panel() -> type:
    from debug_toolbar.panels.sql import SQLPanel as ToolbarSQLPanel
    from debug_toolbar.panels.sql import views
    from debug_toolbar.panels.sql.tracking import wrap_cursor
    from django.db import connections as db_connections
    from django.db.backends.base.base import BaseDatabaseWrapper
    from django.urls import path

    from tenancy import connections

    # The toolbar finds the panel's data by class name: it must stay "SQLPanel".
    class SQLPanel(ToolbarSQLPanel):
        """The toolbar's SQL panel, with the tenant connections of the request's thread."""

        _unwatch: Callable[[], None] | None = None
        _instrumented: list[BaseDatabaseWrapper] | None = None

        def enable_instrumentation(self) -> None:
            self._stop_watching()  # enabled twice: one watch
            super().enable_instrumentation()
            self._instrumented = []
            self._unwatch = connections.watch(self._instrument, self._release)

        def disable_instrumentation(self) -> None:
            try:
                super().disable_instrumentation()
            finally:
                self._stop_watching()

        def _stop_watching(self) -> None:
            if self._unwatch is not None:
                self._unwatch()
                self._unwatch = None
            self._release()

        def _instrument(self, wrapper: BaseDatabaseWrapper) -> None:
            wrap_cursor(wrapper)
            wrapper._djdt_logger = self  # type: ignore[attr-defined]
            if self._instrumented is not None:
                self._instrumented.append(wrapper)

        def _release(self) -> None:
            """Stop recording queries into this panel: the tenant connections', and the
            configured databases' (left recording when the toolbar did not disable the
            panel: a panel enabled after it failed)."""
            wrappers = [*(self._instrumented or ()), *db_connections.all(initialized_only=True)]
            for wrapper in wrappers:
                if getattr(wrapper, "_djdt_logger", None) is self:
                    wrapper._djdt_logger = None
            self._instrumented = None

        @classmethod
        def get_urls(cls) -> list[Any]:
            return [
                path("sql_select/", _on_own_host(views.sql_select), name="sql_select"),
                path("sql_explain/", _on_own_host(views.sql_explain), name="sql_explain"),
                path("sql_profile/", _on_own_host(views.sql_profile), name="sql_profile"),
            ]

    SQLPanel.__module__ = __name__
    SQLPanel.__qualname__ = "SQLPanel"
    return SQLPanel


def _on_own_host(view: Callable[..., Any]) -> Callable[..., Any]:
    """``view`` (the panel's SELECT, EXPLAIN or profile) for a query that only reads, and
    for a tenant's query only on that tenant's host, on the database it ran on."""
    from debug_toolbar.panels.sql.forms import SQLSelectForm
    from debug_toolbar.panels.sql.views import get_signed_data
    from django.http import HttpResponseBadRequest

    from tenancy.connections import alias_for, tenant_of_alias
    from tenancy.context import current_tenant

    @functools.wraps(view)
    def checked(request: Any) -> Any:
        data = get_signed_data(request)
        form = SQLSelectForm(data) if data else None
        if form is None or not form.is_valid():
            return view(request)  # the toolbar's own answer to a bad request
        query = form.cleaned_data["query"]
        if not query["raw_sql"].lstrip().upper().startswith("SELECT"):
            # EXPLAIN ANALYZE would run an INSERT, UPDATE or DELETE again.
            return HttpResponseBadRequest("Only a SELECT is run again.")
        slug = tenant_of_alias(query["alias"])
        if slug is not None:
            tenant = current_tenant()
            if tenant is None or tenant.slug != slug:
                return HttpResponseBadRequest(
                    f"This query ran on tenant {slug!r}'s database: run it again from a "
                    "page of that tenant's own host."
                )
            if alias_for(tenant) != query["alias"]:
                return HttpResponseBadRequest(
                    f"Tenant {slug!r} moved to another database since this query ran: "
                    "load the page again."
                )
        return view(request)

    return checked


@functools.cache
def _tenant_store() -> type:
    from debug_toolbar.store import BaseStore, MemoryStore

    from tenancy.context import current_tenant

    class Requests(MemoryStore):
        """The toolbar's memory store, with requests of its own."""

        _request_ids: deque[str] = deque()
        _request_store: defaultdict[str, dict[str, Any]] = defaultdict(dict)

    def site() -> str:
        tenant = current_tenant()
        return "" if tenant is None else f"{tenant.pk}:{tenant.slug}"

    def key(request_id: str) -> str:
        return f"{site()}/{request_id}"

    class TenantStore(BaseStore):
        """The toolbar's memory store, with each site's requests apart: the current
        tenant's (or the main site's) are the only ones it lists, reads or changes."""

        @classmethod
        def request_ids(cls) -> list[str]:
            prefix = f"{site()}/"
            return [
                stored.removeprefix(prefix)
                for stored in Requests.request_ids()
                if stored.startswith(prefix)
            ]

        @classmethod
        def exists(cls, request_id: str) -> bool:
            return bool(Requests.exists(key(request_id)))

        @classmethod
        def set(cls, request_id: str) -> None:
            Requests.set(key(request_id))

        @classmethod
        def clear(cls) -> None:
            for request_id in cls.request_ids():
                cls.delete(request_id)

        @classmethod
        def delete(cls, request_id: str) -> None:
            Requests.delete(key(request_id))

        @classmethod
        def save_panel(cls, request_id: str, panel_id: str, data: Any = None) -> None:
            Requests.save_panel(key(request_id), panel_id, data)

        @classmethod
        def panel(cls, request_id: str, panel_id: str) -> Any:
            return Requests.panel(key(request_id), panel_id)

        @classmethod
        def panels(cls, request_id: str) -> Iterator[tuple[str, Any]]:
            return iter(Requests.panels(key(request_id)))

    TenantStore.__module__ = __name__
    TenantStore.__qualname__ = "TenantStore"
    return TenantStore


def __getattr__(name: str) -> Any:
    if name == "SQLPanel":
        return _sql_panel()
    if name == "TenantStore":
        return _tenant_store()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
