"""PostgreSQL: databases are created from the server's maintenance database."""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import IO, Any

from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections
from django.db.utils import load_backend
from psycopg import errors, pq, sql

from tenancy.backends.base import (
    CHUNK,
    DatabaseExists,
    DatabaseServer,
    DumpContents,
    DumpFile,
    Fingerprint,
    TemplateInUse,
    TemplateMissing,
    held_wrappers,
    readable,
)
from tenancy.backends.client_programs import check_exit, client_program, reaped
from tenancy.conf import SERVER_ONLY_KEYS, server_vendor
from tenancy.exceptions import ReservedDatabaseError, TenancyError
from tenancy.reserved import (
    DEFAULT_MAINTENANCE_DB,
    check_drop,
    configured_databases,
    configured_names,
)
from tenancy.validators import validate_database_name

MAINTENANCE_ALIAS = "tenancy:maintenance"
LOCK_ALIAS = "tenancy:lock"
BACKUP_ALIAS = "tenancy:backup"

# pg_dump for a backup: custom format, compressed (as one would run it by hand).
_DUMP_OPTIONS = ("--format=custom",)
# pg_restore into a new database: objects owned by the server's user, grants left out,
# one transaction (a failure or a crash restores nothing).
RESTORE_OPTIONS = ("--no-owner", "--no-acl", "--exit-on-error", "--single-transaction")

# Advisory lock key in the maintenance database, around work on the template.
TEMPLATE_LOCK_KEY = int.from_bytes(b"tenancyT", "big") >> 1

# How long a connect that failed ahead of its use stays the answer (``_Connecting``).
FRESH_FAILURE = 1.0

# How long sessions ended for a move may take to exit (a busy server is slow to).
SESSIONS_END_TIMEOUT = 15.0

# A database every new session of which starts read-only, and back.
_READ_ONLY = "ALTER DATABASE {} SET default_transaction_read_only = on"
_WRITABLE = "ALTER DATABASE {} RESET default_transaction_read_only"

# Hosts that reach a server on this machine. The socket directory ("" or a path) and the
# loopback names may lead to one cluster or to two; taken as one, a database name of the
# other is refused rather than dropped.
_LOCAL_HOSTS = frozenset({"", "localhost", "127.0.0.1", "::1"})


def server_address(config: Mapping[str, Any]) -> tuple[str, str]:
    """The (host, port) libpq connects to for ``config`` (a server or a DATABASES entry):
    without HOST or PORT it reads PGHOST and PGPORT, then takes the local socket and 5432."""
    host = str(config.get("HOST") or os.environ.get("PGHOST") or "").lower()
    port = str(config.get("PORT") or os.environ.get("PGPORT") or "5432")
    if host in _LOCAL_HOSTS or host.startswith("/"):
        host = "localhost"
    return host, port


