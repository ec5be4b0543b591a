"""The registry stamp: a value in the main database that changes with every write of the
tenant table or the domain table, whoever makes it.

Database triggers keep it, so that ``QuerySet.update()``, raw SQL and other applications
change it as the ORM does, in the same transaction as the write: a process never sees the
new stamp before the change it stands for. They are (re)installed after every ``migrate``
of the main database (``post_migrate``), because SQLite drops a table's triggers when
Django rebuilds the table to alter it. The value is random, not a counter, so a flushed
and refilled table never shows an old value again.

On PostgreSQL the trigger runs once per statement (``TRUNCATE`` included). Every writing
transaction then holds the stamp's row until it commits: concurrent writes of the registry
are serialized, which the registry's rate of change allows.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

from django.db import DatabaseError, connections, router, transaction

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

STAMP_TABLE = "tenancy_registrystamp"
TRIGGER = "tenancy_registry_changed"
# Advisory lock key (in the main database) around installing the triggers.
INSTALL_LOCK_KEY = int.from_bytes(b"tenancyR", "big") >> 1

# Read when no row exists (a flushed table) or the table cannot be read.
NO_STAMP = None


def read_stamp(connection: BaseDatabaseWrapper) -> Any:
    """The current stamp; ``NO_STAMP`` when the table has no row yet. ``DatabaseError``
    when the table cannot be read (not migrated); inside a transaction the failure is
    confined to a savepoint, so the caller's transaction goes on."""
    query = f"SELECT stamp FROM {connection.ops.quote_name(STAMP_TABLE)} WHERE id = 1"
    savepoint = (
        transaction.atomic(using=connection.alias) if connection.in_atomic_block else nullcontext()
    )
    with savepoint, connection.cursor() as cursor:
        cursor.execute(query)
        row = cursor.fetchone()
    return row[0] if row is not None else NO_STAMP


def install_triggers(using: str, tables: list[str]) -> None:
    """Create (or replace) the triggers that change the stamp on writes of ``tables``, and
    change it once: a write made while a table had no trigger (a migration rebuilding it)
    is then seen too."""
    connection = connections[using]
    with transaction.atomic(using=using), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # Every process running migrate installs them: one at a time (concurrent
            # CREATE OR REPLACE of one function fails).
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [INSTALL_LOCK_KEY])
            statements = _postgresql_statements(cursor, tables)
        elif connection.vendor == "sqlite":
            statements = _sqlite_statements(connection, tables)
        else:
            vendor = connection.vendor
            raise DatabaseError(f"tenancy supports PostgreSQL and SQLite, not {vendor}.")
        for statement in statements:
            cursor.execute(statement)


def _postgresql_statements(cursor: Any, tables: list[str]) -> list[str]:
    """Names are qualified with their schemas and the function's search path is fixed: a
    writer with another search path, or a temporary table of the stamp's name, must not
    make the trigger fail or miss the stamp. The function runs with its owner's rights
    (SECURITY DEFINER: all it does is set the stamp), so a role that may write the tenant
    table needs no rights on the stamp's."""
    from psycopg import sql

    connection = cursor.connection

    def qualified(table: str) -> str:
        cursor.execute(
            "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.oid = to_regclass(%s)",
            [sql.Identifier(table).as_string(connection)],
        )
        (schema,) = cursor.fetchone()
        return sql.Identifier(schema, table).as_string(connection)

    stamp = qualified(STAMP_TABLE)
    function = f"{stamp.rpartition('.')[0]}.{sql.Identifier(TRIGGER).as_string(connection)}"
    upsert = (
        f"INSERT INTO {stamp} (id, stamp) VALUES (1, (random() * 9.2e18)::bigint) "
        "ON CONFLICT (id) DO UPDATE SET stamp = excluded.stamp"
    )
    statements = [
        f"CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql "
        "SECURITY DEFINER SET search_path = pg_catalog, pg_temp "
        f"AS $$ BEGIN {upsert}; RETURN NULL; END $$"
    ]
    statements += [
        f"CREATE OR REPLACE TRIGGER {sql.Identifier(TRIGGER).as_string(connection)} "
        f"AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {qualified(table)} "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {function}()"
        for table in tables
    ]
    return [*statements, upsert]


def _sqlite_statements(connection: BaseDatabaseWrapper, tables: list[str]) -> list[str]:
    quote = connection.ops.quote_name
    upsert = (
        f"INSERT INTO {quote(STAMP_TABLE)} (id, stamp) VALUES (1, random()) "
        "ON CONFLICT (id) DO UPDATE SET stamp = excluded.stamp"
    )
    statements = [
        f"CREATE TRIGGER IF NOT EXISTS {quote(f'{TRIGGER}_{table}_{event.lower()}')} "
        f"AFTER {event} ON {quote(table)} BEGIN {upsert}; END"
        for table in tables
        for event in ("INSERT", "UPDATE", "DELETE")
    ]
    return [*statements, upsert]


def install_after_migrate(using: str, apps: Any = None, **kwargs: Any) -> None:
    """``post_migrate`` receiver (sender: tenancy's app config): install the triggers on the
    database that holds the registry, once its tables exist. ``flush`` sends no ``apps``."""
    from django.apps import apps as installed_apps
    from django.conf import settings

    from tenancy.conf import TENANT_MODEL_SETTING
    from tenancy.models import Domain, RegistryStamp
    from tenancy.registry_cache import forget_all

    if not router.allow_migrate_model(using, RegistryStamp):
        return
    try:
        tenant_model = (apps or installed_apps).get_model(getattr(settings, TENANT_MODEL_SETTING))
    except LookupError:
        return  # migrated backwards past the tenant model
    tables = [tenant_model._meta.db_table, Domain._meta.db_table]
    existing = set(connections[using].introspection.table_names())
    if existing.issuperset([STAMP_TABLE, *tables]):
        install_triggers(using, tables)
    # Migrated or flushed (flush sends post_migrate too): look every tenant up again.
    forget_all()
