"""The benchmark cluster (TENANCY_TEST_PG_1, as scripts/with-postgres exports it)."""

from __future__ import annotations

import os
from typing import Any


def server(**extra: Any) -> dict[str, Any]:
    """Django connection settings for the cluster, without NAME."""
    host, _, port = os.environ["TENANCY_TEST_PG_1"].rpartition(":")
    return {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": host,
        "PORT": port,
        "USER": "postgres",
        **extra,
    }


def maintenance_connection() -> Any:
    """An autocommit psycopg connection to the cluster's ``postgres`` database."""
    import psycopg

    address = server()
    return psycopg.connect(
        host=address["HOST"],
        port=address["PORT"],
        user=address["USER"],
        dbname="postgres",
        autocommit=True,
    )


def drop_databases(prefix: str) -> None:
    """Drop the cluster's databases whose names start with ``prefix``."""
    from psycopg import sql

    with maintenance_connection() as connection:
        names = connection.execute(
            "SELECT datname FROM pg_database WHERE starts_with(datname, %s)", [prefix]
        ).fetchall()
        for (name,) in names:
            connection.execute(
                sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name))
            )