class PostgreSQLServer(DatabaseServer):
    def _maintenance_settings(self) -> dict[str, Any]:
        return self._settings_for(self.template.get("MAINTENANCE_DB", DEFAULT_MAINTENANCE_DB))

    def _settings_for(self, database_name: str) -> dict[str, Any]:
        """Connection settings for the server's database ``database_name``."""
        database = {k: v for k, v in self.template.items() if k not in SERVER_ONLY_KEYS}
        database["NAME"] = database_name
        return database

    @property
    def address(self) -> tuple[str, ...]:
        return ("postgresql", *server_address(self.template))

    def is_configured_as(self, database: Mapping[str, Any], name: str) -> bool:
        return (
            server_vendor(database) == "postgresql"
            and server_address(database) == server_address(self.template)
            and name in configured_names(database)
        )

    def _direct_settings_for(self, database_name: str) -> dict[str, Any]:
        """Settings for ``database_name`` on the server itself: the entry's ``DIRECT``
        address (where HOST and PORT lead to a pooler) over HOST, PORT and OPTIONS."""
        settings = self._settings_for(database_name)
        direct = self.template.get("DIRECT") or {}
        settings.update({key: value for key, value in direct.items() if key != "OPTIONS"})
        if "OPTIONS" in direct:
            settings["OPTIONS"] = {**(settings.get("OPTIONS") or {}), **direct["OPTIONS"]}
        return settings

    def _check_direct_route(self, database_name: str) -> None:
        """``TenancyError`` unless the entry's ``DIRECT`` address reaches the very database
        its HOST and PORT do (the same oid in the same cluster): a mistyped port would
        dump, or restore into, a database of another server."""
        if not self.template.get("DIRECT"):
            return
        problem = f"server {self.name!r}: its DIRECT address reaches another server than its "
        try:
            # Asked once per dump or restore: nothing kept open for the rest of it.
            with self._cursor(database_name, direct=True, keep=False) as cursor:
                cursor.execute(_IDENTITY, [database_name])
                direct = cursor.fetchone()
        except DatabaseError as exc:
            raise TenancyError(
                f"{problem}HOST and PORT, or none ({' '.join(str(exc).split())[:200]}); "
                f"correct TENANCY['SERVERS'][{self.name!r}]['DIRECT']"
            ) from exc
        if direct is None or tuple(direct) != self._database_identity(database_name, keep=False):
            raise TenancyError(
                f"{problem}HOST and PORT; correct TENANCY['SERVERS'][{self.name!r}]['DIRECT']"
            )

    @property
    def needs_direct_route(self) -> bool:
        """Whether client programs would reach the tenants through a pooler in transaction
        mode, whose server connections would keep their session settings (``pg_dump``
        sets an empty search_path): an entry with TRANSACTION_POOLING and no DIRECT."""
        return bool(self.template.get("TRANSACTION_POOLING")) and not self.template.get("DIRECT")

    @contextmanager
    def _cursor(
        self,
        database_name: str | None = None,
        alias: str = MAINTENANCE_ALIAS,
        *,
        direct: bool = False,
        keep: bool = True,
    ) -> Iterator[Any]:
        """A cursor on a connection of tenancy's own to the maintenance database, or to
        the server's database ``database_name`` (``direct``: not through a pooler).
        Within ``held_connections()`` the connection is kept for the block's later
        statements, unless on a template or, with ``keep`` false, opened for these."""
        settings = self._cursor_settings(database_name, direct)
        held = held_wrappers() if settings.get("NAME") not in _TEMPLATE_DATABASES else None
        key = _held_key(alias, settings)
        wrapper = held.pop(key, None) if held is not None else None
        if held is not None and wrapper is None and not keep:
            held = None  # opened for these statements alone
        if isinstance(wrapper, _Connecting):
            wrapper = wrapper.adopted()
        if wrapper is not None and not _reusable(wrapper):
            wrapper.close()
            wrapper = None
        if wrapper is None:
            wrapper = _unpooled_wrapper(settings, alias)
        try:
            with wrapper.cursor() as cursor:
                yield cursor
        except BaseException:
            wrapper.close()  # in whatever state the error left it: not used again
            raise
        if held is None or key in held:  # not kept, or a block nested in this one kept one
            wrapper.close()
        else:
            held[key] = wrapper

    def _cursor_settings(self, database_name: str | None, direct: bool) -> dict[str, Any]:
        if database_name is None:
            return self._maintenance_settings()
        if direct:
            return self._direct_settings_for(database_name)
        return self._settings_for(database_name)

    def connect_ahead(
        self,
        database_name: str | None = None,
        alias: str = MAINTENANCE_ALIAS,
        *,
        direct: bool = False,
    ) -> None:
        """Within ``held_connections()``: open the connection that ``_cursor`` with these
        arguments will use, in a thread of its own, while the caller goes on (takes a
        lock, waits for a program): its set-up, a few milliseconds, then costs no time of
        its own. ``_cursor`` waits for it. A failure is met again, and raised, where the
        connection is used; one never used is closed, without waiting for it, with the
        block. Outside such a block it does nothing."""
        held = held_wrappers()
        if held is None:
            return
        settings = self._cursor_settings(database_name, direct)
        key = _held_key(alias, settings)
        if settings.get("NAME") in _TEMPLATE_DATABASES or key in held:
            return
        # Never raises: whatever is wrong is met where the connection is used.
        with contextlib.suppress(Exception):
            held[key] = _Connecting(_unpooled_wrapper(settings, alias))

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

    def drop_database(self, name: str, *, allow_template: bool = False) -> bool:
        validate_database_name(name)
        check_drop(self, name, allow_template=allow_template)
        with self._cursor() as cursor:
            cursor.execute(_IDENTITY, [name])
            row = cursor.fetchone()
            if row is None:
                return False
            _refuse_a_configured_database(self.name, name, tuple(row))
            cursor.execute(_compose(cursor, "DROP DATABASE IF EXISTS {} WITH (FORCE)", name))
        return True

    def clone_database(self, template: str, name: str) -> bool:
        validate_database_name(template)
        validate_database_name(name)
        with self._cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name])
            if cursor.fetchone() is not None:
                return False
            _end_sessions(cursor, template)
            # PostgreSQL's default strategy, WAL_LOG. FILE_COPY forces a checkpoint for
            # every copy: a server-wide burst of writes that every other tenant on the
            # server would feel (measured: 0.35 s per copy with work in progress).
            query = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template)
            )
            try:
                cursor.execute(query.as_string(cursor.connection))
            except Exception as exc:
                if isinstance(exc.__cause__, errors.DuplicateDatabase | errors.UniqueViolation):
                    return False
                if isinstance(exc.__cause__, errors.ObjectInUse):
                    raise TemplateInUse(str(exc)) from exc
                if isinstance(exc.__cause__, errors.InvalidCatalogName):
                    raise TemplateMissing(str(exc)) from exc
                raise
        return True

    def claim_database(self, candidates: list[str], name: str) -> bool:
        for database in (*candidates, name):
            validate_database_name(database)
        with self._cursor() as cursor:
            cursor.execute(
                "SELECT datname FROM pg_database WHERE datname = ANY(%s) ORDER BY datname",
                [candidates],
            )
            for (candidate,) in cursor.fetchall():
                query = (
                    sql.SQL("ALTER DATABASE {} RENAME TO {}")
                    .format(sql.Identifier(candidate), sql.Identifier(name))
                    .as_string(cursor.connection)
                )
                for attempt in (1, 2):
                    try:
                        # Catalog work only: about a millisecond, where a copy takes 0.1 s.
                        cursor.execute(query)
                        return True
                    except Exception as exc:
                        cause = exc.__cause__
                        if isinstance(cause, errors.DuplicateDatabase | errors.UniqueViolation):
                            return False
                        if isinstance(cause, errors.ObjectInUse) and attempt == 1:
                            # A session on a spare has no business there (a pool's, or
                            # one just closing): end it, as before copying the template.
                            _end_sessions(cursor, candidate)
                            continue
                        # Claimed or dropped meanwhile, or still in use: the next one.
                        if isinstance(cause, errors.InvalidCatalogName | errors.ObjectInUse):
                            break
                        raise
        return False

    @contextmanager
    def template_lock(self) -> Iterator[None]:
        with advisory_lock(self._maintenance_settings(), TEMPLATE_LOCK_KEY):
            yield

    def list_databases(self) -> list[str]:
        with self._cursor() as cursor:
            cursor.execute(
                "SELECT datname FROM pg_database WHERE NOT datistemplate ORDER BY datname"
            )
            return [row[0] for row in cursor.fetchall()]

    # -- moving a tenant (tenancy.moving) ----------------------------------------------

    @contextmanager
    def client_connection(self, database_name: str) -> Iterator[tuple[str, dict[str, str]]]:
        """The ``--dbname`` argument and the environment with which PostgreSQL's client
        programs (``pg_dump``, ``pg_restore``) reach ``database_name`` on this server as
        Django does: every connection setting (the password among them) in a service file
        of its own, readable by this user only and removed after the block, never on a
        command line (``ps``); given as ``service=``, it outranks a PGSERVICE or PGHOST
        inherited from the environment."""
        settings = self._direct_settings_for(database_name)
        keywords = {option.keyword.decode() for option in pq.Conninfo.get_defaults()}
        values: dict[str, object] = {
            key: value
            for key, value in (settings.get("OPTIONS") or {}).items()
            if key in keywords and key != "service"
        }
        values.update(
            host=settings.get("HOST"),
            port=settings.get("PORT"),
            user=settings.get("USER"),
            password=settings.get("PASSWORD"),
            dbname=database_name,
        )
        lines = [f"{key}={value}" for key, value in values.items() if value not in (None, "")]
        if any("\n" in line or "\r" in line for line in lines):
            raise TenancyError(f"Server {self.name!r}: a connection setting has a line break.")
        # A file of its own, not one in a directory of its own: making and removing a
        # directory took 2.5 ms on this project's test machine (ext4), a file 0.04 ms.
        descriptor, service_file = tempfile.mkstemp(prefix="tenancy-", suffix=".conf")  # 0600
        try:
            with os.fdopen(descriptor, "w") as service:
                service.write("[tenancy]\n" + "\n".join(lines) + "\n")
            yield "service=tenancy", {**os.environ, "PGSERVICEFILE": service_file}
        finally:
            os.unlink(service_file)

    def database_identity(self, database_name: str) -> tuple[Any, ...] | None:
        return self._database_identity(database_name)

    def _database_identity(
        self, database_name: str, *, keep: bool = True
    ) -> tuple[Any, ...] | None:
        """The database's oid and its cluster's start (``_IDENTITY``), on every server,
        where ``database_identity`` of a schema server tells a schema."""
        with self._cursor(keep=keep) as cursor:
            cursor.execute(_IDENTITY, [database_name])
            row = cursor.fetchone()
        return None if row is None else tuple(row)

    def keep_read_only(self, database_name: str) -> None:
        validate_database_name(database_name)
        with self._cursor() as cursor:
            cursor.execute(_compose(cursor, _READ_ONLY, database_name))

    def database_size(self, database_name: str) -> int:
        with self._cursor() as cursor:
            cursor.execute("SELECT pg_database_size(%s)", [database_name])
            return int(cursor.fetchone()[0])

    @contextmanager
    def writes_stopped(self, database_name: str, lock_key: int) -> Iterator[Callable[[], None]]:
        """Hold advisory lock ``lock_key`` in ``database_name`` (a migrator holding it is
        waited for), make the database read-only for every new session and end the other
        sessions on it, whose transactions roll back. It stays read-only after the block:
        ``allow_writes`` undoes it. Yields a function that ends the other sessions again
        (those of ``pg_dump``, whose settings a pooler would hand on)."""
        validate_database_name(database_name)
        wrapper = _unpooled_wrapper(self._settings_for(database_name), LOCK_ALIAS)
        try:
            wrapper.ensure_connection()
            raw = wrapper.connection
            raw.autocommit = False
            # The pid as the server knows it (a pooler announces one of its own at login).
            row = raw.execute(
                "SELECT pg_backend_pid() FROM (SELECT pg_advisory_xact_lock(%s)) AS locked",
                [lock_key],
            ).fetchone()
            with self._cursor() as cursor:
                cursor.execute(_compose(cursor, _READ_ONLY, database_name))
                # Sessions that start from now on are read-only.
                cursor.execute("SELECT clock_timestamp()")
                (read_only_since,) = cursor.fetchone()
                _end_sessions(cursor, database_name, keep=row[0])
                # A session from before could still write: one that is slow to exit on a
                # busy server is waited for; one that stays is another role's, which this
                # user may not end.
                deadline = time.monotonic() + SESSIONS_END_TIMEOUT
                while _sessions_before(cursor, database_name, row[0], read_only_since):
                    if time.monotonic() > deadline:
                        raise TenancyError(
                            f"sessions on database {database_name!r} could not be ended "
                            "(another role's?); end them, or move as a user that may"
                        )
                    _end_sessions(cursor, database_name, timeout=0.1, keep=row[0])
            yield lambda: self.end_sessions(database_name, keep=row[0])
        finally:
            wrapper.close()

    def allow_writes(self, database_name: str) -> None:
        validate_database_name(database_name)
        with self._cursor() as cursor:
            cursor.execute(_compose(cursor, _WRITABLE, database_name))
        # Sessions opened meanwhile (a pooler's) started read-only; new ones start writable.
        self.end_sessions(database_name)

    def wait_for_queries(self, database_name: str, timeout: float) -> None:
        """Wait, ``timeout`` seconds at most, until no session on ``database_name`` runs a
        query or holds a transaction open (idle sessions do not count)."""
        deadline = time.monotonic() + timeout
        with self._cursor() as cursor:
            while time.monotonic() < deadline:
                cursor.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                    "AND pid <> pg_backend_pid() AND state IS DISTINCT FROM 'idle'",
                    [database_name],
                )
                if cursor.fetchone()[0] == 0:
                    return
                time.sleep(0.05)

    def end_sessions(self, database_name: str, keep: int | None = None) -> None:
        """End the sessions on ``database_name`` but the one of pid ``keep``: their
        transactions roll back, and a pooler such as PgBouncer, which hands a server
        connection's session settings on to its next client, opens fresh ones."""
        with self._cursor() as cursor:
            _end_sessions(cursor, database_name, keep=keep)

    def fingerprint(self, database_name: str, *, checksums: bool = True) -> Fingerprint:
        """Per table of ``database_name``: its rows and a checksum of them (the sum of a
        hash of each row's text, whatever the order); per sequence: its last value."""
        with self._cursor(database_name) as cursor:
            # One snapshot; the text of a row depends on these settings, so both sides are
            # read alike (SET LOCAL: nothing stays on a pooler's server connection).
            cursor.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; " + _ROW_TEXT)
            found = _fingerprint(cursor, checksums)
            cursor.execute("COMMIT")
        return found

    # -- backing up and restoring a tenant (tenancy.backups) ---------------------------

    def dump(
        self,
        database_name: str,
        sink: Callable[[bytes], None],
        meanwhile: Callable[[], None] | None = None,
    ) -> DumpContents:
        """``pg_dump`` in custom format (compressed, as by hand) of an exported snapshot,
        which the row counts and the applied migrations are read in meanwhile; writes go
        on. Not through a pooler (``DIRECT``): pg_dump's session settings would stay."""
        validate_database_name(database_name)
        return self._dump(database_name, sink, meanwhile)

    def prepare_dump(self, database_name: str) -> None:
        validate_database_name(database_name)
        self.connect_ahead(database_name, BACKUP_ALIAS, direct=True)

    def prepare_restore(self) -> None:
        self.connect_ahead()

    def contents(self, database_name: str) -> DumpContents:
        validate_database_name(database_name)
        with self._cursor(database_name) as cursor:
            return _contents(cursor)

    def _dump(
        self,
        database_name: str,
        sink: Callable[[bytes], None],
        meanwhile: Callable[[], None] | None = None,
        schema: str | None = None,
    ) -> DumpContents:
        """``dump`` of database ``database_name``, or of its ``schema`` only."""
        self._check_direct_route(database_name)
        only = [] if schema is None else [f'--schema="{schema}"']  # a name, not a pattern
        with self._cursor(database_name, BACKUP_ALIAS, direct=True) as cursor:
            cursor.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            cursor.execute("SELECT pg_export_snapshot(), current_setting('server_version')")
            snapshot, version = cursor.fetchone()
            with (
                self.client_connection(database_name) as (dsn, environment),
                tempfile.TemporaryFile() as errors,
            ):
                dump = subprocess.Popen(
                    [
                        client_program("pg_dump"),
                        *_DUMP_OPTIONS,
                        f"--snapshot={snapshot}",
                        *only,
                        dsn,
                    ],
                    stdout=subprocess.PIPE,
                    stderr=errors,
                    env=environment,
                )
                with reaped(dump):
                    assert dump.stdout is not None
                    pump = _Pump(dump.stdout, sink)
                    try:
                        # Read by PostgreSQL while pg_dump reads: two backends at once.
                        fingerprint = _fingerprint(cursor, checksums=False, schema=schema)
                        migrations = _applied_migrations(cursor, schema)
                        if meanwhile is not None:
                            meanwhile()
                    except BaseException:
                        dump.kill()
                        raise
                    finally:
                        pump.join()
                    dump.wait()
                pump.raise_failure()
                check_exit("pg_dump", dump, errors)
            cursor.execute("COMMIT")
        return DumpContents(fingerprint, migrations, str(version))

    def home_schema(self, name: str) -> str | None:
        return "public"

    def restore_database(
        self,
        database_name: str,
        dump: DumpFile,
        *,
        schema: str | None,
        isolated: bool = False,
    ) -> None:
        """``pg_restore`` of the custom-format ``dump`` into the new database
        ``database_name``, in one transaction, objects owned by this server's user (as
        provisioning makes them), grants not restored (the roles may not exist here). A dump
        of a schema tenant (``schema`` other than ``public``) has its schema made the
        database's ``public``, where a tenant of its own database keeps its tables."""
        if not self.create_database(database_name):
            raise DatabaseExists(f"database {database_name!r} exists on server {self.name!r}")
        # Opened while pg_restore works, for what is asked next: what it holds.
        self._restore_into(database_name, dump, lambda: self.connect_ahead(database_name))
        if schema not in (None, "public"):
            with self._cursor(database_name, direct=True) as cursor:
                query = sql.SQL(
                    "BEGIN; DROP SCHEMA public; ALTER SCHEMA {} RENAME TO public; COMMIT"
                ).format(sql.Identifier(schema))
                cursor.execute(query.as_string(cursor.connection))

    def _restore_into(
        self,
        database_name: str,
        dump: DumpFile,
        meanwhile: Callable[[], None] | None = None,
    ) -> None:
        """``pg_restore`` of ``dump`` into database ``database_name``. It reads the dump
        from the file itself, its standard input placed at the dump's first byte: fed
        through a pipe by this process, 50 MB took 0.1 s longer. It uses nothing after the
        dump's last block: tenancy's dumps are written through a pipe, so they name no
        positions of their blocks (which would be wrong in a larger file), and pg_restore
        reads the blocks in turn from the end of the table of contents. ``meanwhile`` is
        called once pg_restore has started."""
        self._check_direct_route(database_name)
        with (
            self.client_connection(database_name) as (dsn, environment),
            tempfile.TemporaryFile() as errors,
        ):
            restore = subprocess.Popen(
                [client_program("pg_restore"), *RESTORE_OPTIONS, "--dbname", dsn],
                stdin=dump.descriptor(),
                stdout=subprocess.DEVNULL,
                stderr=errors,
                env=environment,
            )
            with reaped(restore):
                if meanwhile is not None:
                    meanwhile()
                restore.wait()
            check_exit("pg_restore", restore, errors)


