"""The registry's answers, kept in each process: which tenant a hostname or a slug names.

Without it, finding a request's tenant costs a query on the main database per request,
and with ``CONN_MAX_AGE=0`` a connection of its own. The resolvers ask this cache first,
so a request for a known tenant that touches no shared model never reaches the main
database.

An answer stays valid until the registry changes, and a change is seen

- **at once in the process that makes it** through the ORM: saving or deleting a tenant or
  a domain, and ``update()``/``delete()``/``bulk_create()``/``bulk_update()`` on their
  querysets, forget every answer (again when the transaction commits);
- **within** ``TENANCY["RESOLUTION_CACHE_TTL"]`` **seconds (1 by default) in every other
  process**, whatever made the change (the ORM, raw SQL, another application): a database
  trigger on the tenant and domain tables gives ``tenancy_registrystamp`` a new random
  stamp in the same transaction (migration 0005). A process reads the stamp when a lookup
  finds it older than the TTL, at most once per TTL, and forgets every answer when it
  changed. That is one primary-key query per process per second, not one per request.

Why a stamp in the main database rather than PostgreSQL's ``LISTEN/NOTIFY`` or Django's
cache framework: it is transactional (a stamp is never seen before the change it stands
for is visible), it works on every backend tenancy supports and behind PgBouncer in
transaction pooling (where ``LISTEN`` does not), it needs no thread or extra connection per
process and survives ``fork()``, and a missed message cannot leave a process stale: the
stamp is read again, not waited for.

Hostnames and slugs that name no tenant are remembered too, in a bounded list of their own
(``RESOLUTION_CACHE_NOT_FOUND_SIZE``), so a client sending unknown hosts costs the main
database one query per new name, and the memory stays bounded whatever it sends. Known
tenants are kept up to ``RESOLUTION_CACHE_SIZE``, the least recently used forgotten first.

Each lookup returns a new tenant instance, so a view that changes ``request.tenant`` never
changes another request's. Inside a transaction of its own on the main database a lookup
bypasses the cache (it must see the transaction's own changes, and what it reads may be
rolled back); inside a test case's transaction the cache is kept for that test only.
"""

from __future__ import annotations

import copy
import datetime
import decimal
import functools
import logging
import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from asgiref.sync import sync_to_async
from django.db import DatabaseError, connections, models, router, transaction

from tenancy.conf import is_test_run, tenancy_settings
from tenancy.registry_stamp import read_stamp

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

    from tenancy.models import AbstractTenant

logger = logging.getLogger("tenancy.registry_cache")

# An answer is read again at the latest this many TTLs after it was read (each on its own,
# no burst): a write that skipped the triggers (disabled, or session_replication_role =
# replica) is seen within a minute by default.
MAX_AGE_TTLS = 60

_MISSING: Any = object()  # not in the cache
_UNREAD: Any = object()  # the stamp was never read, or could not be
_UNCACHED: Any = object()  # inside a transaction of the caller's own: no caching

Lookup = Callable[[str], "AbstractTenant | None"]


# Values a tenant instance can share with another: they cannot be changed in place.
_IMMUTABLE = (
    str,
    int,
    float,
    bool,
    bytes,
    type(None),
    datetime.date,
    datetime.time,
    datetime.timedelta,
    decimal.Decimal,
    uuid.UUID,
)


class _Snapshot:
    """A tenant's loaded field values, from which each lookup makes a new instance. Values
    that can be changed in place (a ``JSONField``'s dict, say) are copied for each one."""

    __slots__ = ("db", "kept_at", "model", "mutable", "names", "values")

    def __init__(self, tenant: AbstractTenant, kept_at: float) -> None:
        self.model = type(tenant)
        self.db = tenant._state.db
        self.kept_at = kept_at
        loaded = tenant.__dict__  # deferred fields are left deferred, not fetched here
        names = _field_names(self.model)
        if not all(name in loaded for name in names):
            names = [name for name in names if name in loaded]
        self.names = names  # shared by the model's snapshots when nothing is deferred
        values = [loaded[name] for name in names]
        # Copied from the instance the lookup returns too, which its caller may change.
        self.mutable = tuple(
            i for i, value in enumerate(values) if not isinstance(value, _IMMUTABLE)
        )
        for index in self.mutable:
            values[index] = copy.deepcopy(values[index])
        self.values = tuple(values)

    def tenant(self) -> AbstractTenant:
        values = self.values
        if self.mutable:
            values = tuple(
                copy.deepcopy(value) if index in self.mutable else value
                for index, value in enumerate(values)
            )
        tenant: AbstractTenant = self.model.from_db(self.db, self.names, values)
        return tenant


