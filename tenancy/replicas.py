"""Reads from the read replicas of a tenant's server.

A server entry may list ``REPLICAS``: where each read replica differs from the server
(HOST, PORT, OPTIONS, USER, PASSWORD); the database names, and schemas, are the same.
A read of a tenant model goes to a replica of the tenant's server (``<alias>@r<index>``)
unless one of these sends it to the primary:

- **The replica has not replayed the tenant's database as it is now.** Whenever a
  tenant's database becomes what the tenant serves (provisioned, adopted, moved, restored,
  reactivated) or its migrations change, the primary's WAL position is recorded on the
  tenant's row (``ready_lsn``, with the server and database it was taken for). A replica
  serves the tenant only once its replay position is past it. A replica that is behind
  therefore never serves a new tenant from the database of a deleted one whose slug was
  reused, nor a schema or column it has not created yet. A tenant without a position for
  its current database (made before its server had replicas, say) reads from the primary
  until ``migrate_tenants`` records one.
- **The replica lags more than** ``REPLICA_MAX_LAG`` **seconds (5 by default), or cannot
  be reached.** Each replica is checked at most once a second per process, on connections
  of its own (one to the replica, one to the primary), each with a time limit: the
  primary's WAL position first, then the replica's replay position. A replica that has
  replayed up to the primary's position is current; one behind it is as stale as its last
  replayed commit is old, by the primary's clock. A replica cut off from its primary stops
  replaying, so its lag grows as soon as the primary writes: it is never taken as current
  by how recently it replayed. A replica that is skipped is logged when that starts and
  when it ends, and is never an error for the user; after failed checks, the next one is
  made later (up to every 30 seconds), so a replica that does not answer does not slow
  one request a second.
- **This context wrote to the tenant**, less than ``REPLICA_STICKY_SECONDS`` (5 by
  default) ago, counted from the end of the transaction the write was in: it reads its own
  writes. A write is any statement on the tenant's primary connection other than a read
  (``SELECT``, ``SHOW``, ...), through the ORM, ``tenant_connection()`` or a cursor.
- **A transaction is open on the tenant's primary** in the calling thread
  (``atomic()``, ``tenancy.atomic()``, autocommit turned off, a ``BEGIN``).
- **The code asks for the primary**: inside ``use_primary()``, or naming the primary
  (``QuerySet.using(alias)``, ``tenant_connection()``).

Threads spread over a server's replicas, each thread keeping to one while it is usable.
Connections to replicas count against the cap like any tenant connection, and use a
connect timeout (2 seconds unless the replica's OPTIONS set ``connect_timeout``); a
check waits as long for each answer.

An object read from a replica belongs to its tenant like one read from the primary: it
can be related to the tenant's other objects, saved (to the primary, with Django's
deferred-field handling intact) and deleted. When it takes part in a write or a relation
it is marked as the primary's.

Writes always go to the primary. Models of ``SHARED_AND_TENANT_APPS``, migrations and the
test tenant of ``tenancy.testing`` read from the primary.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.core.signals import request_started
from django.db import DatabaseError, connections, transaction
from django.db.models import Model

from tenancy.backends.base import readable
from tenancy.conf import SERVER_ONLY_KEYS, tenancy_settings
from tenancy.connections import (
    alias_for,
    connection_for,
    in_transaction,
    primary_in_transaction,
    replica_alias_for,
    replica_of_alias,
    replica_settings,
)
from tenancy.exceptions import TenancyError
from tenancy.reserved import DEFAULT_MAINTENANCE_DB

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

    from tenancy.models import AbstractTenant

logger = logging.getLogger("tenancy.replicas")

DEFAULT_MAX_LAG = 5.0
DEFAULT_STICKY_SECONDS = 5.0
# How often each replica is checked, per process; after failed checks, less often.
CHECK_INTERVAL = 1.0
MAX_CHECK_INTERVAL = 30.0

# On the primary: the WAL written so far (every commit that has returned is in it; with
# synchronous_commit off, all but those of the last few wal_writer_delay), and the time by
# the primary's clock.
PRIMARY_QUERY = "SELECT pg_current_wal_lsn()::text, extract(epoch from clock_timestamp())"
# On the replica: whether it is one, what it has replayed, and when (by the primary's
# clock) the last transaction it replayed committed.
REPLICA_QUERY = (
    "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text, "
    "extract(epoch from pg_last_xact_replay_timestamp())"
)
# On a new connection to a replica: where it is.
CONNECTION_QUERY = "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text"
# Statements that write nothing (a write is anything else, to be safe).
_READ = re.compile(
    r"\s*(?:(?:/\*.*?\*/|--[^\n]*(?:\n|$))\s*)*"
    r"(?P<keyword>SELECT|SHOW|EXPLAIN|VALUES|FETCH|MOVE|CLOSE|DECLARE|SAVEPOINT|RELEASE"
    r"|ROLLBACK|BEGIN|START|COMMIT|END|SET|RESET|DISCARD|DEALLOCATE)\b",
    re.IGNORECASE | re.DOTALL,
)
# In a statement that starts like a read: what makes it write after all.
_WRITING_READ = re.compile(r"\bINTO\b|^EXPLAIN\b.*\bANALY[SZ]E\b", re.IGNORECASE | re.DOTALL)

# Per tenant slug, when this context last wrote to it: a time.monotonic(), or None while
# the transaction the write was in has not ended (the window starts when it does).
_writes: ContextVar[dict[str, float | None] | None] = ContextVar("tenancy_writes", default=None)
_primary: ContextVar[bool] = ContextVar("tenancy_use_primary", default=False)


@contextlib.contextmanager
def use_primary() -> Iterator[None]:
    """Send every read in the block to the tenants' primaries."""
    token = _primary.set(True)
    try:
        yield
    finally:
        _primary.reset(token)


