"""Naming the tenant in log records and in SQL.

In ``LOGGING``::

    "filters": {"tenant": {"()": "tenancy.log.TenantLogFilter"}},
    "formatters": {"plain": {"format": "%(levelname)s [%(tenant)s] %(message)s"}},

and ``TENANCY["SQL_COMMENT"] = True`` starts every query on a tenant database with
``/* tenant=<slug> */``, so the server's own logs and ``pg_stat_activity`` name the tenant.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from tenancy.context import current_tenant

NO_TENANT = "-"


class TenantLogFilter(logging.Filter):
    """Adds ``record.tenant``: the current tenant's slug, or ``"-"`` outside any tenant."""

    def filter(self, record: logging.LogRecord) -> bool:
        tenant = current_tenant()
        record.tenant = tenant.slug if tenant is not None else NO_TENANT
        return True


class SqlComment:
    """A database execute wrapper prefixing each query with a comment naming the tenant."""

    def __init__(self, slug: str) -> None:
        # Slugs are validated DNS labels: no "*/", no "%".
        self.prefix = f"/* tenant={slug} */ "

    def __call__(
        self, execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any
    ) -> Any:
        return execute(self.prefix + sql, params, many, context)