@functools.cache
def _field_names(model: type[models.Model]) -> list[str]:
    return [field.attname for field in model._meta.concrete_fields]


class _Cache:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.found: OrderedDict[tuple[str, str], _Snapshot] = OrderedDict()
        self.not_found: OrderedDict[tuple[str, str], float] = OrderedDict()  # -> kept at
        self.stamp: Any = _UNREAD
        self.checked_at = float("-inf")
        # Bumped whenever answers are forgotten: an answer read from the database before
        # that is not stored after it.
        self.generation = 0
        # The test case transaction the answers were read in (None: outside any).
        self.scope: object = None

    def clear(self) -> None:
        with self.lock:
            self._clear()

    def _clear(self) -> None:
        self.found.clear()
        self.not_found.clear()
        self.generation += 1

    def get(self, key: tuple[str, str]) -> AbstractTenant | None:
        """The tenant cached for ``key``, ``None`` if known to name none, or ``_MISSING``
        (also for an answer kept longer than the maximum age, which is forgotten)."""
        oldest = time.monotonic() - MAX_AGE_TTLS * self._ttl()
        missing: AbstractTenant | None = _MISSING
        with self.lock:
            snapshot = self.found.get(key)
            if snapshot is not None:
                if snapshot.kept_at < oldest:
                    del self.found[key]
                    return missing
                self.found.move_to_end(key)
            else:
                kept_at = self.not_found.get(key)
                if kept_at is None:
                    return missing
                if kept_at < oldest:
                    del self.not_found[key]
                    return missing
                return None
        return snapshot.tenant()

    def store(
        self, key: tuple[str, str], tenant: AbstractTenant | None, generation: int, kept_at: float
    ) -> None:
        snapshot = _Snapshot(tenant, kept_at) if tenant is not None else None
        with self.lock:
            if generation != self.generation:
                return  # forgotten meanwhile: the answer may be older than the change
            if snapshot is None:
                entries: OrderedDict[tuple[str, str], Any] = self.not_found
                entries[key] = kept_at
                limit = tenancy_settings.RESOLUTION_CACHE_NOT_FOUND_SIZE
            else:
                entries = self.found
                entries[key] = snapshot
                limit = tenancy_settings.RESOLUTION_CACHE_SIZE
            entries.move_to_end(key)
            while len(entries) > limit:
                entries.popitem(last=False)

    def check_stamp(self, connection: BaseDatabaseWrapper) -> None:
        """Read the registry's stamp; forget every answer if it changed."""
        started = time.monotonic()
        stamp = _read_stamp(connection)
        with self.lock:
            if stamp is _UNREAD or stamp != self.stamp:
                self._clear()
            self.stamp = stamp
            # Timed from before the read: answers are never trusted longer than the TTL.
            self.checked_at = started if stamp is not _UNREAD else float("-inf")

    def stamp_due(self) -> bool:
        return time.monotonic() - self.checked_at >= self._ttl()

    @staticmethod
    def _ttl() -> float:
        return tenancy_settings.RESOLUTION_CACHE_TTL


_cache = _Cache()


def _start_afresh() -> None:
    # In a child made by fork(): empty, with a lock no thread of the parent can hold.
    global _cache
    _cache = _Cache()


os.register_at_fork(after_in_child=_start_afresh)


def lookup(kind: str, key: str, load: Lookup) -> AbstractTenant | None:
    """The tenant ``load(key)`` finds in the registry, answered from the cache when it can
    be. ``kind`` names what ``key`` is ("host", "slug", ...): keys of different kinds never
    meet."""
    if not tenancy_settings.RESOLUTION_CACHE_TTL:
        return load(key)
    connection = registry_connection()
    if _enter_scope(connection) is _UNCACHED:
        return load(key)
    if _cache.stamp_due():
        _cache.check_stamp(connection)
    cached = _cache.get((kind, key))
    if cached is not _MISSING:
        return cached
    generation, read_at = _cache.generation, time.monotonic()
    tenant = load(key)
    if _cache.stamp is not _UNREAD:
        _cache.store((kind, key), tenant, generation, read_at)
    return tenant


async def alookup(kind: str, key: str, load: Lookup) -> AbstractTenant | None:
    """``lookup`` for async code: a cached answer without leaving the event loop, anything
    that needs the database in a thread."""
    if (
        tenancy_settings.RESOLUTION_CACHE_TTL
        and not _cache.stamp_due()
        and _enter_scope(registry_connection()) is not _UNCACHED
    ):
        cached = _cache.get((kind, key))
        if cached is not _MISSING:
            return cached
    return await sync_to_async(lookup)(kind, key, load)


