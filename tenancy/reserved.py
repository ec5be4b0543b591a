"""Database names that never belong to a tenant, and the checks made before any drop.

Deleting a tenant drops its database (``DROP DATABASE ... WITH (FORCE)`` on PostgreSQL), so
a tenant given the project's own database by mistake would take it along; a tenant given
the template or a spare would have its rows copied into every tenant provisioned after it.
These names are therefore refused wherever a tenant gets a database (the model's
validation, hence the admin; provisioning; the commands):

- every ``settings.DATABASES`` database on the same server (PostgreSQL: the same host and
  port as libpq connects to; SQLite: the same file), under its test name too;
- ``postgres``, ``template0``, ``template1`` and the server's ``MAINTENANCE_DB``;
- the template database and its spares (``tenancy.template_databases``);
- a database registered to another tenant on the same server.

The server backends check again in ``drop_database`` itself, so that a bug in one caller
is never enough to drop the main database: the first two kinds are refused whatever the
caller says, the template and its spares unless the caller says ``allow_template=True``.

    >>> reserved_reason("default", "template1")
    'a system database of PostgreSQL'
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import DatabaseError, connections

from tenancy.backends import get_server
from tenancy.backends.base import DatabaseServer
from tenancy.conf import (
    TEST_DATABASE_PREFIX,
    as_test_database_name,
    is_test_run,
    server_vendor,
    tenancy_settings,
)
from tenancy.exceptions import ReservedDatabaseError
from tenancy.validators import is_valid_slug, validate_database_name

if TYPE_CHECKING:
    from django.db.models import QuerySet

    from tenancy.models import AbstractTenant

SYSTEM_DATABASES = frozenset({"postgres", "template0", "template1"})
DEFAULT_MAINTENANCE_DB = "postgres"

# Schemas of every PostgreSQL database that are PostgreSQL's own or shared by all its
# users; a schema server's tenant is never given one (``pg_*`` are reserved too).
SYSTEM_SCHEMAS = frozenset({"public", "information_schema"})


def is_system_schema(name: str) -> bool:
    return name in SYSTEM_SCHEMAS or name.startswith("pg_")


# Names of the scratch databases where a dump's schema is renamed on its way into a
# schema server (``tenancy.backends.schemas``): never a tenant's.
SCRATCH_PREFIX = "tenancy_relocating_"


def reserved_reason(server: str | DatabaseServer, database_name: str) -> str | None:
    """Why ``database_name`` on ``server`` (a key of TENANCY['SERVERS']) can never be a
    tenant's database, as a phrase ("the template database ..."), or ``None``."""
    if database_name.startswith(SCRATCH_PREFIX):
        return "named as tenancy's scratch databases are (where a schema is renamed)"
    return protected_reason(server, database_name) or template_reason(database_name)


def protected_reason(
    server: str | DatabaseServer, database_name: str, *, shared: bool = True
) -> str | None:
    """Why tenancy must never drop ``database_name`` on ``server``, whatever the caller
    says: a system or maintenance database, one of ``settings.DATABASES``, or (unless not
    ``shared``) the database holding a schema server's tenants."""
    database_server = server if isinstance(server, DatabaseServer) else get_server(server)
    if database_name in SYSTEM_DATABASES:
        return "a system database of PostgreSQL"
    if database_server.holds_schemas:
        if is_system_schema(database_name):
            return "a schema of PostgreSQL's own or shared by every user of the database"
        if database_name in _role_names(database_server):
            return (
                "the name of a database role, whose sessions find a schema of that name "
                'first on their default search path ("$user")'
            )
    if database_name in _maintenance_databases(database_server):
        return "the server's maintenance database (MAINTENANCE_DB)"
    for alias, database in configured_databases():
        if database_server.is_configured_as(database, database_name):
            return f"the project's database DATABASES[{alias!r}]"
    if shared and not database_server.holds_schemas:
        for name in tenancy_settings.SERVERS:
            other = get_server(name)
            if other.holds_schemas and other.address[:-1] == database_server.address:
                holding = str(other.template["DATABASE"])
                if database_name in (holding, as_test_database_name(holding)):
                    return f"the database holding the tenant schemas of server {name!r}"
    return None