class _Pump(threading.Thread):
    """Hands what a program writes to ``sink``, in a thread of its own; a failure of the
    sink (a full disk) ends the reading and is raised by ``raise_failure``."""

    def __init__(self, stream: IO[bytes], sink: Callable[[bytes], None]) -> None:
        super().__init__(name="tenancy-dump", daemon=True)
        self.stream, self.sink = stream, sink
        self.failure: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            while chunk := self.stream.read(CHUNK):
                self.sink(chunk)
        except BaseException as exc:
            self.failure = exc
            self.stream.close()  # the program gets a broken pipe and ends

    def raise_failure(self) -> None:
        if self.failure is not None:
            raise self.failure


# The text of a row depends on these; fingerprints of two databases are read alike.
_ROW_TEXT = (
    "SET LOCAL TimeZone = 'UTC'; SET LOCAL DateStyle = 'ISO, YMD'; "
    "SET LOCAL IntervalStyle = 'postgres'; SET LOCAL extra_float_digits = 1; "
    "SET LOCAL bytea_output = 'hex'"
)


def _fingerprint(cursor: Any, checksums: bool, schema: str | None = None) -> Fingerprint:
    """The fingerprint of the database of ``cursor`` (of its ``schema`` only), in its
    transaction."""
    tables: dict[str, tuple[int, int]] = {}
    cursor.execute(
        "SELECT n.nspname, c.relname FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind = 'r' AND n.nspname <> 'information_schema' "
        "AND left(n.nspname, 3) <> 'pg_' AND (%s::text IS NULL OR n.nspname = %s) "
        "ORDER BY 1, 2",
        [schema, schema],
    )
    # ROW(t.*): the whole row, even where a column is named t.
    checksum = (
        "coalesce(sum(('x' || left(md5(ROW(t.*)::text), 15))::bit(60)::bigint), 0)"
        if checksums
        else "0"
    )
    for schema, table in cursor.fetchall():
        query = sql.SQL("SELECT count(*), " + checksum + " FROM {}.{} AS t").format(
            sql.Identifier(schema), sql.Identifier(table)
        )
        cursor.execute(query.as_string(cursor.connection))
        rows, total = cursor.fetchone()
        tables[f"{schema}.{table}"] = (int(rows), int(total))
    if schema is None:  # large objects belong to a database, not to a schema
        cursor.execute(
            "SELECT count(*), coalesce(sum(('x' || left(md5(oid::text), 15))::bit(60)"
            "::bigint), 0) FROM pg_largeobject_metadata"
        )
        rows, total = cursor.fetchone()
        if rows:
            tables["large objects"] = (int(rows), int(total) if checksums else 0)
    cursor.execute(
        "SELECT schemaname || '.' || sequencename, coalesce(last_value, 0) "
        "FROM pg_sequences WHERE left(schemaname, 3) <> 'pg_' "
        "AND (%s::text IS NULL OR schemaname = %s) ORDER BY 1",
        [schema, schema],
    )
    sequences = {name: int(value) for name, value in cursor.fetchall()}
    return Fingerprint(tables, sequences)


