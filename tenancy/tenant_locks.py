"""One operation at a time on a tenant's database, across processes: moving it, deleting,
archiving, reactivating and purging it take this lock (held in the main database) for their
whole run."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from django.db import connections

from tenancy.backends.sqlite import file_lock, sqlite_path

_local_locks: dict[str, threading.Lock] = {}
_local_locks_lock = threading.Lock()


@contextmanager
def tenant_lock(slug: str, *, wait: bool = True) -> Iterator[bool]:
    """Hold the lock of tenant ``slug``; yields whether it was taken (always True when
    ``wait``). PostgreSQL: an advisory lock in the main database, on a connection of its
    own; SQLite: a file lock beside the main database (one for every tenant)."""
    from tenancy.models import registry_database

    connection = connections[registry_database()]
    digest = hashlib.blake2b(slug.encode(), digest_size=8, person=b"tenancy-lock").digest()
    key = int.from_bytes(digest, "big") >> 1  # a positive bigint
    if connection.vendor == "postgresql":
        from tenancy.backends.postgresql import advisory_lock  # psycopg is optional

        with advisory_lock(connection.settings_dict, key, wait=wait) as acquired:
            yield acquired
        return
    if connection.is_in_memory_db():  # type: ignore[attr-defined]
        # No other process can reach it: a lock of this process's threads.
        with _local_locks_lock:
            lock = _local_locks.setdefault(slug, threading.Lock())
        acquired = lock.acquire(blocking=wait)
        try:
            yield acquired
        finally:
            if acquired:
                lock.release()
        return
    path = sqlite_path(str(connection.settings_dict["NAME"]))
    with file_lock(path.with_name(f"{path.name}.tenant-lock"), wait=wait) as acquired:
        yield acquired