def replicated(server: str) -> bool:
    """Whether ``server`` has read replicas."""
    template = tenancy_settings.SERVERS.get(server)
    return bool(template and template.get("REPLICAS"))


# --- what a replica must have replayed before it serves a tenant ------------------------


def ready_mark(tenant: AbstractTenant) -> str:
    """The value of ``tenant.ready_lsn`` for its database as it is now: the primary's WAL
    position, with the server and database it was taken for. Empty when the server has no
    replicas (nothing to wait for) or the position cannot be read (reads then stay on the
    primary, which is always right)."""
    if not replicated(tenant.server):
        return ""
    connection = connection_for(tenant)
    try:
        with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
            # A commit that waits for the WAL to be written (whatever synchronous_commit
            # says elsewhere) writes everything before it: then the position covers it.
            cursor.execute("SET LOCAL synchronous_commit = on")
            cursor.execute("SELECT pg_current_xact_id()")
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_current_wal_lsn()::text")
            [position] = cursor.fetchone()
    except DatabaseError:
        logger.exception(
            "Tenant %s: its WAL position was not read; its reads stay on the primary",
            tenant.slug,
        )
        return ""
    return f"{position}:{tenant.server}:{tenant.database_name}"


def mark_ready(tenant: AbstractTenant) -> None:
    """Record on ``tenant``'s row that a replica serves it once it has replayed the
    primary's WAL as it is now. Call it after changing a tenant's database in a way
    tenancy does not see (DDL of your own, data loaded outside the ORM's tenant
    connection) when readers must not see the database as it was before."""
    if replicated(tenant.server) or tenant.ready_lsn:
        save_mark(tenant, ready_mark(tenant))


def save_mark(tenant: AbstractTenant, mark: str) -> None:
    """Store ``mark`` (from ``ready_mark``) as ``tenant``'s ``ready_lsn``."""
    type(tenant)._default_manager.filter(pk=tenant.pk).update(ready_lsn=mark)
    tenant.ready_lsn = mark


def ready_position(tenant: AbstractTenant) -> int | None:
    """The replay position a replica needs before it serves ``tenant``; ``None`` when
    none is recorded for the tenant's current server and database."""
    position, _, identity = (getattr(tenant, "ready_lsn", "") or "").partition(":")
    if not position or identity != f"{tenant.server}:{tenant.database_name}":
        return None
    try:
        return lsn(position)
    except ValueError:
        return None


def lsn(text: str) -> int:
    """A WAL position (``"16/B374D848"``) as a number."""
    high, low = text.split("/")
    return int(high, 16) << 32 | int(low, 16)


# --- read-your-writes -------------------------------------------------------------------


def only_reads(sql: Any) -> bool:
    """Whether ``sql`` is a statement that writes nothing, by its first keyword; to be safe,
    not when it holds more than one statement or a comment past its start, selects
    ``INTO`` a table, or is an ``EXPLAIN ANALYZE`` (which runs what it explains).
    ``SELECT`` of a function that writes is taken for a read."""
    if not isinstance(sql, str):
        return False
    start = _READ.match(sql)
    if start is None:
        return False
    statement = sql[start.start("keyword") :].rstrip().rstrip(";")
    return not (
        ";" in statement
        or "/*" in statement
        or "*/" in statement  # a nested comment ended early
        or "--" in statement
        or _WRITING_READ.search(statement)
    )


