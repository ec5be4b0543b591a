"""Django's PostgreSQL backend for a test tenant that lives in a schema.

The test tenant is published into ``settings.DATABASES`` so that Django's test machinery
treats it as one of its databases (``tenancy.testing.tenant``). On a schema server its
"test database" is a schema of the server's shared test database: creating it creates the
schema (and the shared database if needed), destroying it drops the schema (and the
shared database when no other schema is left in it), and the
connection objects Django makes for it share their thread's connection to the shared
database as every schema tenant's do (``tenancy.schema_connections``), so Django's
per-test transactions and rollbacks happen in the schema.
"""

from __future__ import annotations

from typing import Any

from django.db.backends.postgresql import base, creation

from tenancy import schema_connections


class DatabaseCreation(creation.DatabaseCreation):
    def _get_test_db_name(self) -> str:
        # NAME is already the shared test database's (tenancy names it so in test runs).
        return str(self.connection.settings_dict["NAME"])

    def _create_test_db(self, verbosity: int, autoclobber: bool, keepdb: bool = False) -> str:
        server, schema = _server(), _schema(self.connection)
        server.create_shared_database()
        if server.database_exists(schema):
            if keepdb:
                return self._get_test_db_name()
            server.drop_database(schema, allow_template=True)
        server.create_database(schema)
        return self._get_test_db_name()

    def _destroy_test_db(self, test_database_name: str, verbosity: int) -> None:
        server = _server()
        server.drop_database(_schema(self.connection), allow_template=True)
        if server.shared_database_exists() and not server.list_databases():
            server.drop_shared_test_database()  # no other schema left in it

    def _clone_test_db(self, suffix: Any, verbosity: int, keepdb: bool = False) -> None:
        raise NotImplementedError("a schema test tenant is not cloned for parallel tests")


class DatabaseWrapper(base.DatabaseWrapper):
    creation_class = DatabaseCreation

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        schema_connections.instrument(self)


def _server() -> Any:
    from tenancy.backends import get_server
    from tenancy.conf import tenancy_settings

    return get_server(tenancy_settings.DEFAULT_SERVER)  # the test tenant's server


def _schema(connection: Any) -> str:
    schema = schema_connections.schema_of(connection.settings_dict)
    assert schema is not None
    return schema
