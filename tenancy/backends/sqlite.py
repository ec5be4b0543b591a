"""SQLite: a server is a directory; a tenant database is ``<DIRECTORY>/<name>.sqlite3``."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import sqlite3
import stat
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from tenancy.backends.base import (
    CHUNK,
    DatabaseExists,
    DatabaseServer,
    DumpContents,
    DumpFile,
    Fingerprint,
    TemplateMissing,
)
from tenancy.conf import server_vendor
from tenancy.exceptions import TenancyError
from tenancy.private_files import private_path, remove_partial_files_of_dead_processes
from tenancy.reserved import check_drop
from tenancy.validators import validate_database_name

SUFFIX = ".sqlite3"
_COMPANIONS = ("-wal", "-shm", "-journal", ".migrate-lock")


def sqlite_uri(path: Path) -> str:
    """The URI that opens the database at PATH only if it exists (``mode=rw``); Django
    opens SQLite databases with ``uri=True``."""
    return f"{path.absolute().as_uri()}?mode=rw"


def sqlite_path(name: str) -> Path:
    """The file of a database ``NAME``: a path, or a ``file:`` URI."""
    if name.startswith("file:"):
        return Path(unquote(urlsplit(name).path))
    return Path(name)


class SQLiteServer(DatabaseServer):
    @property
    def directory(self) -> Path:
        return Path(self.template["DIRECTORY"])

    def path(self, name: str) -> Path:
        validate_database_name(name)
        return self.directory / f"{name}{SUFFIX}"

    @property
    def address(self) -> tuple[str, ...]:
        return ("sqlite", str(self.directory.resolve()))

    def is_configured_as(self, database: Mapping[str, Any], name: str) -> bool:
        if server_vendor(database) != "sqlite":
            return False
        target = self.path(name).resolve()
        test = database.get("TEST") or {}
        files = [database.get("NAME"), test.get("NAME") if isinstance(test, Mapping) else None]
        return any(
            sqlite_path(str(file)).resolve() == target
            for file in files
            if file and str(file) != ":memory:" and "mode=memory" not in str(file)
        )

    def database_exists(self, name: str) -> bool:
        return self.path(name).exists()

    def create_database(self, name: str) -> bool:
        path = self.path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            path.touch(exist_ok=False)  # an empty file is an empty SQLite database
        except FileExistsError:
            return False
        return True

    def drop_database(self, name: str, *, allow_template: bool = False) -> bool:
        path = self.path(name)
        check_drop(self, name, allow_template=allow_template)
        remove_partial_files_of_dead_processes(path)
        existed = path.exists()
        for companion in _COMPANIONS:
            with contextlib.suppress(FileNotFoundError):
                Path(f"{path}{companion}").unlink()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return existed

    def clone_database(self, template: str, name: str) -> bool:
        try:
            return _copy_file(self.path(template), self.path(name))
        except FileNotFoundError as exc:
            raise TemplateMissing(str(exc)) from exc

    def copy_database_from(self, source: SQLiteServer, name: str) -> bool:
        """Copy database ``name`` of server ``source`` here; ``False`` when it exists here."""
        self.directory.mkdir(parents=True, exist_ok=True)
        return _copy_file(source.path(name), self.path(name))

    @contextlib.contextmanager
    def writes_stopped(self, database_name: str, lock_key: int) -> Iterator[Callable[[], None]]:
        """Hold the migration lock of ``database_name`` (a migrator holding it is waited
        for). SQLite has no read-only mode a server enforces: writes of a process that
        still has the database open are left to the copy's verification to detect."""
        path = self.path(database_name)
        with file_lock(path.with_name(f"{path.name}.migrate-lock")):
            yield lambda: None

    def end_sessions(self, database_name: str, keep: int | None = None) -> None:
        return None  # no server, no sessions

    def wait_for_queries(self, database_name: str, timeout: float) -> None:
        return None  # no server to ask; reads are not served from a source (see fences_writers)

    # Nothing keeps a process that has the file open from writing to it.
    fences_writers = False

    def allow_writes(self, database_name: str) -> None:
        path = self.path(database_name)
        if path.exists():
            path.chmod(path.stat().st_mode | stat.S_IWUSR)

    def keep_read_only(self, database_name: str) -> None:
        """The file read-only: a new connection cannot write (one that has it open can)."""
        path = self.path(database_name)
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))

    def database_identity(self, database_name: str) -> tuple[Any, ...] | None:
        try:
            found = self.path(database_name).stat()
        except FileNotFoundError:
            return None
        return (found.st_dev, found.st_ino)

    def database_size(self, database_name: str) -> int:
        return self.path(database_name).stat().st_size

    def fingerprint(self, database_name: str, *, checksums: bool = True) -> Fingerprint:
        return fingerprint_file(self.path(database_name), checksums=checksums)

    # -- backing up and restoring a tenant (tenancy.backups) ---------------------------

    def dump(
        self,
        database_name: str,
        sink: Callable[[bytes], None],
        meanwhile: Callable[[], None] | None = None,
    ) -> DumpContents:
        """A copy through SQLite's backup API (one consistent state, writes go on), read
        for what it holds, then handed to ``sink``."""
        source = self.path(database_name)
        if not source.exists():
            raise FileNotFoundError(f"{source} does not exist")
        # A private file beside the database: one a killed process left is removed by the
        # next dump, copy or drop of this database.
        remove_partial_files_of_dead_processes(source)
        copy = private_path(source)
        try:
            with (
                # Read-only: an archived tenant's file is.
                contextlib.closing(
                    sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True)
                ) as src,
                contextlib.closing(sqlite3.connect(copy)) as target,
            ):
                src.backup(target)
            contents = _file_contents(copy)
            if meanwhile is not None:
                meanwhile()
            with copy.open("rb") as dumped:
                while chunk := dumped.read(CHUNK):
                    sink(chunk)
        finally:
            with contextlib.suppress(FileNotFoundError):
                copy.unlink()
        return contents

    def contents(self, database_name: str) -> DumpContents:
        return _file_contents(self.path(database_name))

    def restore_database(
        self,
        database_name: str,
        dump: DumpFile,
        *,
        schema: str | None = None,
        isolated: bool = False,
    ) -> None:
        """The file of ``dump`` copied into a private file, checked to be a sound SQLite
        database, then linked into place (never over an existing one)."""
        target = self.path(database_name)
        dump.verify()
        self.directory.mkdir(parents=True, exist_ok=True)
        remove_partial_files_of_dead_processes(target)
        partial = private_path(target)
        try:
            with partial.open("wb") as restored:
                for chunk in dump.chunks():
                    restored.write(chunk)
                restored.flush()
                os.fsync(restored.fileno())
            with contextlib.closing(sqlite3.connect(sqlite_uri(partial), uri=True)) as check:
                (result,) = check.execute("PRAGMA quick_check").fetchone()
            if result != "ok":
                raise TenancyError(f"the backup's database file is damaged: {result}")
            try:
                os.link(partial, target)
            except FileExistsError:
                raise DatabaseExists(
                    f"database {database_name!r} exists on server {self.name!r}"
                ) from None
        except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:
            # A damaged file can make even SQLite's messages undecodable.
            raise TenancyError(f"the backup's database file cannot be read: {exc}") from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()

    def claim_database(self, candidates: list[str], name: str) -> bool:
        target = self.path(name)
        remove_partial_files_of_dead_processes(target)
        if target.exists():
            return False  # keep the spares for databases still to come
        private = private_path(target)
        for candidate in candidates:
            try:
                # Moving the file away is the claim: only one process can move it.
                os.rename(self.path(candidate), private)
            except FileNotFoundError:
                continue
            try:
                os.link(private, target)  # never replaces an existing database
            except FileExistsError:
                return False
            finally:
                private.unlink()
            return True
        return False

    @contextlib.contextmanager
    def template_lock(self) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True)
        with file_lock(self.directory / ".template-lock"):
            yield

    def list_databases(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        return sorted(p.name.removesuffix(SUFFIX) for p in self.directory.glob(f"*{SUFFIX}"))


def fingerprint_file(path: Path, *, checksums: bool = True) -> Fingerprint:
    """Per table of the database file ``path``: its rows and a checksum of them (a sum of
    a hash of each row, whatever the order; 0 without ``checksums``); per AUTOINCREMENT
    table, its ``sqlite_sequence`` value."""
    tables: dict[str, tuple[int, int]] = {}
    with contextlib.closing(
        sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    ) as connection:
        names = [
            name
            for (name,) in connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' "
                "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name"
            )
        ]
        for name in names:
            quoted = '"' + name.replace('"', '""') + '"'
            if not checksums:
                (rows,) = connection.execute(f"SELECT count(*) FROM {quoted}").fetchone()
                tables[name] = (int(rows), 0)
                continue
            rows, checksum = 0, 0
            for row in connection.execute(f"SELECT * FROM {quoted}"):
                digest = hashlib.blake2b(repr(row).encode(), digest_size=8).digest()
                rows, checksum = rows + 1, (checksum + int.from_bytes(digest, "big")) % 2**64
            tables[name] = (rows, checksum)
        sequences: dict[str, int] = {}
        if connection.execute(
            "SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence'"
        ).fetchone():
            sequences = dict(connection.execute("SELECT name, seq FROM sqlite_sequence"))
    return Fingerprint(tables, sequences)