def forget_all() -> None:
    """Forget every cached answer of this process, and which database holds the registry."""
    _cache.clear()
    _registry_database.cache_clear()


def registry_changed(using: str | None = None) -> None:
    """A tenant or a domain was written on ``using``: forget every answer now, and again
    when the transaction commits (another thread may have read the old rows meanwhile)."""
    _cache.clear()
    connection = connections[using or _registry_database()]
    if connection.in_atomic_block:
        transaction.on_commit(_cache.clear, using=connection.alias)
    # In autocommit the write is committed already; under manual transaction management
    # (autocommit off, no atomic block) lookups bypass the cache until it is on again.


def wait_for_other_processes() -> None:
    """Wait until every other process has seen a registry change committed just before
    (one ``RESOLUTION_CACHE_TTL``). Not in a test run, where no other process serves
    the test tenants."""
    ttl = tenancy_settings.RESOLUTION_CACHE_TTL
    if ttl and not is_test_run():
        time.sleep(ttl)


def cached_counts() -> tuple[int, int]:
    """How many known and unknown names this process remembers."""
    with _cache.lock:
        return len(_cache.found), len(_cache.not_found)


class RegistryQuerySet(models.QuerySet[Any]):
    """The tenant and domain querysets: writes that send no signal forget the cache too."""

    def update(self, **kwargs: Any) -> int:
        try:
            return super().update(**kwargs)
        finally:
            registry_changed(self.db)

    async def aupdate(self, **kwargs: Any) -> int:
        return await sync_to_async(self.update)(**kwargs)

    def bulk_create(self, *args: Any, **kwargs: Any) -> list[Any]:
        try:
            return super().bulk_create(*args, **kwargs)
        finally:
            registry_changed(self.db)

    def delete(self) -> tuple[int, dict[str, int]]:
        using = self.db
        try:
            return super().delete()
        finally:
            registry_changed(using)


def registry_row_changed(sender: type[models.Model], using: str, **kwargs: Any) -> None:
    """``post_save``/``post_delete`` receiver for the tenant model and ``Domain``."""
    registry_changed(using)


@functools.cache
def _registry_database() -> str:
    from tenancy.models import get_tenant_model

    return router.db_for_read(get_tenant_model()) or "default"


def _enter_scope(connection: BaseDatabaseWrapper) -> object:
    """The test case transaction the lookup runs in (``None`` outside any), forgetting the
    answers of another one; ``_UNCACHED`` inside a transaction of the caller's own."""
    if in_own_transaction(connection):
        return _UNCACHED
    blocks = connection.atomic_blocks
    scope = blocks[-1] if blocks else None
    if scope is not _cache.scope:
        with _cache.lock:
            _cache._clear()
            _cache.scope = scope
            _cache.checked_at = float("-inf")
    return scope


def in_own_transaction(connection: BaseDatabaseWrapper) -> bool:
    """Whether ``connection`` is inside a transaction of the caller's (an atomic block, or
    autocommit turned off); a test case's own transactions do not count."""
    blocks = connection.atomic_blocks
    if blocks:
        return not all(getattr(block, "_from_testcase", False) for block in blocks)
    return connection.connection is not None and not connection.autocommit


def registry_connection() -> BaseDatabaseWrapper:
    """The connection the registry is read from."""
    return connections[_registry_database()]


_warned = False


def _read_stamp(connection: BaseDatabaseWrapper) -> Any:
    global _warned
    try:
        return read_stamp(connection)
    except DatabaseError as exc:
        if not _warned:
            _warned = True
            logger.warning(
                "Tenant lookups are not cached: the registry stamp cannot be read (%s). "
                "Run `manage.py migrate` to create it.",
                exc,
            )
        return _UNREAD


def connect_signals(tenant_model: str) -> None:
    """Forget the cache when a tenant (the model labelled ``tenant_model``) or a domain is
    saved or deleted in this process, through its model or any proxy of it (Django sends
    the signals with the proxy as sender)."""
    from django.apps import apps
    from django.db.models.signals import post_delete, post_save

    try:
        registry = {apps.get_model(tenant_model), apps.get_model("tenancy", "Domain")}
    except (LookupError, ValueError):
        return  # a wrong TENANCY_TENANT_MODEL: the system checks report it
    senders = [model for model in apps.get_models() if model._meta.concrete_model in registry]
    for model in senders:
        for name, signal in (("saved", post_save), ("deleted", post_delete)):
            signal.connect(
                registry_row_changed,
                sender=model,
                dispatch_uid=f"tenancy.registry_cache.{name}.{model._meta.label}",
            )