def note_statement(tenant_slug: str, in_transaction: bool, sql: Any) -> None:
    """A statement runs on a tenant's primary: unless it only reads, this context reads the
    tenant from the primary for ``REPLICA_STICKY_SECONDS`` after the write's transaction."""
    if only_reads(sql):
        return
    writes = _writes.get() or {}
    when = None if in_transaction else time.monotonic()
    if tenant_slug not in writes or writes[tenant_slug] != when:
        _writes.set({**writes, tenant_slug: when})


def _sticky(tenant: AbstractTenant, template: dict[str, Any]) -> bool:
    writes = _writes.get()
    if not writes or tenant.slug not in writes:
        return False
    written = writes[tenant.slug]
    if written is None:  # in a transaction, or just after one
        if not primary_in_transaction(tenant):
            _writes.set({**writes, tenant.slug: time.monotonic()})  # it ended by now
        return True
    seconds = float(template.get("REPLICA_STICKY_SECONDS", DEFAULT_STICKY_SECONDS))
    return time.monotonic() - written < seconds


def forget_writes(**kwargs: Any) -> None:
    """Start a new unit of work (a request, a job) with no writes of its own."""
    if _writes.get():
        _writes.set(None)


request_started.connect(forget_writes, dispatch_uid="tenancy.replicas.forget_writes")


# --- choosing the alias of a read ------------------------------------------------------


def read_alias(tenant: AbstractTenant) -> str:
    """The alias a read of ``tenant``'s models goes to: a usable replica's, else the
    primary's."""
    template = tenancy_settings.SERVERS.get(tenant.server)
    replicas = template.get("REPLICAS") if template is not None else None
    if not replicas or _primary.get():
        return alias_for(tenant)
    ready = ready_position(tenant)
    if ready is None or _sticky(tenant, template) or primary_in_transaction(tenant):  # type: ignore[arg-type]
        return alias_for(tenant)
    first = _thread_index() % len(replicas)
    for offset in range(len(replicas)):
        index = (first + offset) % len(replicas)
        try:
            alias = _usable(tenant, template, index, ready)  # type: ignore[arg-type]
        except Exception:  # a replica's trouble is never the user's: the primary serves
            logger.exception(
                "Tenant %s: replica %d of server %s was not used",
                tenant.slug,
                index,
                tenant.server,
            )
            continue
        if alias is not None:
            return alias
    return alias_for(tenant)


def restamp(instance: Any) -> None:
    """An object read from a replica takes part in a write or a relation: from now on it
    is the primary's, as Django expects of an object it saves or relates."""
    state = getattr(instance, "_state", None)
    primary = replica_of_alias(getattr(state, "db", None))
    if primary is not None and isinstance(instance, Model):
        instance._state.db = primary


_thread_numbers = itertools.count()


class _ThreadIndex(threading.local):
    def __init__(self) -> None:
        self.value = next(_thread_numbers)


_thread_index_local = _ThreadIndex()


def _thread_index() -> int:
    return _thread_index_local.value


# --- replica health ---------------------------------------------------------------------


class _Timeout(Exception):
    pass


class _Probe:
    """A connection of tenancy's own to a server's maintenance database, for one-row
    queries with a time limit (libpq directly: no Django connection object, no cap)."""

    def __init__(self, settings_dict: dict[str, Any], timeout: float) -> None:
        self.settings_dict = settings_dict
        self.timeout = timeout
        self.pgconn: Any = None

    def row(self, query: str) -> list[str | None]:
        from psycopg import pq

        if self.pgconn is None or self.pgconn.status != pq.ConnStatus.OK:
            self.close()
            self.pgconn = pq.PGconn.connect(self._conninfo().encode())
            if self.pgconn.status != pq.ConnStatus.OK:
                message = self.pgconn.error_message.decode(errors="replace")
                self.close()
                raise DatabaseError(" ".join(message.split()))
        try:
            return self._ask(query)
        except BaseException:
            self.close()
            raise

    def _ask(self, query: str) -> list[str | None]:
        from psycopg import pq

        pgconn = self.pgconn
        deadline = time.monotonic() + self.timeout
        if not pgconn.send_query(query.encode()) == 1 and pgconn.status != pq.ConnStatus.OK:
            raise DatabaseError(pgconn.error_message.decode(errors="replace"))
        results = []
        while True:
            while pgconn.is_busy():
                if not readable(pgconn.socket, deadline - time.monotonic()):
                    raise _Timeout(f"no answer within {self.timeout:g} s")
                pgconn.consume_input()
            result = pgconn.get_result()
            if result is None:
                break
            results.append(result)
        if not results or results[0].status != pq.ExecStatus.TUPLES_OK:
            message = results[0].error_message.decode(errors="replace") if results else ""
            raise DatabaseError(" ".join(message.split()) or "no answer")
        row = results[0]
        return [
            None if value is None else value.decode()
            for value in (row.get_value(0, column) for column in range(row.nfields))
        ]

    def _conninfo(self) -> str:
        from psycopg.conninfo import make_conninfo

        from tenancy.backends.postgresql import _unpooled_wrapper

        params = _unpooled_wrapper(self.settings_dict, "tenancy:replica-check")
        values = {
            key: value
            for key, value in params.get_connection_params().items()
            if isinstance(value, str | int) and key not in _NOT_LIBPQ
        }
        values.setdefault("connect_timeout", max(2, round(self.timeout)))
        return make_conninfo("", **values)

    def close(self) -> None:
        pgconn, self.pgconn = self.pgconn, None
        if pgconn is not None:
            with contextlib.suppress(Exception):
                pgconn.finish()


