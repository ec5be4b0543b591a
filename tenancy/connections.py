"""Connection aliases for tenant databases.

A tenant's alias (``tenant:<slug>``) names its database in ``django.db.connections``:
``connections[alias]``, ``QuerySet.using(alias)`` and ``transaction.atomic(using=alias)``
work in any thread that reached the tenant through tenancy (the router, ``alias_for()``,
``connection_for()``, ``tenant_connection()``).

Tenant aliases are deliberately not added to ``settings.DATABASES``: Django walks every
configured alias on every request (``close_old_connections``, ``reset_queries``,
``make_view_atomic``), which costs 7 ms per request at 1,000 aliases and 75 ms at 10,000.
Instead a thread attaches a connection object for a tenant when it first uses it, and
tenancy does Django's per-request work for the tenant connections that thread holds, at
its safe points: the start and end of a request, and whenever it opens another tenant's
connection. The cost of a request therefore does not depend on how many tenants the
process has served, and a thread holds only the tenant connections that are open.

At a safe point, a thread closes each of its tenant connections that is outside a
transaction and that Django would close (``CONN_MAX_AGE``, errors, autocommit left off).
It also closes one that has been idle longer than ``IDLE_CONNECTION_TIMEOUT``, that a
thread waiting at the cap asked for (``tenancy.connection_cap``), or whose tenant was
removed, unless closing it would lose work: a transaction (Django's or the driver's),
autocommit turned off, or an unfinished ``QuerySet.iterator()``. Then it forgets the
closed ones.

A connection is closed by the thread that owns it, never from outside, with two
exceptions. A thread that needs room under the cap closes an idle connection of a thread
between requests (``connection_cap``: that thread waits for it before it touches its
connections again). And removing a tenant (``unregister``) closes another thread's
PostgreSQL connection at once,
once its running statement (if any) is done, since psycopg 3 serializes a connection's use
with a lock. Another thread's SQLite connection has no such lock (closing it under a
running query crashes the process): it is retired instead, and its thread closes it at its
next safe point. A removed alias is never reused in the process: the next registration of
that tenant gets a new name, and a statement on a connection of a removed alias raises
``TenantRemoved``, so a thread that still holds the old connection object can never reach
the tenant's database with stale settings.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from asgiref.local import Local
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.signals import request_finished, request_started
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.backends.signals import connection_created
from django.db.backends.sqlite3.base import DatabaseWrapper as SQLiteDatabaseWrapper
from django.db.backends.sqlite3.base import SQLiteCursorWrapper
from django.db.utils import load_backend

from tenancy import connection_cap, schema_connections
from tenancy.backends.sqlite import SQLiteServer, sqlite_uri
from tenancy.conf import (
    SERVER_ONLY_KEYS,
    TEST_DATABASE_PREFIX,
    is_schema_server,
    is_test_run,
    server_vendor,
    shared_database_name,
    tenancy_settings,
)
from tenancy.context import require_tenant
from tenancy.exceptions import TenancyError, TenantRemoved, TenantServerError
from tenancy.log import SqlComment
from tenancy.validators import validate_database_name, validate_slug

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

    from tenancy.models import AbstractTenant

logger = logging.getLogger("tenancy.connections")

ALIAS_PREFIX = "tenant:"
# Between a tenant's alias and the replica it names: ``tenant:acme@r0``.
REPLICA_SEPARATOR = "@"
# Seconds to connect to a read replica, unless its OPTIONS set connect_timeout.
REPLICA_CONNECT_TIMEOUT = 2

# The backend of a published test tenant that is a schema (tenancy.testing.schema_engine).
SCHEMA_TEST_ENGINE = "tenancy.testing.schema_engine"

# How long to wait for another thread's running query before cancelling it, and again
# for the cancelled query to return, when closing that thread's connection.
CLOSE_WAIT_SECONDS = 5.0

# libpq's PQTRANS_ACTIVE, PQTRANS_INTRANS and PQTRANS_INERROR (psycopg 2 and 3 alike): a
# statement or a transaction is open on the connection.
_PG_TRANSACTION_OPEN = frozenset({1, 2, 3})


@dataclass(frozen=True, slots=True, eq=False)
class _Registration:
    alias: str
    server: str
    database_name: str
    settings: dict[str, Any]  # the complete DATABASES entry, shared by every thread
    # In settings.DATABASES, so that Django's test machinery creates and guards it; Django
    # owns its connections. Only the test tenant is published (``tenancy.testing``).
    published: bool = False
    # The DATABASES entries of the tenant's database on the server's read replicas
    # (``REPLICAS``), reached as ``<alias>@r<index>``.
    replicas: tuple[dict[str, Any], ...] = ()


class _Use:
    """One thread's connection object for one tenant alias."""

    __slots__ = (
        "__weakref__",
        "alias",
        "close_requested",
        "closed_by_cap",
        "connecting",
        "cursors",
        "last_used",
        "owner",
        "schema",
        "server",
        "wrapper",
    )

    def __init__(self, alias: str, server: str, wrapper: BaseDatabaseWrapper) -> None:
        self.alias = alias
        self.server = server
        self.wrapper = wrapper
        self.owner = _thread.state
        # Between taking a place under the cap and connecting (tenancy.connection_cap).
        self.connecting = False
        # Closed by another thread that needed room while this one was between requests.
        self.closed_by_cap = False
        # A schema tenant's: its connection is shared (tenancy.schema_connections).
        self.schema = schema_connections.schema_of(wrapper.settings_dict) is not None
        self.last_used = time.monotonic()
        # Set by any thread when the process holds too many connections; acted on by
        # the owning thread at its next safe point.
        self.close_requested = False
        # The driver cursors of the connection that are still referenced (Django does not
        # track them): a QuerySet.iterator() or raw() loop, a cursor() being fetched
        # from. Closing the connection under one would break it.
        self.cursors: weakref.WeakSet[Any] = weakref.WeakSet()


