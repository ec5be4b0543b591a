"""The operations tenancy needs from a database server, one class per vendor."""

from __future__ import annotations

import contextlib
import os
import select
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import IO, Any

from tenancy.conf import DATABASES_PLACEMENT, SCHEMAS_PLACEMENT
from tenancy.exceptions import TenancyError


@dataclass(frozen=True)
class Fingerprint:
    """What a copy of a database is checked against: per table (``schema.table`` on
    PostgreSQL), its number of rows and a checksum of them; per sequence, its last value."""

    tables: dict[str, tuple[int, int]]
    sequences: dict[str, int] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "tables": {k: list(v) for k, v in self.tables.items()},
            "sequences": self.sequences,
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Fingerprint:
        tables = {
            name: (int(rows), int(checksum)) for name, (rows, checksum) in value["tables"].items()
        }
        return cls(tables, {name: int(last) for name, last in value["sequences"].items()})

    def relative_to(self, schema: str | None) -> Fingerprint:
        """The same with ``schema.`` left out of its tables' and sequences' names: what two
        homes of one tenant (schema ``public`` of a database of its own, its schema of a
        shared database) are compared by. Unchanged for ``None``."""
        if schema is None:
            return self
        prefix = f"{schema}."

        def name(found: str) -> str:
            return found.removeprefix(prefix)

        return Fingerprint(
            {name(table): value for table, value in self.tables.items()},
            {name(sequence): value for sequence, value in self.sequences.items()},
        )

    def differences(self, copy: Fingerprint) -> list[str]:
        """What ``copy`` lacks or has otherwise; empty when it holds every row."""
        problems = [
            f"table {name} is missing" for name in sorted(self.tables.keys() - copy.tables.keys())
        ]
        problems += [
            f"table {name} is not in the source"
            for name in sorted(copy.tables.keys() - self.tables.keys())
        ]
        for name in sorted(self.tables.keys() & copy.tables.keys()):
            (rows, checksum), (copied, copied_checksum) = self.tables[name], copy.tables[name]
            if rows != copied:
                problems.append(f"table {name} has {copied} rows, the source {rows}")
            elif checksum != copied_checksum:
                problems.append(f"table {name} has rows that differ from the source's")
        for name, value in sorted(self.sequences.items()):
            if copy.sequences.get(name, -1) < value:
                problems.append(
                    f"sequence {name} is at {copy.sequences.get(name)}, below the source's {value}"
                )
        return problems


@dataclass(frozen=True)
class DumpContents:
    """What a dump holds, read in the snapshot it was taken in: per table its rows (and no
    checksum), per sequence its value, and the migrations applied (``app.name``)."""

    fingerprint: Fingerprint
    migrations: list[str]
    server_version: str


# A dump is handed over in chunks of this many bytes.
CHUNK = 1 << 20


