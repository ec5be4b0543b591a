"""The cap on open tenant connections, held exactly.

A process never holds more than ``MAX_OPEN_CONNECTIONS`` connections to tenants' own
databases, nor more than a server entry's ``MAX_OPEN_CONNECTIONS`` to that server's. A
tenant's connection object takes a place before it connects (``admit``) and gives it back
when it closes (``closing``): a PostgreSQL session's place once the server has ended the
session (it closes its side of the socket then), so that the server never counts more.
Places go to waiting threads in the order they came. When there is none, the thread that
needs one makes room:

1. it closes its own least recently used idle connection;
2. it closes the least recently used idle connection of a thread that is between
   requests (``park``: from the end of its request until that thread next uses a tenant
   connection, which waits while the connection is being closed and then opens a new
   one), or of a thread that has ended; this is the only time a thread closes another's
   connection;
3. it asks the other threads to close their least recently used connections at their
   next safe point, and waits for a place, up to ``CONNECTION_WAIT_TIMEOUT`` seconds;

and then fails with ``ConnectionLimitReached`` (answered with 503 by the middleware,
and logged with a ``snapshot()``). A connection inside a transaction, with autocommit
off, or with a cursor still being read from is never closed to make room.

Schema tenants are not counted: they share one connection per thread per shared
database (``tenancy.schema_connections``), however many tenants a thread serves.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import weakref
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from tenancy.backends.base import readable
from tenancy.conf import tenancy_settings
from tenancy.exceptions import ConnectionLimitReached

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

logger = logging.getLogger("tenancy.connections")

# How often a thread waiting for a place looks again (a connection closed by Django
# itself, not through tenancy, gives no notice).
_POLL_SECONDS = 0.05
# How long a closed PostgreSQL session's place is kept at most, waiting for the server
# to end the session.
_SESSION_END_SECONDS = 1.0


class ThreadState:
    """Whether a thread is between requests, and the lock that keeps another thread from
    closing its connections while it uses them."""

    __slots__ = ("lock", "parked", "thread")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.parked = False
        self.thread = threading.current_thread()

    def is_idle(self) -> bool:
        """Between requests, or ended (a thread that ended without closing its
        connections leaves them to the garbage collector)."""
        return self.parked or not self.thread.is_alive()


class Holder(Protocol):
    """A thread's connection object for one tenant (``tenancy.connections._Use``)."""

    alias: str
    server: str
    wrapper: BaseDatabaseWrapper
    last_used: float
    close_requested: bool
    connecting: bool
    closed_by_cap: bool
    owner: ThreadState
    schema: bool


class _Ending:
    """A session closed by tenancy that the server may still count: its place is free
    once the server has closed its side of the socket (after ending the session)."""

    __slots__ = ("deadline", "server", "watch")

    def __init__(self, server: str, watch: socket.socket) -> None:
        self.server, self.watch = server, watch
        self.deadline = time.monotonic() + _SESSION_END_SECONDS

    def ended(self, timeout: float = 0) -> bool:
        if time.monotonic() >= self.deadline:
            return True
        try:
            return readable(self.watch, timeout) and not self.watch.recv(4096)
        except OSError:
            return True


class _Ticket:
    """A thread waiting for a place; places go to waiters in the order they came."""

    __slots__ = ("server",)

    def __init__(self, server: str) -> None:
        self.server = server


@dataclass
class _State:
    condition: threading.Condition = field(default_factory=threading.Condition)
    # Holders with a place. Weak: a thread that ended without closing its connections
    # leaves them to the garbage collector, which closes them and frees their places.
    holding: weakref.WeakSet[Any] = field(default_factory=weakref.WeakSet)
    ending: list[_Ending] = field(default_factory=list)
    queue: deque[_Ticket] = field(default_factory=deque)
    waiting: Counter[str] = field(default_factory=Counter)  # server -> threads waiting now
    refused: Counter[str] = field(default_factory=Counter)  # server -> since start
    closed_for_room: int = 0
    peak: int = 0


_state = _State()


