"""PostgreSQL with schema placement: a server entry whose tenants are schemas of one
shared database (``PLACEMENT: "schemas"``, ``DATABASE: "<name>"``).

The operations of ``DatabaseServer`` act on schemas of that database: a tenant's
"database name" is its schema's name, so the registry, provisioning, spares and the drop
checks work unchanged, and moving a tenant between placements changes only its server.
The shared database is created (from the maintenance database) with the first schema.
It is never one of ``settings.DATABASES``, where a search path gone wrong would meet the
project's own tables, but the main database itself when the server names it: tenants
then live beside the project's tables, and share the main database's connection
(``tenancy.main_database``).
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, cast

import psycopg
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.utils import DatabaseErrorWrapper
from psycopg import errors, sql

from tenancy.backends import get_server
from tenancy.backends.base import DatabaseExists, DumpContents, DumpFile, Fingerprint
from tenancy.backends.postgresql import (
    _CLUSTER,
    _ROW_TEXT,
    BACKUP_ALIAS,
    PostgreSQLServer,
    _compose,
    _contents,
    _fingerprint,
    advisory_lock,
    server_address,
)
from tenancy.conf import (
    TEST_DATABASE_PREFIX,
    is_test_run,
    server_vendor,
    shared_database_name,
    tenancy_settings,
)
from tenancy.exceptions import ReservedDatabaseError, TenancyError
from tenancy.reserved import (
    SCRATCH_PREFIX,
    check_drop,
    is_system_schema,
    protected_reason,
    registered_tenant,
    template_reason,
)
from tenancy.schema_connections import POOLED_KEY, borrowed, holds_lendable
from tenancy.validators import validate_database_name

SHARED_ALIAS = "tenancy:shared"

# How long dropping a schema waits for a transaction still open on its tables
# (milliseconds) before it fails, to be run again.
DROP_LOCK_TIMEOUT_MS = 10_000

# Advisory lock key in the shared database, around work on its spares.
TEMPLATE_LOCK_KEY = int.from_bytes(b"tenancyS", "big") >> 1


# Schemas whose migrations one query reads (``migration_fingerprints``).
FINGERPRINT_BATCH = 500

# The ledger's fingerprint of a ``django_migrations`` table (``tenancy.ledger.fingerprint_of``)
# as the server computes it: the SHA-256 of its distinct "app.name" lines, sorted in the
# order of their bytes (as Python sorts them) and joined by newlines.
_FINGERPRINT = (
    "encode(sha256(convert_to(string_agg(DISTINCT (app || '.' || name) COLLATE \"C\", "
    "E'\\n' ORDER BY (app || '.' || name) COLLATE \"C\"), 'UTF8')), 'hex')"
)


class _Driver:
    """What Django's ``DatabaseErrorWrapper`` needs of a connection object, to raise the
    driver's errors as Django's (with the driver's as ``__cause__``) on a driver
    connection tenancy holds without one."""

    Database = psycopg
    errors_occurred = False


class SchemaServer(PostgreSQLServer):
    holds_schemas = True
    can_clone = False  # PostgreSQL copies databases, not schemas: spares are migrated

    @property
    def database(self) -> str:
        """The shared database holding this server's tenant schemas."""
        return shared_database_name(self.template)

    @property
    def address(self) -> tuple[str, ...]:
        return ("postgresql", *server_address(self.template), self.database)

    def is_configured_as(self, database: Mapping[str, Any], name: str) -> bool:
        return False  # a schema is never a database of settings.DATABASES

    def _shared_cursor(self) -> AbstractContextManager[Any]:
        return self._cursor(self.database, SHARED_ALIAS)

    @contextmanager
    def _catalog_cursor(self) -> Iterator[Any]:
        """A cursor for statements on the shared database's catalog that neither depend
        on the search path nor change it (does a schema exist, create or rename one): on
        the connection this thread's tenants of the server share, when one is open and
        free (``schema_connections.borrowed``), else on tenancy's own. Provisioning a
        tenant then sets up no connection of its own. Errors are Django's, as a
        ``_shared_cursor``'s are. Behind a pooler in transaction mode, tenancy's own."""
        tenants = self.lendable_settings()
        with borrowed(tenants) if tenants is not None else nullcontext() as raw:
            if raw is None:
                with self._shared_cursor() as cursor:
                    yield cursor
            else:
                with DatabaseErrorWrapper(cast(Any, _Driver())), raw.cursor() as cursor:
                    yield cursor

    def lendable_settings(self) -> dict[str, Any] | None:
        """A tenant's ``DATABASES`` entry on this server, its schema aside
        (``tenancy.connections.connection_settings``), whose thread's shared connection
        tenancy may use for its catalog statements; ``None`` behind a pooler in
        transaction mode, where tenancy uses its own."""
        if self.template.get("TRANSACTION_POOLING"):
            return None
        database = self._settings_for(self.database)
        database[POOLED_KEY] = False
        return dict(connections.configure_settings({DEFAULT_DB_ALIAS: {}, "x": database})["x"])

    def create_shared_database(self) -> bool:
        """Create the shared database unless it exists; ``ReservedDatabaseError`` when it
        is one of the project's databases."""
        refusal = self.shared_database_refusal(ask_registry=True)
        if refusal is not None:
            raise ReservedDatabaseError(refusal)
        if self.shared_database_exists():
            return False
        return super().create_database(self.database)

    def shared_database_refusal(self, *, ask_registry: bool = False) -> str | None:
        """Why the shared database cannot be this server's, as a one-line message: the
        project's (but the main database, away from a pooler in transaction mode), a
        system or maintenance database, a template or a spare, or (``ask_registry``) a
        database tenant's; ``None`` when it can be."""
        reason = self._unavailable_reason(ask_registry)
        if reason is None:
            return None
        return (
            f"TENANCY['SERVERS'][{self.name!r}] names DATABASE {self.database!r}, which "
            f"is {reason}; give the server's tenant schemas a database of their own."
        )

    def _unavailable_reason(self, ask_registry: bool) -> str | None:
        if self.holds_main_database:
            if self.template.get("TRANSACTION_POOLING"):
                return (
                    "the main database: its tenants cannot be reached through a pooler in "
                    "transaction mode, where a tenant's temporary table would stay on a "
                    "server connection the project's statements get next"
                )
            return None
        plain = PostgreSQLServer(self.name, self.template)
        reason = protected_reason(plain, self.database, shared=False) or template_reason(
            self.database
        )
        if reason is not None or not ask_registry:
            return reason
        # registered_tenant() looks on every entry at the address of the one it is given.
        for name in tenancy_settings.SERVERS:
            other = get_server(name)
            if not other.holds_schemas and other.address == plain.address:
                tenant = registered_tenant(name, self.database)
                return f"the database of tenant {tenant.slug!r}" if tenant else None
        return None

    @property
    def holds_main_database(self) -> bool:
        """Whether the server's tenants are schemas of the main database
        (``DATABASES["default"]``, ``tenancy.main_database``)."""
        return self.holds(settings.DATABASES[DEFAULT_DB_ALIAS])

    def holds(self, database: Mapping[str, Any]) -> bool:
        """Whether the server's tenants are schemas of the database of ``database`` (an
        entry of ``DATABASES``): at the same address, under the name it has now; in a test
        run, before Django renames it to its test database, under its own name. (Not any
        other name Django may give it: a server naming ``test_<main database>`` outside a
        test run keeps its tenants in a database of its own.)"""
        if server_vendor(database) != "postgresql":
            return False
        if server_address(database) != server_address(self.template):
            return False
        name = database.get("NAME")
        return name == self.database or (is_test_run() and name == self.template["DATABASE"])

    def drop_shared_test_database(self) -> None:
        """Drop the shared database of a test run (``tenancy.testing``), whose name is a
        test database's; refused for any other. The main database's test database is
        left to Django, which made it."""
        if self.holds_main_database:
            return
        if not is_test_run() or not self.database.startswith(TEST_DATABASE_PREFIX):
            raise ReservedDatabaseError(
                f"Database {self.database!r} of server {self.name!r} is not dropped: only a "
                "test run's shared database is."
            )
        with self._cursor() as cursor:
            cursor.execute(
                _compose(cursor, "DROP DATABASE IF EXISTS {} WITH (FORCE)", self.database)
            )

    def shared_database_exists(self) -> bool:
        """Whether the shared database exists: yes without a question when this thread's
        tenants of the server hold a connection to it (``_catalog_cursor`` would lend
        it), else asked of the maintenance database. (Connecting to find out is no
        answer: behind PgBouncer, a failed login holds every later one back.)"""
        tenants = self.lendable_settings()
        if tenants is not None and holds_lendable(tenants):
            return True
        return super().database_exists(self.database)

    def migration_fingerprints(self, schemas: Sequence[str]) -> dict[str, str]:
        """Schema -> the ledger's fingerprint of its ``django_migrations`` rows, for each
        of ``schemas`` that has any: two queries per ``FINGERPRINT_BATCH`` schemas, on one
        connection, where reading each schema's rows would be a round trip per schema."""
        found: dict[str, str] = {}
        with self._shared_cursor() as cursor:
            for start in range(0, len(schemas), FINGERPRINT_BATCH):
                cursor.execute(
                    "SELECT n.nspname FROM pg_namespace n JOIN pg_class c "
                    "ON c.relnamespace = n.oid WHERE c.relname = 'django_migrations' "
                    "AND c.relkind IN ('r', 'p') AND n.nspname = ANY(%s)",
                    [list(schemas[start : start + FINGERPRINT_BATCH])],
                )
                having = sorted(row[0] for row in cursor.fetchall())
                if not having:
                    continue
                each = sql.SQL(f"SELECT {{}}, {_FINGERPRINT} FROM {{}}.django_migrations")
                query = sql.SQL(" UNION ALL ").join(
                    each.format(sql.Literal(schema), sql.Identifier(schema)) for schema in having
                )
                cursor.execute(query.as_string(cursor.connection))
                found.update((schema, digest) for schema, digest in cursor.fetchall() if digest)
        return found

    def migrations_of(self, schema: str) -> set[tuple[str, str]]:
        """The (app, name) rows of ``schema``'s ``django_migrations``."""
        with self._shared_cursor() as cursor:
            query = sql.SQL("SELECT app, name FROM {}.django_migrations")
            cursor.execute(query.format(sql.Identifier(schema)).as_string(cursor.connection))
            return {(app, name) for app, name in cursor.fetchall()}

    def database_exists(self, name: str) -> bool:
        if not self.shared_database_exists():
            return False
        with self._catalog_cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", [name])
            return cursor.fetchone() is not None

    def create_database(self, name: str) -> bool:
        _validate_schema_name(name)
        self.create_shared_database()
        with self._catalog_cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", [name])
            if cursor.fetchone() is not None:
                return False
            try:
                cursor.execute(_compose(cursor, "CREATE SCHEMA {}", name))
            except Exception as exc:
                if isinstance(exc.__cause__, errors.DuplicateSchema | errors.UniqueViolation):
                    return False  # created meanwhile by another process
                raise
        return True

    def drop_database(self, name: str, *, allow_template: bool = False) -> bool:
        _validate_schema_name(name)
        check_drop(self, name, allow_template=allow_template)
        self.drop_leftovers(name)  # what a restore of it that was interrupted left
        if not self.shared_database_exists():
            return False
        with self._shared_cursor() as cursor, _dropping(cursor):
            return _drop_schema(cursor, self.name, name)

    def list_databases(self) -> list[str]:
        if not self.shared_database_exists():
            return []
        with self._shared_cursor() as cursor:
            cursor.execute("SELECT nspname FROM pg_namespace ORDER BY nspname")
            return [row[0] for row in cursor.fetchall() if not is_system_schema(row[0])]

    def clone_database(self, template: str, name: str) -> bool:
        raise NotImplementedError("schema servers do not copy schemas")

    # -- backing up and restoring a tenant (tenancy.backups) ---------------------------

    def home_schema(self, name: str) -> str | None:
        return name

    def dump(
        self,
        database_name: str,
        sink: Callable[[bytes], None],
        meanwhile: Callable[[], None] | None = None,
    ) -> DumpContents:
        """``pg_dump --schema`` of the tenant's schema in the shared database."""
        _validate_schema_name(database_name)
        return self._dump(self.database, sink, meanwhile, schema=database_name)

    def prepare_dump(self, database_name: str) -> None:
        _validate_schema_name(database_name)
        self.connect_ahead(self.database, BACKUP_ALIAS, direct=True)

    def prepare_restore(self) -> None:
        return None  # a schema restore asks the shared database, on a lent connection

    def contents(self, database_name: str) -> DumpContents:
        _validate_schema_name(database_name)
        with self._shared_cursor() as cursor:
            return _contents(cursor, database_name)

    def restore_database(
        self, name: str, dump: DumpFile, *, schema: str | None, isolated: bool = False
    ) -> None:
        """``pg_restore`` into the shared database of a dump whose tables are in
        ``schema``, as schema ``name`` (in one transaction: a failure leaves no schema).
        A dump of another schema, or of a database of its own (``public``), has its
        schema renamed on the way, in a scratch database of this server's; so does an
        ``isolated`` one, whose SQL then runs in the scratch database only (only
        schema ``name``, dumped again from there, reaches the shared database)."""
        _validate_schema_name(name)
        dump.verify()
        if self.database_exists(name):
            raise DatabaseExists(f"schema {name!r} exists on server {self.name!r}")
        self.create_shared_database()
        if schema == name and not isolated:
            self._restore_into(self.database, dump)
            return
        plain, scratch = PostgreSQLServer(self.name, self.template), self._scratch_name(name)
        self.drop_leftovers(name)
        plain.create_database(scratch)
        try:
            plain._restore_into(scratch, dump)
            with plain._cursor(scratch, direct=True) as cursor:
                _refuse_what_a_schema_cannot_hold(cursor, self.name, name, schema or "public")
                if schema != name:
                    query = sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(
                        sql.Identifier(schema or "public"), sql.Identifier(name)
                    )
                    cursor.execute(query.as_string(cursor.connection))
            with tempfile.TemporaryFile() as renamed:

                def keep(chunk: bytes) -> None:
                    renamed.write(chunk)

                plain._dump(scratch, keep, schema=name)
                self._restore_into(self.database, DumpFile.whole(renamed))
        finally:
            self.drop_leftovers(name)

    def drop_leftovers(self, name: str) -> None:
        """The scratch database of a restore of ``name`` that was interrupted; never one
        the registry gives a tenant (no tenant can be given such a name: see
        ``tenancy.reserved.SCRATCH_PREFIX``)."""
        plain, scratch = PostgreSQLServer(self.name, self.template), self._scratch_name(name)
        if not plain.database_exists(scratch):
            return  # the registry is not asked (the main database may be gone: a test run's)
        for entry in tenancy_settings.SERVERS:
            other = get_server(entry)
            if not other.holds_schemas and other.address == plain.address:
                tenant = registered_tenant(entry, scratch)
                if tenant is not None:
                    raise ReservedDatabaseError(
                        f"Database {scratch!r} on server {entry!r} is not dropped: it is "
                        f"tenant {tenant.slug!r}'s."
                    )
        plain.drop_database(scratch)

    def _scratch_name(self, name: str) -> str:
        """The database where a dump is restored to be renamed ``name``: one per shared
        database and schema, so that a rerun finds (and drops) what a crash left."""
        digest = hashlib.blake2b(f"{self.database}/{name}".encode(), digest_size=12)
        return f"{SCRATCH_PREFIX}{digest.hexdigest()}"

    # -- moving a tenant (tenancy.moving) ----------------------------------------------

    # The shared database is every tenant's: a schema has no read-only mode of its own,
    # and its sessions are not the tenant's alone. Writes of a process that still serves
    # a tenant being moved are left to the verification to detect.
    fences_writers = False

    def database_identity(self, database_name: str) -> tuple[Any, ...] | None:
        if not self.shared_database_exists():
            return None
        with self._shared_cursor() as cursor:
            cursor.execute(
                f"SELECT n.oid, d.oid, {_CLUSTER} FROM pg_namespace n, pg_database d "
                "WHERE n.nspname = %s AND d.datname = current_database()",
                [database_name],
            )
            row = cursor.fetchone()
        return None if row is None else ("schema", *row)

    def database_size(self, database_name: str) -> int:
        """Bytes the schema's tables, indexes and TOAST take."""
        with self._shared_cursor() as cursor:
            cursor.execute(
                "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relkind IN ('r', 'm')",
                [database_name],
            )
            return int(cursor.fetchone()[0])

    @contextmanager
    def writes_stopped(self, database_name: str, lock_key: int) -> Iterator[Callable[[], None]]:
        """Hold the schema's migration lock ``lock_key`` in the shared database (a
        migrator holding it is waited for); writes are not kept out (``fences_writers``)."""
        _validate_schema_name(database_name)
        with advisory_lock(self._settings_for(self.database), lock_key):
            yield lambda: None

    def end_sessions(self, database_name: str, keep: int | None = None) -> None:
        return None  # the sessions of the shared database serve every tenant

    def wait_for_queries(self, database_name: str, timeout: float) -> None:
        """Wait, ``timeout`` seconds at most, until no other session holds a lock on one
        of the schema's tables (a query or a transaction that read them)."""
        deadline = time.monotonic() + timeout
        with self._shared_cursor() as cursor:
            while time.monotonic() < deadline:
                cursor.execute(
                    "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s "
                    "AND l.database = (SELECT oid FROM pg_database "
                    "WHERE datname = current_database()) AND l.pid <> pg_backend_pid()",
                    [database_name],
                )
                if cursor.fetchone()[0] == 0:
                    return
                time.sleep(0.05)

    def allow_writes(self, database_name: str) -> None:
        return None  # never kept out (fences_writers)

    def drop_database_if_unchanged(self, name: str, expected: Fingerprint) -> bool:
        """In one transaction: the schema's tables locked against every writer (one
        still in a transaction makes this fail after ``DROP_LOCK_TIMEOUT_MS`` rather than
        commit into a dropped schema), their rows compared with ``expected``, the schema
        dropped."""
        _validate_schema_name(name)
        check_drop(self, name, allow_template=False)
        with self._shared_cursor() as cursor, _dropping(cursor):
            cursor.execute(_ROW_TEXT)
            cursor.execute(
                "SELECT c.oid::regclass::text FROM pg_class c JOIN pg_namespace n "
                "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind = 'r'",
                [name],
            )
            tables = [row[0] for row in cursor.fetchall()]
            if tables:
                cursor.execute(f"LOCK TABLE {', '.join(tables)} IN EXCLUSIVE MODE")
            now = _fingerprint(cursor, True, schema=name)
            if expected.differences(now) or now.differences(expected):
                return False  # rolled back: nothing dropped
            _drop_schema(cursor, self.name, name)
        self.drop_leftovers(name)
        return True

    def keep_read_only(self, database_name: str) -> None:
        """Nothing: a schema kept after a move is no tenant's, which no process routes to
        (the shared database, which other tenants write to, cannot be made read-only)."""
        return None

    def fingerprint(self, database_name: str, *, checksums: bool = True) -> Fingerprint:
        _validate_schema_name(database_name)
        with self._shared_cursor() as cursor:
            cursor.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; " + _ROW_TEXT)
            found = _fingerprint(cursor, checksums, schema=database_name)
            cursor.execute("COMMIT")
        return found

    def claim_database(self, candidates: list[str], name: str) -> bool:
        for schema in (*candidates, name):
            _validate_schema_name(schema)
        if not self.shared_database_exists():
            return False
        with self._catalog_cursor() as cursor:
            cursor.execute(
                "SELECT nspname FROM pg_namespace WHERE nspname = ANY(%s) ORDER BY nspname",
                [candidates],
            )
            for (candidate,) in cursor.fetchall():
                query = sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(
                    sql.Identifier(candidate), sql.Identifier(name)
                )
                try:
                    cursor.execute(query.as_string(cursor.connection))  # catalog work only
                    return True
                except Exception as exc:
                    cause = exc.__cause__
                    if isinstance(cause, errors.DuplicateSchema | errors.UniqueViolation):
                        return False
                    if isinstance(cause, errors.InvalidSchemaName):
                        continue  # claimed or dropped meanwhile: the next one
                    raise
        return False

    @contextmanager
    def template_lock(self) -> Iterator[None]:
        self.create_shared_database()
        with advisory_lock(self._settings_for(self.database), TEMPLATE_LOCK_KEY):
            yield


@contextmanager
def _dropping(cursor: Any) -> Iterator[None]:
    """The transaction a schema is dropped in, committed when the block ends and rolled
    back when it raises. A transaction still open on the schema's tables would make the
    drop wait for ever: it fails after ``DROP_LOCK_TIMEOUT_MS`` instead, and the caller
    runs it again."""
    cursor.execute(f"BEGIN; SET LOCAL lock_timeout = '{DROP_LOCK_TIMEOUT_MS:d}'")
    try:
        yield
    except BaseException:
        cursor.execute("ROLLBACK")
        raise
    cursor.execute("COMMIT")


def _drop_schema(cursor: Any, server: str, name: str) -> bool:
    """Drop schema ``name`` in the cursor's transaction unless it would take along what
    other schemas use (``_refuse_shared_objects``); ``False`` if it did not exist."""
    cursor.execute("SELECT oid FROM pg_namespace WHERE nspname = %s", [name])
    row = cursor.fetchone()
    if row is None:
        return False
    _refuse_shared_objects(cursor, server, name, row[0])
    cursor.execute(_compose(cursor, "DROP SCHEMA IF EXISTS {} CASCADE", name))
    return True


def _refuse_what_a_schema_cannot_hold(cursor: Any, server: str, name: str, schema: str) -> None:
    """``TenancyError`` when the restored dump in the scratch database of ``cursor``,
    whose tables are in ``schema``, holds what schema ``name`` of a shared database would
    lose: other schemas, extensions (every schema of a database shares them), large
    objects (a database's, not a schema's)."""
    cursor.execute(
        "SELECT nspname FROM pg_namespace WHERE nspname <> %s AND nspname <> 'public' "
        "AND nspname <> 'information_schema' AND left(nspname, 3) <> 'pg_' ORDER BY 1",
        [schema],
    )
    others = [row[0] for row in cursor.fetchall()]
    cursor.execute("SELECT extname FROM pg_extension WHERE extname <> 'plpgsql' ORDER BY 1")
    extensions = [row[0] for row in cursor.fetchall()]
    cursor.execute("SELECT count(*) FROM pg_largeobject_metadata")
    large_objects = cursor.fetchone()[0]
    what = [f"schema(s) {', '.join(others)} besides {schema}"] if others else []
    what += [f"the extension(s) {', '.join(extensions)}"] if extensions else []
    what += [f"{large_objects} large object(s)"] if large_objects else []
    if what:
        raise TenancyError(
            f"it holds {' and '.join(what)}, which schema {name!r} of server {server!r}'s "
            "shared database cannot hold as its own; keep it on a server of databases"
        )


def _refuse_shared_objects(cursor: Any, server: str, name: str, oid: int) -> None:
    """``ReservedDatabaseError`` when dropping schema ``name`` would take along what other
    schemas use: an extension installed in it, or objects elsewhere that depend on it."""
    cursor.execute("SELECT extname FROM pg_extension WHERE extnamespace = %s", [oid])
    extensions = [row[0] for row in cursor.fetchall()]
    if extensions:
        raise ReservedDatabaseError(
            f"Schema {name!r} on server {server!r} is not dropped: it holds the extension(s) "
            f"{', '.join(extensions)}, which every schema of the database shares. Move them "
            f"first (ALTER EXTENSION ... SET SCHEMA public) or keep the schema."
        )
    # What lives elsewhere (another tenant's view or foreign key) and depends on one of
    # its tables or types: DROP SCHEMA ... CASCADE would drop it too.
    cursor.execute(
        """
        SELECT DISTINCT dependent.identity
        FROM pg_depend d
        CROSS JOIN LATERAL pg_identify_object(d.classid, d.objid, 0) dependent
        WHERE d.deptype = 'n'
          AND ((d.refclassid = 'pg_class'::regclass
                AND d.refobjid IN (SELECT c.oid FROM pg_class c WHERE c.relnamespace = %(ns)s))
            OR (d.refclassid = 'pg_type'::regclass
                AND d.refobjid IN (SELECT t.oid FROM pg_type t WHERE t.typnamespace = %(ns)s)))
          AND dependent.schema IS DISTINCT FROM %(name)s
        ORDER BY 1 LIMIT 5
        """,
        {"ns": oid, "name": name},
    )
    dependents = [row[0] for row in cursor.fetchall()]
    if dependents:
        raise ReservedDatabaseError(
            f"Schema {name!r} on server {server!r} is not dropped: objects outside it "
            f"depend on it ({', '.join(dependents)}); drop them first or keep the schema."
        )


def _validate_schema_name(name: str) -> None:
    validate_database_name(name)
    if is_system_schema(name):
        raise ReservedDatabaseError(
            f"Schema {name!r} is PostgreSQL's own or shared by every tenant; it is never "
            "a tenant's."
        )
