"""django-debug-toolbar's SQL panel with the tenant's queries.

Tenant connections are not in ``settings.DATABASES``, so the toolbar's own SQL panel,
which instruments ``connections.all()``, shows none of a tenant page's queries. This
panel instruments the tenant connections of the request's thread too; each query is
listed under its alias, ``tenant:<slug>``, beside the main database's. Its SELECT and
EXPLAIN buttons run a tenant's query again only on that tenant's own host::

    # settings.py
    from tenancy.debug_toolbar import panels

    DEBUG_TOOLBAR_PANELS = panels()  # the toolbar's default panels, this SQL panel in

The panel class is made on first use, after Django is set up (the toolbar's SQL module
reads the app registry when imported): ``panels()`` is safe to call in a settings module.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

TOOLBAR_SQL_PANEL = "debug_toolbar.panels.sql.SQLPanel"
SQL_PANEL = "tenancy.debug_toolbar.SQLPanel"


def panels(base: Iterable[str] | None = None) -> list[str]:
    """``base`` (the toolbar's default panels if ``None``) with its SQL panel replaced by
    the one that shows tenant queries."""
    if base is None:
        from debug_toolbar.settings import PANELS_DEFAULTS

        base = PANELS_DEFAULTS
    return [SQL_PANEL if panel == TOOLBAR_SQL_PANEL else panel for panel in base]


@functools.cache
def _sql_panel() -> type:
    from debug_toolbar.panels.sql import SQLPanel as ToolbarSQLPanel
    from debug_toolbar.panels.sql import views
    from debug_toolbar.panels.sql.tracking import wrap_cursor
    from django.db.backends.base.base import BaseDatabaseWrapper
    from django.urls import path

    from tenancy import connections

    # The toolbar finds the panel's data by class name: it must stay "SQLPanel".
    class SQLPanel(ToolbarSQLPanel):
        """The toolbar's SQL panel, with the tenant connections of the request's thread."""

        _unwatch: Callable[[], None] | None = None
        _instrumented: list[BaseDatabaseWrapper]

        def enable_instrumentation(self) -> None:
            super().enable_instrumentation()
            self._instrumented = []
            self._unwatch = connections.watch(self._instrument)

        def disable_instrumentation(self) -> None:
            super().disable_instrumentation()
            if self._unwatch is not None:
                self._unwatch()
                self._unwatch = None
            for wrapper in self._instrumented:
                wrapper._djdt_logger = None  # type: ignore[attr-defined]
            self._instrumented = []

        def _instrument(self, wrapper: BaseDatabaseWrapper) -> None:
            wrap_cursor(wrapper)
            wrapper._djdt_logger = self  # type: ignore[attr-defined]
            self._instrumented.append(wrapper)

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
    """``view`` (the panel's SELECT, EXPLAIN or profile) for a tenant's query only on that
    tenant's host, on the connection of the tenant's database it ran on."""
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
        alias = form.cleaned_data["query"]["alias"]
        slug = tenant_of_alias(alias)
        if slug is not None:
            tenant = current_tenant()
            if tenant is None or tenant.slug != slug:
                return HttpResponseBadRequest(
                    f"This query ran on tenant {slug!r}'s database: run it again from a "
                    "page of that tenant's own host."
                )
            if alias_for(tenant) != alias:
                return HttpResponseBadRequest(
                    f"Tenant {slug!r} moved to another database since this query ran: "
                    "load the page again."
                )
        return view(request)

    return checked


def __getattr__(name: str) -> Any:
    if name == "SQLPanel":
        return _sql_panel()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
