"""Backing up a tenant to one file and restoring it from one, verified.

A backup is a tar file holding the tenant's database as the server's own tool dumps it
(``database.dump``: PostgreSQL's custom format, which ``pg_restore`` reads; or
``database.sqlite3``: a SQLite database) and ``manifest.json``: the tenant (slug, name,
server, domains), the migrations applied, the rows of each table and the value of each
sequence at the moment of the dump (read in the dump's own snapshot), the dump's size and
SHA-256, and the versions of tenancy, Django and the server. The tenant goes on serving
while it is dumped. The file is written under a private name and linked into place when
complete: a file under the final name is always a whole backup.

``restore_tenant`` makes a new database from a backup, checks the dump's digest and its
rows against the manifest, migrates it forward when the backup is older than the
project, then gives it to the tenant:

- a tenant that does not exist (deleted, or another installation) is recorded with the
  manifest's name and domains (those still free), marked ``restoring`` until it is done;
- ``as_slug`` makes a side copy under another slug, without domains, for inspection;
- ``replace`` puts the backup in place of a live tenant's database: the tenant serves
  from its current database until the registry switches to the restored one (in one
  transaction, recorded as a ``TenantMove`` of kind restore so that a crash is finished
  or undone by running the restore again), then the replaced database is dropped once no
  process uses it, or kept read-only (``keep_replaced``).

A failure before the switch drops what the restore made and leaves the tenant as it was.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import os
import re
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import IO, Any

import django
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import DatabaseError, connections, transaction
from django.utils.crypto import constant_time_compare, salted_hmac

from tenancy import ledger, replicas
from tenancy.backends import get_server
from tenancy.backends.base import (
    DatabaseExists,
    DatabaseServer,
    DumpFile,
    Fingerprint,
    held_connections,
)
from tenancy.conf import PLACEMENTS, SCHEMAS_PLACEMENT, server_vendor, tenancy_settings
from tenancy.connections import unregister
from tenancy.exceptions import TenancyError, one_line
from tenancy.migration import migrate_tenant, migration_state
from tenancy.models import (
    AbstractTenant,
    Domain,
    MoveKind,
    MoveStep,
    TenantMove,
    TenantStatus,
    get_tenant_model,
    registry_database,
)
from tenancy.moving import MOVABLE_STATUSES, drop_copy, finish_switched, timed_step
from tenancy.private_files import private_path, remove_partial_files_of_dead_processes
from tenancy.provisioning import add_domains, set_status
from tenancy.registry_cache import in_own_transaction
from tenancy.reserved import database_name_unavailable, registered_tenant, unavailable_reason
from tenancy.tenant_locks import tenant_lock
from tenancy.validators import (
    DATABASE_NAME_MAX_LENGTH,
    is_valid_slug,
    validate_database_name,
    validate_tenant_hostname,
)

logger = logging.getLogger("tenancy.backups")

FORMAT = "tenancy-backup"
VERSION = 1
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
_SIGNATURE_SALT = "tenancy.backups.manifest"
# The most a manifest (or its signature) is read of: a backup file is untrusted input.
MANIFEST_LIMIT = 1 << 20
DUMP_MEMBERS = {"postgresql": "database.dump", "sqlite": "database.sqlite3"}
SUFFIX = ".tar"

# Tenants whose database is complete: serving, suspended, or kept after a deletion.
BACKED_UP_STATUSES = (*MOVABLE_STATUSES, TenantStatus.ARCHIVED)

_BLOCK = tarfile.BLOCKSIZE


class BackupError(TenancyError):
    """A backup or a restore that was refused or failed; the message says what to do."""


@dataclass(frozen=True)
class Manifest:
    """What a backup holds (``manifest.json``)."""

    slug: str
    name: str
    server: str
    vendor: str
    database_name: str
    status: str
    domains: list[tuple[str, bool]]
    migrations: list[str]
    tables: dict[str, int]
    sequences: dict[str, int]
    dump_member: str
    dump_bytes: int
    dump_sha256: str
    created_at: str
    server_version: str
    tenancy_version: str
    django_version: str
    placement: str = "databases"

    def as_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, **asdict(self)}

    @classmethod
    def from_json(cls, value: Any, path: Path) -> Manifest:
        """The manifest read from a file, every value checked: a backup file is untrusted
        input once it has left the machine."""
        if not isinstance(value, dict) or value.get("format") != FORMAT:
            raise BackupError(f"{path} is not a tenant backup (its manifest is not tenancy's).")
        if value.get("version") != VERSION:
            raise BackupError(
                f"{path} is a backup of format version {str(value.get('version'))[:20]!r}; "
                f"this version of tenancy reads version {VERSION}."
            )
        problem = _manifest_problem(value)
        if problem:
            raise BackupError(f"{path} has a manifest that tenancy did not write ({problem}).")
        fields = {name: value[name] for name in cls.__dataclass_fields__ if name in value}
        fields["domains"] = [(str(domain), bool(primary)) for domain, primary in value["domains"]]
        return cls(**fields)

    @property
    def fingerprint(self) -> Fingerprint:
        """What the restored database must hold: the rows (no checksums) and sequences."""
        return Fingerprint(
            {name: (int(rows), 0) for name, rows in self.tables.items()},
            {name: int(value) for name, value in self.sequences.items()},
        )

    @property
    def home_schema(self) -> str | None:
        """The schema the dump holds the tenant's tables in (``home_schema`` of the
        server it was made on)."""
        if self.vendor != "postgresql":
            return None
        return self.database_name if self.placement == SCHEMAS_PLACEMENT else "public"


# What each value of a manifest is: a backup file is untrusted input.
_FIELD_TYPES: dict[str, type] = {
    "slug": str,
    "name": str,
    "server": str,
    "vendor": str,
    "database_name": str,
    "status": str,
    "domains": list,
    "migrations": list,
    "tables": dict,
    "sequences": dict,
    "dump_member": str,
    "dump_bytes": int,
    "dump_sha256": str,
    "created_at": str,
    "server_version": str,
    "tenancy_version": str,
    "django_version": str,
    "placement": str,
}


def _manifest_problem(value: dict[str, Any]) -> str:
    """What is wrong with a manifest's values; empty when nothing is."""
    for name, kind in _FIELD_TYPES.items():
        if type(value.get(name)) is not kind:
            return f"{name} is not a {kind.__name__}"
    if not is_valid_slug(value["slug"]):
        return "its slug is not a valid tenant slug"
    if value["placement"] not in PLACEMENTS:
        return "its placement is not one"
    if len(value["name"]) > 200 or any(len(value[k]) > 100 for k in ("server", "status")):
        return "a name is too long"
    if DUMP_MEMBERS.get(value["vendor"]) != value["dump_member"]:
        return f"a {value['vendor'][:20]!r} dump named {value['dump_member'][:40]!r}"
    if not re.fullmatch(r"[0-9a-f]{64}", value["dump_sha256"]) or value["dump_bytes"] < 0:
        return "its dump's digest or size is not one"
    if not all(
        isinstance(pair, list)
        and len(pair) == 2
        and isinstance(pair[0], str)
        and isinstance(pair[1], bool)
        for pair in value["domains"]
    ):
        return "domains are not pairs of a hostname and whether it is primary"
    if not all(isinstance(name, str) and "." in name for name in value["migrations"]):
        return "migrations are not app.name"
    for field_name in ("tables", "sequences"):
        if not all(
            isinstance(name, str) and type(number) is int and number >= 0
            for name, number in value[field_name].items()
        ):
            return f"{field_name} are not names with counts"
    return ""