@dataclass(frozen=True, slots=True, eq=False)
class _Watcher:
    callback: Callable[[BaseDatabaseWrapper], None]
    forget: Callable[[], None] | None


class _ThreadUses(threading.local):
    def __init__(self) -> None:
        self.uses: dict[str, _Use] = {}  # alias -> this thread's use of it
        self.state = connection_cap.ThreadState()
        self.watchers: list[_Watcher] = []


_handler = cast(Any, connections)
_lock = threading.Lock()
_registrations: dict[str, _Registration] = {}  # slug -> registration
_retirements: dict[str, int] = {}  # slug -> how many aliases of it were removed
_thread = _ThreadUses()
_all_uses: weakref.WeakSet[_Use] = weakref.WeakSet()  # every thread's, guarded by _lock


def is_tenant_alias(alias: str) -> bool:
    return alias.startswith(ALIAS_PREFIX)


def alias_for(tenant: AbstractTenant) -> str:
    """The connection alias of ``tenant``'s database, usable in the calling thread.

    Registers the tenant on its first use in the process, and attaches a connection
    object for it to the calling thread on the thread's first use (no database connection
    is opened until a query needs one).
    """
    registration = _current_registration(tenant)
    if registration.published:
        return registration.alias
    return _in_thread(registration, registration.alias, registration.settings)


def replica_alias_for(tenant: AbstractTenant, index: int) -> str:
    """The connection alias of ``tenant``'s database on its server's replica ``index``,
    usable in the calling thread (``tenancy.replicas`` decides when reads go there)."""
    registration = _current_registration(tenant)
    if registration.published or index >= len(registration.replicas):
        return registration.alias
    alias = f"{registration.alias}{REPLICA_SEPARATOR}r{index}"
    return _in_thread(registration, alias, registration.replicas[index])


def _current_registration(tenant: AbstractTenant) -> _Registration:
    """``tenant``'s registration, made again when its server or database changed (a
    published one never is)."""
    registration = _registrations.get(tenant.slug)
    if registration is not None and (
        registration.published
        or (
            registration.server == tenant.server
            and registration.database_name == tenant.database_name
        )
    ):
        return registration
    return _register(tenant)