def template_reason(database_name: str) -> str | None:
    """Why ``database_name`` is a template database's or a spare's, or ``None``; during
    a test run the project's own template and spares are included."""
    pattern = tenancy_settings.DATABASE_NAME
    templates = {tenancy_settings.template_database_name(), pattern.format(slug="_template")}
    if database_name in templates:
        return "the template database new tenants are copied from"
    if tenancy_settings.is_spare_database_name(database_name) or _is_spare(pattern, database_name):
        return "a spare copy of the template database"
    return None


def registered_tenant(
    server: str, database_name: str, *, other_than: str = ""
) -> AbstractTenant | None:
    """The tenant, other than the one with slug ``other_than``, whose database is
    ``database_name`` on ``server`` or on another entry of TENANCY['SERVERS'] that
    addresses the same server."""
    return _registered(server, database_name, other_than=other_than).order_by("slug").first()


def _registered(server: str, database_name: str, *, other_than: str) -> QuerySet[Any]:
    from tenancy.models import get_tenant_model  # the model validates with this module

    tenants = get_tenant_model()._default_manager.filter(
        server__in=_entries_of(server), database_name=database_name
    )
    return tenants.exclude(slug=other_than) if other_than else tenants


def _entries_of(server: str) -> list[str]:
    """The entries of TENANCY['SERVERS'] that address the same server as ``server``."""
    address = get_server(server).address
    return [name for name in tenancy_settings.SERVERS if get_server(name).address == address]


def unavailable_reason(server: str, database_name: str, *, slug: str) -> str | None:
    """Why tenant ``slug`` cannot have ``database_name`` on ``server``: reserved, or
    another tenant's; ``None`` when it can."""
    reason = reserved_reason(server, database_name)
    if reason is not None:
        return reason
    claim = _claim(server, database_name, other_than=slug)
    if claim is None:
        return None
    moving, other = claim
    if moving:
        return f"where tenant {other!r} is being moved"
    return f"the database of tenant {other!r}"


_TENANT_COLUMNS = ("slug", "server", "database_name")


def _claim(server: str, database_name: str, *, other_than: str) -> tuple[int, str] | None:
    """``registered_tenant()`` and ``moving_to()`` in one query: ``(0, slug)`` of the
    tenant (other than ``other_than``) whose database this is, else ``(1, slug)`` of one
    whose move or restore copies it, else ``None``. Every row counts, whatever the tenant
    model's default manager leaves out. Written as SQL (names from the models, quoted):
    provisioning asks it twice, and the ORM took three times as long to build it as the
    server to answer it."""
    from tenancy.models import TenantMove, get_tenant_model, registry_database

    tenants, moves = get_tenant_model()._meta, TenantMove._meta
    if not _columns_in_own_table(tenants):
        # Fields of a parent model's table (multi-table inheritance): the ORM's queries.
        tenant = _registered(server, database_name, other_than=other_than).order_by("slug")
        found = tenant.values_list("slug", flat=True).first()
        if found is not None:
            return 0, found
        mover = moving_to(server, database_name, other_than=other_than)
        return None if mover is None else (1, mover)
    connection = connections[registry_database()]
    quote = connection.ops.quote_name

    def column(table: Any, name: str | None) -> str:
        return f"{quote(table.db_table)}.{quote(table.get_field(name).column)}"

    same = _entries_of(server)
    marks = ", ".join(["%s"] * len(same))
    t, m, slug = quote(tenants.db_table), quote(moves.db_table), column(tenants, "slug")
    query = (
        f"SELECT 0, {slug} FROM {t} WHERE {column(tenants, 'server')} IN ({marks}) "
        f"AND {column(tenants, 'database_name')} = %s AND {slug} <> %s "
        f"UNION ALL SELECT 1, {slug} FROM {m} "
        f"JOIN {t} ON {column(tenants, tenants.pk.name)} = {column(moves, 'tenant')} "
        f"WHERE (({column(moves, 'source_server')} IN ({marks}) "
        f"AND {column(moves, 'database_name')} = %s) "
        f"OR ({column(moves, 'target_server')} IN ({marks}) "
        f"AND ({column(moves, 'target_database')} = %s "
        f"OR ({column(moves, 'target_database')} = '' "
        f"AND {column(moves, 'database_name')} = %s)))) AND {slug} <> %s "
        "ORDER BY 1, 2 LIMIT 1"
    )
    params = [*same, database_name, other_than]
    params += [*same, database_name, *same, database_name, database_name, other_than]
    with connection.cursor() as cursor:
        cursor.execute(query, params)
        row = cursor.fetchone()
    return None if row is None else (int(row[0]), str(row[1]))


