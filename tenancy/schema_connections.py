"""Connections of schema tenants: one connection per thread per shared database.

On a server with ``PLACEMENT: "schemas"`` each tenant is a schema of one shared database.
Its tenants keep their aliases (``tenant:<slug>``, so that every object still says which
tenant it was loaded from), but the connection objects of one thread for the tenants of
one server share one PostgreSQL connection: ``_lend()`` hands a free one to a tenant's
connection object when Django opens it, and ``_release()`` takes it back when Django
closes it. A thread serving 1,000 schema tenants of one server holds one connection.

Before each statement (``use_schema``, an execute wrapper of every schema tenant's
connection object; and before ``callproc()``, ``copy()`` and ``stream()``, which Django
passes to the driver directly) the search path is set to the tenant's schema, unless it
is set already: switching tenant costs one round trip, staying costs none. Where the
schema peers leak, this cannot:

- ``SET search_path`` is only ever run outside any transaction, with autocommit on for
  that one statement. A rollback (of a transaction or a savepoint) can therefore never
  undo it, and the schema remembered here is the connection's, always.
- The path is ``<schema>, pg_temp``: the session's temporary tables come after the
  tenant's own, and switching to another tenant drops them (``DISCARD TEMP``, in the same
  round trip), so a tenant never sees another's temporary tables.
- While one tenant has a transaction open on the connection (autocommit turned off, by
  ``atomic()`` or by hand, or a ``BEGIN``), it owns it: no other tenant's statement,
  commit or rollback runs on it (``TenancyError``), and the other tenants' connection
  objects are detached so that their next cursor is lent another connection. A nested
  ``tenant_context`` inside ``atomic()`` thus gets a connection of its own, and a second
  transaction.
- A statement that may change the search path (it mentions ``search_path``,
  ``set_config``, ``RESET`` or ``DISCARD``) makes tenancy set it again before the next
  one (inside a transaction with ``SET LOCAL``). What tenancy cannot see (a function of
  yours that sets ``search_path`` for the session, a raw driver cursor) it cannot undo:
  do not change the search path on tenant connections. The shared database keeps no
  tables of tenant apps in ``public``, so a path reset to the default fails rather than
  reads elsewhere.
- Server-side cursors (``QuerySet.iterator()``) get names unique on the connection, and
  the connection is not closed while one of them is open.

Behind a pooler in transaction mode (``TRANSACTION_POOLING``) a session setting would stay
on a server connection that another client gets next: the path is then set with
``SET LOCAL`` at the start of each transaction, and a statement outside one gets a
transaction of its own (``_TransactionPath``).

A connection is closed at a thread's safe points (``close_old``) when no tenant uses it
any more and the server's ``CONN_MAX_AGE`` says so, or when it is broken. A connection
object inside ``atomic()`` whose connection is closed stays closed until its outermost
block ends (its next statement raises; nothing of the block is committed), as Django
leaves one it closes there.

When a server keeps its tenants in the main database (``tenancy.main_database``), the
main database's connection objects are one more user of the thread's connection, with
``public, pg_temp`` as their path (``MAIN_SCHEMA``).
"""

from __future__ import annotations

import contextlib
import itertools
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, cast

try:  # schema servers need psycopg; a project on SQLite alone may not have it
    from psycopg import sql
except ImportError:  # pragma: no cover - tested in a subprocess without psycopg
    sql = None  # type: ignore[assignment]

from tenancy.backends.base import readable
from tenancy.exceptions import TenancyError

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

# The keys of a schema tenant's DATABASES entry that name its schema, and say whether
# its server is behind a pooler in transaction mode (TRANSACTION_POOLING).
SCHEMA_KEY = "TENANCY_SCHEMA"
POOLED_KEY = "TENANCY_TRANSACTION_POOLING"

# The search path of the main database's statements on a connection it shares with
# schema tenants of that database (``tenancy.main_database``): the project's tables.
MAIN_SCHEMA = "public"

# The database keys of connections the main database keeps to itself (not its tenants'):
# tenancy sets no search path on them.
PRIVATE_PREFIX = "main:"

_IDLE = 0  # psycopg.pq.TransactionStatus.IDLE
_INERROR = 3  # psycopg.pq.TransactionStatus.INERROR: a failed transaction, only a rollback runs
_CONNECTION_OK = 0  # psycopg.pq.ConnStatus.OK