def replica_of_alias(alias: str | None) -> str | None:
    """The primary's alias when ``alias`` is a replica's (``tenant:acme@r0``), else None."""
    if alias is None or REPLICA_SEPARATOR not in alias or not is_tenant_alias(alias):
        return None
    return _primary_of(alias)


def replica_settings(database: dict[str, Any], replica: Mapping[str, Any]) -> dict[str, Any]:
    """A database's settings as reached on a replica (or another address of its server):
    the replica's HOST, PORT, USER, PASSWORD and OPTIONS over the database's, with the
    replica's connect timeout (``REPLICA_CONNECT_TIMEOUT`` unless it sets one), and none of
    the server's options that choose among servers."""
    settings = {**database, **{key: value for key, value in replica.items() if key != "OPTIONS"}}
    own = replica.get("OPTIONS") or {}
    options = {
        key: value
        for key, value in (database.get("OPTIONS") or {}).items()
        if key not in ("connect_timeout", "target_session_attrs", "load_balance_hosts")
    }
    options.update(own)
    options.setdefault("connect_timeout", REPLICA_CONNECT_TIMEOUT)
    settings["OPTIONS"] = options
    return settings


def primary_in_transaction(tenant: AbstractTenant) -> bool:
    """Whether the calling thread has a transaction open on ``tenant``'s primary."""
    registration = _registrations.get(tenant.slug)
    if registration is None:
        return False
    if registration.published:
        return in_transaction(connections[registration.alias])
    use = _thread.uses.get(registration.alias)
    return use is not None and in_transaction(use.wrapper)


def in_transaction(wrapper: BaseDatabaseWrapper) -> bool:
    """Whether a transaction is open on ``wrapper``: ``atomic()``, autocommit turned
    off, or a ``BEGIN`` of its own."""
    if wrapper.in_atomic_block:
        return True
    raw = wrapper.connection
    if raw is None or getattr(raw, "closed", False):
        return False
    if not wrapper.autocommit:
        return True
    return getattr(getattr(raw, "info", None), "transaction_status", None) in _PG_TRANSACTION_OPEN


def _in_thread(registration: _Registration, alias: str, settings: dict[str, Any]) -> str:
    if _thread.state.parked:
        _unpark()
    use = _thread.uses.get(alias)
    if use is None:
        use = _attach(registration, alias, settings)
    elif getattr(_handler._connections, use.alias, None) is not use.wrapper:
        # Django keeps connection objects per async context, not per thread: code run by
        # sync_to_async in this thread (QuerySet.aiterator(), say) may come from a context
        # that has not seen this thread's object yet, or has another thread's.
        connections[use.alias] = use.wrapper
    use.last_used = time.monotonic()
    use.close_requested = False  # no longer the least recently used
    return alias


def connection_for(tenant: AbstractTenant) -> BaseDatabaseWrapper:
    """The Django connection to ``tenant``'s database (for raw SQL, ``cursor()``, ...)."""
    return connections[alias_for(tenant)]


def tenant_connection() -> BaseDatabaseWrapper:
    """The connection to the current tenant's database; ``NoTenantError`` without one."""
    return connection_for(require_tenant())


def register(tenant: AbstractTenant) -> str:
    """Register ``tenant``'s alias; re-register it when its server or database changed."""
    return _register(tenant).alias


def unregister(tenant: AbstractTenant | str) -> bool:
    """Remove ``tenant``'s alias and close its connections: the calling thread's and
    other threads' PostgreSQL connections at once, other threads' SQLite connections at
    those threads' next safe point. Until then a statement on one raises ``TenantRemoved``.

    Returns whether the tenant was registered. The next use registers it again.
    """
    slug = tenant if isinstance(tenant, str) else tenant.slug
    with _lock:
        registration = _registrations.get(slug)
        if registration is not None and registration.published:
            return False
        retired = _retire(slug)
    if retired is None:
        return False
    _close_everywhere(*retired)
    return True


def unregister_all() -> None:
    """Unregister every tenant but a published one."""
    for slug in list(_registrations):
        unregister(slug)