def _columns_in_own_table(tenants: Any) -> bool:
    """Whether the tenant model's own table has the columns ``_claim`` reads (not a
    parent's, as with multi-table inheritance)."""
    return all(tenants.get_field(name).model is tenants.model for name in _TENANT_COLUMNS)


def moving_to(server: str, database_name: str, *, other_than: str = "") -> str | None:
    """The slug of the tenant, other than ``other_than``, whose move (or restore) in
    progress copies its database from or to ``database_name`` on ``server`` (or an entry
    of the same server): until it ends, the source and the copy are both that tenant's."""
    return (
        _moves(server, database_name, other_than=other_than)
        .values_list("tenant__slug", flat=True)
        .first()
    )


def _moves(server: str, database_name: str, *, other_than: str) -> QuerySet[Any]:
    from django.db.models import Q

    from tenancy.models import TenantMove

    same_server = _entries_of(server)
    moves = TenantMove.objects.filter(
        Q(source_server__in=same_server, database_name=database_name)
        | Q(target_server__in=same_server, target_database=database_name)
        | Q(target_server__in=same_server, target_database="", database_name=database_name)
    )
    return moves.exclude(tenant__slug=other_than) if other_than else moves


def database_name_unavailable(tenant: AbstractTenant, *, new: bool = False) -> str | None:
    """The one-line message saying why ``tenant`` cannot have its database (a blank name
    is the one derived from its slug), or ``None``. Invalid slugs, names and servers are
    left to the model's field validation. ``new``: the tenant is not recorded yet, so a
    database of that name is no tenant's and may hold a deleted tenant's rows (kept with
    its database, or restored beside it): refused as well, never handed to a newcomer."""
    name = tenant.database_name
    if not name and is_valid_slug(tenant.slug):
        name = tenancy_settings.database_name_for(tenant.slug)
    try:
        validate_database_name(name)
    except ValidationError:
        return None
    if tenant.server not in tenancy_settings.SERVERS:
        return None
    refusal = get_server(tenant.server).shared_database_refusal() if new else None
    if refusal is not None:
        return f"Tenant {tenant.slug!r} cannot be created: {refusal}"
    reason = unavailable_reason(tenant.server, name, slug=tenant.slug)
    if reason is None and new and _exists(tenant.server, name):
        return (
            f"Database {name!r} exists already on server {tenant.server!r} and is no "
            f"tenant's: it may hold a deleted tenant's data, so tenant {tenant.slug!r} is "
            "not given it. Drop it first, or take it over with `manage.py create_tenant "
            f"{tenant.slug} --adopt-database {name}`."
        )
    if reason is None:
        return None
    return (
        f"Database {name!r} on server {tenant.server!r} cannot be the database of tenant "
        f"{tenant.slug!r}: it is {reason}. Choose another database name (or slug)."
    )


def _exists(server: str, database_name: str) -> bool:
    """Whether the database exists; ``False`` when the server cannot be asked (provisioning
    asks again, and reports the server's error on the tenant)."""
    try:
        return get_server(server).database_exists(database_name)
    except DatabaseError:
        return False


def check_database_name_available(tenant: AbstractTenant, *, new: bool = False) -> None:
    """Raise ``ValidationError`` on ``database_name`` when ``tenant``'s database is
    reserved or registered to another tenant (or, ``new``, exists already)."""
    message = database_name_unavailable(tenant, new=new)
    if message is not None:
        raise ValidationError(
            {"database_name": ValidationError(message, code="unavailable_database_name")}
        )


def check_tenant_drop(tenant: AbstractTenant) -> None:
    """Raise ``ReservedDatabaseError`` unless ``tenant``'s database may be dropped with
    the tenant: it is neither reserved nor registered to another tenant."""
    try:
        validate_database_name(tenant.database_name)
    except ValidationError as exc:
        reason: str | None = f"not a database name tenancy accepts ({exc.messages[0]})"
    else:
        reason = unavailable_reason(tenant.server, tenant.database_name, slug=tenant.slug)
    if reason is not None:
        raise ReservedDatabaseError(
            f"Tenant {tenant.slug!r} was not deleted: its database {tenant.database_name!r} "
            f"on server {tenant.server!r} is {reason}. Delete the tenant keeping the "
            f"database (`manage.py delete_tenant {tenant.slug} --keep-database`)."
        )


