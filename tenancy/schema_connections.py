"""Connections of schema tenants: one connection per thread per shared database.

On a server with ``PLACEMENT: "schemas"`` each tenant is a schema of one shared database.
Its tenants keep their aliases (``tenant:<slug>``, so that every object still says which
tenant it was loaded from), but the connection objects of one thread for the tenants of
one server share one PostgreSQL connection: ``lend()`` hands a free one to a tenant's
connection object when Django opens it, and ``release()`` takes it back when Django
closes it. A thread serving 1,000 schema tenants of one server holds one connection.

Before each statement (``use_schema``, an execute wrapper of every schema tenant's
connection object) the connection's ``search_path`` is set to the tenant's schema, unless
it is set already: switching tenant costs one round trip, staying costs none. Where the
schema peers leak, this cannot:

- ``SET search_path`` is only ever run outside any transaction, with autocommit on for
  that one statement. A rollback (of a transaction or a savepoint) can therefore never
  undo it, and the schema remembered here is the connection's, always.
- While one tenant has a transaction open on the connection (autocommit turned off, by
  ``atomic()`` or by hand, or a ``BEGIN``), it owns it: no other tenant's statement runs
  on it (``TenancyError``), and the other tenants' connection objects are detached so
  that their next cursor is lent another connection. A nested ``tenant_context`` inside
  ``atomic()`` thus gets a connection of its own, and a second transaction.
- A statement that may change the search path (it mentions ``search_path``, ``RESET``
  or ``DISCARD``) makes tenancy set it again before the next one; inside a transaction
  that is refused. The search path names only the tenant's schema, and the shared
  database keeps no tables of tenant apps outside tenant schemas: a search path changed
  where tenancy cannot see it (a raw driver cursor) makes queries fail, and never reach
  other rows.

A connection is closed at a thread's safe points (``close_old``) when no tenant uses it
any more and the server's ``CONN_MAX_AGE`` says so, or when it is broken.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from psycopg import pq, sql

from tenancy.exceptions import TenancyError

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

# The keys of a schema tenant's DATABASES entry that name its schema, and say whether
# its server is behind a pooler in transaction mode (TRANSACTION_POOLING).
SCHEMA_KEY = "TENANCY_SCHEMA"
POOLED_KEY = "TENANCY_TRANSACTION_POOLING"

_IDLE = pq.TransactionStatus.IDLE


class _Shared:
    """One thread's connection to one shared database."""

    __slots__ = ("__weakref__", "close_at", "isolation_level", "owner", "raw", "schema", "users")

    def __init__(self, raw: Any, isolation_level: Any, max_age: float | None) -> None:
        self.raw = raw
        self.isolation_level = isolation_level
        self.close_at = None if max_age is None else time.monotonic() + max_age
        self.schema: str | None = None  # the search path set on it, outside transactions
        # The connection object whose transaction is open on it.
        self.owner: BaseDatabaseWrapper | None = None
        # The connection objects it is lent to.
        self.users: weakref.WeakSet[BaseDatabaseWrapper] = weakref.WeakSet()

    def is_free(self) -> bool:
        raw = self.raw
        return (
            self.owner is None
            and not raw.closed
            and raw.autocommit
            and raw.info.transaction_status == _IDLE
        )


class _ThreadShared(threading.local):
    def __init__(self) -> None:
        self.by_database: dict[str, list[_Shared]] = {}  # database key -> connections
        self.by_raw: dict[int, _Shared] = {}


_thread = _ThreadShared()
_lock = threading.Lock()
_all: weakref.WeakSet[_Shared] = weakref.WeakSet()  # every thread's, guarded by _lock
_inherited: list[object] = []


def schema_of(settings_dict: dict[str, Any]) -> str | None:
    """The schema a tenant's ``DATABASES`` entry names; ``None`` for a database tenant."""
    return cast(str | None, settings_dict.get(SCHEMA_KEY))


