"""One fan-out for work over many tenants: ``for_each_tenant``.

``migrate_tenants``, ``tenant_command --jobs``, ``backup_tenant --all-tenants`` and users'
own cross-tenant reports run through it. Each tenant's work runs inside its
``tenant_context``; a failure is that tenant's result, never the end of the others'; at
most ``per_server`` tenants of one server are worked on at once (a server is not flooded
because its tenants sort together); the tenants are read lazily, so memory stays flat
however many there are; and the connections a tenant's work opened are closed before the
next tenant's work starts.

With ``processes=True`` (Linux; threads elsewhere), each job is a process forked from the
caller: the loaded migration graph and settings come along, and Python-heavy work such as
migrating runs on every core. A worker that dies (killed, out of memory) fails only the
tenants it was working on; the others go on in a new pool. Forking a process that runs
threads of its own (a web server's) is unsafe: keep processes to commands.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import (
    FIRST_COMPLETED,
    Executor,
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
    wait,
)
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from django.db import connections

from tenancy.connections import forget_inherited_connections, unregister
from tenancy.context import tenant_context
from tenancy.exceptions import one_line
from tenancy.models import AbstractTenant, TenantStatus, get_tenant_model

T = TypeVar("T")

WORKER_DIED = (
    "a worker process died while working on this tenant or another one (killed, out of "
    "memory?); run it again"
)


@dataclass
class TenantResult(Generic[T]):
    """What ``function`` returned for one tenant (``value``), or why it failed
    (``error``, one line: the exception's type and message)."""

    slug: str
    server: str
    value: T | None = None
    error: str = ""
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return bool(self.error)


class FanOut(Iterator[TenantResult[T]]):
    """The results of ``for_each_tenant``, in the order the tenants finish. ``stop()``
    starts no tenant more; the results of those already started still come."""

    def __init__(self, results: Iterator[TenantResult[T]], stopper: threading.Event) -> None:
        self._results, self._stopper = results, stopper

    def __next__(self) -> TenantResult[T]:
        return next(self._results)

    def stop(self) -> None:
        self._stopper.set()

    def close(self) -> None:
        """Stop, and wait for the tenants in work (a generator's ``close``)."""
        self.stop()
        close = getattr(self._results, "close", None)
        if close is not None:
            close()


def for_each_tenant(
    function: Callable[[AbstractTenant], T],
    tenants: Iterable[AbstractTenant] | None = None,
    *,
    jobs: int = 1,
    per_server: int | None = None,
    max_failures: int | None = None,
    processes: bool = False,
) -> FanOut[T]:
    """Run ``function(tenant)`` inside ``tenant_context(tenant)`` for each of ``tenants``
    (default: every active tenant, in slug order), ``jobs`` at once, at most
    ``per_server`` (default ``jobs``) of one server at once; after ``max_failures``
    failures no tenant more is started. Yields a ``TenantResult`` per tenant as each
    finishes; with ``processes``, the values must be picklable.

    A report across tenants::

        counts = {r.slug: r.value for r in for_each_tenant(lambda t: Order.objects.count())}
    """
    if jobs < 1 or (per_server is not None and per_server < 1):
        raise ValueError("jobs and per_server must be at least 1")
    if tenants is None:
        tenants = (
            get_tenant_model()
            ._default_manager.filter(status=TenantStatus.ACTIVE)
            .order_by("slug")
            .iterator(chunk_size=500)
        )
    stopper = threading.Event()
    run = _Run(function, max_failures, stopper)
    if jobs == 1:
        results = run.in_turn(tenants)
    else:
        results = run.in_pool(tenants, jobs, per_server or jobs, processes)
    return FanOut(results, stopper)


class _Run(Generic[T]):
    def __init__(
        self,
        function: Callable[[AbstractTenant], T],
        max_failures: int | None,
        stopper: threading.Event,
    ) -> None:
        self.function, self.max_failures, self.stopper = function, max_failures, stopper
        self.failures = 0

    def counted(self, result: TenantResult[T]) -> TenantResult[T]:
        if result.failed:
            self.failures += 1
            if self.max_failures is not None and self.failures >= self.max_failures:
                self.stopper.set()
        return result

    def in_turn(self, tenants: Iterable[AbstractTenant]) -> Iterator[TenantResult[T]]:
        for tenant in tenants:
            if self.stopper.is_set():
                return
            yield self.counted(_work(self.function, tenant))

    def in_pool(
        self,
        tenants: Iterable[AbstractTenant],
        jobs: int,
        per_server: int,
        processes: bool,
    ) -> Iterator[TenantResult[T]]:
        """At most 2 x jobs tenants wait in a backlog: tenants are read lazily."""
        backlog: deque[AbstractTenant] = deque()
        source = iter(tenants)
        running: dict[Future[TenantResult[T]], AbstractTenant] = {}
        busy: Counter[str] = Counter()  # tenants in work per server
        broken = False
        pool, task = self.make_pool(jobs, processes)
        try:
            while True:
                if not self.stopper.is_set():
                    backlog.extend(itertools.islice(source, 2 * jobs - len(backlog)))
                if broken and not running:
                    pool.shutdown()
                    pool, task = self.make_pool(jobs, processes)  # for the tenants to come
                    broken = False
                for tenant in list(backlog):
                    if self.stopper.is_set() or broken or len(running) >= jobs:
                        break
                    if busy[tenant.server] < per_server:
                        try:
                            future = pool.submit(task, tenant)
                        except BrokenProcessPool:
                            # A worker died since the last wait: this tenant never
                            # started, and goes to the next pool.
                            broken = True
                            break
                        backlog.remove(tenant)
                        busy[tenant.server] += 1
                        running[future] = tenant
                if not running:
                    if broken and backlog:
                        continue  # a new pool for the tenants left
                    return
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    tenant = running.pop(future)
                    busy[tenant.server] -= 1
                    try:
                        result = future.result()
                    except BrokenProcessPool:
                        broken = True
                        result = TenantResult(tenant.slug, tenant.server, error=WORKER_DIED)
                    yield self.counted(result)
        finally:
            pool.shutdown(cancel_futures=True)

    def make_pool(
        self, jobs: int, processes: bool
    ) -> tuple[Executor, Callable[[AbstractTenant], TenantResult[T]]]:
        # Linux only: macOS lists fork too, but system libraries there may crash in a
        # forked child (the reason Python defaults to spawn on macOS).
        if processes and sys.platform.startswith("linux"):
            global _worker_function
            _worker_function = self.function  # inherited by the forked workers
            pool = ProcessPoolExecutor(
                jobs,
                mp_context=multiprocessing.get_context("fork"),
                initializer=_start_worker,
                initargs=(os.getpid(),),
            )
            return pool, _work_in_worker
        function = self.function

        def in_thread(tenant: AbstractTenant) -> TenantResult[T]:
            try:
                return _work(function, tenant)
            finally:
                connections.close_all()

        return ThreadPoolExecutor(jobs, thread_name_prefix="tenancy-fanout"), in_thread


def _work(function: Callable[[AbstractTenant], T], tenant: AbstractTenant) -> TenantResult[T]:
    started = time.monotonic()
    result: TenantResult[T] = TenantResult(tenant.slug, tenant.server)
    try:
        with tenant_context(tenant):
            result.value = function(tenant)
    except Exception as exc:
        result.error = one_line(exc)
    finally:
        # Keep nothing per tenant: the process's aliases stay few however many tenants.
        unregister(tenant)
    result.seconds = round(time.monotonic() - started, 3)
    return result


# The function of the running fan-out, for its workers (set before they are forked).
_worker_function: Callable[[AbstractTenant], Any] | None = None


def _start_worker(parent: int) -> None:
    """In a worker process, just forked: connections of its own, and an end with the
    parent (a killed command must not leave workers behind)."""
    forget_inherited_connections()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)  # the database rolls back what this worker had in progress

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _work_in_worker(tenant: AbstractTenant) -> TenantResult[Any]:
    assert _worker_function is not None
    try:
        return _work(_worker_function, tenant)
    finally:
        connections.close_all()


__all__ = ["FanOut", "TenantResult", "for_each_tenant"]