def admit(
    use: Holder,
    own: Callable[[], Iterable[Holder]],
    is_busy: Callable[[Holder], bool],
    release: Callable[[Holder], None],
) -> None:
    """Take a place for ``use``, which is about to connect; make room or wait for one at
    the cap. ``own`` lists the calling thread's connection objects, ``is_busy`` says
    whether closing one would lose work, ``release`` closes one of the calling thread's."""
    cap = tenancy_settings.MAX_OPEN_CONNECTIONS
    server_cap = tenancy_settings.server_connection_cap(use.server)
    state = _state
    ticket = _Ticket(use.server)
    deadline = None
    try:
        while True:
            with state.condition:
                full = _over(use.server, cap, server_cap)
                if full is None and not _an_earlier_waiter_fits(ticket):
                    _hold(use)
                    return
                if ticket not in state.queue:
                    state.queue.append(ticket)
            if full is not None:
                in_scope = _scope(full, use.server)
                if _wait_for_ending(in_scope):
                    continue
                if _close_own(use, in_scope, own, is_busy, release) or _close_parked(
                    use, in_scope, is_busy
                ):
                    continue
            now = time.monotonic()
            if deadline is None:
                deadline = now + tenancy_settings.CONNECTION_WAIT_TIMEOUT
                with state.condition:
                    state.waiting[use.server] += 1
                _request_closing(use, _scope(full or "process", use.server))
            if now >= deadline:
                raise _refuse(use, full or "process", cap, server_cap)
            with state.condition:
                state.condition.wait(min(_POLL_SECONDS, deadline - now))
    finally:
        with state.condition:
            if ticket in state.queue:
                state.queue.remove(ticket)
            if deadline is not None:
                state.waiting[use.server] -= 1
            state.condition.notify_all()  # the next waiter may fit now


def connected(use: Holder) -> None:
    """``use`` finished connecting (or failed to: it then holds no connection)."""
    use.connecting = False
    if use.wrapper.connection is None:
        leave(use)


def leave(use: Holder, watch: socket.socket | None = None) -> None:
    """``use``'s connection was closed: its place is free, once the server has ended the
    session if ``watch`` (``session_end_watch``) is given."""
    state = _state
    with state.condition:
        if use in state.holding:
            state.holding.discard(use)
            if watch is not None:
                state.ending.append(_Ending(use.server, watch))
                watch = None
            state.condition.notify_all()
    if watch is not None:
        watch.close()


def closing(use: Holder, close: Callable[[], None]) -> None:
    """Close ``use``'s driver connection with ``close`` and give its place back.

    PostgreSQL ends a session a moment after its client closes it: until the server
    closes its side of the socket, the place counts as taken (without anybody waiting
    for it), so that the server never sees more sessions than the cap allows.
    """
    watch = session_end_watch(use) if use in _state.holding and _capped(use) else None
    try:
        close()
    finally:
        leave(use, watch)


def _capped(use: Holder) -> bool:
    return (
        tenancy_settings.MAX_OPEN_CONNECTIONS is not None
        or tenancy_settings.server_connection_cap(use.server) is not None
    )


def session_end_watch(use: Holder) -> socket.socket | None:
    """A second descriptor of ``use``'s PostgreSQL socket, which sees the server close
    it (after it has ended the session) once the driver has closed its own; ``None``
    for SQLite and for a connection that goes back to a pool rather than closing."""
    raw = use.wrapper.connection
    pgconn = getattr(raw, "pgconn", None)
    if pgconn is None or getattr(raw, "closed", True):
        return None
    if (use.wrapper.settings_dict.get("OPTIONS") or {}).get("pool"):
        return None
    try:
        return socket.socket(fileno=os.dup(pgconn.socket))
    except (OSError, ValueError):
        return None


def park(owner: ThreadState) -> None:
    """The calling thread is between requests: until it uses a tenant connection again,
    its idle ones may be closed by a thread that needs room."""
    owner.parked = True


def unpark(owner: ThreadState, uses: Iterable[Holder]) -> None:
    """The calling thread is about to use its tenant connections: wait while one is being
    closed for room, then forget the ones that were (each opens anew when used)."""
    with owner.lock:
        owner.parked = False
    for use in uses:
        if use.closed_by_cap:
            use.closed_by_cap = False
            use.wrapper.close()  # already closed: Django forgets the connection


def _counts(server: str) -> tuple[int, int]:
    """Places taken in the process, and on ``server``. Holds the lock."""
    state = _state
    mine = sum(1 for use in list(state.holding) if use.server == server)
    return _total(), mine + sum(1 for end in state.ending if end.server == server)