def instrument(wrapper: BaseDatabaseWrapper) -> None:
    """Make a schema tenant's connection object share its thread's connection to the
    shared database, with its schema on the search path for each of its statements."""
    schema = schema_of(wrapper.settings_dict)
    assert schema is not None
    switch = _switch_per_transaction if wrapper.settings_dict.get(POOLED_KEY) else _switch
    key = _database_key(wrapper.settings_dict)
    open_connection = wrapper.get_new_connection
    set_raw_autocommit = wrapper._set_autocommit  # type: ignore[attr-defined]
    instrumented = cast(Any, wrapper)

    def get_new_connection(conn_params: dict[str, Any]) -> Any:
        return _lend(wrapper, key, open_connection, conn_params)

    def set_autocommit(autocommit: bool) -> None:
        shared = _bound(wrapper)
        if shared is not None and not autocommit:
            _take(shared, wrapper)
        set_raw_autocommit(autocommit)
        if (
            shared is not None
            and autocommit
            and shared.owner is wrapper
            and shared.raw.info.transaction_status == _IDLE
        ):
            shared.owner = None

    def close() -> None:
        _release(wrapper)

    def use_schema(
        execute: Callable[..., Any], sql_: Any, params: Any, many: bool, context: Any
    ) -> Any:
        raw = context["cursor"].cursor.connection
        shared = _thread.by_raw.get(id(raw))
        if shared is None or shared.raw is not raw:
            raise TenancyError(
                f"A cursor of schema {schema!r} is used on a connection tenancy no longer "
                "holds (closed at a safe point); make a new cursor."
            )
        ends = False
        try:
            with wrapper.wrap_database_errors:
                ends = switch(shared, wrapper, schema)
            result = execute(sql_, params, many, context)
            if ends:
                with wrapper.wrap_database_errors:
                    raw.execute("COMMIT")
            return result
        except BaseException:
            if ends and not raw.closed:
                with wrapper.wrap_database_errors:
                    raw.execute("ROLLBACK")
            raise
        finally:
            if _may_change_search_path(sql_):
                shared.schema = None  # set again before the next statement
            if raw.info.transaction_status != _IDLE:
                shared.owner = wrapper  # a transaction begun by hand
            elif raw.autocommit and shared.owner is wrapper:
                shared.owner = None

    instrumented.get_new_connection = get_new_connection
    instrumented._set_autocommit = set_autocommit
    instrumented._close = close
    wrapper.execute_wrappers.append(use_schema)


_PATH_CHANGING = re.compile(r"\b(?:search_path|reset|discard)\b", re.IGNORECASE)


def _may_change_search_path(statement: Any) -> bool:
    """Whether a statement may change the search path (``SET search_path``, ``RESET``,
    ``DISCARD ALL``, ``set_config('search_path', ...)``); false alarms cost a round trip."""
    text = statement if isinstance(statement, str) else str(statement)
    return _PATH_CHANGING.search(text) is not None


def _database_key(settings_dict: dict[str, Any]) -> str:
    # Tenants of two server entries share a connection only if it is the same
    # connection in every setting but the schema.
    items = sorted((k, repr(v)) for k, v in settings_dict.items() if k != SCHEMA_KEY)
    return repr(items)


def _lend(
    wrapper: BaseDatabaseWrapper,
    key: str,
    open_connection: Callable[[dict[str, Any]], Any],
    conn_params: dict[str, Any],
) -> Any:
    connections = _thread.by_database.setdefault(key, [])
    shared = next((candidate for candidate in connections if candidate.is_free()), None)
    if shared is None:
        raw = open_connection(conn_params)  # sets the wrapper's isolation_level
        max_age = wrapper.settings_dict["CONN_MAX_AGE"]
        shared = _Shared(raw, getattr(wrapper, "isolation_level", None), max_age)
        connections.append(shared)
        _thread.by_raw[id(raw)] = shared
        with _lock:
            _all.add(shared)
    elif shared.isolation_level is not None:
        cast(Any, wrapper).isolation_level = shared.isolation_level
    shared.users.add(wrapper)
    return shared.raw


def _bound(wrapper: BaseDatabaseWrapper) -> _Shared | None:
    raw = wrapper.connection
    shared = _thread.by_raw.get(id(raw)) if raw is not None else None
    return shared if shared is not None and shared.raw is raw else None


def _take(shared: _Shared, wrapper: BaseDatabaseWrapper) -> None:
    """``wrapper`` starts a transaction on ``shared``: the others lent it let go."""
    if shared.owner not in (None, wrapper):
        raise _owned_by_another(shared, wrapper)
    shared.owner = wrapper
    for other in list(shared.users):
        if other is not wrapper and other.connection is shared.raw:
            if other.in_atomic_block:
                raise _owned_by_another(shared, wrapper)
            other.connection = None
            shared.users.discard(other)


