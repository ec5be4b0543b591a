"""The benchmark cluster (TENANCY_TEST_PG_1, as scripts/with-postgres exports it)."""

from __future__ import annotations

import os
from typing import Any


def server(cluster: int = 1, **extra: Any) -> dict[str, Any]:
    """Django connection settings for the cluster (TENANCY_TEST_PG_<cluster>), without NAME."""
    host, _, port = os.environ[f"TENANCY_TEST_PG_{cluster}"].rpartition(":")
    return {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": host,
        "PORT": port,
        "USER": "postgres",
        **extra,
    }


def maintenance_connection(cluster: int = 1) -> Any:
    """An autocommit psycopg connection to the cluster's ``postgres`` database."""
    import psycopg

    address = server(cluster)
    return psycopg.connect(
        host=address["HOST"],
        port=address["PORT"],
        user=address["USER"],
        dbname="postgres",
        autocommit=True,
    )


def drop_databases(prefix: str, cluster: int = 1) -> None:
    """Drop the cluster's databases whose names start with ``prefix``."""
    from psycopg import sql

    with maintenance_connection(cluster) as connection:
        names = connection.execute(
            "SELECT datname FROM pg_database WHERE starts_with(datname, %s)", [prefix]
        ).fetchall()
        for (name,) in names:
            connection.execute(
                sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name))
            )
