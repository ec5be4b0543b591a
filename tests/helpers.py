"""Helpers shared by the tests of moves, restores and retention, and of connections."""

from __future__ import annotations

import sqlite3
from typing import Any

from tenancy.backends import get_server
from tenancy.models import MoveStep, TenantMove, TenantStatus
from tests.settings import BACKEND


def write_behind_tenancy(
    server: str, database_name: str, text: str, *, past_read_only: bool = False
) -> None:
    """A writer that ignores the registry (a stray job, a psql session) adds a note to the
    database directly; ``past_read_only``: on PostgreSQL it switches the database's
    read-only default off first."""
    found = get_server(server)
    if BACKEND == "sqlite":
        with sqlite3.connect(found.path(database_name)) as raw:  # type: ignore[attr-defined]
            raw.execute("INSERT INTO tenantapp_note (text) VALUES (?)", [text])
        return
    import psycopg

    settings = found.template
    with psycopg.connect(
        host=settings["HOST"],
        port=settings["PORT"],
        user=settings["USER"],
        dbname=database_name,
        autocommit=True,
    ) as raw:
        if past_read_only:
            raw.execute("SET default_transaction_read_only = off")
        raw.execute("INSERT INTO tenantapp_note (text) VALUES (%s)", [text])


def recorded_move(tenant: Any, step: str = MoveStep.PREPARED, **fields: Any) -> TenantMove:
    """The row a move of ``tenant`` (by default from server one to two) writes before
    ``step``; ``fields`` change any of it (a restore's kind and target database, say)."""
    values = {
        "tenant": tenant,
        "source_server": "one",
        "target_server": "two",
        "database_name": tenant.database_name,
        "previous_status": TenantStatus.ACTIVE,
        "step": step,
        **fields,
    }
    return TenantMove.objects.create(**values)


def backend_pid(wrapper: Any) -> int:
    """The PostgreSQL backend a connection object's statements run on now."""
    with wrapper.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return int(cursor.fetchone()[0])