def _file_contents(path: Path) -> DumpContents:
    """What the database file ``path``, which nothing writes to, holds."""
    try:
        with contextlib.closing(
            sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        ) as connection:
            (version,) = connection.execute("SELECT sqlite_version()").fetchone()
            migrations = _applied_migrations(connection)
        fingerprint = fingerprint_file(path, checksums=False)
    except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:
        raise TenancyError(f"the database file {path.name} cannot be read: {exc}") from exc
    return DumpContents(fingerprint, migrations, str(version))


def _applied_migrations(connection: sqlite3.Connection) -> list[str]:
    """``app.name`` of the migrations recorded in the database of ``connection``."""
    if not connection.execute(
        "SELECT 1 FROM sqlite_master WHERE name = 'django_migrations'"
    ).fetchone():
        return []
    found = connection.execute(
        "SELECT app || '.' || name FROM django_migrations ORDER BY app, name"
    )
    return [name for (name,) in found if name is not None]  # a row with NULLs is none


@contextlib.contextmanager
def file_lock(path: Path, *, wait: bool = True) -> Iterator[bool]:
    """Hold an exclusive lock on the file ``path`` (made if missing) between processes;
    yields whether it was taken (always True when ``wait``)."""
    with path.open("a") as lock_file:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _copy_file(source: Path, target: Path) -> bool:
    """Copy the database ``source`` to ``target`` through SQLite's backup API into a private
    file, then link it into place: a crash never leaves a half-copied database under the
    target's name. What a killed process left of its private file is removed first.
    ``False`` when ``target`` exists; ``FileNotFoundError`` when ``source`` does not."""
    remove_partial_files_of_dead_processes(target)
    if target.exists():
        return False
    partial = private_path(target)
    try:
        try:
            # Read-only: a missing source must not be created empty.
            src_connection = sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True)
        except sqlite3.OperationalError as exc:
            raise FileNotFoundError(f"{source}: {exc}") from exc
        with (
            contextlib.closing(src_connection) as src,
            contextlib.closing(sqlite3.connect(partial)) as copy,
        ):
            src.backup(copy)
        try:
            os.link(partial, target)
        except FileExistsError:
            return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
    return True