def publish(tenant: AbstractTenant, test_settings: dict[str, Any]) -> str:
    """Register ``tenant`` with its alias in ``settings.DATABASES``, like a configured
    database, for Django's test machinery; it stays for the life of the process.

    Call it before any other thread runs: Django reads ``DATABASES`` without a lock.
    """
    alias = f"{ALIAS_PREFIX}{tenant.slug}"
    with _lock:
        registration = _registrations.get(tenant.slug)
        if registration is not None and registration.published:
            return registration.alias
        if registration is not None or _retirements.get(tenant.slug):
            raise TenancyError(f"Tenant {tenant.slug!r} was registered before being published.")
        database = {**connection_settings(tenant), "TEST": test_settings}
        if schema_connections.schema_of(database) is not None:
            # Django's test machinery makes a schema, and Django's connection objects for
            # it share their thread's connection to the shared database.
            database["ENGINE"] = SCHEMA_TEST_ENGINE
        database = connections.configure_settings({DEFAULT_DB_ALIAS: {}, alias: database})[alias]
        _registrations[tenant.slug] = _Registration(
            alias, tenant.server, tenant.database_name, database, published=True
        )
    connections.settings[alias] = database
    if settings.DATABASES is not connections.settings:
        settings.DATABASES[alias] = database
    return alias


def registered_aliases() -> dict[str, str]:
    """Slug -> alias of every tenant registered in this process."""
    return {slug: registration.alias for slug, registration in _registrations.items()}


def attached_aliases() -> list[str]:
    """The tenant aliases the calling thread holds a connection object for."""
    return list(_thread.uses)


def watch(
    callback: Callable[[BaseDatabaseWrapper], None], forget: Callable[[], None] | None = None
) -> Callable[[], None]:
    """Call ``callback`` with each tenant connection object the calling thread holds, now
    and as it takes more, until the function returned is called: for tools that
    instrument ``connections.all()``, which lists no tenant's (the debug toolbar's SQL
    panel, ``tenancy.debug_toolbar``).

    A watch is for one request: one still set when the thread's next request starts was
    left behind (its tool failed before ending it); it is dropped then, after calling
    ``forget``, so that no later request of the thread is seen by it.
    """
    watcher = _Watcher(callback, forget)
    watchers = _thread.watchers
    watchers.append(watcher)
    for use in list(_thread.uses.values()):
        callback(use.wrapper)

    def unwatch() -> None:
        if watcher in watchers:
            watchers.remove(watcher)

    return unwatch


def _forget_watchers(**kwargs: Any) -> None:
    left, _thread.watchers[:] = list(_thread.watchers), []
    for watcher in left:
        if watcher.forget is not None:
            watcher.forget()


def _tell_watchers(wrapper: BaseDatabaseWrapper) -> None:
    for watcher in list(_thread.watchers):
        watcher.callback(wrapper)


def open_connection_count() -> int:
    """How many tenant connections are open in this process, in all threads: one per
    tenant of database placement, one per shared connection for schema tenants."""
    with _lock:
        uses = list(_all_uses)
    own = sum(
        1
        for use in uses
        if not use.schema
        and use.wrapper.connection is not None
        and not use.closed_by_cap
        and not getattr(use.wrapper.connection, "closed", False)  # psycopg's, being closed
    )
    return own + schema_connections.open_count()


def snapshot() -> connection_cap.ConnectionSnapshot:
    """This process's tenant connections now, per server: open, idle between requests,
    threads waiting for one at the cap, refusals since the process started; and the
    connections schema tenants share. ``snapshot().summary()`` is one line of it."""
    return connection_cap.snapshot()


def close_old_connections(**kwargs: Any) -> None:
    """Django's ``close_old_connections``, for the calling thread's tenant connections.

    Runs at the start and end of every request. Call it in long-running workers between
    units of work, as you would Django's. Connections inside a transaction are left alone;
    so are, when only tenancy would close them (idle, over the cap, tenant removed), those
    with autocommit turned off or an unfinished ``QuerySet.iterator()``.
    """
    if _thread.state.parked:
        _unpark()
    uses = _thread.uses
    if not uses:
        schema_connections.close_old(_is_busy_wrapper)
        return
    timeout = tenancy_settings.IDLE_CONNECTION_TIMEOUT
    now = time.monotonic()
    for use in list(uses.values()):
        wrapper = use.wrapper
        if wrapper.in_atomic_block:
            continue
        removed = not _is_registered(use.alias)
        if wrapper.connection is not None and not removed:
            wrapper.close_if_unusable_or_obsolete()  # as Django does for its databases
        if (
            wrapper.connection is None
            or removed
            or use.close_requested
            or (timeout is not None and now - use.last_used >= timeout)
        ):
            _release(use)
    schema_connections.close_old(_is_busy_wrapper)