def _contents(cursor: Any, schema: str | None = None) -> DumpContents:
    """``contents`` of the database of ``cursor`` (of its ``schema`` only), in one
    snapshot."""
    cursor.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    fingerprint = _fingerprint(cursor, checksums=False, schema=schema)
    migrations = _applied_migrations(cursor, schema)
    cursor.execute("COMMIT")
    version = cursor.connection.info.parameter_status("server_version") or ""
    return DumpContents(fingerprint, migrations, version)


def _applied_migrations(cursor: Any, schema: str | None = None) -> list[str]:
    """``app.name`` of the migrations recorded in the database of ``cursor`` (in its
    ``schema``, where a schema tenant keeps its own ``django_migrations``)."""
    table = sql.Identifier("django_migrations")
    if schema is not None:
        table = sql.Identifier(schema, "django_migrations")
    name = table.as_string(cursor.connection)
    cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [name])
    if not cursor.fetchone()[0]:
        return []
    cursor.execute(f"SELECT app || '.' || name FROM {name} ORDER BY app, name")
    return [found for (found,) in cursor.fetchall() if found is not None]  # NULLs: none


# What tells one cluster from another: no two clusters on a port started at the same
# microsecond.
_CLUSTER = "pg_postmaster_start_time(), current_setting('port')"
# A database's identity: its oid in its cluster.
_IDENTITY = f"SELECT oid, {_CLUSTER} FROM pg_database WHERE datname = %s"


