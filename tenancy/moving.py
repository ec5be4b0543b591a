"""Moving a tenant's database to another server: copied, verified, switched, every step
recorded so that running the move again after a crash finishes it or undoes it.

The steps of ``move_tenant`` (each written to a ``TenantMove`` row before it starts):

1. **prepared**: the tenant is marked ``moving`` (on PostgreSQL its reads are served from
   the source, read-only from step 2; other requests are answered 503 with Retry-After;
   ``READ_ONLY_WHILE_MOVING``) and every process is waited for to see it
   (``RESOLUTION_CACHE_TTL``);
2. **copying**: under the source's migration lock (a migrator at work is waited for), the
   source is made read-only and its other sessions ended (PostgreSQL), then copied to the
   target (``pg_dump | pg_restore`` in one transaction; SQLite's backup API into a private
   file linked into place) and the copy compared with the source: per table its rows and
   a checksum of them, per sequence its value at least the source's;
3. **switched**: the registry row names the target server and gets its status back, in
   the same transaction that records the step; every process finds the tenant on its new
   server at its next lookup;
4. the source is dropped once every process has seen the switch and the queries still
   running on it have ended (``SOURCE_QUERIES_TIMEOUT`` at most), or kept read-only
   (``keep_source``), and the row deleted.

A failure before the switch (unapplied migrations, a copy that differs, a tool that
fails) drops the copy and leaves the tenant serving from its source as before. A crash
leaves the row: ``move_tenant`` again continues (making the copy again, or finishing after
the switch), ``abort_move`` undoes a move that has not switched.
"""

from __future__ import annotations

import json
import logging
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from django.db import DatabaseError, connections, transaction

from tenancy import replicas
from tenancy.backends import get_server
from tenancy.backends.base import DatabaseServer, DumpFile, Fingerprint
from tenancy.backends.client_programs import check_exit, client_program, reaped
from tenancy.backends.sqlite import SQLiteServer
from tenancy.conf import tenancy_settings
from tenancy.connections import unregister
from tenancy.exceptions import TenancyError, one_line
from tenancy.migration import lock_key, migrate_tenant
from tenancy.models import (
    AbstractTenant,
    MoveKind,
    MoveStep,
    TenantMove,
    TenantStatus,
    get_tenant_model,
    registry_database,
)
from tenancy.provisioning import set_status
from tenancy.registry_cache import in_own_transaction, wait_for_other_processes
from tenancy.reserved import registered_tenant, unavailable_reason
from tenancy.tenant_locks import tenant_lock

logger = logging.getLogger("tenancy.moving")

# How long the source's drop waits for queries still running on it (a long export that
# began before the switch, say) before ending them.
SOURCE_QUERIES_TIMEOUT = 30.0

# Statuses a tenant may be moved from: its database is complete and in use.
MOVABLE_STATUSES = (TenantStatus.ACTIVE, TenantStatus.SUSPENDED)

# Objects owned by the target's user, as provisioning makes them; grants not copied (the
# roles may not exist there). One transaction: a failure or a crash restores nothing.
_DUMP_OPTIONS = ("--format=custom", "--compress=0", "--no-owner", "--no-acl")
_RESTORE_OPTIONS = ("--no-owner", "--no-acl", "--exit-on-error", "--single-transaction")

Progress = Callable[[str, int, int], None]  # (step, done, total): bytes copied of about total


class MoveError(TenancyError):
    """A move that was refused or undone; the message says where the tenant serves."""


@dataclass
class MoveReport:
    """What a move did, step by step (seconds each), for the command's output."""

    slug: str
    source_server: str
    target_server: str
    database_name: str
    steps: dict[str, float] = field(default_factory=dict)
    bytes_copied: int = 0
    tables: int = 0
    rows: int = 0
    sequences: int = 0
    source_kept: bool = False
    resumed: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def move_tenant(
    tenant: AbstractTenant | str,
    server: str,
    *,
    keep_source: bool = False,
    progress: Progress | None = None,
) -> MoveReport:
    """Move ``tenant`` (or the tenant with that slug) to ``server``; see the module's
    docstring. Running it again after a crash continues the recorded move (to the same
    server). Raises ``MoveError`` when the move is refused or undone."""
    slug = tenant if isinstance(tenant, str) else tenant.slug
    with _one_run(slug):
        return _move(_current(slug), server, keep_source, progress)


