"""Per-vendor database operations (exists/create/drop) on a configured server."""

from __future__ import annotations

from tenancy.backends.base import DatabaseServer
from tenancy.conf import is_schema_server, server_vendor, tenancy_settings
from tenancy.exceptions import TenantServerError


def get_server(name: str) -> DatabaseServer:
    """The server ``name`` of TENANCY['SERVERS']."""
    try:
        template = tenancy_settings.server(name)
    except KeyError:
        raise TenantServerError(
            f"Server {name!r} is not in TENANCY['SERVERS'] "
            f"({', '.join(sorted(tenancy_settings.SERVERS))})."
        ) from None
    if is_schema_server(template):
        from tenancy.backends.schemas import SchemaServer

        return SchemaServer(name, template)
    if server_vendor(template) == "postgresql":
        from tenancy.backends.postgresql import PostgreSQLServer

        return PostgreSQLServer(name, template)
    from tenancy.backends.sqlite import SQLiteServer

    return SQLiteServer(name, template)