class _Shared:
    """One thread's connection to one shared database."""

    __slots__ = (
        "__weakref__",
        "close_at",
        "cursors",
        "isolation_level",
        "last_schema",
        "owner",
        "private",
        "raw",
        "schema",
        "users",
    )

    def __init__(
        self, raw: Any, isolation_level: Any, max_age: float | None, private: bool = False
    ) -> None:
        self.raw = raw
        # The main database's own (PRIVATE_PREFIX): its search path is left as it is.
        self.private = private
        self.isolation_level = isolation_level
        self.close_at = None if max_age is None else time.monotonic() + max_age
        # The search path known to be set on it (for the session, or for the transaction
        # behind a pooler); None: unknown, set it before the next statement.
        self.schema: str | None = None
        self.last_schema: str | None = None  # whose statement ran last: temp tables
        # The connection object whose transaction is open on it.
        self.owner: BaseDatabaseWrapper | None = None
        # The connection objects it is lent to, and the cursors made on it.
        self.users: weakref.WeakSet[BaseDatabaseWrapper] = weakref.WeakSet()
        self.cursors: weakref.WeakSet[_SchemaCursor] = weakref.WeakSet()

    def is_free(self) -> bool:
        raw = self.raw
        return (
            self.owner is None
            and not raw.closed
            and raw.autocommit
            and raw.info.transaction_status == _IDLE
        )

    def has_open_cursors(self) -> bool:
        return any(not cursor.closed for cursor in list(self.cursors))


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


def instrument(wrapper: BaseDatabaseWrapper, *, main_key: Callable[[], str] | None = None) -> None:
    """Make a schema tenant's connection object share its thread's connection to the
    shared database, with its schema on the search path for each of its statements.

    With ``main_key``, ``wrapper`` is the main database's (``tenancy.main_database``),
    whose schema tenants are schemas of that database: its statements run with
    ``MAIN_SCHEMA`` on the search path, on the connection of the database key
    ``main_key()`` names when it connects (the tenants', or one of its own)."""
    schema = MAIN_SCHEMA if main_key is not None else schema_of(wrapper.settings_dict)
    assert schema is not None
    path: _SessionPath = (
        _TransactionPath(schema) if wrapper.settings_dict.get(POOLED_KEY) else _SessionPath(schema)
    )
    tenant_key = database_key(wrapper.settings_dict) if main_key is None else ""
    instrumented = cast(Any, wrapper)
    open_connection = wrapper.get_new_connection
    set_raw_autocommit = instrumented._set_autocommit
    commit, rollback = instrumented._commit, instrumented._rollback
    create_cursor, chunked_cursor = wrapper.create_cursor, wrapper.chunked_cursor

    def get_new_connection(conn_params: dict[str, Any]) -> Any:
        if main_key is None:
            return _lend(wrapper, tenant_key, open_connection, conn_params)
        raw = _lend(wrapper, main_key(), open_connection, conn_params)
        # What Django runs as it connects (its own set-up, connection_created receivers
        # such as django.contrib.postgres's type lookups) runs with the main path.
        with wrapper.wrap_database_errors:
            path.switch(_thread.by_raw[id(raw)])
        return raw

    def set_autocommit(autocommit: bool) -> None:
        shared = _bound(wrapper)
        if shared is not None and not autocommit:
            _take(shared, wrapper)
            path.transaction_begins(shared)
        set_raw_autocommit(autocommit)
        if shared is not None and not autocommit:
            with wrapper.wrap_database_errors:
                path.transaction_began(shared)
        if (
            shared is not None
            and autocommit
            and shared.owner is wrapper
            and shared.raw.info.transaction_status == _IDLE
        ):
            shared.owner = None

    def owned(end: Callable[[], None]) -> Callable[[], None]:
        def end_transaction() -> None:
            shared = _bound(wrapper)
            if shared is not None and shared.owner not in (None, wrapper):
                raise _owned_by_another(shared, wrapper)
            end()
            if shared is not None:
                path.transaction_ended(shared)

        return end_transaction

    def close() -> None:
        shared = _bound(wrapper)
        _release(wrapper)
        if main_key is not None and shared is not None:
            _close_for_main(shared)

    def schema_cursor(name: str | None = None) -> Any:
        cursor = create_cursor(name)
        shared = _thread.by_raw.get(id(cursor.connection))
        wrapped = _SchemaCursor(cursor, lambda: holding(cursor.connection))
        if shared is not None:
            shared.cursors.add(wrapped)
        return wrapped

    def unique_chunked_cursor() -> Any:
        # Django numbers a connection object's named cursors from 1; the objects sharing
        # a connection would reuse the names, and close each other's cursors.
        instrumented._named_cursor_idx = next(_cursor_numbers)
        return chunked_cursor()

    def shared_for(raw: Any) -> _Shared:
        lock = getattr(raw, "lock", None)
        if lock is not None and lock.locked():
            raise TenancyError(
                f"{wrapper.alias} cannot run a statement now: a stream() or copy() of this "
                "thread is in progress on its connection."
            )
        if wrapper.closed_in_transaction:
            raise TenancyError(
                f"The connection of {wrapper.alias} was closed inside atomic(); leave the "
                "atomic block before using the tenant again."
            )
        shared = _thread.by_raw.get(id(raw))
        if shared is None or shared.raw is not raw:
            raise TenancyError(
                f"A cursor of schema {schema!r} is used on a connection tenancy no longer "
                "holds (closed at a safe point); make a new cursor."
            )
        if shared.owner not in (None, wrapper):
            raise _owned_by_another(shared, wrapper)
        return shared

    @contextlib.contextmanager
    def holding(raw: Any) -> Iterator[None]:
        """Around callproc(), copy() and stream() (the driver's, without execute
        wrappers): the tenant's path, and the connection its own while the driver holds
        it (a copy or a stream keeps it busy), so that another tenant's statement in the
        meantime is lent another connection."""
        shared = shared_for(raw)
        with wrapper.wrap_database_errors:
            path.before_driver_call(shared, wrapper)
        took = shared.owner is None
        if took:
            _take(shared, wrapper)
        try:
            yield
        finally:
            if (
                took
                and shared.owner is wrapper
                and not raw.closed
                and raw.autocommit
                and raw.info.transaction_status == _IDLE
            ):
                shared.owner = None
            _after(shared, wrapper, path.schema)

    def use_schema(
        execute: Callable[..., Any], sql_: Any, params: Any, many: bool, context: Any
    ) -> Any:
        raw = context["cursor"].cursor.connection
        shared = shared_for(raw)
        statement = _text(sql_, raw)
        ends = False
        try:
            with wrapper.wrap_database_errors:
                ends = path.before(shared, statement)
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
            _after(shared, wrapper, path.schema)
            path.after(shared, statement)

    instrumented.get_new_connection = get_new_connection
    instrumented._set_autocommit = set_autocommit
    instrumented._commit = owned(commit)
    instrumented._rollback = owned(rollback)
    instrumented._close = close
    instrumented.create_cursor = schema_cursor
    instrumented.chunked_cursor = unique_chunked_cursor
    wrapper.execute_wrappers.append(use_schema)