# Connection parameters of psycopg's, not libpq's.
_NOT_LIBPQ = frozenset({"prepare_threshold", "cursor_factory", "context"})


@dataclass
class _Health:
    primary: _Probe
    replica: _Probe
    lock: threading.Lock = field(default_factory=threading.Lock)
    next_check: float = float("-inf")  # time.monotonic() of the next check
    checked_at: float = float("-inf")  # and of the last
    failures: int = 0
    usable: bool = False
    replayed: int = -1  # the replay position at the last check
    lag: float | None = None
    problem: str = "not checked yet"

    @property
    def checked(self) -> bool:
        return self.checked_at > float("-inf")


_health: dict[tuple[str, int], _Health] = {}
_health_lock = threading.Lock()
_inherited: list[Any] = []


def _forget_inherited() -> None:
    """In a process just made by ``fork()``: checks of its own, on connections of its own
    (closing an inherited one would end the parent's)."""
    global _health_lock
    _inherited.append(dict(_health))
    _health.clear()
    _health_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_inherited)


def _health_of(server: str, index: int, template: dict[str, Any]) -> _Health:
    health = _health.get((server, index))
    if health is None:
        with _health_lock:
            health = _health.get((server, index))
            if health is None:
                health = _health[(server, index)] = _new_health(index, template)
    return health


def _new_health(index: int, template: dict[str, Any]) -> _Health:
    """The checks of replica ``index`` of a server: on the maintenance database of the
    replica, and of the primary (its DIRECT address, where HOST and PORT lead to a pooler)."""
    database = {key: value for key, value in template.items() if key not in SERVER_ONLY_KEYS}
    database["NAME"] = template.get("MAINTENANCE_DB", DEFAULT_MAINTENANCE_DB)
    replica = replica_settings(database, template["REPLICAS"][index])
    primary = replica_settings(database, template.get("DIRECT") or {})
    timeout = float(replica["OPTIONS"]["connect_timeout"])
    return _Health(_Probe(primary, timeout), _Probe(replica, timeout))


def replica_states() -> dict[str, list[dict[str, Any]]]:
    """Per server, each replica's last check: usable, lag (seconds), the problem if any."""
    states: dict[str, list[dict[str, Any]]] = {}
    for name, template in tenancy_settings.SERVERS.items():
        for index, _ in enumerate(template.get("REPLICAS") or ()):
            health = _health.get((name, index))
            states.setdefault(name, []).append(
                {
                    "usable": health is not None and health.usable,
                    "lag": None if health is None else health.lag,
                    "problem": "not checked yet" if health is None else health.problem,
                }
            )
    return states


def check_now(server: str | None = None) -> None:
    """Check every replica (of ``server``) now, in the calling thread."""
    for name, template in tenancy_settings.SERVERS.items():
        if server is not None and name != server:
            continue
        for index, _ in enumerate(template.get("REPLICAS") or ()):
            health = _health_of(name, index, template)
            with health.lock:
                _check(health, template, name, index)