def abort_move(tenant: AbstractTenant | str) -> None:
    """Undo ``tenant``'s move that has not switched yet: drop the copy, make the source
    writable and give the tenant its status back. ``MoveError`` when there is no move to
    undo, or it switched already (then run the move again to finish it)."""
    slug = tenant if isinstance(tenant, str) else tenant.slug
    with _one_run(slug):
        current = _current(slug)
        move = TenantMove.objects.filter(tenant_id=current.pk).first()
        if move is None:
            raise MoveError(f"Tenant {slug!r} is not being moved; nothing to undo.")
        if move.kind == MoveKind.RESTORE:
            raise restore_in_progress(slug)
        if move.step == MoveStep.SWITCHED:
            raise MoveError(
                f"Tenant {slug!r} serves from server {move.target_server!r} already; run "
                f"`manage.py move_tenant {slug} --server {move.target_server}` to finish "
                "the move."
            )
        _undo(current, move)


def _move(
    tenant: AbstractTenant, server: str, keep_source: bool, progress: Progress | None
) -> MoveReport:
    move = TenantMove.objects.filter(tenant_id=tenant.pk).first()
    if move is None:
        _refuse_move(tenant, server)
        report = MoveReport(tenant.slug, tenant.server, server, tenant.database_name)
        if _same_database(tenant.server, server, tenant.database_name):
            # Two entries for one server (another user, or through a pooler) that reach
            # the very same database: only the registry changes.
            with timed_step(report.steps, "switched"):
                type(tenant)._default_manager.filter(pk=tenant.pk).update(server=server)
            unregister(tenant)
            tenant.server = server
            replicas.mark_ready(tenant)  # the same database, reached through another entry
            return report
        with timed_step(report.steps, "prepared"):
            move = _prepare(tenant, server, keep_source)
    else:
        if move.kind == MoveKind.RESTORE:
            raise restore_in_progress(tenant.slug)
        if move.target_server != server:
            raise MoveError(
                f"Tenant {tenant.slug!r} is being moved to server {move.target_server!r}: run "
                f"`manage.py move_tenant {tenant.slug} --server {move.target_server}` to finish "
                f"that move, or `manage.py move_tenant {tenant.slug} --abort` to undo it."
            )
        if keep_source and not move.keep_source:
            move.keep_source = True
            move.save(update_fields=["keep_source", "updated_at"])
        report = MoveReport(
            tenant.slug, move.source_server, move.target_server, move.database_name, resumed=True
        )
    if move.step != MoveStep.SWITCHED:
        _copy_and_switch(tenant, move, report, progress)
    report.source_kept = finish_switched(tenant, move, report.steps)
    return report


def restore_in_progress(slug: str) -> MoveError:
    """The error for a tenant whose database is being replaced by a restore."""
    return MoveError(
        f"Tenant {slug!r} is being restored from a backup: run the same `manage.py "
        f"restore_tenant` again to finish it, or `manage.py restore_tenant --abort {slug}` "
        "to undo it."
    )


@contextmanager
def _one_run(slug: str) -> Iterator[None]:
    """One move (or undo) of a tenant at a time, across processes: a second run waits for
    the first, then reads the state it left. Errors of the servers (one unreachable, say)
    become a ``MoveError`` that says where the tenant is and what to run next."""
    database = registry_database()
    if in_own_transaction(connections[database]):
        raise MoveError(
            f"Tenant {slug!r} cannot be moved inside a transaction on the main database: "
            "other processes must see it marked moving before its database is copied. "
            "Move it outside transaction.atomic() (a view: mark it "
            "transaction.non_atomic_requests)."
        )
    try:
        with tenant_lock(slug):
            yield
    except MoveError:
        raise
    except (DatabaseError, OSError, TenancyError) as exc:
        raise MoveError(
            f"Tenant {slug!r}: the move stopped ({one_line(exc)}). {_where(slug)}"
        ) from exc