def _refuse_a_configured_database(server: str, name: str, target: tuple[Any, ...]) -> None:
    """Ask each configured PostgreSQL database of ``settings.DATABASES`` which database
    it is; ``ReservedDatabaseError`` if one is ``target`` (its oid and cluster).

    The names in the settings are compared before (``tenancy.reserved``); this asks the
    servers themselves, so that an address spelt differently (an IP address for a host
    name, OPTIONS host, port or service) still cannot lead to the project's database. A
    database that cannot be reached is left to the comparison of names.
    """
    for alias, database in configured_databases():
        if alias not in connections.settings or server_vendor(database) != "postgresql":
            continue
        try:
            with connections[alias].cursor() as cursor:
                cursor.execute(
                    f"SELECT oid, {_CLUSTER} FROM pg_database WHERE datname = current_database()"
                )
                row = cursor.fetchone()
        except Exception:
            continue
        if row is not None and tuple(row) == target:
            raise ReservedDatabaseError(
                f"Database {name!r} on server {server!r} is not dropped: it is the "
                f"project's database DATABASES[{alias!r}]."
            )
    _refuse_a_shared_database(server, name, target)


def _refuse_a_shared_database(server: str, name: str, target: tuple[Any, ...]) -> None:
    """The same question to the shared database of each schema server: a database tenant
    on an entry that spells the host otherwise must not drop every schema tenant."""
    from tenancy.backends import get_server
    from tenancy.conf import tenancy_settings

    for entry in tenancy_settings.SERVERS:
        schemas = get_server(entry)
        if not schemas.holds_schemas:
            continue
        try:
            # Asked of its server first: a pooler answers logins to a database that does
            # not exist with a refusal of every login to it for a while (server_login_retry).
            if not schemas.shared_database_exists():  # type: ignore[attr-defined]
                continue
            with schemas._shared_cursor() as cursor:  # type: ignore[attr-defined]
                cursor.execute(
                    f"SELECT oid, {_CLUSTER} FROM pg_database WHERE datname = current_database()"
                )
                row = cursor.fetchone()
        except Exception:
            continue  # missing or unreachable: left to the comparison of names
        if row is not None and tuple(row) == target:
            raise ReservedDatabaseError(
                f"Database {name!r} on server {server!r} is not dropped: it holds the "
                f"tenant schemas of server {entry!r}."
            )