def _over(server: str, cap: int | None, server_cap: int | None) -> str | None:
    """What has no place left for a connection to ``server``: ``"server"``,
    ``"process"`` or ``None``. Holds the lock."""
    if cap is None and server_cap is None:
        return None
    for pruned in (False, True):
        if pruned:
            _prune()
        total, mine = _counts(server) if server_cap is not None else (_total(), 0)
        if server_cap is not None and mine >= server_cap:
            full = "server"
        elif cap is not None and total >= cap:
            full = "process"
        else:
            return None
    return full


def _total() -> int:
    return len(_state.holding) + len(_state.ending)


def _an_earlier_waiter_fits(ticket: _Ticket) -> bool:
    """Whether a thread that waits longer than ``ticket`` (a newcomer: any waiter) would
    get a place now. Holds the lock."""
    for earlier in _state.queue:
        if earlier is ticket:
            return False
        if (
            _over(
                earlier.server,
                tenancy_settings.MAX_OPEN_CONNECTIONS,
                tenancy_settings.server_connection_cap(earlier.server),
            )
            is None
        ):
            return True
    return False


def _prune() -> None:
    """Give back the places of connections closed without tenancy's knowledge, and of
    sessions the server has ended. Holds the lock."""
    state = _state
    for use in list(state.holding):
        if not use.connecting and (use.wrapper.connection is None or use.closed_by_cap):
            state.holding.discard(use)
    ended = [end for end in state.ending if end.ended()]
    for end in ended:
        state.ending.remove(end)
        end.watch.close()


def _wait_for_ending(in_scope: Callable[[Any], bool]) -> bool:
    """Wait (briefly) for a session tenancy closed to end, if one holds a place in scope;
    whether one did."""
    state = _state
    with state.condition:
        ending = [end for end in state.ending if in_scope(end)]
    if not ending:
        return False
    ending[0].ended(timeout=_POLL_SECONDS)
    with state.condition:
        before = len(state.ending)
        _prune()
        return len(state.ending) < before


def _hold(use: Holder) -> None:
    state = _state
    use.connecting = True
    state.holding.add(use)
    state.peak = max(state.peak, _total())


def _scope(full: str, server: str) -> Callable[[Any], bool]:
    if full == "server":
        return lambda holder: holder.server == server
    return lambda holder: True


def _close_own(
    use: Holder,
    in_scope: Callable[[Holder], bool],
    own: Callable[[], Iterable[Holder]],
    is_busy: Callable[[Holder], bool],
    release: Callable[[Holder], None],
) -> bool:
    candidates = [
        other
        for other in own()
        if other is not use
        and not other.schema  # shared with other tenants, and holds no place
        and in_scope(other)
        and other.wrapper.connection is not None
        and not is_busy(other)
    ]
    if not candidates:
        return False
    release(min(candidates, key=lambda other: other.last_used))
    _count_closed()
    return True


def _close_parked(
    use: Holder, in_scope: Callable[[Holder], bool], is_busy: Callable[[Holder], bool]
) -> bool:
    state = _state
    with state.condition:
        candidates = sorted(
            (
                other
                for other in list(state.holding)
                if other.owner.is_idle()
                and other.owner is not use.owner
                and not other.connecting
                and not other.closed_by_cap
                and in_scope(other)
            ),
            key=lambda other: other.last_used,
        )
    for other in candidates:
        owner = other.owner
        if not owner.lock.acquire(blocking=False):
            continue  # its thread is taking it back
        try:
            raw = other.wrapper.connection
            ended = not owner.thread.is_alive()  # whatever it left open is lost anyway
            if not owner.is_idle() or raw is None or other.closed_by_cap:
                continue
            if not ended and is_busy(other):
                continue
            watch = session_end_watch(other)
            if not _close_idle_driver_connection(raw):
                if watch is not None:
                    watch.close()
                continue
            # Before the owner may take it back: its next connection needs a place of
            # its own.
            other.closed_by_cap = True
            leave(other, watch)
        finally:
            owner.lock.release()
        _count_closed()
        return True
    return False


def _close_idle_driver_connection(raw: Any) -> bool:
    """Close another thread's idle driver connection; ``False`` if it is in use after all."""
    lock = getattr(raw, "lock", None)  # psycopg 3's, held while a statement runs
    if lock is not None and not lock.acquire(blocking=False):
        return False
    try:
        raw.close()
    except Exception:
        logger.exception("Could not close an idle tenant connection to make room")
        return False
    finally:
        if lock is not None:
            lock.release()
    return True