def _usable(
    tenant: AbstractTenant, template: dict[str, Any], index: int, ready: int
) -> str | None:
    health = _health_of(tenant.server, index, template)
    # Never checked: wait for the check (once per process); else a thread checks while
    # the others go by the last one.
    if time.monotonic() >= health.next_check and health.lock.acquire(blocking=not health.checked):
        try:
            if time.monotonic() >= health.next_check:  # not checked meanwhile
                _check(health, template, tenant.server, index)
        finally:
            health.lock.release()
    if not health.usable or health.replayed < ready:
        return None
    limit = float(template.get("REPLICA_MAX_LAG", DEFAULT_MAX_LAG))
    if (health.lag or 0.0) + time.monotonic() - health.checked_at > limit + CHECK_INTERVAL:
        return None  # its last check is too old to vouch for it (another thread checks)
    alias = replica_alias_for(tenant, index)
    if alias == alias_for(tenant):
        return None  # the test tenant: no replicas
    wrapper = connections[alias]
    try:
        if not _alive(wrapper):
            wrapper.close()
            wrapper.ensure_connection()
            # What the checks saw holds for a connection made since only if it is on
            # the same server at the same point or later (a replica restarted, say).
            if not _replayed_on(wrapper, ready):
                wrapper.close()
                return None
    except (DatabaseError, TenancyError) as exc:
        wrapper.close()
        if isinstance(exc, TenancyError):  # the cap: the primary's connection will do
            return None
        _judge(health, tenant.server, index, False, None, f"unreachable: {_line(exc)}")
        return None
    return alias


def _replayed_on(wrapper: BaseDatabaseWrapper, ready: int) -> bool:
    """Whether the replica ``wrapper`` is connected to has replayed up to ``ready``."""
    with wrapper.cursor() as cursor:
        cursor.execute(CONNECTION_QUERY)
        recovering, replayed = cursor.fetchone()
    return bool(recovering) and replayed is not None and lsn(replayed) >= ready


def _alive(wrapper: BaseDatabaseWrapper) -> bool:
    """Whether ``wrapper`` has a connection the server has not closed meanwhile: an idle
    connection has nothing to read unless the server said goodbye."""
    raw = wrapper.connection
    if raw is None or raw.closed or raw.broken or wrapper.errors_occurred:
        return False
    if not wrapper.autocommit or raw.info.transaction_status != 0:
        return True  # in use: not idle
    try:
        return not readable(raw.pgconn.socket)
    except Exception:  # the driver's own errors too: a connection it knows is gone
        return False


def _check(health: _Health, template: dict[str, Any], server: str, index: int) -> None:
    """Check one replica against its primary (the caller holds ``health.lock``)."""
    try:
        try:
            primary_position, primary_now = health.primary.row(PRIMARY_QUERY)
        except Exception as exc:  # psycopg's own errors too: the probes use libpq directly
            raise _Unusable(f"its primary did not answer: {_line(exc)}") from exc
        try:
            recovering, replayed, replayed_at = health.replica.row(REPLICA_QUERY)
        except Exception as exc:
            raise _Unusable(f"unreachable: {_line(exc)}") from exc
        if recovering != "t":
            raise _Unusable("not in recovery: promoted, or not a replica")
        if replayed is None or primary_position is None:
            raise _Unusable("it has replayed nothing")
        health.replayed = lsn(replayed)
        if health.replayed >= lsn(primary_position):
            lag = 0.0
        elif replayed_at is None or primary_now is None:
            raise _Unusable("behind its primary, since an unknown time")
        else:
            lag = max(0.0, float(primary_now) - float(replayed_at))
    except _Unusable as exc:
        _judge(health, server, index, False, None, str(exc))
        return
    limit = template.get("REPLICA_MAX_LAG", DEFAULT_MAX_LAG)
    usable = lag <= limit
    problem = "" if usable else f"{lag:.1f} s behind (limit {limit:g} s)"
    _judge(health, server, index, usable, lag, problem)


class _Unusable(Exception):
    pass


def _line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def _judge(
    health: _Health, server: str, index: int, usable: bool, lag: float | None, problem: str
) -> None:
    if usable != health.usable or not health.checked:
        if usable:
            if health.checked:
                logger.warning("Replica %d of server %s is used again", index, server)
        else:
            logger.warning(
                "Replica %d of server %s is skipped (reads go to the primary): %s",
                index,
                server,
                problem,
            )
    health.failures = 0 if usable else health.failures + 1
    wait = min(MAX_CHECK_INTERVAL, CHECK_INTERVAL * 2 ** max(0, health.failures - 1))
    health.usable, health.lag, health.problem = usable, lag, problem
    health.checked_at = time.monotonic()
    health.next_check = health.checked_at + wait


def reset() -> None:
    """Forget every replica's last check, closing the checks' connections (tests)."""
    with _health_lock:
        for health in _health.values():
            health.primary.close()
            health.replica.close()
        _health.clear()


def wrote_hook(slug: str) -> Callable[..., Any]:
    """An execute wrapper for a tenant's primary connection: notes its writes."""

    def note_writes(
        execute: Callable[..., Any], sql: Any, params: Any, many: bool, context: Any
    ) -> Any:
        try:
            return execute(sql, params, many, context)
        finally:  # after it: a statement outside a transaction has committed by then
            note_statement(slug, in_transaction(context["connection"]), sql)

    return note_writes