def close_all() -> None:
    """Close the calling thread's tenant connections, like Django's ``connections.close_all()``.

    Call it when a thread you started is done with tenant databases.
    """
    for use in list(_thread.uses.values()):
        use.wrapper.close()
        _forget(use)
    schema_connections.close_all()


# What a forked process inherited, kept referenced for the life of the process.
_inherited: list[object] = []


def forget_inherited_connections() -> None:
    """In a process just made by ``fork()``: start with no connection objects at all,
    Django's or tenancy's, without closing the inherited ones.

    The inherited connections share their sockets with the parent's: closing one, or
    letting it be garbage-collected (the driver then says goodbye to the server), would
    end the parent's session. They are kept referenced instead and never used.
    """
    global _lock, _thread, _all_uses
    _inherited.append((_handler._connections, _thread, list(_all_uses)))
    _handler._connections = Local(_handler.thread_critical)
    _lock = threading.Lock()  # another thread may have held it at the fork
    _thread = _ThreadUses()
    _all_uses = weakref.WeakSet()
    schema_connections.forget_inherited()
    connection_cap.forget_inherited()


def connection_failed(tenant: AbstractTenant) -> bool:
    """Whether a database error (other than a data or integrity error) occurred on one of
    the calling thread's connections to ``tenant``'s database, under its current alias or
    one removed since. Registers nothing."""
    registration = _registrations.get(tenant.slug)
    if registration is not None and registration.published:
        wrappers = [connections[registration.alias]]
    else:
        wrappers = [
            use.wrapper for use in _thread.uses.values() if _slug_of(use.alias) == tenant.slug
        ]
    return any(wrapper.errors_occurred for wrapper in wrappers)


def connection_settings(tenant: AbstractTenant) -> dict[str, Any]:
    """The complete ``DATABASES`` entry for ``tenant``, built from its server's template."""
    try:
        # A stand-in (a template database, a database being restored) has a name of
        # tenancy's own, with a "." no slug has, so that it never shares a tenant's alias.
        if not getattr(tenant, "is_stand_in", False):
            validate_slug(tenant.slug)
        validate_database_name(tenant.database_name)
    except ValidationError as exc:
        raise TenancyError(
            f"Cannot connect to tenant {str(tenant.slug)[:80]!r}: {exc.messages[0]}"
        ) from None
    if is_test_run() and not tenant.database_name.startswith(TEST_DATABASE_PREFIX):
        raise TenancyError(
            f"Tenant {tenant.slug!r} has the database {tenant.database_name!r}, which is not a "
            f"test database; tests connect only to tenant databases named "
            f"{TEST_DATABASE_PREFIX}..., as Django's test databases are. Create test tenants "
            "with the tenant_factory fixture or tenancy.provisioning.create_tenant(), which "
            "name them so."
        )
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
        # Opened read-write, never created: a request still in flight for a tenant being
        # deleted must not bring back an empty database file.
        path = SQLiteServer(tenant.server, template).path(tenant.database_name)
        database["NAME"] = sqlite_uri(path)
    elif is_schema_server(template):
        database["NAME"] = shared_database_name(template)
        database[schema_connections.SCHEMA_KEY] = tenant.database_name
        database[schema_connections.POOLED_KEY] = bool(template.get("TRANSACTION_POOLING"))
    else:
        database["NAME"] = tenant.database_name
    # Let Django fill its defaults exactly as for configured databases.
    configured = connections.configure_settings({DEFAULT_DB_ALIAS: {}, "tenant": database})
    return dict(configured["tenant"])


