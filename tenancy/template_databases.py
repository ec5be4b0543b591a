"""Template databases: new tenants are copies of a database kept at the current schema.

Each server has one template database (``TENANCY['DATABASE_NAME']`` with the slug
``_template``, which no tenant can have). Before a copy, the template is brought up to
date with the same cheap check as ``migrate_tenants`` (one query when nothing changed), so
it follows new migrations by itself. The work happens under a per-server lock, because
PostgreSQL refuses to copy a template while anyone is connected to it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from tenancy.backends import get_server
from tenancy.backends.base import TemplateInUse, TemplateMissing
from tenancy.conf import tenancy_settings
from tenancy.connections import unregister
from tenancy.exceptions import TenancyError
from tenancy.migration import MigrationState, migrate_tenant, migration_state

if TYPE_CHECKING:
    from tenancy.models import AbstractTenant

logger = logging.getLogger("tenancy.templates")

__all__ = ["TemplateInUse", "create_database_from_template", "template_for"]


@dataclass(frozen=True)
class TemplateDatabase:
    """Stands in for a tenant where connections and migrations need one."""

    slug: str
    server: str
    database_name: str
    is_template: bool = True


def template_for(server: str) -> TemplateDatabase:
    # "." never appears in a slug, so the template's alias cannot clash with a tenant's.
    return TemplateDatabase(
        f"_template.{server}", server, tenancy_settings.template_database_name()
    )


def create_database_from_template(tenant: AbstractTenant) -> bool:
    """Create ``tenant``'s database as a copy of its server's up-to-date template.

    Returns ``False`` when the database exists already. Raises ``TemplateInUse`` when
    the template cannot be copied right now (someone is connected to it).
    """
    server = get_server(tenant.server)
    template = template_for(tenant.server)
    with server.template_lock():
        _bring_up_to_date(template)
        try:
            return server.clone_database(template.database_name, tenant.database_name)
        except TemplateMissing:
            # Dropped behind our back since we last saw it current: build it again.
            _current.pop(template, None)
            _bring_up_to_date(template)
            return server.clone_database(template.database_name, tenant.database_name)


# Each template with the migration graph it was last seen current for, so that the next
# copy needs no connection to the template at all. The graph object itself is kept, not
# its id: a new graph after reset_state() may reuse a freed object's id.
_current: dict[TemplateDatabase, MigrationState] = {}


def _bring_up_to_date(template: TemplateDatabase) -> None:
    state = migration_state()
    if _current.get(template) is state:
        return
    get_server(template.server).create_database(template.database_name)
    try:
        result = migrate_tenant(cast("AbstractTenant", template), state=state)
    finally:
        unregister(template.slug)  # no session of ours may stay on the template
    if result.failed:
        raise TenancyError(
            f"Bringing the template database {template.database_name!r} on server "
            f"{template.server!r} up to date failed: {result.error}"
        )
    if result.applied:
        logger.info(
            "Template %s on %s: %d migration(s) applied",
            template.database_name,
            template.server,
            result.applied,
        )
    _current[template] = state