def _request_closing(use: Holder, in_scope: Callable[[Holder], bool]) -> None:
    """Ask the other threads to close their least recently used connection at their next
    safe point, one for each thread waiting."""
    state = _state
    with state.condition:
        candidates = sorted(
            (
                other
                for other in list(state.holding)
                if other.owner is not use.owner and not other.close_requested and in_scope(other)
            ),
            key=lambda other: other.last_used,
        )
        wanted = sum(state.waiting.values())
    for other in candidates[:wanted]:
        other.close_requested = True


def _count_closed() -> None:
    with _state.condition:
        _state.closed_for_room += 1


def _refuse(
    use: Holder, full: str, cap: int | None, server_cap: int | None
) -> ConnectionLimitReached:
    from tenancy.connections import tenant_of_alias

    limit = server_cap if full == "server" else cap
    assert limit is not None
    with _state.condition:
        _state.refused[use.server] += 1
    error = ConnectionLimitReached(
        tenant_of_alias(use.alias) or use.alias,
        use.server,
        limit,
        full,
        tenancy_settings.CONNECTION_WAIT_TIMEOUT,
    )
    logger.warning("%s Connections: %s", error, snapshot().summary())
    return error


@dataclass(frozen=True)
class ServerConnections:
    """One server's tenant connections in this process."""

    open: int  # connections to tenants' own databases (being opened, or ending)
    idle: int  # of those, held by threads between requests
    waiting: int  # threads waiting for a place now
    refused: int  # connections refused at the cap since the process started
    cap: int | None  # the server entry's MAX_OPEN_CONNECTIONS


@dataclass(frozen=True)
class ConnectionSnapshot:
    """The tenant connections of this process at one moment (``snapshot()``)."""

    cap: int | None  # TENANCY['MAX_OPEN_CONNECTIONS']
    open: int
    peak: int  # the most open at once since the process started
    closed_for_room: int  # idle connections closed at the cap since the process started
    shared: int  # schema servers' shared connections (not counted against the cap)
    servers: dict[str, ServerConnections]
    # Per server, each read replica's last check: usable, lag (seconds), the problem.
    replicas: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def summary(self) -> str:
        """One line: the totals, then each server's figures."""
        servers = "; ".join(
            f"{name}: {s.open} open ({s.idle} idle), {s.waiting} waiting, {s.refused} refused"
            + (f", cap {s.cap}" if s.cap is not None else "")
            for name, s in sorted(self.servers.items())
        )
        cap = "no cap" if self.cap is None else f"cap {self.cap}"
        replicas = "; ".join(
            f"{name} replica {index}: "
            + ("used" if state["usable"] else f"skipped ({state['problem']})")
            for name, states in sorted(self.replicas.items())
            for index, state in enumerate(states)
        )
        return (
            f"{self.open} open of {cap} (peak {self.peak}, {self.closed_for_room} closed "
            f"for room), {self.shared} shared by schema tenants"
            + (f"; {servers}" if servers else "")
            + (f"; {replicas}" if replicas else "")
        )


def snapshot() -> ConnectionSnapshot:
    """The tenant connections of this process now: per server, how many are open, how
    many of those idle between requests, how many threads wait for one, and how many were
    refused at the cap since the process started; and each read replica's last check."""
    from tenancy import schema_connections
    from tenancy.replicas import replica_states

    state = _state
    with state.condition:
        _prune()
        holding = list(state.holding)
        ending = Counter(end.server for end in state.ending)
        waiting, refused = Counter(state.waiting), Counter(state.refused)
        peak, closed = state.peak, state.closed_for_room
    names = set(tenancy_settings.SERVERS) | {use.server for use in holding}
    servers = {}
    for name in sorted(names):
        mine = [use for use in holding if use.server == name]
        servers[name] = ServerConnections(
            open=len(mine) + ending[name],
            idle=sum(1 for use in mine if use.owner.parked),
            waiting=waiting[name],
            refused=refused[name],
            cap=tenancy_settings.server_connection_cap(name),
        )
    return ConnectionSnapshot(
        cap=tenancy_settings.MAX_OPEN_CONNECTIONS,
        open=len(holding) + sum(ending.values()),
        peak=peak,
        closed_for_room=closed,
        shared=schema_connections.open_count(),
        servers=servers,
        replicas=replica_states(),
    )


def forget_inherited() -> None:
    """In a process just made by ``fork()``: no places held, nothing counted."""
    global _state
    _state = _State()
