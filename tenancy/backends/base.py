"""The operations tenancy needs from a database server, one class per vendor."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Any


class DatabaseServer:
    """A configured server (an entry of TENANCY['SERVERS']) that holds tenant databases.

    ``name`` arguments are validated database names (``tenancy.validators``).
    """

    # Whether tenants are schemas of one shared database (``tenancy.backends.schemas``),
    # and whether the server can copy a tenant database (templates and spares).
    holds_schemas = False
    can_clone = True

    def __init__(self, name: str, template: dict[str, Any]) -> None:
        self.name = name
        self.template = template

    def database_exists(self, name: str) -> bool:
        raise NotImplementedError

    def create_database(self, name: str) -> bool:
        """Create the database; ``False`` (no error) when it exists already."""
        raise NotImplementedError

    def drop_database(self, name: str, *, allow_template: bool = False) -> bool:
        """Drop the database, ending other sessions on it; ``False`` if it did not exist.

        Raises ``ReservedDatabaseError`` for a database of ``settings.DATABASES`` on this
        server, a system or maintenance database, whatever the caller says, and for the
        template database and its spares unless ``allow_template`` (``tenancy.reserved``).
        """
        raise NotImplementedError

    @property
    def address(self) -> tuple[str, ...]:
        """What identifies the server itself: entries of TENANCY['SERVERS'] with the same
        address hold the same databases."""
        raise NotImplementedError

    def is_configured_as(self, database: Mapping[str, Any], name: str) -> bool:
        """Whether ``database`` (an entry of ``settings.DATABASES``) is this server's
        database ``name``."""
        raise NotImplementedError

    def list_databases(self) -> list[str]:
        raise NotImplementedError

    def clone_database(self, template: str, name: str) -> bool:
        """Create ``name`` as a copy of ``template``; ``False`` when ``name`` exists already.
        Raises ``TemplateInUse`` when the copy cannot be made right now."""
        raise NotImplementedError

    def claim_database(self, candidates: list[str], name: str) -> bool:
        """Rename one of the databases ``candidates`` (spare copies of the template) to
        ``name``, never two claimants the same one. ``False`` when none is left or
        ``name`` exists already."""
        raise NotImplementedError

    def template_lock(self) -> AbstractContextManager[None]:
        """Serialise work on this server's template database across processes."""
        raise NotImplementedError


class TemplateInUse(Exception):
    """The template database is in use (PostgreSQL refuses to copy it then)."""


class TemplateMissing(Exception):
    """The template database does not exist."""