def check_template_drop(server: str, database_name: str) -> None:
    """Raise ``ReservedDatabaseError`` unless ``database_name`` is a template's or a
    spare's name and no tenant's database."""
    if template_reason(database_name) is None:
        raise ReservedDatabaseError(
            f"Database {database_name!r} on server {server!r} is not dropped: it is neither "
            "the template database nor a spare."
        )
    other = registered_tenant(server, database_name)
    if other is not None:
        raise ReservedDatabaseError(
            f"Database {database_name!r} on server {server!r} is not dropped: it is "
            f"registered as the database of tenant {other.slug!r}; give that tenant its own "
            "database first."
        )


def check_drop(server: DatabaseServer, database_name: str, *, allow_template: bool) -> None:
    """The server backends' own check before any drop (see the module's docstring)."""
    reason = protected_reason(server, database_name)
    if reason is None and not allow_template:
        reason = template_reason(database_name)
    if reason is not None:
        raise ReservedDatabaseError(
            f"Database {database_name!r} on server {server.name!r} is not dropped: it is {reason}."
        )


def configured_names(database: Mapping[str, Any]) -> set[str]:
    """The names of the database of a ``settings.DATABASES`` entry: its NAME, its test
    name (``TEST['NAME']``, or ``test_<NAME>`` as Django names it), and during a test
    run, where Django has put the test name into NAME, the project's own name again."""
    name = str(database.get("NAME") or "")
    test = database.get("TEST") or {}
    test_name = str(test.get("NAME") or "") if isinstance(test, Mapping) else ""
    names = {name, test_name or f"{TEST_DATABASE_PREFIX}{name}", as_test_database_name(name)}
    if is_test_run():
        prefix, _, suffix = as_test_database_name("\x00").partition("\x00")
        for candidate in (name, test_name):
            if candidate.startswith(prefix) and candidate.endswith(suffix):
                names.add(candidate[len(prefix) : len(candidate) - len(suffix)])
    names.discard("")
    return names


def configured_databases() -> list[tuple[str, Mapping[str, Any]]]:
    """Every entry of ``settings.DATABASES`` (and of ``connections.settings``, should they
    differ), but the published test tenant's: tenancy's own aliases name tenants."""
    from tenancy.connections import is_tenant_alias  # it imports the backends, which import us

    entries = []
    for databases in (settings.DATABASES, connections.settings):
        for alias, database in list(databases.items()):
            if (
                isinstance(database, Mapping)
                and database.get("ENGINE")
                and not is_tenant_alias(alias)
            ):
                entries.append((alias, database))
    return entries


def _role_names(server: DatabaseServer) -> set[str]:
    """The roles the project connects as: the ``USER`` (and ``OPTIONS["assume_role"]``) of
    each server entry and of each of ``DATABASES`` (a session of one of them on the
    shared database, tenancy's or another program's, would find a schema named after it
    before ``public``)."""
    entries: list[Mapping[str, Any]] = [*tenancy_settings.SERVERS.values()]
    entries += [database for _, database in configured_databases()]
    users = [entry.get("USER") for entry in entries]
    users += [(entry.get("OPTIONS") or {}).get("assume_role") for entry in entries]
    return {str(user) for user in users if user}


def _maintenance_databases(server: DatabaseServer) -> set[str]:
    """The maintenance databases of every configured PostgreSQL server at ``server``'s
    address (two entries of TENANCY['SERVERS'] may address one server)."""
    templates = [server.template]
    for name in tenancy_settings.SERVERS:
        if get_server(name).address == server.address:
            templates.append(tenancy_settings.server(name))
    return {
        str(template.get("MAINTENANCE_DB") or DEFAULT_MAINTENANCE_DB)
        for template in templates
        if server_vendor(template) == "postgresql"
    }


def _is_spare(pattern: str, name: str) -> bool:
    prefix, _, suffix = pattern.format(slug="_spare_\x00").partition("\x00")
    number = name.removeprefix(prefix).removesuffix(suffix)
    return name == f"{prefix}{number}{suffix}" and number.isdigit()
