"""PostgreSQL: databases are created from the server's maintenance database."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections
from django.db.utils import load_backend
from psycopg import errors, sql

from tenancy.backends.base import DatabaseServer
from tenancy.conf import SERVER_ONLY_KEYS
from tenancy.validators import validate_database_name

MAINTENANCE_ALIAS = "tenancy:maintenance"


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

    def list_databases(self) -> list[str]:
        with self._cursor() as cursor:
            cursor.execute(
                "SELECT datname FROM pg_database WHERE NOT datistemplate ORDER BY datname"
            )
            return [row[0] for row in cursor.fetchall()]


def _compose(cursor: Any, template: str, name: str) -> str:
    query = sql.SQL(template).format(sql.Identifier(name))
    return query.as_string(cursor.connection)