def _register(tenant: AbstractTenant) -> _Registration:
    database = connection_settings(tenant)
    replicas = tuple(
        connections.configure_settings(
            {DEFAULT_DB_ALIAS: {}, "replica": replica_settings(database, replica)}
        )["replica"]
        for replica in tenancy_settings.server(tenant.server).get("REPLICAS") or ()
    )
    retired = None
    with _lock:
        registration = _registrations.get(tenant.slug)
        if registration is not None:
            if registration.published:
                raise TenancyError(
                    f"Tenant {tenant.slug!r} is the test tenant; give other tenants another slug."
                )
            if (registration.server, registration.database_name) == (
                tenant.server,
                tenant.database_name,
            ):
                return registration
            retired = _retire(tenant.slug)
        retirements = _retirements.get(tenant.slug, 0)
        alias = f"{ALIAS_PREFIX}{tenant.slug}"
        if retirements:
            alias = f"{alias}#{retirements + 1}"
        registration = _Registration(
            alias, tenant.server, tenant.database_name, database, replicas=replicas
        )
        _registrations[tenant.slug] = registration
    if retired is not None:
        _close_everywhere(*retired)
    return registration


def tenant_of_alias(alias: str | None) -> str | None:
    """The slug of the tenant whose database ``alias`` names, under its current alias or
    one removed since (an object loaded before its tenant was registered again still
    belongs to that tenant); ``None`` for any other database."""
    if alias is None or not alias.startswith(ALIAS_PREFIX):
        return None
    return _slug_of(alias)


def _is_registered(alias: str) -> bool:
    registration = _registrations.get(_slug_of(alias))
    return registration is not None and registration.alias == _primary_of(alias)


def _primary_of(alias: str) -> str:
    """The tenant alias a replica's alias belongs to (``alias`` itself for a primary's)."""
    return alias.partition(REPLICA_SEPARATOR)[0]


def _slug_of(alias: str) -> str:
    return _primary_of(alias).removeprefix(ALIAS_PREFIX).partition("#")[0]


def _attach(registration: _Registration, alias: str, settings: dict[str, Any]) -> _Use:
    slug = _slug_of(alias)
    for other in _thread.uses.values():
        if other.wrapper.in_atomic_block and _slug_of(other.alias) == slug:
            # The thread is inside a transaction on the tenant's removed alias: what it
            # writes from now on must not escape the transaction through a new alias.
            raise TenantRemoved(slug)
    wrapper = load_backend(settings["ENGINE"]).DatabaseWrapper(settings, alias)
    use = _Use(alias, registration.server, wrapper)
    _instrument(use, registration)
    if use.schema:
        schema_connections.instrument(wrapper)
    else:
        _cap(use)
    if tenancy_settings.SQL_COMMENT:
        wrapper.execute_wrappers.append(SqlComment(slug))
    if registration.replicas and alias == registration.alias:
        from tenancy.replicas import wrote_hook

        wrapper.execute_wrappers.append(wrote_hook(slug))  # reads follow its writes
    connections[alias] = wrapper
    _thread.uses[alias] = use
    with _lock:
        _all_uses.add(use)
    _tell_watchers(wrapper)
    # Opening another tenant's connection is a safe point for the thread's others.
    for other in list(_thread.uses.values()):
        if other is not use and (other.close_requested or not _is_registered(other.alias)):
            _release(other)
    return use


