"""Threads and thread pools that carry the current tenant.

A plain ``threading.Thread`` or ``ThreadPoolExecutor.submit`` starts with no tenant (tenant
queries there raise ``NoTenantError``). These run the work in a copy of the starting
context, as ``asyncio`` does for tasks, and close the tenant connections the work left
open in its thread::

    with tenant_context("acme"):
        TenantThread(target=export_projects).start()      # runs inside acme

        with TenantThreadPoolExecutor(max_workers=4) as pool:
            counts = list(pool.map(count_tasks, projects))   # each call inside acme
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

from tenancy.connections import close_all, close_old_connections

P = ParamSpec("P")
T = TypeVar("T")


class TenantThread(threading.Thread):
    """A ``Thread`` that runs in a copy of the context it was created in.

    The tenant current at construction is current in the thread; the thread's tenant
    connections are closed when it ends.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._tenancy_context = contextvars.copy_context()

    def run(self) -> None:
        try:
            self._tenancy_context.run(super().run)
        finally:
            close_all()


class TenantThreadPoolExecutor(ThreadPoolExecutor):
    """A ``ThreadPoolExecutor`` whose calls run in a copy of the submitting context.

    Each call sees the tenant that was current when it was submitted. After each call its
    worker thread reaches a safe point for its tenant connections (see
    ``tenancy.connections.close_old_connections``); ``shutdown()`` closes them.
    """

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        return super().submit(_run_in, contextvars.copy_context(), fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        workers = len(self._threads)
        if wait and not cancel_futures and workers:
            # One closing call per worker: each waits at the barrier until every worker
            # has taken one, so no worker takes two.
            barrier = threading.Barrier(workers)

            def close_worker_connections() -> None:
                close_all()
                barrier.wait()

            for _ in range(workers):
                super().submit(close_worker_connections)
        super().shutdown(wait=wait, cancel_futures=cancel_futures)


def _run_in(context: contextvars.Context, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    try:
        return context.run(fn, *args, **kwargs)
    finally:
        close_old_connections()