@dataclass(frozen=True)
class DumpFile:
    """A dump to restore: ``size`` bytes from byte ``offset`` of the open file ``file``
    (the member of a backup's tar file, or a temporary file of its own). ``check``, when
    given, is called before any of it is handed out and raises when it must not be: a
    backup's digest is read meanwhile (``tenancy.backups``)."""

    file: IO[bytes]
    offset: int
    size: int
    check: Callable[[], None] | None = field(default=None, compare=False)

    @classmethod
    def whole(cls, file: IO[bytes]) -> DumpFile:
        """All that was written to ``file``."""
        file.flush()
        return cls(file, 0, os.fstat(file.fileno()).st_size)

    def verify(self) -> None:
        """Raise unless the dump may be handed out (its ``check``): before anything is
        done on its account, even removing what an earlier attempt left."""
        if self.check is not None:
            self.check()

    def chunks(self) -> Iterator[bytes]:
        """The dump's bytes, in chunks of at most ``CHUNK``."""
        self.verify()
        # pread: the file's position is left alone, so a thread can read the dump while
        # another uses the file.
        position, end = self.offset, self.offset + self.size
        while position < end:
            chunk = os.pread(self.file.fileno(), min(CHUNK, end - position), position)
            if not chunk:
                raise TenancyError(f"the dump ends {end - position} bytes early")
            position += len(chunk)
            yield chunk

    def descriptor(self) -> int:
        """The file's descriptor positioned at the dump's first byte, for a program that
        reads the dump from its standard input itself (not through this process)."""
        self.verify()
        os.lseek(self.file.fileno(), self.offset, os.SEEK_SET)
        return self.file.fileno()


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

    @property
    def needs_direct_route(self) -> bool:
        """Whether PostgreSQL's client programs would reach it through a pooler in
        transaction mode (``tenancy.backends.postgresql``): never for other servers."""
        return False

    @property
    def placement(self) -> str:
        """Where the server keeps its tenants: ``"schemas"`` or ``"databases"``."""
        return SCHEMAS_PLACEMENT if self.holds_schemas else DATABASES_PLACEMENT

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

    def shared_database_refusal(self, *, ask_registry: bool = False) -> str | None:
        """Why the database holding the server's tenant schemas cannot be its (a schema
        server's), as a one-line message; ``None`` when it can, or holds none."""
        return None

    def is_configured_as(self, database: Mapping[str, Any], name: str) -> bool:
        """Whether ``database`` (an entry of ``settings.DATABASES``) is this server's
        database ``name``."""
        raise NotImplementedError

    def list_databases(self) -> list[str]:
        raise NotImplementedError

    # -- moving a tenant (tenancy.moving) ----------------------------------------------

    # Whether ``writes_stopped`` keeps every other writer out (a server that enforces it).
    fences_writers = True

    def database_identity(self, name: str) -> tuple[Any, ...] | None:
        """What tells the database ``name`` from any other, asked of the server itself;
        ``None`` when it does not exist."""
        raise NotImplementedError

    def keep_read_only(self, name: str) -> None:
        """Leave the database so that nothing writes to it (a source kept after a move)."""
        raise NotImplementedError

    def database_size(self, name: str) -> int:
        """Bytes the database takes on the server."""
        raise NotImplementedError

    def writes_stopped(
        self, name: str, lock_key: int
    ) -> AbstractContextManager[Callable[[], None]]:
        """Hold the database's migration lock, and keep writes out of it where the server
        can (it stays so after the block; ``allow_writes`` undoes it). Yields a function
        that ends the database's other sessions."""
        raise NotImplementedError

    def end_sessions(self, name: str, keep: int | None = None) -> None:
        """End the sessions on the database (but the one of pid ``keep``)."""
        raise NotImplementedError

    def wait_for_queries(self, name: str, timeout: float) -> None:
        """Wait (``timeout`` seconds at most) until nothing runs on the database."""
        raise NotImplementedError

    def allow_writes(self, name: str) -> None:
        raise NotImplementedError

    def drop_database_if_unchanged(self, name: str, expected: Fingerprint) -> bool:
        """Drop the source of a move (a server that keeps no writer out) unless rows
        reached it after it was verified as ``expected``; whether it was dropped."""
        now = self.fingerprint(name)
        if expected.differences(now) or now.differences(expected):
            return False
        self.drop_database(name)
        return True

    def fingerprint(self, name: str, *, checksums: bool = True) -> Fingerprint:
        """The database's tables (rows and a checksum of them; 0 without ``checksums``)
        and sequences."""
        raise NotImplementedError

    # -- backing up and restoring a tenant (tenancy.backups) ---------------------------

    def dump(
        self,
        name: str,
        sink: Callable[[bytes], None],
        meanwhile: Callable[[], None] | None = None,
    ) -> DumpContents:
        """Dump the database ``name`` as it is at one moment, handing the dump to ``sink``
        in chunks while the tenant goes on serving; what it holds is read at that moment.
        ``meanwhile`` is called once while the dump is being written: the caller's own
        work, which then costs no time of its own."""
        raise NotImplementedError

    def prepare_dump(self, name: str) -> None:
        """Within ``held_connections()``: start opening what ``dump`` of ``name`` reads
        through, while the caller goes on (takes the tenant's lock)."""
        return None

    def prepare_restore(self) -> None:
        """Within ``held_connections()``: start opening what a restore to this server
        asks first (is a name free, make the database), while the caller goes on."""
        return None

    def contents(self, name: str) -> DumpContents:
        """What the database ``name`` holds, as ``dump`` reads it (rows without
        checksums, sequences, migrations applied): a restored database is compared with
        its backup's manifest."""
        raise NotImplementedError

    def home_schema(self, name: str) -> str | None:
        """The schema that holds tenant database ``name``'s tables, which its fingerprint
        and its dump name them by: ``None`` where there are no schemas (SQLite)."""
        return None

    def restore_database(
        self, name: str, dump: DumpFile, *, schema: str | None, isolated: bool = False
    ) -> None:
        """Make database ``name``, which must not exist, from ``dump``, whose tables are
        in ``schema`` (the ``home_schema`` of the server it was dumped from, which may keep
        its tenants otherwise than this one); a failure leaves no database or an incomplete
        one, for the caller to drop (``drop_leftovers`` too). The dump is read once the
        database is made: its ``check`` runs meanwhile. ``isolated``: a dump this project
        did not make, whose SQL must run where no other tenant's data is (a server whose
        tenants share a database restores it aside)."""
        raise NotImplementedError

    def drop_leftovers(self, name: str) -> None:
        """Drop what an interrupted ``restore_database`` of ``name`` left beside it."""
        return None

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


class DatabaseExists(TenancyError):
    """A database to be made exists already: someone else's, never dropped by the one who
    meant to make it."""


_held = threading.local()


def held_wrappers() -> dict[Any, Any] | None:
    """The calling thread's kept connections (``held_connections``), or ``None``."""
    return getattr(_held, "wrappers", None)


@contextmanager
def held_connections() -> Iterator[None]:
    """Within the block, the calling thread's connections of tenancy's own to servers
    (``_cursor``) are kept and used again, one per database, instead of one opened per
    statement group; closed when the block ends. Provisioning asks a server several things
    in a row (is the name free, does the spare exist, rename it): each would otherwise
    cost a connection set-up. Nested blocks share the outer one's."""
    if getattr(_held, "wrappers", None) is not None:
        yield
        return
    _held.wrappers = {}
    try:
        yield
    finally:
        wrappers, _held.wrappers = _held.wrappers, None
        for wrapper in wrappers.values():
            with contextlib.suppress(Exception):
                wrapper.close()


def readable(descriptor: Any, timeout: float = 0) -> bool:
    """Whether ``descriptor`` (a socket or its number) has something to read within
    ``timeout`` seconds; a timeout already past waits for nothing. An idle database
    connection has nothing to read unless the server said goodbye."""
    if timeout < 0:
        return False
    poller = select.poll()  # not select(): descriptors may be above 1024
    poller.register(descriptor, select.POLLIN)
    return bool(poller.poll(timeout * 1000))
