"""Reads from the read replicas of a tenant's server.

A server entry may list ``REPLICAS``: where each read replica differs from the server
(HOST, PORT, OPTIONS, USER, PASSWORD); the database names, and schemas, are the same.
A read of a tenant model goes to a replica of the tenant's server (``<alias>@r<index>``)
unless:

- no transaction is open on the tenant's primary in the calling thread (``atomic()``,
  ``tenancy.atomic()``, autocommit turned off, a ``BEGIN``): reads inside one see its
  writes;
- this context (a request, a job) wrote to the tenant less than the server's
  ``REPLICA_STICKY_SECONDS`` ago (5 by default): it reads its own writes;
- the code runs inside ``use_primary()``, or names the primary (``QuerySet.using(alias)``,
  ``tenant_connection()``): those never go to a replica;
- no replica is usable: each is checked at most once a second per process, on the
  connection about to serve the read (one query: how far behind replay is). One that
  cannot be reached, or that lags more than the server's ``REPLICA_MAX_LAG`` seconds (5 by
  default), is skipped until the next check; this is logged when it happens and when it
  ends, and is never an error for the user. A connection to a replica that the server
  closed while it was idle (a replica restarted) is opened again before the read.

Writes always go to the primary. Models of ``SHARED_AND_TENANT_APPS`` and the test tenant
of ``tenancy.testing`` read from the primary.
"""

from __future__ import annotations

import contextlib
import logging
import select
import threading
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.db import DatabaseError, connections

from tenancy.conf import tenancy_settings
from tenancy.connections import alias_for, primary_in_transaction, replica_alias_for

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

    from tenancy.models import AbstractTenant

logger = logging.getLogger("tenancy.replicas")

DEFAULT_MAX_LAG = 5.0
DEFAULT_STICKY_SECONDS = 5.0
# How often a replica's health is checked, per process.
CHECK_INTERVAL = 1.0
# How far behind the primary a replica's replay is, in seconds: 0 when everything it has
# received is replayed; NULL on a server that is not a replica.
LAG_QUERY = (
    "SELECT CASE WHEN NOT pg_is_in_recovery() THEN 0 "
    "WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0 "
    "ELSE COALESCE(EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()), 0) END"
)
# PostgreSQL's SQLSTATE for a database that does not exist (not replicated yet).
_NO_SUCH_DATABASE = "3D000"

_writes: ContextVar[dict[str, float] | None] = ContextVar("tenancy_writes", default=None)
_primary: ContextVar[bool] = ContextVar("tenancy_use_primary", default=False)


@dataclass
class _Health:
    lock: threading.Lock = field(default_factory=threading.Lock)
    checked_at: float = float("-inf")
    usable: bool = True
    lag: float | None = None
    problem: str = ""


_health: dict[tuple[str, int], _Health] = {}


@contextlib.contextmanager
def use_primary() -> Iterator[None]:
    """Send every read in the block to the tenants' primaries."""
    token = _primary.set(True)
    try:
        yield
    finally:
        _primary.reset(token)


def wrote(tenant: AbstractTenant) -> None:
    """This context writes to ``tenant``: its reads go to the primary for a while."""
    if not tenancy_settings.SERVERS.get(tenant.server, {}).get("REPLICAS"):
        return
    _writes.set({**(_writes.get() or {}), tenant.slug: time.monotonic()})


def read_alias(tenant: AbstractTenant) -> str:
    """The alias a read of ``tenant``'s models goes to: a usable replica's, else the
    primary's."""
    template = tenancy_settings.SERVERS.get(tenant.server)
    replicas = template.get("REPLICAS") if template is not None else None
    if not replicas or _primary.get():
        return alias_for(tenant)
    written = (_writes.get() or {}).get(tenant.slug)
    sticky = template.get("REPLICA_STICKY_SECONDS", DEFAULT_STICKY_SECONDS)  # type: ignore[union-attr]
    if written is not None and time.monotonic() - written < sticky:
        return alias_for(tenant)
    if primary_in_transaction(tenant):
        return alias_for(tenant)
    first = threading.get_ident() % len(replicas)  # threads spread over the replicas
    for offset in range(len(replicas)):
        alias = _usable(tenant, template, (first + offset) % len(replicas))  # type: ignore[arg-type]
        if alias is not None:
            return alias
    return alias_for(tenant)


def replica_states() -> dict[str, list[dict[str, Any]]]:
    """Per server, each replica's last check: usable, lag (seconds), the problem if any."""
    states: dict[str, list[dict[str, Any]]] = {}
    for name, template in tenancy_settings.SERVERS.items():
        for index, _ in enumerate(template.get("REPLICAS") or ()):
            health = _health.get((name, index), _Health())
            states.setdefault(name, []).append(
                {"usable": health.usable, "lag": health.lag, "problem": health.problem}
            )
    return states


def _usable(tenant: AbstractTenant, template: dict[str, Any], index: int) -> str | None:
    health = _health.setdefault((tenant.server, index), _Health())
    due = time.monotonic() - health.checked_at >= CHECK_INTERVAL
    if not due and not health.usable:
        return None
    alias = replica_alias_for(tenant, index)
    if alias == alias_for(tenant):
        return None  # the test tenant: no replicas
    wrapper = connections[alias]
    try:
        if not _alive(wrapper):
            wrapper.close()
            wrapper.ensure_connection()
        if due and health.lock.acquire(blocking=False):
            try:
                _check(health, wrapper, template, tenant.server, index)
            finally:
                health.lock.release()
    except DatabaseError as exc:
        wrapper.close()
        if getattr(exc.__cause__, "sqlstate", None) == _NO_SUCH_DATABASE:
            return None  # this tenant is not on the replica yet; the others may be
        _judge(health, tenant.server, index, False, None, f"unreachable: {exc}".strip())
        return None
    return alias if health.usable else None


def _alive(wrapper: BaseDatabaseWrapper) -> bool:
    """Whether ``wrapper`` has a connection the server has not closed meanwhile: an idle
    connection has nothing to read unless the server said goodbye."""
    raw = wrapper.connection
    if raw is None or raw.closed or raw.broken or wrapper.errors_occurred:
        return False
    if not wrapper.autocommit or raw.info.transaction_status != 0:
        return True  # in use: not idle
    try:
        readable, _, _ = select.select([raw.pgconn.socket], [], [], 0)
    except (OSError, ValueError):
        return False
    return not readable


def _check(
    health: _Health,
    wrapper: BaseDatabaseWrapper,
    template: dict[str, Any],
    server: str,
    index: int,
) -> None:
    with wrapper.cursor() as cursor:
        cursor.execute(LAG_QUERY)
        row = cursor.fetchone()
    lag = float(row[0]) if row and row[0] is not None else 0.0
    limit = template.get("REPLICA_MAX_LAG", DEFAULT_MAX_LAG)
    usable = lag <= limit
    _judge(
        health,
        server,
        index,
        usable,
        lag,
        "" if usable else f"{lag:.1f} s behind (limit {limit:g} s)",
    )


def _judge(
    health: _Health, server: str, index: int, usable: bool, lag: float | None, problem: str
) -> None:
    if usable != health.usable:
        if usable:
            logger.warning("Replica %d of server %s is used again", index, server)
        else:
            logger.warning(
                "Replica %d of server %s is skipped (reads go to the primary): %s",
                index,
                server,
                problem,
            )
    health.usable, health.lag, health.problem = usable, lag, problem
    health.checked_at = time.monotonic()
