"""A PgBouncer configuration for one tenant server (``manage.py pgbouncer_config``).

A server entry reached through PgBouncer names the pooler in HOST and PORT and the server
itself in DIRECT (which pg_dump and pg_restore use too). The configuration sends every
database (``*``: each tenant's, a schema server's shared one, the main database if it
lives there) to DIRECT; caps the server connections for the whole fleet of processes at
the server's ``CONNECTION_BUDGET`` (``max_user_connections``: tenancy reaches a server as
one user) and each database's at the pool size (``max_db_connections``); and pools by
transaction when the entry says ``TRANSACTION_POOLING``, else by session.

Authentication (``auth_type``, ``auth_file`` or ``auth_query``), logging and the pid file
are the deployment's: give ``--auth-type`` and ``--auth-file``, or ``--include`` a file of
``key = value`` lines (no section header) that sets them, read at the end of the
``[pgbouncer]`` section. (PgBouncer starts the section afresh at each ``[pgbouncer]``
header, so a configuration of your own cannot include this one and add to it.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tenancy.conf import is_schema_server, server_vendor, tenancy_settings
from tenancy.exceptions import TenancyError

# Server connections per database (one per tenant on a database-per-tenant server): how
# many transactions of one tenant run at once.
DEFAULT_POOL_SIZE = 5
DEFAULT_MAX_CLIENT_CONNECTIONS = 2000
# Seconds an idle server connection is kept: with thousands of tenant databases, idle
# tenants should not keep server connections for PgBouncer's default ten minutes.
SERVER_IDLE_TIMEOUT = 60
AUTH_TYPES = ("scram-sha-256", "md5", "plain", "trust", "hba", "cert")


@dataclass(frozen=True)
class BouncerSettings:
    server: str
    listen_host: str
    listen_port: int
    upstream_host: str
    upstream_port: int
    pool_mode: str
    pool_size: int
    budget: int | None
    max_client_connections: int
    schemas: bool


def bouncer_settings(
    server: str,
    *,
    pool_size: int | None = None,
    budget: int | None = None,
    max_client_connections: int | None = None,
) -> BouncerSettings:
    """What the configuration of ``server``'s PgBouncer says; ``TenancyError`` naming the
    fix when the server entry does not describe a pooler."""
    try:
        template = tenancy_settings.server(server)
    except KeyError:
        raise TenancyError(
            f"There is no server {server!r} in TENANCY['SERVERS'] (defined: "
            f"{', '.join(sorted(tenancy_settings.SERVERS))})."
        ) from None
    if server_vendor(template) != "postgresql":
        raise TenancyError(
            f"Server {server!r} is not a PostgreSQL server; PgBouncer serves those."
        )
    direct = template.get("DIRECT")
    if not direct:
        raise TenancyError(
            f"Server {server!r} is reached directly: point its HOST and PORT at the address "
            "PgBouncer will listen on, and set DIRECT to the server's own "
            '({"HOST": ..., "PORT": ...}), then run this again.'
        )
    budget = budget if budget is not None else template.get("CONNECTION_BUDGET")
    size = pool_size if pool_size is not None else DEFAULT_POOL_SIZE
    if budget is not None:
        size = min(size, budget)
    return BouncerSettings(
        server=server,
        listen_host=str(template.get("HOST") or "127.0.0.1"),
        listen_port=_port(template.get("PORT")),
        upstream_host=str(direct.get("HOST") or template.get("HOST") or "127.0.0.1"),
        upstream_port=_port(direct.get("PORT", template.get("PORT"))),
        pool_mode="transaction" if template.get("TRANSACTION_POOLING") else "session",
        pool_size=size,
        budget=budget,
        max_client_connections=max_client_connections or DEFAULT_MAX_CLIENT_CONNECTIONS,
        schemas=is_schema_server(template),
    )


def _port(value: Any) -> int:
    return int(value) if value not in (None, "") else 5432


def render(
    settings: BouncerSettings,
    *,
    auth_type: str | None = None,
    auth_file: str | None = None,
    include: str | None = None,
) -> str:
    """The configuration file's text."""
    budget = (
        f"max_user_connections = {settings.budget}"
        if settings.budget is not None
        else "; max_user_connections: set CONNECTION_BUDGET on the server entry to cap the "
        "fleet's server connections"
    )
    auth = []
    if auth_type is not None:
        auth.append(f"auth_type = {auth_type}")
    if auth_file is not None:
        auth.append(f"auth_file = {auth_file}")
    if not auth and include is None:
        auth.append("; auth_type, auth_file (or auth_query): the deployment's own")
    if include is not None:
        auth.append(f"%include {include}")
    placement = "schemas of one shared database" if settings.schemas else "a database each"
    lines = [
        f"; PgBouncer for tenancy server {settings.server!r} (tenants: {placement}).",
        "; Written by manage.py pgbouncer_config; run it again after changing the entry.",
        "[databases]",
        f"* = host={settings.upstream_host} port={settings.upstream_port}",
        "",
        "[pgbouncer]",
        f"listen_addr = {settings.listen_host}",
        f"listen_port = {settings.listen_port}",
        f"pool_mode = {settings.pool_mode}",
        f"default_pool_size = {settings.pool_size}",
        f"max_db_connections = {settings.pool_size}",
        budget,
        f"max_client_conn = {settings.max_client_connections}",
        f"server_idle_timeout = {SERVER_IDLE_TIMEOUT}",
        # Sent by some clients at connect; PgBouncer refuses unknown startup parameters.
        "ignore_startup_parameters = extra_float_digits,options",
        *auth,
    ]
    return "\n".join(lines) + "\n"