@dataclass
class BackupReport:
    slug: str
    path: str
    bytes: int
    tables: int
    rows: int
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RestoreReport:
    slug: str
    server: str
    database_name: str
    backup_of: str
    replaced: str = ""  # "database on server" replaced, when a live tenant's was
    source_kept: bool = False
    migrations_applied: int = 0
    tables: int = 0
    rows: int = 0
    domains: list[str] = field(default_factory=list)
    domains_skipped: list[str] = field(default_factory=list)  # another's, or not valid
    steps: dict[str, float] = field(default_factory=dict)
    resumed: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- backing up ----------------------------------------------------------------------------


def backup_file_name(slug: str, when: datetime | None = None) -> str:
    """``<slug>-<UTC time>.tar``, which sorts by time."""
    when = when or datetime.now(UTC)
    return f"{slug}-{when.strftime('%Y%m%dT%H%M%SZ')}{SUFFIX}"


def backup_tenant(tenant: AbstractTenant | str, path: str | Path | None = None) -> BackupReport:
    """Back ``tenant`` (or the tenant with that slug) up to the file ``path``, or to a file
    named by ``backup_file_name`` in the directory ``path`` (default: the current one).
    The tenant goes on serving meanwhile. ``BackupError`` when it cannot be backed up; an
    existing file is never replaced."""
    slug = tenant if isinstance(tenant, str) else tenant.slug
    with held_connections():
        # The dump's connection is opened while the lock is taken. The tenant is read
        # again under the lock: a connection to where it no longer is goes unused.
        _prepare_dump(_find(slug) if isinstance(tenant, str) else tenant)
        with tenant_lock(slug):  # not moved, restored or deleted meanwhile
            return backup_locked(_current(slug), path)


def _prepare_dump(tenant: AbstractTenant | None) -> None:
    """Start opening what a dump of ``tenant`` as it was read reads through. A guess:
    what is wrong with it is met, and said, once the tenant is read under its lock."""
    if tenant is None or tenant.status not in BACKED_UP_STATUSES:
        return
    with contextlib.suppress(Exception):
        get_server(tenant.server).prepare_dump(tenant.database_name)


