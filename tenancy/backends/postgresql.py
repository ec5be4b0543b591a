"""PostgreSQL: databases are created from the server's maintenance database."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections
from django.db.utils import load_backend
from psycopg import errors, sql

from tenancy.backends.base import DatabaseServer, TemplateInUse, TemplateMissing
from tenancy.conf import SERVER_ONLY_KEYS
from tenancy.validators import validate_database_name

MAINTENANCE_ALIAS = "tenancy:maintenance"

# Advisory lock key in the maintenance database, around work on the template.
TEMPLATE_LOCK_KEY = int.from_bytes(b"tenancyT", "big") >> 1


class PostgreSQLServer(DatabaseServer):
    @contextmanager
    def _cursor(self) -> Iterator[Any]:
        database = {k: v for k, v in self.template.items() if k not in SERVER_ONLY_KEYS}
        database["NAME"] = self.template.get("MAINTENANCE_DB", "postgres")
        database["OPTIONS"] = {k: v for k, v in database.get("OPTIONS", {}).items() if k != "pool"}
        database = connections.configure_settings({DEFAULT_DB_ALIAS: {}, "x": database})["x"]
        wrapper = load_backend(database["ENGINE"]).DatabaseWrapper(database, MAINTENANCE_ALIAS)
        try:
            with wrapper.cursor() as cursor:
                yield cursor
        finally:
            wrapper.close()

    def database_exists(self, name: str) -> bool:
        with self._cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name])
            return cursor.fetchone() is not None

    def create_database(self, name: str) -> bool:
        validate_database_name(name)
        with self._cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name])
            if cursor.fetchone() is not None:
                return False
            try:
                cursor.execute(_compose(cursor, "CREATE DATABASE {}", name))
            except Exception as exc:
                # Another process created it between our check and our CREATE.
                if isinstance(exc.__cause__, errors.DuplicateDatabase | errors.UniqueViolation):
                    return False
                raise
        return True

    def drop_database(self, name: str) -> bool:
        validate_database_name(name)
        with self._cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name])
            if cursor.fetchone() is None:
                return False
            cursor.execute(_compose(cursor, "DROP DATABASE IF EXISTS {} WITH (FORCE)", name))
        return True

    def clone_database(self, template: str, name: str) -> bool:
        validate_database_name(template)
        validate_database_name(name)
        with self._cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name])
            if cursor.fetchone() is not None:
                return False
            _wait_until_unused(cursor, template)
            # PostgreSQL's default strategy, WAL_LOG. FILE_COPY forces a checkpoint for
            # every copy: a server-wide burst of writes that every other tenant on the
            # server would feel (measured: 0.35 s per copy with work in progress).
            query = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template)
            )
            try:
                cursor.execute(query.as_string(cursor.connection))
            except Exception as exc:
                if isinstance(exc.__cause__, errors.DuplicateDatabase | errors.UniqueViolation):
                    return False
                if isinstance(exc.__cause__, errors.ObjectInUse):
                    raise TemplateInUse(str(exc)) from exc
                if isinstance(exc.__cause__, errors.InvalidCatalogName):
                    raise TemplateMissing(str(exc)) from exc
                raise
        return True

    @contextmanager
    def template_lock(self) -> Iterator[None]:
        with self._cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(%s)", [TEMPLATE_LOCK_KEY])
            try:
                yield
            finally:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [TEMPLATE_LOCK_KEY])

    def list_databases(self) -> list[str]:
        with self._cursor() as cursor:
            cursor.execute(
                "SELECT datname FROM pg_database WHERE NOT datistemplate ORDER BY datname"
            )
            return [row[0] for row in cursor.fetchall()]


def _compose(cursor: Any, template: str, name: str) -> str:
    query = sql.SQL(template).format(sql.Identifier(name))
    return query.as_string(cursor.connection)


def _wait_until_unused(cursor: Any, database: str, timeout: float = 1.0) -> None:
    """Wait briefly for sessions on ``database`` to end (ours exit just after closing):
    CREATE DATABASE ... TEMPLATE would otherwise sleep in steps of 100 ms."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", [database])
        if cursor.fetchone()[0] == 0:
            return
        time.sleep(0.005)