def _where(slug: str) -> str:
    """Where the tenant is after a move stopped, and what to run."""
    try:
        move = TenantMove.objects.filter(tenant__slug=slug).first()
        server = (
            get_tenant_model()._default_manager.filter(slug=slug).values_list("server", flat=True)
        )
        current = server.first()
    except DatabaseError:
        return "Run the same command again once the main database answers."
    if move is None:
        return f"Nothing was changed; it serves from server {current!r}."
    if move.step == MoveStep.SWITCHED:
        return (
            f"It serves from server {move.target_server!r} already: run `manage.py "
            f"move_tenant {slug} --server {move.target_server}` again to finish the move."
        )
    return (
        f"It is recorded as moving to server {move.target_server!r}: run `manage.py "
        f"move_tenant {slug} --server {move.target_server}` again once the servers answer, "
        f"or `manage.py move_tenant {slug} --abort` to undo it."
    )


def _same_database(source: str, target: str, name: str) -> bool:
    """Whether two server entries reach the same database ``name``: asked of the servers
    (its oid and the cluster's start), not taken from the entries' addresses, which a
    socket directory or a name for the host can make look alike."""
    if get_server(source).address != get_server(target).address:
        return False
    identity = get_server(source).database_identity(name)
    return identity is not None and identity == get_server(target).database_identity(name)


# -- the steps -----------------------------------------------------------------------------


def _refuse_move(tenant: AbstractTenant, server: str) -> None:
    """``MoveError`` for a move that cannot start; nothing is changed."""
    slug = tenant.slug
    if server not in tenancy_settings.SERVERS:
        raise MoveError(
            f"Tenant {slug!r} cannot be moved to server {server!r}: TENANCY['SERVERS'] does "
            f"not define it (defined: {', '.join(sorted(tenancy_settings.SERVERS))})."
        )
    if server == tenant.server:
        raise MoveError(f"Tenant {slug!r} is on server {server!r} already.")
    if tenant.status not in MOVABLE_STATUSES:
        raise MoveError(
            f"Tenant {slug!r} is {tenant.status}; only an active or suspended tenant is moved. "
            "Finish what it is in first (create_tenant or delete_tenant)."
        )
    source, target = get_server(tenant.server), get_server(server)
    if (source.holds_schemas or target.holds_schemas) and (
        source.needs_direct_route or target.needs_direct_route
    ):
        pooled = source.name if source.needs_direct_route else target.name
        raise MoveError(
            f"Tenant {slug!r} cannot be moved from server {tenant.server!r} to {server!r}: "
            f"server {pooled!r} is reached through a pooler in transaction mode "
            "(TRANSACTION_POOLING), where pg_dump's and pg_restore's session settings would "
            "reach every tenant's connections. Give the server entry DIRECT = {'HOST': ..., "
            "'PORT': ...}, the server's own address, for moves."
        )
    if isinstance(source, SQLiteServer) != isinstance(target, SQLiteServer):
        raise MoveError(
            f"Tenant {slug!r} cannot be moved from server {tenant.server!r} to {server!r}: "
            "they are not the same kind of database server."
        )
    name = tenant.database_name
    if _same_database(tenant.server, server, name):
        return  # the same database: only the registry changes
    reason = unavailable_reason(server, name, slug=slug)
    if reason is None and target.database_exists(name):
        reason = "a database that exists there already"
    if reason is not None:
        raise MoveError(
            f"Tenant {slug!r} cannot be moved to server {server!r}: its database {name!r} "
            f"there is {reason}. Nothing was changed; the tenant serves from server "
            f"{tenant.server!r}."
        )
    pending = _pending_migrations(tenant)
    if pending:
        raise MoveError(
            f"Tenant {slug!r} is not moved: its migrations are not current ({pending}). Run "
            f"`manage.py migrate_tenants --tenant {slug}` first."
        )