def backup_locked(tenant: AbstractTenant, path: str | Path | None = None) -> BackupReport:
    """``backup_tenant`` for a caller that holds the tenant's lock
    (``tenancy.tenant_locks``) and has read the tenant under it."""
    started = time.monotonic()
    slug = tenant.slug
    target = Path(path) if path is not None else Path.cwd()
    if target.is_dir():
        target = target / backup_file_name(slug)
    try:
        server = _backup_server(tenant)
        manifest, size = _write_archive(tenant, server, target)
    except BackupError:
        raise
    except (DatabaseError, OSError, TenancyError) as exc:
        raise BackupError(f"Tenant {slug!r} was not backed up ({one_line(exc)}).") from exc
    return BackupReport(
        slug,
        str(target),
        size,
        len(manifest.tables),
        sum(manifest.tables.values()),
        round(time.monotonic() - started, 3),
    )


def _backup_server(tenant: AbstractTenant) -> DatabaseServer:
    if tenant.status not in BACKED_UP_STATUSES:
        raise BackupError(
            f"Tenant {tenant.slug!r} is {tenant.status}: only an active, suspended or "
            "archived tenant has a complete database to back up. Finish what it is in first."
        )
    server = get_server(tenant.server)
    _refuse_pooled_route(server, tenant.slug, "backups")
    return server


def _refuse_pooled_route(server: DatabaseServer, slug: str, what: str) -> None:
    """``BackupError`` for a server whose client programs would go through a pooler."""
    if server.needs_direct_route:
        raise BackupError(
            f"Tenant {slug!r}: server {server.name!r} is reached through a pooler in "
            "transaction mode (TRANSACTION_POOLING), where pg_dump's and pg_restore's "
            "session settings would reach the tenants' connections. Give the server entry "
            f"DIRECT = {{'HOST': ..., 'PORT': ...}}, the server's own address, for {what}."
        )


