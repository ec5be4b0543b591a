"""Schema tenants in the main database: one connection per thread for the project's
tables and every tenant's.

A schema server may name the main database (``DATABASES["default"]``) as the database
holding its tenant schemas, beside the project's own tables in ``public`` (the layout of
django-tenants). Then the main database's connection objects join the thread's
connection to that database as one more user (``schema_connections.instrument`` with a
``main_key``): a request that reads the signed-in user and then the tenant's rows
connects once, where two databases cost two connections (a backend each, on every
request with ``CONN_MAX_AGE = 0``).

The main database's statements run with ``public, pg_temp`` on the search path, set
outside any transaction as a tenant's is, so that a tenant's path never reaches them, and
switching between a tenant and the main database drops the other's temporary tables.
Transactions are owned as between tenants: inside the main database's ``atomic()`` a
tenant's statement gets a connection of its own, and the other way round.

The connection is shared only when it would be the same connection: the same server,
database, user, password, ``OPTIONS``, ``TIME_ZONE``, ``AUTOCOMMIT`` and ``CONN_MAX_AGE``
in the server's entry as in ``DATABASES["default"]``; not behind a pooler in transaction mode
(``TRANSACTION_POOLING``, refused: ``tenancy.E012``); and when the main database's
sessions find its tables in ``public`` alone (``_finds_its_tables_in_public``). Otherwise
the main database keeps a connection of its own, whose search path tenancy leaves alone.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, cast

from django.core.exceptions import ImproperlyConfigured
from django.db import DEFAULT_DB_ALIAS, connections

from tenancy import schema_connections
from tenancy.conf import is_schema_server, server_vendor, tenancy_settings

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

    from tenancy.backends.schemas import SchemaServer

logger = logging.getLogger(__name__)

# What makes two DATABASES entries the same connection (a shared one is set up once).
CONNECTION_KEYS = (
    "ENGINE",
    "HOST",
    "PORT",
    "USER",
    "PASSWORD",
    "NAME",
    "OPTIONS",
    "TIME_ZONE",
    "AUTOCOMMIT",
    "CONN_MAX_AGE",  # its lifetime is the one of whoever opened it
)


def holding_server(database: dict[str, Any]) -> SchemaServer | None:
    """The schema server that keeps its tenants in the database of ``database`` (the
    main database's entry, ``SchemaServer.holds``); ``None`` if none does, or only
    behind a pooler in transaction mode."""
    try:
        if server_vendor(database) != "postgresql":
            return None  # SQLite has no schemas (and a project on it may have no psycopg)
        servers = tenancy_settings.SERVERS
    except ImproperlyConfigured:
        return None  # the system checks report it
    from tenancy.backends.schemas import SchemaServer

    for name, template in servers.items():
        if not is_schema_server(template) or template.get("TRANSACTION_POOLING"):
            continue
        server = SchemaServer(name, template)
        if server.holds(database):
            return server
    return None


def different_settings(database: dict[str, Any], tenants: dict[str, Any]) -> list[str]:
    """The ``CONNECTION_KEYS`` in which the main database's ``database`` and a tenant's
    entry on its server (``SchemaServer.lendable_settings``) differ."""
    return [key for key in CONNECTION_KEYS if database.get(key) != tenants.get(key)]


def _database_key(wrapper: BaseDatabaseWrapper) -> str:
    """The shared connections the main database's ``wrapper`` takes one from as it
    connects: its schema tenants' when it can be the same connection (the same
    ``CONNECTION_KEYS``); or (its settings naming another database now, as before a test
    run creates its test database; its tables found elsewhere than in ``public``) its
    own, where tenancy leaves its search path alone."""
    database = wrapper.settings_dict
    server = holding_server(database)  # never one behind a pooler in transaction mode
    tenants = server.lendable_settings() if server is not None else None
    if tenants is not None and not different_settings(database, tenants):
        key = schema_connections.database_key(tenants)
        if _finds_its_tables_in_public(wrapper, key):
            return key
    return schema_connections.PRIVATE_PREFIX + schema_connections.database_key(database)


# Database key -> whether the main database's sessions find its tables in ``public``
# alone (asked once per process).
_in_public: dict[str, bool] = {}


def _finds_its_tables_in_public(wrapper: BaseDatabaseWrapper, key: str) -> bool:
    """Whether a session of the main database finds the project's tables in ``public``
    alone, as tenancy's ``public, pg_temp`` for its statements would: its default search
    path (``reset_val``: the server's, the role's or database's, ``OPTIONS``') is
    ``public`` or ``"$user", public`` with no schema of the role's name. Otherwise (a
    schema per role, another path) the main database keeps a connection of its own, whose
    path tenancy does not set, and a warning says why. Asked once per process, on a
    connection of its own."""
    known = _in_public.get(key)
    if known is not None:
        return known
    from psycopg import sql

    raw = type(wrapper).get_new_connection(wrapper, wrapper.get_connection_params())
    try:
        role = (wrapper.settings_dict.get("OPTIONS") or {}).get("assume_role")
        if role:  # Django sets it on each new connection: its "$user" is that role
            raw.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
        path, role_schema = raw.execute(
            "SELECT reset_val, EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = current_user)"
            " FROM pg_settings WHERE name = 'search_path'"
        ).fetchone()
    finally:
        raw.close()
    schemas = [part.strip() for part in str(path).split(",") if part.strip()]
    per_role = [part for part in schemas if part in ('"$user"', "$user")]
    others = [part for part in schemas if part not in per_role]
    found = others == ["public"] and not (per_role and role_schema)
    if not found:
        logger.warning(
            "The main database's search path is %s: its tables are not found in public "
            "alone, so it keeps a connection of its own beside its schema tenants'.",
            path,
        )
    _in_public[key] = found
    return found


def instrument(wrapper: BaseDatabaseWrapper) -> None:
    """Make the main database's connection object ``wrapper`` one more user of its
    thread's connection to its database (``_database_key`` decides which, as it
    connects), and have Django's drop of its test database close that first."""
    schema_connections.instrument(wrapper, main_key=lambda: _database_key(wrapper))
    cast(Any, wrapper).tenancy_main_database = True
    creation = cast(Any, wrapper.creation)

    def destroy_test_db(*args: Any, **kwargs: Any) -> Any:
        # The shared connection outlives the main database's connection object (a tenant
        # may have opened it; it closes at a safe point): Django's DROP DATABASE would
        # find it still there.
        from tenancy.connections import close_all

        close_all()
        return type(creation)._destroy_test_db(creation, *args, **kwargs)

    creation._destroy_test_db = destroy_test_db


def install() -> None:
    """Make each thread's main database connection object, as Django creates it, share
    the connection of the schema tenants in its database, when a server keeps them
    there."""
    create_connection = connections.create_connection
    if getattr(create_connection, "tenancy_main_database", False):
        return

    def create(alias: str) -> Any:
        wrapper = create_connection(alias)
        if alias == DEFAULT_DB_ALIAS and holding_server(wrapper.settings_dict) is not None:
            instrument(wrapper)
        return wrapper

    create.tenancy_main_database = True  # type: ignore[attr-defined]
    connections.create_connection = create  # type: ignore[method-assign]
    instrument_made()


def instrument_made() -> None:
    """The calling thread's main database connection object made before ``install()``
    (Django makes one as it imports the models, for their table names' length), unless
    it is connected already."""
    made = getattr(cast(Any, connections)._connections, DEFAULT_DB_ALIAS, None)
    if (
        made is not None
        and made.connection is None
        and not getattr(made, "tenancy_main_database", False)
        and holding_server(made.settings_dict) is not None
    ):
        instrument(made)