def _instrument(use: _Use, registration: _Registration) -> None:
    """Make ``use``'s connection object refuse work once its alias is removed, and
    remember the driver cursors made on it (``create_cursor()``, which every cursor,
    ``QuerySet.iterator()``'s among them, comes from).

    Once the alias is removed, making a cursor or running a statement on a cursor made
    before raises ``TenantRemoved`` (as does connecting: ``_refuse_removed_alias``)
    instead of reaching the database with stale settings, or a connection another thread
    closed. Ending a transaction still works (``commit()``, ``rollback()``, leaving
    ``atomic()``), and the thread closes the connection itself at its next safe point.
    """
    wrapper, slug, cursors = use.wrapper, _slug_of(registration.alias), use.cursors
    create_cursor = wrapper.create_cursor
    if type(wrapper).create_cursor is SQLiteDatabaseWrapper.create_cursor:
        # Django's own, with a cursor class that says when it is closed (sqlite3's
        # cursors do not): a closed cursor still referenced is no loop to protect.
        def create_cursor(name: str | None = None) -> Any:
            return wrapper.connection.cursor(factory=_SQLiteCursor)

    def refuse_if_removed() -> None:
        if _registrations.get(slug) is not registration:
            raise TenantRemoved(slug)

    def guarded_create_cursor(name: str | None = None) -> Any:
        refuse_if_removed()
        cursor = create_cursor(name)
        cursors.add(cursor)
        return cursor

    def guarded_execute(execute: Callable[..., Any], *args: Any) -> Any:
        refuse_if_removed()
        return execute(*args)

    instrumented = cast(Any, wrapper)
    instrumented.create_cursor = guarded_create_cursor
    wrapper.execute_wrappers.append(guarded_execute)


def _cap(use: _Use) -> None:
    """Make ``use``'s connection object take a place under the cap before it connects and
    give it back when it closes; and, in a thread between requests, wait while another
    thread closes it for room (``tenancy.connection_cap``)."""
    wrapper, owner = use.wrapper, use.owner
    connect, ensure_connection = wrapper.connect, wrapper.ensure_connection
    close = cast(Any, wrapper)._close

    def capped_connect() -> None:
        if owner.parked:
            _unpark()
        _adopt(use)
        connection_cap.admit(use, _own_uses, _is_busy, _release)  # type: ignore[arg-type]
        try:
            connect()
        finally:
            connection_cap.connected(use)

    def unparked_ensure_connection() -> None:
        if owner.parked:
            _unpark()
        ensure_connection()

    def capped_close() -> None:
        if owner.parked:
            _unpark()
        connection_cap.closing(use, close)

    instrumented = cast(Any, wrapper)
    instrumented.connect = capped_connect
    instrumented.ensure_connection = unparked_ensure_connection
    instrumented._close = capped_close


def _adopt(use: _Use) -> None:
    """``use`` connects again after its thread forgot it (a connection object kept from an
    earlier request): it becomes the thread's connection object for its alias again, so
    that the thread's safe points close it, in place of one made meanwhile."""
    current = _thread.uses.get(use.alias)
    if current is use or use.owner is not _thread.state or not _is_registered(use.alias):
        return
    if current is not None:
        if _is_busy(current):
            raise TenancyError(
                f"Tenant connection {use.alias}: a connection object kept from earlier was "
                "used while the thread's current one has a transaction open. Get the "
                "connection anew (tenant_connection(), connections[alias]) where it is used."
            )
        current.wrapper.close()
        _forget(current)
    _thread.uses[use.alias] = use
    connections[use.alias] = use.wrapper
    with _lock:
        _all_uses.add(use)
    _tell_watchers(use.wrapper)


def _own_uses() -> list[_Use]:
    return list(_thread.uses.values())


def _unpark() -> None:
    connection_cap.unpark(_thread.state, list(_thread.uses.values()))


def _park(**kwargs: Any) -> None:
    """At the end of a request: the thread's idle tenant connections may be closed by
    another thread that needs room under the cap, until this thread uses one again."""
    if _thread.uses:
        connection_cap.park(_thread.state)


class _SQLiteCursor(SQLiteCursorWrapper):
    closed = False

    def close(self) -> None:
        self.closed = True
        super().close()


def _release(use: _Use) -> None:
    """In ``use``'s own thread: close its connection unless that would lose work, and
    forget it once closed."""
    if not _is_busy(use):
        use.wrapper.close()
    if use.wrapper.connection is None:
        _forget(use)


def _is_busy_wrapper(wrapper: BaseDatabaseWrapper) -> bool:
    use = _thread.uses.get(wrapper.alias)
    return use is not None and use.wrapper is wrapper and _is_busy(use)