def _write_archive(
    tenant: AbstractTenant, server: DatabaseServer, target: Path
) -> tuple[Manifest, int]:
    """Write the tar file: the dump as member one (its header, written last, goes in front
    of it), the manifest as member two, its signature as member three; under a private
    name, then linked into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    # What killed backups of this tenant left (their names have other times).
    remove_partial_files_of_dead_processes(target, f"{glob.escape(tenant.slug)}-*{SUFFIX}")
    remove_partial_files_of_dead_processes(target)
    if target.exists():
        raise BackupError(f"Tenant {tenant.slug!r} was not backed up: {target} exists already.")
    partial = private_path(target)
    now = datetime.now(UTC)
    try:
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as out:
            out.write(bytes(_BLOCK))  # the dump's header, once its size is known
            digest, size = hashlib.sha256(), 0

            def sink(chunk: bytes) -> None:
                nonlocal size
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)

            described: dict[str, Any] = {}
            contents = server.dump(
                tenant.database_name,
                sink,
                # Read while pg_dump works: the registry's part of the manifest.
                meanwhile=lambda: described.update(_description(tenant, server)),
            )
            out.write(_padding(size))
            manifest = Manifest(
                **described,
                migrations=contents.migrations,
                tables={name: rows for name, (rows, _) in contents.fingerprint.tables.items()},
                sequences=contents.fingerprint.sequences,
                dump_bytes=size,
                dump_sha256=digest.hexdigest(),
                created_at=now.isoformat(),
                server_version=contents.server_version,
            )
            text = json.dumps(manifest.as_json(), indent=2, sort_keys=True).encode()
            out.write(_header(MANIFEST, len(text), now))
            out.write(text + _padding(len(text)))
            signature = _sign(text)
            out.write(_header(SIGNATURE, len(signature), now))
            out.write(signature + _padding(len(signature)))
            out.write(bytes(2 * _BLOCK))  # the end of the archive
            out.seek(0)
            out.write(_header(manifest.dump_member, size, now))
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(partial, target)  # never over a file that appeared meanwhile
        except FileExistsError:
            raise BackupError(
                f"Tenant {tenant.slug!r} was not backed up: {target} exists already."
            ) from None
        _sync_directory(target.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
    return manifest, target.stat().st_size


def _description(tenant: AbstractTenant, server: DatabaseServer) -> dict[str, Any]:
    """The manifest's values that are not the dump's: the tenant, as the registry has it,
    and the versions."""
    domains = Domain.objects.filter(tenant_id=tenant.pk).order_by("domain")
    vendor = server_vendor(tenancy_settings.server(tenant.server))
    return {
        "slug": tenant.slug,
        "name": tenant.name,
        "server": tenant.server,
        "vendor": vendor,
        "placement": server.placement,
        "database_name": tenant.database_name,
        "status": tenant.status,
        "domains": [(domain.domain, domain.is_primary) for domain in domains],
        "dump_member": DUMP_MEMBERS[vendor],
        "tenancy_version": _version("tenancy"),
        "django_version": django.get_version(),
    }


def _header(name: str, size: int, when: datetime) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, int(when.timestamp()), 0o600
    # GNU format: sizes of 8 GiB and more still fit the one block.
    header = info.tobuf(tarfile.GNU_FORMAT)
    assert len(header) == _BLOCK
    return header


def _padding(size: int) -> bytes:
    return bytes(-size % _BLOCK)


def _sync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"


# -- reading a backup ----------------------------------------------------------------------


def read_manifest(path: str | Path) -> Manifest:
    """The manifest of the backup at ``path``; ``BackupError`` for a file that is not one.
    Whether the file is signed is not asked: this is for looking at it."""
    with _open_backup(Path(path)) as backup:
        return backup.manifest


@dataclass
class _Backup:
    """An open backup file: its manifest, checked, and its dump member."""

    path: Path
    file: IO[bytes]
    manifest: Manifest
    member: tarfile.TarInfo
    signed: bool
    digest: _DigestReader | None = None
    # The file's identity and times when its digest was started (``check_unchanged``).
    state: tuple[int, ...] = ()
    copies: list[IO[bytes]] = field(default_factory=list)

    def dump(self) -> DumpFile:
        """The dump, handed to the server once its digest matched (``check_digest``).
        A signed dump was written through a pipe, so it names no positions of its blocks,
        and ``pg_restore`` reads it in place, from the backup file. Another may have
        been written by ``pg_dump --file``, whose positions count from the dump's own
        start: it is read from a private copy."""
        if self.signed:
            return self._dump_file(check=self.check_digest)
        self.check_digest()
        copy = tempfile.TemporaryFile()  # noqa: SIM115 (closed with the backup)
        self.copies.append(copy)
        for chunk in self._dump_file().chunks():
            copy.write(chunk)
        return DumpFile.whole(copy)

    def start_digest_check(self) -> None:
        """Start reading the dump's SHA-256, in a thread: the restore makes the database
        meanwhile, and the dump is handed to the server once it matched."""
        if self.digest is None:
            self.state = _file_state(self.file)
            self.digest = _DigestReader(self._dump_file())

    def check_digest(self) -> None:
        """``BackupError`` unless the dump is the one the manifest describes: read whole
        before anything is restored from it."""
        self.start_digest_check()
        assert self.digest is not None
        try:
            digest = self.digest.result()
        except (OSError, TenancyError) as exc:
            raise BackupError(f"{self.path} cannot be read ({one_line(exc)}).") from None
        if digest != self.manifest.dump_sha256:
            raise BackupError(
                f"{self.path}, a backup of tenant {self.manifest.slug!r}, is damaged: its "
                "dump differs from the one its manifest describes (SHA-256); nothing was "
                "restored."
            )

    def check_unchanged(self) -> None:
        """``BackupError`` when the backup file was written to since its digest was
        started (its change time moved): what was restored may not be what was checked."""
        if self.state and _file_state(self.file) != self.state:
            raise BackupError(
                f"{self.path} was written to while it was being restored; the restore was "
                "undone. Restore it again once nothing writes to it."
            )

    def close(self) -> None:
        """Stop reading the digest (before the file is closed); remove the copies."""
        if self.digest is not None:
            self.digest.stop()
        for copy in self.copies:
            copy.close()

    def _dump_file(self, check: Callable[[], None] | None = None) -> DumpFile:
        return DumpFile(self.file, self.member.offset_data, self.member.size, check)

    def refuse_unsigned(self, trust: bool) -> None:
        if not self.signed and not trust:
            raise BackupError(
                f"{self.path} is not signed with this project's SECRET_KEY (it was made by "
                "another project, under a key since rotated away, or changed): restoring "
                "runs what it holds as SQL. Restore it only if you trust the file, with "
                "--trust; nothing was changed."
            )


@contextmanager
def _open_backup(path: Path) -> Iterator[_Backup]:
    """The backup file opened once (a file put in its place meanwhile is not read), its
    manifest read and checked, its dump member found (a regular file of the size the
    manifest gives), and whether this project signed it."""
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        raise BackupError(f"There is no backup {path}.") from None
    except OSError as exc:
        raise BackupError(f"{path} cannot be read ({exc.strerror}).") from None
    with handle:
        try:
            archive = tarfile.open(fileobj=handle, mode="r:")  # noqa: SIM115 (closed below)
        except tarfile.TarError as exc:
            raise BackupError(f"{path} is not a tenant backup ({exc}).") from None
        with archive:
            try:
                text = _small_member(archive, MANIFEST)
                manifest = Manifest.from_json(json.loads(text), path)
                signature = _small_member(archive, SIGNATURE) if _has(archive, SIGNATURE) else b""
                member = archive.getmember(manifest.dump_member)
            except (KeyError, ValueError, RecursionError, tarfile.TarError) as exc:
                reason = one_line(exc)[:200]
                raise BackupError(f"{path} is not a whole tenant backup ({reason}).") from None
            if not member.isreg() or member.issparse() or member.size != manifest.dump_bytes:
                raise BackupError(
                    f"{path} is damaged: its dump is not the one its manifest describes."
                )
            backup = _Backup(path, handle, manifest, member, _signed(text, signature))
            try:
                yield backup
            finally:
                backup.close()


def _has(archive: tarfile.TarFile, name: str) -> bool:
    return name in archive.getnames()


def _small_member(archive: tarfile.TarFile, name: str) -> bytes:
    """The bytes of member ``name``: a regular file of at most ``MANIFEST_LIMIT``."""
    member = archive.getmember(name)
    if not member.isreg() or member.issparse() or member.size > MANIFEST_LIMIT:
        raise ValueError(f"{name} is not a small file")
    stream = archive.extractfile(member)
    assert stream is not None
    return stream.read(MANIFEST_LIMIT)


def _sign(data: bytes, secret: str | bytes | None = None) -> bytes:
    """The manifest's signature: an HMAC of it under the project's SECRET_KEY. The
    manifest holds the dump's SHA-256, so the signature covers the dump too."""
    return (
        salted_hmac(_SIGNATURE_SALT, data, secret=secret, algorithm="sha256").hexdigest().encode()
    )