_cursor_numbers = itertools.count(1)


def _after(shared: _Shared, wrapper: BaseDatabaseWrapper, schema: str) -> None:
    """After a statement of ``wrapper``'s (on ``schema``): a transaction it left open (a
    ``BEGIN`` of its own) makes the connection its own, as ``atomic()`` does."""
    raw = shared.raw
    shared.last_schema = schema
    if raw.closed:
        return
    if raw.info.transaction_status != _IDLE:
        if shared.owner is not wrapper:
            _take(shared, wrapper)
    elif raw.autocommit and shared.owner is wrapper and not raw.lock.locked():
        shared.owner = None


class _SchemaCursor:
    """A driver cursor whose ``callproc()``, ``copy()`` and ``stream()`` run with the
    tenant's path and connection (``holding``) when they reach the server; everything
    else is the driver cursor's."""

    __slots__ = ("__weakref__", "_cursor", "_holding")

    def __init__(
        self, cursor: Any, holding: Callable[[], contextlib.AbstractContextManager[None]]
    ) -> None:
        self._cursor = cursor
        self._holding = holding

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)

    def __iter__(self) -> Any:
        return iter(self._cursor)

    def __enter__(self) -> _SchemaCursor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._cursor.close()

    def callproc(self, *args: Any, **kwargs: Any) -> Any:
        with self._holding():
            return self._cursor.callproc(*args, **kwargs)

    @contextlib.contextmanager
    def copy(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        with self._holding(), self._cursor.copy(*args, **kwargs) as copy:
            yield copy

    def stream(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        with self._holding():  # when the first row is asked for: the query is sent then
            yield from self._cursor.stream(*args, **kwargs)


_PATH_CHANGING = re.compile(r"\b(?:search_path|set_config|reset|discard|schema)\b", re.IGNORECASE)
# What a statement starts with, after any comments (tenancy's SQL_COMMENT adds one).
_LEADING = r"\A(?:\s|/\*.*?\*/|--[^\n]*(?:\n|\Z))*"
_BEGINS = re.compile(_LEADING + r"(?:begin|start\s+transaction)\b", re.IGNORECASE | re.DOTALL)
_ENDS = re.compile(
    _LEADING + r"(?:commit|rollback|end|abort|release|prepare\s+transaction)\b",
    re.IGNORECASE | re.DOTALL,
)
_ROLLS_BACK = re.compile(_LEADING + r"(?:rollback|abort)\b", re.IGNORECASE | re.DOTALL)
# Statements PostgreSQL refuses inside a transaction block.
_NO_TRANSACTION = re.compile(
    _LEADING + r"(?:vacuum\b|cluster\b|create\s+database\b|alter\s+system\b|"
    r"(?:create|drop|reindex)\b[^;]*\bconcurrently\b)",
    re.IGNORECASE | re.DOTALL,
)


def _text(statement: Any, raw: Any) -> str:
    """The text of a statement as Django passes it: a string, bytes or psycopg SQL."""
    if isinstance(statement, str):
        return statement
    if isinstance(statement, bytes):
        return statement.decode(errors="replace")
    if isinstance(statement, sql.Composable):
        return statement.as_string(raw)
    return str(statement)


def _may_change_search_path(statement: str) -> bool:
    """Whether a statement may change the search path (``SET search_path``, ``RESET``,
    ``DISCARD ALL``, ``set_config('search_path', ...)``); false alarms cost a round trip."""
    return _PATH_CHANGING.search(statement) is not None


class _SessionPath:
    """The search path set for the session, outside any transaction."""

    def __init__(self, schema: str) -> None:
        self.schema = schema
        self.set_path = sql.SQL("SET search_path TO {}, pg_temp").format(sql.Identifier(schema))
        self.set_local = sql.SQL("SET LOCAL search_path TO {}, pg_temp").format(
            sql.Identifier(schema)
        )

    def before(self, shared: _Shared, statement: str) -> bool:
        """Before a statement: ``True`` when it runs in a transaction begun here, which
        the caller ends."""
        self.switch(shared)
        return False

    def before_driver_call(self, shared: _Shared, wrapper: BaseDatabaseWrapper) -> None:
        self.switch(shared)

    def transaction_begins(self, shared: _Shared) -> None:
        """Autocommit is about to be turned off: the next statement begins a transaction."""

    def transaction_began(self, shared: _Shared) -> None:
        """Autocommit was turned off."""

    def transaction_ended(self, shared: _Shared) -> None:
        """Django committed or rolled back (the driver's call, without execute wrappers)."""

    def after(self, shared: _Shared, statement: str) -> None:
        if _may_change_search_path(statement):
            shared.schema = None  # set again before the next statement

    def switch(self, shared: _Shared) -> None:
        raw, schema = shared.raw, self.schema
        if shared.schema == schema or shared.private:
            return
        if raw.info.transaction_status == _INERROR:
            return  # failed: only the rollback (to a savepoint) runs, the path is set after
        if raw.info.transaction_status != _IDLE:
            # Inside the tenant's own transaction the path was set before it began; a
            # statement since may have changed it: set it for the rest of the
            # transaction, and again for the session after it (unknown until then).
            raw.execute(self.set_local)
            return
        autocommit = raw.autocommit
        shared.schema = None  # unknown until the statement succeeds
        if not autocommit:
            raw.autocommit = True  # no transaction is open: this changes no server state
        try:
            raw.execute(self._with_discard(shared, self.set_path))
        finally:
            if not autocommit:
                raw.autocommit = False
        shared.schema = schema

    def _with_discard(self, shared: _Shared, statement: sql.Composable) -> sql.Composable:
        """``statement``, after dropping another tenant's temporary tables."""
        if shared.last_schema in (None, self.schema):
            return statement
        return sql.SQL("DISCARD TEMP; ") + statement


class _TransactionPath(_SessionPath):
    """Behind a pooler in transaction mode: the path set with ``SET LOCAL`` as each
    transaction begins (Django's, when autocommit is turned off, before any savepoint; a
    ``BEGIN`` of the caller's, right after it); a statement outside a transaction gets one
    of its own. Costs a round trip per transaction."""

    def before(self, shared: _Shared, statement: str) -> bool:
        raw = shared.raw
        if _NO_TRANSACTION.match(statement):
            raise TenancyError(
                f"{statement.split()[0].upper()} cannot run on schema {self.schema!r} behind "
                "a pooler in transaction mode: it needs a session of its own. Run it "
                "against the server directly (a server entry without TRANSACTION_POOLING)."
            )
        if raw.info.transaction_status == _IDLE:
            if not raw.autocommit:  # a transaction of Django's whose path is not set yet
                raw.execute(self.set_local)
                shared.schema = self.schema
                return False
            if _BEGINS.match(statement):  # the caller's own: its path follows it (after)
                self.transaction_begins(shared)
                return False
            if _ENDS.match(statement):
                return False  # nothing to end: PostgreSQL only warns
            raw.execute(self._with_discard(shared, sql.SQL("BEGIN; ") + self.set_local))
            shared.schema = self.schema
            return True
        if shared.schema != self.schema and raw.info.transaction_status != _INERROR:
            raw.execute(self.set_local)  # begun by the caller, or the path may have changed
            shared.schema = self.schema
        return False

    def before_driver_call(self, shared: _Shared, wrapper: BaseDatabaseWrapper) -> None:
        raw = shared.raw
        if raw.info.transaction_status == _IDLE and raw.autocommit:
            raise TenancyError(
                f"{wrapper.alias} is behind a pooler in transaction mode: callproc(), "
                "copy() and stream() on it need a transaction (tenancy.atomic())."
            )
        status = raw.info.transaction_status
        if status == _IDLE or (shared.schema != self.schema and status != _INERROR):
            raw.execute(self.set_local)
            shared.schema = self.schema

    def transaction_begins(self, shared: _Shared) -> None:
        if shared.last_schema not in (None, self.schema):
            shared.raw.execute("DISCARD TEMP")  # outside the transaction, before it begins
            shared.last_schema = None

    def transaction_began(self, shared: _Shared) -> None:
        shared.raw.execute(self.set_local)  # the driver begins the transaction with it
        shared.schema = self.schema

    def transaction_ended(self, shared: _Shared) -> None:
        shared.schema = None

    def after(self, shared: _Shared, statement: str) -> None:
        raw = shared.raw
        if (
            raw.closed
            or raw.info.transaction_status == _IDLE
            or _ROLLS_BACK.match(statement)  # a savepoint's rollback undoes a SET LOCAL
            or _may_change_search_path(statement)
        ):
            shared.schema = None


def database_key(settings_dict: dict[str, Any]) -> str:
    """Which of the thread's shared connections a schema tenant's ``DATABASES`` entry
    takes one from. Tenants of two server entries share a connection only if it is the
    same connection in every setting but the schema."""
    items = sorted((k, repr(v)) for k, v in settings_dict.items() if k != SCHEMA_KEY)
    return repr(items)


def _lend(
    wrapper: BaseDatabaseWrapper,
    key: str,
    open_connection: Callable[[dict[str, Any]], Any],
    conn_params: dict[str, Any],
) -> Any:
    connections = _thread.by_database.setdefault(key, [])
    shared = next((c for c in connections if c.is_free() and not _ended(c)), None)
    if shared is None:
        raw = open_connection(conn_params)  # sets the wrapper's isolation_level
        max_age = wrapper.settings_dict["CONN_MAX_AGE"]
        private = key.startswith(PRIVATE_PREFIX)
        shared = _Shared(raw, getattr(wrapper, "isolation_level", None), max_age, private)
        connections.append(shared)
        _thread.by_raw[id(raw)] = shared
        with _lock:
            _all.add(shared)
    elif shared.isolation_level is not None:
        cast(Any, wrapper).isolation_level = shared.isolation_level
    shared.users.add(wrapper)
    return shared.raw


# The owner of a shared connection while tenancy's own statements run on it (``borrowed``).
_BORROWER = cast("BaseDatabaseWrapper", object())


@contextlib.contextmanager
def borrowed(settings_dict: dict[str, Any]) -> Iterator[Any | None]:
    """The driver connection this thread's schema tenants share to the database of
    ``settings_dict`` (a schema tenant's entry; its schema does not matter), when one is
    open and free; else ``None``. For statements that neither depend on the search path
    nor change it, on the catalog (does a schema exist, create or rename one), which
    would otherwise cost a connection of their own. Meanwhile it is no tenant's: the
    tenants' connection objects lent it let go, and a statement of theirs is lent another
    one. Left in a transaction or broken, it is closed afterwards. One the server ended
    (``_ended``) is not lent."""
    connections = _thread.by_database.get(database_key(settings_dict), [])
    shared = next((c for c in connections if _lendable(c)), None)
    if shared is None:
        yield None
        return
    for user in list(shared.users):
        user.connection = None
    shared.users.clear()
    shared.owner = _BORROWER
    raw = shared.raw
    try:
        yield raw
    finally:
        shared.owner = None
        if raw.closed or raw.broken or not raw.autocommit or raw.info.transaction_status != _IDLE:
            _close(shared)


def holds_lendable(settings_dict: dict[str, Any]) -> bool:
    """Whether ``borrowed(settings_dict)`` would lend a connection (and so whether the
    thread is connected to that database), changing nothing."""
    return any(_lendable(c) for c in _thread.by_database.get(database_key(settings_dict), []))


def _lendable(shared: _Shared) -> bool:
    return shared.is_free() and not shared.has_open_cursors() and not _ended(shared)


def _ended(shared: _Shared) -> bool:
    """Whether the server ended the idle connection ``shared`` (a restart,
    ``idle_session_timeout``, ``pg_terminate_backend``): it is then not lent again, and
    is closed at the thread's next safe point. An idle connection has something to read
    only when the server said goodbye or sent a notification (``LISTEN``): what there is
    is read (a notification stays for the driver), and only a connection the read found
    closed counts as ended."""
    pgconn = shared.raw.pgconn
    try:
        for _ in range(2):  # the goodbye, then the end of the stream
            if not readable(pgconn.socket):
                break
            pgconn.consume_input()
            # Handed to the driver as its own reads do: its notifies() and handlers
            # would not see them in libpq's queue until the socket had more to read.
            while notification := pgconn.notifies():
                if pgconn.notify_handler:
                    pgconn.notify_handler(notification)
    except Exception:  # closed: no socket, or nothing but the end to read
        return True
    return bool(pgconn.status != _CONNECTION_OK)


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


def _owned_by_another(shared: _Shared, wrapper: BaseDatabaseWrapper) -> TenancyError:
    owner = shared.owner
    holder = "another tenant" if owner in (None, _BORROWER) else cast(Any, owner).alias
    return TenancyError(
        f"Tenant connection {wrapper.alias} cannot run a statement now: "
        f"{holder} has a transaction open "
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


def _close_for_main(shared: _Shared) -> None:
    """Django closed the main database's connection object (``CONN_MAX_AGE``, an error,
    ``connections.close_all()``): the connection it was lent is closed as Django would
    close its own, unless a tenant is using it (a transaction, a cursor still read from);
    the tenants lent it meanwhile connect again."""
    if shared.raw.closed or not shared.is_free() or shared.has_open_cursors():
        return  # a user inside atomic() owns it: not free
    _close(shared)


def close_old(is_busy: Callable[[BaseDatabaseWrapper], bool]) -> None:
    """At a safe point of the calling thread: close each shared connection that is
    broken, or free and past its ``CONN_MAX_AGE``, unless a tenant's connection object
    lent it is busy (``is_busy``: a transaction, a cursor still read from)."""
    now = time.monotonic()
    for connections in list(_thread.by_database.values()):
        for shared in list(connections):
            raw = shared.raw
            broken = raw.closed or raw.broken or (shared.is_free() and _ended(shared))
            old = shared.close_at is not None and now >= shared.close_at
            if not broken and not (old and shared.is_free()):
                continue
            users = list(shared.users)
            if not broken and (shared.has_open_cursors() or any(is_busy(u) for u in users)):
                continue
            _close(shared)


def close_all() -> None:
    """Close the calling thread's shared connections (after its tenant connection
    objects were closed)."""
    for connections in list(_thread.by_database.values()):
        for shared in list(connections):
            _close(shared)


def _close(shared: _Shared) -> None:
    """Close ``shared``; the connection objects lent it are left as Django's ``close()``
    leaves one: without a connection, to get another at their next statement; or, inside
    ``atomic()``, closed until the outermost block ends (the server rolled the transaction
    back: a later statement of the block raises instead of running on its own, and
    nothing of the block is committed)."""
    for user in list(shared.users):
        if user.in_atomic_block and user.connection is shared.raw:
            user.closed_in_transaction = True
            user.needs_rollback = True
        elif user.connection is shared.raw:
            user.connection = None
    shared.users.clear()
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