def _prepare(tenant: AbstractTenant, server: str, keep_source: bool) -> TenantMove:
    with transaction.atomic(using=registry_database()):
        move = TenantMove.objects.create(
            tenant_id=tenant.pk,
            source_server=tenant.server,
            target_server=server,
            database_name=tenant.database_name,
            previous_status=tenant.status,
            step=MoveStep.PREPARED,
            keep_source=keep_source,
        )
        marked = (
            type(tenant)
            ._default_manager.filter(pk=tenant.pk, status=tenant.status)
            .update(status=TenantStatus.MOVING, status_detail="")
        )
        if not marked:
            raise MoveError(
                f"Tenant {tenant.slug!r} changed while the move started (deleted or "
                "suspended meanwhile?); nothing was changed. Run the command again."
            )
        tenant.status = TenantStatus.MOVING
    return move


def _copy_and_switch(
    tenant: AbstractTenant, move: TenantMove, report: MoveReport, progress: Progress | None
) -> None:
    source, target = get_server(move.source_server), get_server(move.target_server)
    name = move.database_name
    with timed_step(report.steps, "waited"):
        # Every process answers 503 from now on; this one's connections close.
        wait_for_other_processes()
        unregister(tenant)
    try:
        with source.writes_stopped(name, _lock_key(source, name)) as end_source_sessions:
            _refuse_pending_migrations(tenant)
            _set_step(move, MoveStep.COPYING)
            with timed_step(report.steps, "copied"):
                drop_copy(tenant, move)  # what a crashed run left
                try:
                    report.bytes_copied = _copy(source, target, name, progress)
                finally:
                    # Behind a pooler, the sessions of pg_dump and pg_restore would hand
                    # their settings (an empty search_path) to the tenant's connections.
                    end_source_sessions()
                    target.end_sessions(name)
            with timed_step(report.steps, "verified"):
                # Both servers read at once: each scans its own copy. A tenant moved
                # between placements has its tables in another schema there.
                with ThreadPoolExecutor(max_workers=1) as pool:
                    copied = pool.submit(target.fingerprint, name)
                    expected = source.fingerprint(name)
                    differences = expected.relative_to(source.home_schema(name)).differences(
                        copied.result().relative_to(target.home_schema(name))
                    )
                if differences:
                    raise MoveError(
                        f"the copy differs from the source: {'; '.join(differences[:3])}"
                    )
                report.tables = len(expected.tables)
                report.rows = sum(rows for rows, _ in expected.tables.values())
                report.sequences = len(expected.sequences)
            with timed_step(report.steps, "switched"):
                _switch(tenant, move, expected)
    except Exception as exc:
        reason = one_line(exc)
        if move.step == MoveStep.SWITCHED:
            raise MoveError(
                f"Tenant {tenant.slug!r} serves from server {move.target_server!r} already, "
                f"but the move stopped ({reason}); run `manage.py move_tenant {tenant.slug} "
                f"--server {move.target_server}` again to finish it."
            ) from exc
        try:
            _undo(tenant, move)
        except Exception as undo_exc:
            logger.exception("Tenant %s: undoing the move failed", tenant.slug)
            raise MoveError(
                f"Tenant {tenant.slug!r} was not moved ({reason}), and undoing it failed "
                f"({one_line(undo_exc)}). It stays marked moving; run "
                f"`manage.py move_tenant {tenant.slug} --abort` once the servers answer."
            ) from exc
        raise MoveError(
            f"Tenant {tenant.slug!r} was not moved ({reason}). It serves from server "
            f"{move.source_server!r} as before."
        ) from exc


def _refuse_pending_migrations(tenant: AbstractTenant) -> None:
    """Under the source's migration lock: a migration that ran meanwhile finished, and
    one deployed meanwhile is not applied."""
    pending = _pending_migrations(tenant)
    if pending:
        raise MoveError(
            f"its migrations are not current ({pending}); run "
            f"`manage.py migrate_tenants --tenant {tenant.slug}` first"
        )


def _pending_migrations(tenant: AbstractTenant) -> str:
    """What keeps the tenant's migrations from being current; empty when they are."""
    result = migrate_tenant(tenant, check_only=True)
    unregister(tenant)
    if result.failed or result.pending:
        return result.error or f"{len(result.pending)} unapplied, first {result.pending[0]}"
    return ""