@contextmanager
def advisory_lock(settings_dict: dict[str, Any], key: int, *, wait: bool = True) -> Iterator[bool]:
    """Hold advisory lock ``key`` in the database of ``settings_dict`` for the block;
    yields whether it was taken (always True when ``wait``).

    The lock is transaction-level, taken on a connection of its own whose transaction
    stays open for the whole block. That keeps it on one server connection behind PgBouncer
    in transaction pooling too, where a session-level lock would be taken on one server
    connection and released on another, or never. A process that dies drops its
    connection, and with it the lock.
    """
    wrapper = _unpooled_wrapper(settings_dict, LOCK_ALIAS)
    # The driver's connection alone: Django's set-up of one (its time zone, a role) is a
    # round trip of no use to a lock.
    with wrapper.wrap_database_errors:
        raw = wrapper.get_new_connection(wrapper.get_connection_params())
    try:
        raw.autocommit = False
        function = "pg_advisory_xact_lock" if wait else "pg_try_advisory_xact_lock"
        row = raw.execute(f"SELECT {function}(%s)", [key]).fetchone()
        yield wait or bool(row[0])
        # Released once the server answers: closing alone leaves the server (or a pooler)
        # to end the transaction after the next run may already have asked for the lock.
        raw.rollback()
    finally:
        raw.close()  # ends the transaction, and the lock with it, if not done above