def _is_busy(use: _Use) -> bool:
    """Whether closing ``use``'s connection now would lose work or break a loop."""
    wrapper = use.wrapper
    if wrapper.in_atomic_block:
        return True
    raw = wrapper.connection
    if raw is None or getattr(raw, "closed", False):
        return False  # closed already (from another thread, by unregister): nothing to lose
    if not wrapper.autocommit:
        return True
    # A live cursor is one still referenced (ORM queries drop theirs when done); psycopg
    # also knows it closed.
    if any(not getattr(cursor, "closed", False) for cursor in list(use.cursors)):
        return True
    # A transaction begun by hand (``cursor.execute("BEGIN")``): Django does not know.
    in_transaction = getattr(raw, "in_transaction", None)  # sqlite3
    if in_transaction is not None:
        return bool(in_transaction)
    info = getattr(raw, "info", None)  # psycopg
    return getattr(info, "transaction_status", None) in _PG_TRANSACTION_OPEN


def _forget(use: _Use) -> None:
    if _thread.uses.get(use.alias) is use:
        del _thread.uses[use.alias]
        with contextlib.suppress(AttributeError):
            del connections[use.alias]
    with _lock:
        _all_uses.discard(use)


def _retire(slug: str) -> tuple[_Registration, list[_Use]] | None:
    """Remove ``slug``'s registration; the caller holds ``_lock``."""
    registration = _registrations.pop(slug, None)
    if registration is None:
        return None
    _retirements[slug] = _retirements.get(slug, 0) + 1
    return registration, [use for use in _all_uses if _primary_of(use.alias) == registration.alias]


def _close_everywhere(registration: _Registration, uses: list[_Use]) -> None:
    own = [use for use in uses if _thread.uses.get(use.alias) is use]
    for use in uses:
        # A schema tenant's connection is shared with other tenants: its thread lets go
        # of it at its next safe point, and refuses statements until then.
        if use not in own and not use.schema and _close_from_outside(use):
            with _lock:
                _all_uses.discard(use)
        # Otherwise its thread closes it at its next safe point; until then it counts.
    for use in own:
        use.wrapper.close()
        if use.wrapper.connection is None:  # else inside atomic(): forgotten after it
            _forget(use)
    _close_pool(registration)


def _close_from_outside(use: _Use) -> bool:
    """Close another thread's driver connection if its driver makes that safe; return
    whether it is closed."""
    raw = use.wrapper.connection
    # psycopg 3 holds `lock` while a statement runs. sqlite3 has none: closing under a
    # running statement frees memory the statement still uses.
    lock = getattr(raw, "lock", None)
    if lock is None:
        return False
    try:
        connection_cap.closing(use, lambda: _close_driver_connection(raw, lock))
    except Exception:
        logger.exception("Could not close a connection of %s in another thread", use.alias)
        return False
    return True


def _close_driver_connection(raw: Any, lock: threading.Lock) -> None:
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
    engine = registration.settings["ENGINE"]
    pools = getattr(load_backend(engine).DatabaseWrapper, "_connection_pools", None)
    if pools is None:
        return
    for alias in list(pools):
        if _primary_of(alias) == registration.alias:
            pools.pop(alias).close()


def _refuse_removed_alias(sender: object, connection: BaseDatabaseWrapper, **kwargs: Any) -> None:
    alias = connection.alias
    if is_tenant_alias(alias) and not _is_registered(alias):
        connection.close()
        raise TenantRemoved(_slug_of(alias))


def reset_queries(**kwargs: Any) -> None:
    """Django's ``reset_queries()`` for the calling thread's tenant connections (whose
    ``queries`` Django's own does not see); run at the start of every request."""
    for use in _thread.uses.values():
        use.wrapper.queries_log.clear()


connection_created.connect(_refuse_removed_alias, dispatch_uid="tenancy.connections.refuse")
# After Django's own receivers, which were connected when django.db was imported.
request_started.connect(reset_queries, dispatch_uid="tenancy.connections.reset_queries")
request_started.connect(_forget_watchers, dispatch_uid="tenancy.connections.forget_watchers")
request_started.connect(close_old_connections, dispatch_uid="tenancy.connections.close_old")
request_finished.connect(close_old_connections, dispatch_uid="tenancy.connections.close_old")
request_finished.connect(_park, dispatch_uid="tenancy.connections.park")