def _switch(tenant: AbstractTenant, move: TenantMove, verified: Fingerprint) -> None:
    """The registry names the target, and the step says so, in one transaction."""
    with transaction.atomic(using=registry_database()):
        type(tenant)._default_manager.filter(pk=tenant.pk).update(
            server=move.target_server, status=move.previous_status, status_detail=""
        )
        move.verified = json.dumps(verified.as_json())
        move.step = MoveStep.SWITCHED
        move.save(update_fields=["step", "verified", "updated_at"])
    tenant.server, tenant.status, tenant.status_detail = (
        move.target_server,
        move.previous_status,
        "",
    )
    replicas.mark_ready(tenant)  # the target's replicas serve it once they have the copy


def finish_switched(tenant: AbstractTenant, move: TenantMove, steps: dict[str, float]) -> bool:
    """After the switch (of a move or a restore): drop the source once nothing uses it, or
    keep it read-only, and delete the record. Whether the source was kept."""
    unregister(tenant)  # this process's connections to the source
    source = get_server(move.source_server)
    name = move.database_name
    if registered_tenant(move.source_server, name) is not None:
        # Never drop what the registry gives a tenant (none of this move's doing).
        move.keep_source = True
    exists = source.database_exists(name)
    with timed_step(steps, "source kept" if move.keep_source else "source dropped"):
        if not move.keep_source and exists:
            # Processes that have not seen the switch yet may still read the source.
            wait_for_other_processes()
            source.wait_for_queries(name, timeout=SOURCE_QUERIES_TIMEOUT)
            if move.kind == MoveKind.MOVE and not source.fences_writers:
                # Rows may reach it still: compared and dropped as one step.
                verified = (
                    Fingerprint.from_json(json.loads(move.verified)) if move.verified else None
                )
                if verified is None or not source.drop_database_if_unchanged(name, verified):
                    logger.warning(
                        "Tenant %s: its source database %s on server %s changed after the "
                        "copy was verified (a process that had it open wrote to it); it is "
                        "kept",
                        tenant.slug,
                        name,
                        move.source_server,
                    )
                    move.keep_source = True
                exists = move.keep_source
        if move.keep_source and exists:
            source.keep_read_only(name)
        elif exists:
            source.drop_database(name)
        move.delete()
    return move.keep_source


def _undo(tenant: AbstractTenant, move: TenantMove) -> None:
    """Before the switch: drop the copy, make the source writable, give the status back."""
    if move.step == MoveStep.COPYING:
        drop_copy(tenant, move, undoing=True)
    unregister(tenant)  # its sessions on the source end next
    get_server(move.source_server).allow_writes(move.database_name)
    with transaction.atomic(using=registry_database()):
        set_status(tenant, move.previous_status)
        move.delete()


def drop_copy(tenant: AbstractTenant, move: TenantMove, *, undoing: bool = False) -> None:
    """Drop the target database a move (or a restore) made: before the switch it is no
    tenant's. Never the source itself (the target entry changed to reach it), nor a
    database the registry gives a tenant: undoing leaves such a database alone,
    continuing stops."""
    source, target = get_server(move.source_server), get_server(move.target_server)
    name = move.target_name
    identity = target.database_identity(name)
    if identity is None:
        target.drop_leftovers(name)
        return
    if identity == source.database_identity(move.database_name):
        raise MoveError(
            f"server {move.target_server!r} now reaches the source database {name!r} itself "
            f"(TENANCY['SERVERS'][{move.target_server!r}] changed), which is not dropped: "
            "put the server's settings back, then run the command again"
        )
    other = registered_tenant(move.target_server, name, other_than=tenant.slug)
    if other is not None or _registered_there(tenant, move):
        owner = other.slug if other is not None else tenant.slug
        if undoing:
            logger.warning(
                "Tenant %s: database %s on server %s is tenant %s's now; it is left alone",
                tenant.slug,
                name,
                move.target_server,
                owner,
            )
            return
        raise MoveError(
            f"database {name!r} on server {move.target_server!r} is tenant {owner!r}'s now; "
            f"it is not dropped. Undo this move with `manage.py move_tenant {tenant.slug} "
            "--abort`"
        )
    target.drop_database(name)