# Never kept: a session on a template makes every CREATE DATABASE copying it fail.
_TEMPLATE_DATABASES = frozenset({"template0", "template1"})


def _reusable(wrapper: Any) -> bool:
    """Whether a kept connection can serve the next statements: open, outside any
    transaction (a block that ended one way or another left none behind), and not ended
    by the server meanwhile (an idle connection has nothing to read unless the server
    said goodbye: ``idle_session_timeout``, a restart, a pooler's idle timeout)."""
    raw = wrapper.connection
    if (
        raw is None
        or raw.closed
        or raw.broken
        or not wrapper.autocommit
        or raw.info.transaction_status != pq.TransactionStatus.IDLE
    ):
        return False
    try:
        return not readable(raw.pgconn.socket)
    except Exception:
        return False


def _held_key(alias: str, settings: dict[str, Any]) -> tuple[Any, ...]:
    """What a connection kept by ``held_connections`` is found again by."""
    return (alias, tuple(sorted((k, repr(v)) for k, v in settings.items())))


class _Connecting(threading.Thread):
    """A connection of tenancy's own being opened in a thread of its own
    (``connect_ahead``). Only the driver's connect runs there; Django's set-up of it (time
    zone, role, ``connection_created``) runs in the wrapper's own thread, in ``adopted``,
    as for any connection. One never adopted is not waited for: it is closed once open."""

    def __init__(self, wrapper: Any) -> None:
        super().__init__(name="tenancy-connect", daemon=True)
        self.wrapper, self.parameters = wrapper, wrapper.get_connection_params()
        self.raw: Any = None
        self.failure: Exception | None = None
        self.failed_at = 0.0
        self.abandoned = False
        self.lock = threading.Lock()
        self.start()

    def run(self) -> None:
        try:
            raw = self.wrapper.get_new_connection(self.parameters)
        except Exception as exc:
            self.failure, self.failed_at = exc, time.monotonic()
            return
        with self.lock:
            if not self.abandoned:
                self.raw = raw
                return
        raw.close()

    def adopted(self) -> Any:
        """The wrapper, connected through the connection opened ahead and set up here;
        ``None`` when the set-up failed (the caller connects again and meets the error).
        A connect that failed just now is raised, as Django's error, rather than tried
        twice (a login refused twice, a timeout waited out twice); one that failed
        longer ago (the caller waited for a lock meanwhile) is tried again."""
        try:
            self.join()
        except BaseException:
            self.close()
            raise
        raw, self.raw = self.raw, None
        if self.failure is not None and time.monotonic() - self.failed_at < FRESH_FAILURE:
            with self.wrapper.wrap_database_errors:
                raise self.failure
        if raw is None:
            return None
        wrapper = self.wrapper
        wrapper.get_new_connection = lambda parameters: raw  # Django's connect() with it
        try:
            wrapper.ensure_connection()
        except BaseException as exc:
            wrapper.close()
            raw.close()
            if not isinstance(exc, Exception):
                raise  # an interrupt: nothing left open
            return None
        finally:
            del wrapper.get_new_connection
        return wrapper

    def close(self) -> None:
        with self.lock:
            self.abandoned = True
            raw, self.raw = self.raw, None
        if raw is not None:
            raw.close()


