"""Template databases: new tenants are copies of a database kept at the current schema.

Each server has one template database (``TENANCY['DATABASE_NAME']`` with the slug
``_template``, which no tenant can have). Before a copy, the template is brought up to
date with the same cheap check as ``migrate_tenants`` (one query when nothing changed), so
it follows new migrations by itself. The work happens under a per-server lock, because
PostgreSQL refuses to copy a template while anyone is connected to it.

Copying takes time (PostgreSQL copies the template's files, some 8 MB of system
catalogs even for a small schema: 0.1 to 0.3 s), so each server also keeps
``SPARE_DATABASES`` copies made ahead of time. Provisioning renames a spare to the
tenant's database name, which is catalog work only, and starts a background thread that
makes a new spare. A spare left from an older schema is still a valid start: provisioning
migrates every new database after creating it, so it only costs the missing migrations.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from tenancy.backends import get_server
from tenancy.backends.base import TemplateInUse, TemplateMissing
from tenancy.conf import is_test_run, tenancy_settings
from tenancy.connections import unregister
from tenancy.exceptions import TenancyError
from tenancy.migration import MigrationState, migrate_tenant, migration_state
from tenancy.reserved import check_template_drop

if TYPE_CHECKING:
    from tenancy.models import AbstractTenant

logger = logging.getLogger("tenancy.templates")

__all__ = [
    "TemplateInUse",
    "create_database_from_template",
    "drop_template_databases",
    "refill_spares",
    "template_for",
    "wait_for_spares",
]


@dataclass(frozen=True)
class TemplateDatabase:
    """Stands in for a tenant where connections and migrations need one."""

    slug: str
    server: str
    database_name: str
    is_template: bool = True
    is_stand_in: bool = True


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
    spares = tenancy_settings.spare_database_names()
    if not server.can_clone:
        # Schemas: a spare if one is ready (made by migrating), else a new schema.
        if spares and server.claim_database(spares, tenant.database_name):
            return True
        return server.create_database(tenant.database_name)
    if spares:
        if _current.get(template) is not migration_state():
            # Spares older than the schema are dropped when the template is migrated.
            with server.template_lock():
                _bring_up_to_date(template)
        if server.claim_database(spares, tenant.database_name):
            return True
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
        _drop_spares(template.server)  # copies of the old schema
    _current[template] = state


def drop_template_databases(server: str) -> None:
    """Drop ``server``'s template database and its spares (they are made again when
    needed)."""
    _drop_template_copy(server, tenancy_settings.template_database_name())
    _current.pop(template_for(server), None)
    _drop_spares(server)


def _drop_spares(server: str) -> None:
    """Every spare on ``server``, also those beyond today's ``SPARE_DATABASES``."""
    for name in get_server(server).list_databases():
        if tenancy_settings.is_spare_database_name(name):
            _drop_template_copy(server, name)


def _drop_template_copy(server: str, name: str) -> None:
    """Drop the template or a spare: only by such a name, and never a database the
    registry names as a tenant's (one adopted before such names were refused)."""
    check_template_drop(server, name)
    get_server(server).drop_database(name, allow_template=True)


# Background refills: the thread of each server that has one running, and the servers
# whose spares were asked for since their thread last looked.
_refills: dict[str, threading.Thread] = {}
_refills_wanted: set[str] = set()
_refills_lock = threading.Lock()
_background_in_tests = False


def refill_spares(server: str) -> None:
    """Make ``server``'s missing spare databases in a background thread. The thread is
    not a daemon: a management command's process waits for it before it exits."""
    if not tenancy_settings.SPARE_DATABASES:
        return
    if is_test_run() and not _background_in_tests:
        # pytest-django lets only the test itself reach the databases, and tests want
        # to see the spares made when provisioning returns.
        _refill_and_log(server)
        return
    with _refills_lock:
        _refills_wanted.add(server)
        if server in _refills:
            return  # the running thread looks again before it ends
        thread = threading.Thread(
            target=_refill_loop, args=(server,), name=f"tenancy-spares-{server}"
        )
        _refills[server] = thread
    thread.start()


def wait_for_spares(timeout: float | None = None) -> None:
    """Wait for the background refills running now (tests; scripts about to drop
    databases)."""
    with _refills_lock:
        threads = list(_refills.values())
    for thread in threads:
        thread.join(timeout)


def _refill_loop(server: str) -> None:
    while True:
        with _refills_lock:
            if server not in _refills_wanted:
                del _refills[server]
                return
            _refills_wanted.discard(server)
        _refill_and_log(server)


def _refill_and_log(server: str) -> None:
    """Spares only save time: failing to make one never fails a provisioning."""
    try:
        _refill(server)
    except Exception:
        logger.exception("Making spare databases on server %s failed", server)


def _refill(server: str) -> None:
    template = template_for(server)
    database_server = get_server(server)
    if not database_server.can_clone:
        _refill_by_migrating(server)
        return
    # Only copies of a template known to be current: bringing it up to date is the
    # job of provisioning, which reports its errors.
    if _current.get(template) is not migration_state():
        return
    with database_server.template_lock():
        for spare in tenancy_settings.spare_database_names():
            try:
                made = database_server.clone_database(template.database_name, spare)
            except TemplateMissing:
                _current.pop(template, None)  # the next provisioning builds it again
                return
            if made:
                logger.debug("Spare database %s made on server %s", spare, server)


def _refill_by_migrating(server: str) -> None:
    """Make the missing spares of a server that cannot copy (schemas): each is migrated
    under the template's name, which no claim looks at, and then renamed to a spare's,
    so that a claim only ever finds a complete spare."""
    database_server = get_server(server)
    template = template_for(server)
    with database_server.template_lock():
        existing = set(database_server.list_databases())
        for spare in tenancy_settings.spare_database_names():
            if spare in existing:
                continue
            _drop_template_copy(server, template.database_name)  # an interrupted one's
            database_server.create_database(template.database_name)
            try:
                result = migrate_tenant(cast("AbstractTenant", template))
            finally:
                unregister(template.slug)
            if result.failed:
                raise TenancyError(
                    f"Making a spare on server {server!r} failed while migrating: {result.error}"
                )
            if database_server.claim_database([template.database_name], spare):
                logger.debug("Spare %s made on server %s", spare, server)
