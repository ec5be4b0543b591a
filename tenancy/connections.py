"""Connection aliases for tenant databases.

A tenant's alias (``tenant:<slug>``) is added to ``django.db.connections`` the first time
the tenant is used in this process, with every default Django fills in for configured
databases, so the rest of Django treats it like any other database.

Adding an alias replaces the settings dict as a whole (copy-on-write) under a lock:
Django iterates that dict on every request (``close_old_connections``), and growing it in
place while another thread iterates raises ``RuntimeError``.

Removing an alias (``unregister``) first takes it out of the settings, so no new connection
can be opened under it, then closes its connection in every thread that opened one: the
calling thread through Django, other threads by closing the driver connection once its
in-flight query (if any) is done. A removed alias is never reused in the process: the
next registration of that tenant gets a new name, so a thread that still holds the old
wrapper can never reach the tenant's database with stale settings.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import threading
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from django.conf import UserSettingsHolder, settings
from django.core.exceptions import ValidationError
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.backends.signals import connection_created
from django.db.utils import load_backend

from tenancy.conf import SERVER_ONLY_KEYS, server_vendor, tenancy_settings
from tenancy.context import require_tenant
from tenancy.exceptions import TenancyError, TenantServerError
from tenancy.validators import validate_database_name, validate_slug

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

    from tenancy.models import AbstractTenant

logger = logging.getLogger("tenancy.connections")

ALIAS_PREFIX = "tenant:"

# How long to wait for another thread's running query before cancelling it, and again
# for the cancelled query to return, when closing that thread's connection.
CLOSE_WAIT_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class _Registration:
    alias: str
    server: str
    database_name: str
    engine: str


_lock = threading.Lock()
_registrations: dict[str, _Registration] = {}  # slug -> registration
_retirements: dict[str, int] = {}  # slug -> how many aliases of it were removed
_wrappers: dict[str, weakref.WeakSet[BaseDatabaseWrapper]] = {}  # alias -> connected


def is_tenant_alias(alias: str) -> bool:
    return alias.startswith(ALIAS_PREFIX)


def alias_for(tenant: AbstractTenant) -> str:
    """The connection alias of ``tenant``'s database, registered if this is its first use."""
    registration = _registrations.get(tenant.slug)
    if (
        registration is not None
        and registration.server == tenant.server
        and registration.database_name == tenant.database_name
    ):
        return registration.alias
    return register(tenant)


def connection_for(tenant: AbstractTenant) -> BaseDatabaseWrapper:
    """The Django connection to ``tenant``'s database (for raw SQL, ``cursor()``, ...)."""
    return connections[alias_for(tenant)]


def tenant_connection() -> BaseDatabaseWrapper:
    """The connection to the current tenant's database; ``NoTenantError`` without one."""
    return connection_for(require_tenant())


def register(tenant: AbstractTenant) -> str:
    """Register ``tenant``'s alias; re-register it when its server or database changed."""
    database = connection_settings(tenant)
    retired = None
    with _lock:
        registration = _registrations.get(tenant.slug)
        if registration is not None:
            if (registration.server, registration.database_name) == (
                tenant.server,
                tenant.database_name,
            ):
                return registration.alias
            retired = _retire(tenant.slug)
        retirements = _retirements.get(tenant.slug, 0)
        alias = f"{ALIAS_PREFIX}{tenant.slug}"
        if retirements:
            alias = f"{alias}#{retirements + 1}"
        _publish({**connections.settings, alias: database})
        _registrations[tenant.slug] = _Registration(
            alias, tenant.server, tenant.database_name, database["ENGINE"]
        )
    if retired is not None:
        _close_everywhere(retired)
    return alias


def unregister(tenant: AbstractTenant | str) -> bool:
    """Close ``tenant``'s connections in every thread and remove its alias.

    Returns whether the tenant was registered. The next use registers it again.
    """
    slug = tenant if isinstance(tenant, str) else tenant.slug
    with _lock:
        retired = _retire(slug)
    if retired is None:
        return False
    _close_everywhere(retired)
    return True


def unregister_all() -> None:
    for slug in list(_registrations):
        unregister(slug)


def registered_aliases() -> dict[str, str]:
    """Slug -> alias of every tenant registered in this process."""
    return {slug: registration.alias for slug, registration in _registrations.items()}