def _switch(shared: _Shared, wrapper: BaseDatabaseWrapper, schema: str) -> bool:
    """Set the connection's search path for the session, outside any transaction, before
    a statement of ``wrapper``'s; ``False``: the statement needs no transaction of ours."""
    raw = shared.raw
    if shared.owner not in (None, wrapper):
        raise _owned_by_another(shared, wrapper)
    if shared.schema == schema:
        return False
    if raw.info.transaction_status != _IDLE:
        # Inside the tenant's own transaction the path was set before it began; a
        # statement since may have changed it: set it for the rest of the transaction,
        # and again for the session after it (the schema stays unknown until then).
        _set_local(raw, schema)
        return False
    autocommit = raw.autocommit
    shared.schema = None  # unknown until the statement succeeds
    if not autocommit:
        raw.autocommit = True  # no transaction is open: this changes no server state
    try:
        raw.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
    finally:
        if not autocommit:
            raw.autocommit = False
    shared.schema = schema
    return False


def _switch_per_transaction(shared: _Shared, wrapper: BaseDatabaseWrapper, schema: str) -> bool:
    """Behind a pooler in transaction mode a session setting would stay on a server
    connection other clients get next: set the search path at the start of each
    transaction with ``SET LOCAL``. A statement outside a transaction gets one of its
    own (``True``: the caller commits it). Costs a round trip per transaction."""
    raw = shared.raw
    if shared.owner not in (None, wrapper):
        raise _owned_by_another(shared, wrapper)
    status = raw.info.transaction_status
    if status == _IDLE and raw.autocommit:
        raw.execute(sql.SQL("BEGIN; SET LOCAL search_path TO {}").format(sql.Identifier(schema)))
        shared.schema = None
        return True
    if status == _IDLE or shared.schema is None:
        _set_local(raw, schema)  # Django's transaction begins here (or the path changed)
        shared.schema = schema
    return False


def _set_local(raw: Any, schema: str) -> None:
    raw.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(schema)))


def _owned_by_another(shared: _Shared, wrapper: BaseDatabaseWrapper) -> TenancyError:
    owner = shared.owner
    return TenancyError(
        f"Tenant connection {wrapper.alias} cannot run a statement now: "
        f"{owner.alias if owner is not None else 'another tenant'} has a transaction open "
        "on the same shared connection. Make a new cursor (a cursor made before the "
        "transaction began stays on its connection)."
    )


def _release(wrapper: BaseDatabaseWrapper) -> None:
    """Django closes ``wrapper``: the shared connection is taken back, with any
    transaction of the wrapper's rolled back; a broken one is closed."""
    shared = _bound(wrapper)
    if shared is None:
        return
    shared.users.discard(wrapper)
    raw = shared.raw
    if shared.owner is wrapper:
        if not raw.closed:
            if raw.info.transaction_status != _IDLE:
                raw.rollback()
            raw.autocommit = True
        shared.owner = None
    if raw.closed or raw.broken:
        _close(shared)


def close_old(is_busy: Callable[[BaseDatabaseWrapper], bool]) -> None:
    """At a safe point of the calling thread: close each shared connection that is
    broken, or free and past its ``CONN_MAX_AGE``, unless a tenant's connection object
    lent it is busy (``is_busy``: a transaction, a cursor still read from)."""
    now = time.monotonic()
    for connections in list(_thread.by_database.values()):
        for shared in list(connections):
            broken = shared.raw.closed or shared.raw.broken
            old = shared.close_at is not None and now >= shared.close_at
            if not broken and not (old and shared.is_free()):
                continue
            users = list(shared.users)
            if not broken and any(is_busy(user) for user in users):
                continue
            for user in users:
                user.connection = None
            _close(shared)


def close_all() -> None:
    """Close the calling thread's shared connections (after its tenant connection
    objects were closed)."""
    for connections in list(_thread.by_database.values()):
        for shared in list(connections):
            for user in list(shared.users):
                user.connection = None
            _close(shared)


def _close(shared: _Shared) -> None:
    for connections in _thread.by_database.values():
        if shared in connections:
            connections.remove(shared)
    _thread.by_raw.pop(id(shared.raw), None)
    with _lock:
        _all.discard(shared)
    with contextlib.suppress(Exception):  # a broken one has nothing left to close
        shared.raw.close()


def open_count() -> int:
    """How many shared connections are open in this process, in all threads."""
    with _lock:
        return sum(1 for shared in _all if not shared.raw.closed)


def forget_inherited() -> None:
    """In a process just made by ``fork()``: start with none, keeping the inherited ones
    referenced (closing one would end the parent's session)."""
    global _thread, _lock, _all
    _inherited.append((_thread, list(_all)))
    _thread, _lock, _all = _ThreadShared(), threading.Lock(), weakref.WeakSet()