def _unpooled_wrapper(settings_dict: dict[str, Any], alias: str) -> Any:
    """A connection of tenancy's own to the database of ``settings_dict``."""
    database = dict(settings_dict)
    options = database.get("OPTIONS") or {}
    database["OPTIONS"] = {k: v for k, v in options.items() if k != "pool"}
    database = connections.configure_settings({DEFAULT_DB_ALIAS: {}, "x": database})["x"]
    return load_backend(database["ENGINE"]).DatabaseWrapper(database, alias)


def _sessions_before(cursor: Any, database: str, keep: int, since: Any) -> int:
    """Sessions on ``database`` (but ``keep``) that started before ``since``."""
    cursor.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
        "AND pid <> %s AND backend_start < %s",
        [database, keep, since],
    )
    return int(cursor.fetchone()[0])


def _compose(cursor: Any, template: str, name: str) -> str:
    query = sql.SQL(template).format(sql.Identifier(name))
    return query.as_string(cursor.connection)


def _end_sessions(
    cursor: Any, database: str, timeout: float = 1.0, keep: int | None = None
) -> None:
    """End the sessions on the template ``database`` (ours, just closed; a connection pool's
    such as PgBouncer's, which keeps server connections open), and wait briefly for them to
    exit: CREATE DATABASE ... TEMPLATE refuses a template in use. Sessions that cannot be
    ended (another role's, without the privilege) make the copy fall back to migrating."""
    try:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid() AND pid IS DISTINCT FROM %s",
            [database, keep],
        )
    except Exception as exc:
        if not isinstance(exc.__cause__, errors.InsufficientPrivilege):
            raise
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid IS DISTINCT FROM %s",
            [database, keep],
        )
        if cursor.fetchone()[0] == 0:
            return
        time.sleep(0.005)