def connection_settings(tenant: AbstractTenant) -> dict[str, Any]:
    """The complete ``DATABASES`` entry for ``tenant``, built from its server's template."""
    try:
        if not getattr(tenant, "is_template", False):
            validate_slug(tenant.slug)
        validate_database_name(tenant.database_name)
    except ValidationError as exc:
        raise TenancyError(
            f"Cannot connect to tenant {str(tenant.slug)[:80]!r}: {exc.messages[0]}"
        ) from None
    try:
        template = tenancy_settings.server(tenant.server)
    except KeyError:
        raise TenantServerError(
            f"Tenant {tenant.slug!r} is on server {tenant.server!r}, which TENANCY['SERVERS'] "
            f"does not define (defined: {', '.join(sorted(tenancy_settings.SERVERS))}). "
            "Add the server to the settings or move the tenant."
        ) from None
    database = {
        key: copy.deepcopy(value) for key, value in template.items() if key not in SERVER_ONLY_KEYS
    }
    if server_vendor(template) == "sqlite":
        database["NAME"] = str(template["DIRECTORY"] / f"{tenant.database_name}.sqlite3")
    else:
        database["NAME"] = tenant.database_name
    # Let Django fill its defaults exactly as for configured databases.
    configured = connections.configure_settings({DEFAULT_DB_ALIAS: {}, "tenant": database})
    return dict(configured["tenant"])


def _retire(slug: str) -> tuple[_Registration, list[BaseDatabaseWrapper]] | None:
    """Remove ``slug``'s alias from the settings; the caller holds ``_lock``."""
    registration = _registrations.pop(slug, None)
    if registration is None:
        return None
    databases = dict(connections.settings)
    databases.pop(registration.alias, None)
    _publish(databases)
    _retirements[slug] = _retirements.get(slug, 0) + 1
    return registration, list(_wrappers.pop(registration.alias, ()))


def _publish(databases: dict[str, Any]) -> None:
    handler: Any = connections
    handler._settings = databases
    handler.__dict__["settings"] = databases  # the cached_property's storage
    # settings.DATABASES stays the same dict as connections.settings, as Django sets it
    # up. Under override_settings, write to the settings object that holds DATABASES,
    # so the new dict survives the override's end.
    holder: Any = cast(Any, settings)._wrapped
    while isinstance(holder, UserSettingsHolder) and "DATABASES" not in holder.__dict__:
        holder = holder.default_settings
    holder.DATABASES = databases
    settings.__dict__.pop("DATABASES", None)  # LazySettings caches attribute reads


def _close_everywhere(retired: tuple[_Registration, list[BaseDatabaseWrapper]]) -> None:
    registration, wrappers = retired
    for wrapper in wrappers:
        _close(wrapper)
    with contextlib.suppress(AttributeError):
        del connections[registration.alias]
    _close_pool(registration)


def _close(wrapper: BaseDatabaseWrapper) -> None:
    if cast(Any, wrapper)._thread_ident == threading.get_ident():
        wrapper.close()
        return
    raw = wrapper.connection
    if raw is None:
        return
    try:
        _close_driver_connection(raw)
    except Exception:
        logger.exception("Could not close a connection of %s in another thread", wrapper.alias)


def _close_driver_connection(raw: Any) -> None:
    # psycopg holds `lock` while a query runs; closing underneath it is unsafe.
    lock = getattr(raw, "lock", None)
    if lock is None:
        raw.close()
        return
    acquired = lock.acquire(timeout=CLOSE_WAIT_SECONDS)
    if not acquired:
        with contextlib.suppress(Exception):
            raw.cancel_safe() if hasattr(raw, "cancel_safe") else raw.cancel()
        acquired = lock.acquire(timeout=CLOSE_WAIT_SECONDS)
    try:
        raw.close()
    finally:
        if acquired:
            lock.release()


def _close_pool(registration: _Registration) -> None:
    # Django keeps psycopg pools per alias at class level; one outlives its alias.
    pools = getattr(load_backend(registration.engine).DatabaseWrapper, "_connection_pools", None)
    pool = pools.pop(registration.alias, None) if pools is not None else None
    if pool is not None:
        pool.close()


def _track_connection(sender: object, connection: BaseDatabaseWrapper, **kwargs: Any) -> None:
    alias = connection.alias
    if not is_tenant_alias(alias):
        return
    slug = alias.removeprefix(ALIAS_PREFIX).partition("#")[0]
    with _lock:
        registration = _registrations.get(slug)
        registered = registration is not None and registration.alias == alias
        if registered:
            _wrappers.setdefault(alias, weakref.WeakSet()).add(connection)
    if not registered:
        connection.close()
        raise TenancyError(
            f"Tenant {slug!r} was removed from this process while connecting to its database."
        )


connection_created.connect(_track_connection, dispatch_uid="tenancy.connections.track")