def _signed(data: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is the manifest's under SECRET_KEY or one of its fallbacks."""
    if not signature:
        return False
    keys = [settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", [])]
    return any(constant_time_compare(_sign(data, key), signature) for key in keys)


def _file_state(file: IO[bytes]) -> tuple[int, ...]:
    """What changes when a file is written to, even by someone who puts its modification
    time back: its change time (with its identity, size and modification time)."""
    status = os.fstat(file.fileno())
    return (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns)


class _DigestReader(threading.Thread):
    """The SHA-256 of a dump, read in a thread of its own (hashlib lets go of the GIL):
    ``result`` waits for it; ``stop`` ends the reading early."""

    def __init__(self, dump: DumpFile) -> None:
        super().__init__(name="tenancy-digest", daemon=True)
        self.dump = dump
        self.stopped = threading.Event()
        self.hexdigest = ""
        self.failure: BaseException | None = None
        self.start()

    def run(self) -> None:
        digest = hashlib.sha256()
        try:
            for chunk in self.dump.chunks():
                if self.stopped.is_set():
                    return
                digest.update(chunk)
        except BaseException as exc:
            self.failure = exc
            return
        self.hexdigest = digest.hexdigest()

    def result(self) -> str:
        self.join()
        if self.failure is not None:
            raise self.failure
        return self.hexdigest

    def stop(self) -> None:
        self.stopped.set()
        self.join()


# -- restoring -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RestoredDatabase:
    """Stands in for the tenant while its restored database is migrated (its own
    connection alias: the tenant's live one is left alone)."""

    slug: str
    server: str
    database_name: str
    is_template: bool = False
    is_stand_in: bool = True


def restore_tenant(
    path: str | Path,
    *,
    as_slug: str | None = None,
    server: str | None = None,
    replace: bool = False,
    keep_replaced: bool = False,
    trust: bool = False,
) -> RestoreReport:
    """Restore the backup at ``path``; see the module's docstring. Running it again after
    a crash finishes or redoes the restore. ``BackupError`` when it is refused or fails
    (the tenant is then as it was). ``trust``: restore a file this project did not sign
    (its SQL is run)."""
    path = Path(path)
    with _open_backup(path) as backup:
        manifest = backup.manifest
        backup.refuse_unsigned(trust)
        slug = as_slug or manifest.slug
        if not is_valid_slug(slug):
            raise BackupError(f"{slug[:80]!r} is not a valid tenant slug; nothing was restored.")
        if replace and slug != manifest.slug:
            raise BackupError(
                f"{path} is a backup of tenant {manifest.slug!r}: --replace puts a tenant's "
                f"own backup back, never another's into tenant {slug!r}. Restore it beside "
                "with --as instead."
            )
        if in_own_transaction(connections[registry_database()]):
            raise BackupError(
                f"Tenant {slug!r} cannot be restored inside a transaction on the main "
                "database; restore it outside transaction.atomic()."
            )
        # Read while the database is made; awaited before anything reads the dump.
        backup.start_digest_check()
        try:
            # The server is asked several things in a row (is the name free, make the
            # database): one connection to each database, not one per question, the
            # first opened while the lock is taken.
            with held_connections():
                _prepare_restore(server, manifest)
                with tenant_lock(slug):
                    existing = _find(slug)
                    record = (
                        TenantMove.objects.filter(tenant_id=existing.pk).first()
                        if existing is not None
                        else None
                    )
                    if existing is not None and record is not None:
                        return _continue_recorded(existing, record, backup, replace)
                    if existing is None or existing.status == TenantStatus.RESTORING:
                        return _restore_new(existing, slug, backup, server, as_slug is not None)
                    return _restore_replacing(existing, backup, server, replace, keep_replaced)
        except BackupError:
            raise
        except (DatabaseError, OSError, TenancyError) as exc:
            raise BackupError(f"Tenant {slug!r} was not restored ({one_line(exc)}).") from exc


def _prepare_restore(server: str | None, manifest: Manifest) -> None:
    """Start opening what a restore to the server it most likely goes to asks first. A
    guess, which the tenant read under its lock may prove wrong: the connection then goes
    unused."""
    with contextlib.suppress(Exception):  # what is wrong is met, and said, where it is used
        get_server(_new_tenants_server(server, manifest)).prepare_restore()


def _new_tenants_server(server: str | None, manifest: Manifest) -> str:
    """The server a restore records a new tenant on: ``server`` if given, else the
    backup's if this project has it, else the default one."""
    if server:
        return server
    if manifest.server in tenancy_settings.SERVERS:
        return manifest.server
    return tenancy_settings.DEFAULT_SERVER


def restore_locked(tenant: AbstractTenant, path: str | Path) -> RestoreReport:
    """Make ``tenant``'s own database (its name, on its server) again from its backup at
    ``path``, which this project must have signed, for a caller that holds the tenant's
    lock and serves the tenant nowhere meanwhile (an archived tenant being reactivated):
    a database of that name, which a restore interrupted before may have left
    incomplete, is dropped first."""
    path = Path(path)
    slug = tenant.slug
    with _open_backup(path) as backup:
        backup.refuse_unsigned(trust=False)
        if backup.manifest.slug != slug:
            raise BackupError(
                f"{path} is a backup of tenant {backup.manifest.slug!r}, not of {slug!r}."
            )
        backup.check_digest()
        report = _report(slug, tenant.server, tenant.database_name, backup.manifest)
        try:
            _refuse_target(slug, tenant.server, backup.manifest)
            server = get_server(tenant.server)
            unregister(tenant)
            if server.database_exists(tenant.database_name):
                server.drop_database(tenant.database_name)
            try:
                applied = _restore_database(server, tenant.database_name, slug, backup, report)
            except BaseException as exc:
                if not isinstance(exc, DatabaseExists):
                    with contextlib.suppress(Exception):
                        server.drop_database(tenant.database_name)
                raise
            ledger.record(tenant, applied)
        except BackupError:
            raise
        except (DatabaseError, OSError, TenancyError) as exc:
            raise BackupError(f"Tenant {slug!r} was not restored ({one_line(exc)}).") from exc
    return report


def abort_restore(slug: str) -> None:
    """Undo a restore that has not finished: in place of a live tenant's database and not
    switched, the restored database is dropped and the tenant keeps its own; of a new
    tenant that was killed (``restoring``), its incomplete database and its row go.
    ``BackupError`` when there is none."""
    with tenant_lock(slug):
        tenant = _current(slug)
        record = TenantMove.objects.filter(tenant_id=tenant.pk, kind=MoveKind.RESTORE).first()
        if record is None and tenant.status == TenantStatus.RESTORING:
            _undo_new(tenant, get_server(tenant.server), made=True)
            return
        if record is None:
            raise BackupError(f"Tenant {slug!r} is not being restored; nothing to undo.")
        if record.step == MoveStep.SWITCHED:
            raise BackupError(
                f"Tenant {slug!r} serves from its restored database already; run the same "
                "`manage.py restore_tenant` again to finish."
            )
        drop_copy(tenant, record, undoing=True)
        record.delete()


def _continue_recorded(
    tenant: AbstractTenant, record: TenantMove, backup: _Backup, replace: bool
) -> RestoreReport:
    """A restore that a crash interrupted: finished after the switch, else made again."""
    if record.kind != MoveKind.RESTORE:
        raise BackupError(
            f"Tenant {tenant.slug!r} is being moved to server {record.target_server!r}; "
            "finish or undo the move first (`manage.py move_tenant`)."
        )
    backup.check_digest()  # a damaged file leaves even what the interrupted run left
    report = _report(tenant.slug, record.target_server, record.target_name, backup.manifest)
    report.replaced, report.resumed = f"{record.database_name} on {record.source_server}", True
    if record.step == MoveStep.SWITCHED:
        report.source_kept = finish_switched(tenant, record, report.steps)
        return report
    drop_copy(tenant, record)  # what the interrupted run made
    record.delete()
    report = _restore_replacing(tenant, backup, record.target_server, replace, record.keep_source)
    report.resumed = True
    return report


def _restore_new(
    tenant: AbstractTenant | None,
    slug: str,
    backup: _Backup,
    server: str | None,
    side_copy: bool,
) -> RestoreReport:
    """A tenant recorded from the backup, ``restoring`` until its database is complete;
    a side copy is suspended (not served, no jobs: it is for looking at)."""
    manifest = backup.manifest
    if tenant is not None:
        # A restore of it was killed: its database is incomplete, made again (not from a
        # damaged file: that leaves it as it is).
        backup.check_digest()
        server_name = tenant.server
        if server is not None and server != server_name:
            raise BackupError(
                f"Tenant {slug!r} is being restored to server {server_name!r}; leave "
                f"--server out to finish that restore, or undo it (`manage.py restore_tenant "
                f"--abort {slug}`)."
            )
        _refuse_target(slug, server_name, manifest)
        database = get_server(server_name)
        if database.database_exists(tenant.database_name):
            database.drop_database(tenant.database_name)
    else:
        server_name = _new_tenants_server(server, manifest)
        _refuse_target(slug, server_name, manifest)
        tenant = get_tenant_model()(
            slug=slug,
            name=manifest.name
            if not side_copy
            else f"{manifest.name} (copy of {manifest.slug})"[:200],
            server=server_name,
            status=TenantStatus.RESTORING,
        )
        message = database_name_unavailable(tenant, new=True)
        if message is not None:
            raise BackupError(message)
        name = tenant.database_name or tenancy_settings.database_name_for(slug)
        tenant._tenancy_checked_database = (server_name, name)  # save() need not ask again
    report = _report(slug, server_name, "", manifest)
    free, skipped = ([], []) if side_copy else _free_domains(manifest, slug)
    with transaction.atomic(using=registry_database()):
        if tenant.pk is None:
            tenant.save()
        add_domains(tenant, free)
    report.database_name, report.domains, report.domains_skipped = (
        tenant.database_name,
        free,
        skipped,
    )
    database = get_server(server_name)
    try:
        applied = _restore_database(database, tenant.database_name, slug, backup, report)
    except BaseException as exc:
        _undo_new(tenant, database, made=not isinstance(exc, DatabaseExists))
        raise
    set_status(tenant, TenantStatus.SUSPENDED if side_copy else TenantStatus.ACTIVE)
    ledger.record(tenant, applied)
    return report


def _undo_new(tenant: AbstractTenant, database: DatabaseServer, *, made: bool) -> None:
    """Remove a tenant a restore recorded and the database it made (``made``: never one
    that was there before it). A database that cannot be dropped keeps its row, marked
    ``restoring`` with the reason, so that nothing unknown to the registry is left."""
    unregister(tenant)
    if made:
        try:
            database.drop_database(tenant.database_name)
        except Exception as exc:
            logger.exception("Tenant %s: the restored database was not dropped", tenant.slug)
            set_status(
                tenant,
                TenantStatus.RESTORING,
                f"The restore failed and its database could not be dropped ({one_line(exc)}); "
                f"`manage.py restore_tenant --abort {tenant.slug}` removes both.",
            )
            return
    tenant.delete()


def _restore_replacing(
    tenant: AbstractTenant,
    backup: _Backup,
    server: str | None,
    replace: bool,
    keep_replaced: bool,
) -> RestoreReport:
    """The backup in place of a live tenant's database, switched to in one transaction."""
    slug, manifest = tenant.slug, backup.manifest
    if tenant.status == TenantStatus.ARCHIVED:
        raise BackupError(
            f"Tenant {slug!r} is archived; nothing was changed. Reactivate it first "
            f"(`manage.py reactivate_tenant {slug}`), then restore with --replace, or "
            "restore the backup beside it with --as OTHER."
        )
    if not replace:
        raise BackupError(
            f"Tenant {slug!r} exists; nothing was changed. Restore with --replace to put the "
            "backup in place of its data (its current data is dropped), or with --as OTHER "
            "for a copy beside it."
        )
    if tenant.status not in MOVABLE_STATUSES:
        raise BackupError(
            f"Tenant {slug!r} is {tenant.status}; only an active or suspended tenant's "
            "database is replaced. Finish what it is in first."
        )
    server_name = server or tenant.server
    _refuse_target(slug, server_name, manifest)
    name = _new_database_name(tenant, server_name)
    report = _report(slug, server_name, name, manifest)
    report.replaced = f"{tenant.database_name} on {tenant.server}"
    record = TenantMove.objects.create(
        tenant_id=tenant.pk,
        kind=MoveKind.RESTORE,
        source_server=tenant.server,
        database_name=tenant.database_name,
        target_server=server_name,
        target_database=name,
        previous_status=tenant.status,
        step=MoveStep.COPYING,
        keep_source=keep_replaced,
    )
    try:
        applied = _restore_database(get_server(server_name), name, slug, backup, report)
    except BaseException as exc:
        # The record stays when the database it made cannot be dropped: --abort does it.
        with contextlib.suppress(Exception):
            if not isinstance(exc, DatabaseExists):  # never one that was there before
                drop_copy(tenant, record, undoing=True)
            record.delete()
        raise
    with timed_step(report.steps, "switched"), transaction.atomic(using=registry_database()):
        type(tenant)._default_manager.filter(pk=tenant.pk).update(
            server=server_name, database_name=name
        )
        record.step = MoveStep.SWITCHED
        record.save(update_fields=["step", "updated_at"])
    tenant.server, tenant.database_name = server_name, name
    ledger.record(tenant, applied)  # what it serves from now
    replicas.mark_ready(tenant)
    try:
        report.source_kept = finish_switched(tenant, record, report.steps)
    except Exception as exc:
        raise BackupError(
            f"Tenant {slug!r} is restored and serves from database {name!r}, but removing "
            f"the replaced database failed ({one_line(exc)}); run the same `manage.py "
            "restore_tenant` again to finish."
        ) from exc
    return report


def _restore_database(
    server: DatabaseServer,
    name: str,
    slug: str,
    backup: _Backup,
    report: RestoreReport,
) -> frozenset[tuple[str, str]] | None:
    """Make database ``name`` from the backup (whose digest was checked), compare its rows
    with the manifest, migrate it forward; the migrations it has applied then."""
    manifest = backup.manifest
    with timed_step(report.steps, "restored"):
        server.restore_database(
            name, backup.dump(), schema=manifest.home_schema, isolated=not backup.signed
        )
    with timed_step(report.steps, "verified"):
        backup.check_unchanged()
        restored = server.contents(name)
        differences = manifest.fingerprint.relative_to(manifest.home_schema).differences(
            restored.fingerprint.relative_to(server.home_schema(name))
        )
        if differences:
            raise BackupError(
                f"Tenant {slug!r} was not restored: the restored database differs from the "
                f"backup's manifest ({'; '.join(differences[:3])})."
            )
        report.tables = len(manifest.tables)
        report.rows = sum(manifest.tables.values())
    with timed_step(report.steps, "migrated"):
        applied = {ledger.migration_key(key) for key in restored.migrations}
        if not migration_state().pending(applied):
            return frozenset(applied)  # read with the rows: no migrator, no connection
        stand_in = RestoredDatabase(f"_restore.{slug}", server.name, name)
        try:
            result = migrate_tenant(stand_in)  # type: ignore[arg-type]
        finally:
            unregister(stand_in.slug)
        if result.failed:
            raise BackupError(
                f"Tenant {slug!r} was not restored: migrating the restored database forward "
                f"failed ({result.error})."
            )
        report.migrations_applied = result.applied
    return result.applied_set


def _refuse_target(slug: str, server_name: str, manifest: Manifest) -> None:
    """``BackupError`` when the backup cannot be restored to ``server_name``."""
    if server_name not in tenancy_settings.SERVERS:
        raise BackupError(
            f"Tenant {slug!r} cannot be restored to server {server_name!r}: TENANCY['SERVERS'] "
            f"does not define it (defined: {', '.join(sorted(tenancy_settings.SERVERS))})."
        )
    server = get_server(server_name)
    vendor = server_vendor(tenancy_settings.server(server_name))
    if vendor != manifest.vendor:
        raise BackupError(
            f"Tenant {slug!r} cannot be restored to server {server_name!r}: the backup is of "
            f"a {manifest.vendor} database, the server is {vendor}."
        )
    _refuse_pooled_route(server, slug, "restores")
    unknown = _unknown_migrations(manifest)
    if unknown:
        raise BackupError(
            f"Tenant {slug!r} cannot be restored: the backup has migrations this project "
            f"does not have ({', '.join(unknown[:3])}). Restore it with the code it was "
            "made with."
        )


def _unknown_migrations(manifest: Manifest) -> list[str]:
    state = migration_state()
    known = {f"{app}.{name}" for app, name in state.nodes | state.replaced}
    labels = tenancy_settings.tenant_app_labels
    return [
        migration
        for migration in manifest.migrations
        if migration.split(".", 1)[0] in labels and migration not in known
    ]


def _new_database_name(tenant: AbstractTenant, server_name: str) -> str:
    """A name for the restored database that no database on the server has: the one
    derived from the slug when it is free, else that with the time appended."""
    server = get_server(server_name)
    base = tenancy_settings.database_name_for(tenant.slug)
    stamp = datetime.now(UTC).strftime("_%Y%m%d%H%M%S")
    for name in (base, base[: DATABASE_NAME_MAX_LENGTH - len(stamp)] + stamp):
        validate_database_name(name)
        if (
            (server_name, name) != (tenant.server, tenant.database_name)
            and unavailable_reason(server_name, name, slug=tenant.slug) is None
            and registered_tenant(server_name, name) is None
            and not server.database_exists(name)
        ):
            return name
    raise BackupError(
        f"Tenant {tenant.slug!r}: no free database name on server {server_name!r} "
        "(a restore of this second exists); run it again."
    )


def _free_domains(manifest: Manifest, slug: str) -> tuple[list[str], list[str]]:
    """The manifest's domains that are valid and that no other tenant has (primary first),
    and the others."""
    ordered = sorted(manifest.domains, key=lambda domain: (not domain[1], domain[0]))
    valid, skipped = [], []
    for domain, _ in ordered:
        try:
            validate_tenant_hostname(domain.lower())
        except ValidationError:
            skipped.append(domain[:100])
            continue
        valid.append(domain.lower())
    taken = set(
        Domain.objects.filter(domain__in=valid)
        .exclude(tenant__slug=slug)
        .values_list("domain", flat=True)
    )
    return [name for name in valid if name not in taken], sorted(taken) + skipped


# -- helpers -------------------------------------------------------------------------------


def _report(slug: str, server: str, name: str, manifest: Manifest) -> RestoreReport:
    return RestoreReport(slug, server, name, backup_of=f"{manifest.slug} at {manifest.created_at}")


def _current(slug: str) -> AbstractTenant:
    found = _find(slug)
    if found is None:
        raise BackupError(f"There is no tenant {slug[:80]!r}.")
    return found


def _find(slug: str) -> AbstractTenant | None:
    found: AbstractTenant | None = get_tenant_model()._default_manager.filter(slug=slug).first()
    return found


__all__ = [
    "BackupError",
    "BackupReport",
    "Manifest",
    "RestoreReport",
    "abort_restore",
    "backup_file_name",
    "backup_locked",
    "backup_tenant",
    "read_manifest",
    "restore_locked",
    "restore_tenant",
]