def _registered_there(tenant: AbstractTenant, move: TenantMove) -> bool:
    row = type(tenant)._default_manager.filter(pk=tenant.pk).values_list("server", "database_name")
    return row.first() == (move.target_server, move.target_name)


# -- copying -------------------------------------------------------------------------------


def _copy(
    source: DatabaseServer, target: DatabaseServer, name: str, progress: Progress | None
) -> int:
    """Copy database ``name`` from ``source`` to ``target`` (which must not have it); the
    bytes copied."""
    total = source.database_size(name)
    if isinstance(source, SQLiteServer) and isinstance(target, SQLiteServer):
        target.copy_database_from(source, name)
        if progress is not None:
            progress("copied", total, total)
        return total
    if source.holds_schemas or target.holds_schemas:
        return _relocate(source, target, name, total, progress)
    return _dump_and_restore(source, target, name, total, progress)


def _relocate(
    source: DatabaseServer,
    target: DatabaseServer,
    name: str,
    total: int,
    progress: Progress | None,
) -> int:
    """A copy to or from a schema of a shared database: the source's dump, kept in a
    temporary file, restored by the target into its own kind of home for the tenant (its
    schema renamed on the way, ``restore_database``)."""
    copied = 0
    with tempfile.TemporaryFile() as dumped:

        def keep(chunk: bytes) -> None:
            nonlocal copied
            dumped.write(chunk)
            copied += len(chunk)
            if progress is not None:
                progress("copied", copied, total)

        source.dump(name, keep)
        target.restore_database(name, DumpFile.whole(dumped), schema=source.home_schema(name))
    return copied


def _dump_and_restore(
    source: Any,
    target: Any,
    name: str,
    total: int,
    progress: Progress | None,
) -> int:
    """``pg_dump`` from the source piped to ``pg_restore`` into a new, empty database on the
    target, restored in one transaction (a failure or a crash leaves it empty). Objects are
    owned by the target's user, as provisioning makes them; grants are not copied."""
    dump_program, restore_program = client_program("pg_dump"), client_program("pg_restore")
    target.create_database(name)
    with (
        source.client_connection(name) as (source_dsn, source_environment),
        target.client_connection(name) as (target_dsn, target_environment),
        tempfile.TemporaryFile() as dump_errors,
        tempfile.TemporaryFile() as restore_errors,
    ):
        dump = subprocess.Popen(
            [dump_program, *_DUMP_OPTIONS, "--dbname", source_dsn],
            stdout=subprocess.PIPE,
            stderr=dump_errors,
            env=source_environment,
        )
        restore = subprocess.Popen(
            [restore_program, *_RESTORE_OPTIONS, "--dbname", target_dsn],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=restore_errors,
            env=target_environment,
        )
        copied = 0
        with reaped(dump), reaped(restore):
            assert dump.stdout is not None
            assert restore.stdin is not None
            try:
                while chunk := dump.stdout.read(1 << 20):
                    restore.stdin.write(chunk)
                    copied += len(chunk)
                    if progress is not None:
                        progress("copied", copied, total)
                restore.stdin.close()
            except BrokenPipeError:
                dump.kill()  # pg_restore ended; its errors say why
            dump.wait()
            restore.wait()
        check_exit("pg_dump", dump, dump_errors)
        check_exit("pg_restore", restore, restore_errors)
    return copied


# -- helpers -------------------------------------------------------------------------------


def _current(slug: str) -> AbstractTenant:
    """The registry's row as it is now."""
    found: AbstractTenant | None = get_tenant_model()._default_manager.filter(slug=slug).first()
    if found is None:
        raise MoveError(f"There is no tenant {slug[:80]!r}.")
    return found


def _lock_key(server: DatabaseServer, name: str) -> int:
    """The key of the migration lock of tenant database ``name`` on ``server``."""
    return lock_key(name if server.holds_schemas else None)


def _set_step(move: TenantMove, step: str) -> None:
    move.step = step
    move.save(update_fields=["step", "updated_at"])


@contextmanager
def timed_step(steps: dict[str, float], name: str) -> Iterator[None]:
    """Time the block as step ``name``, in seconds."""
    started = time.monotonic()
    yield
    steps[name] = round(time.monotonic() - started, 3)
