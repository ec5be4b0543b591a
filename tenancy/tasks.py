"""Django's task framework (``django.tasks``, Django 6.0+): tasks that run in the tenant
that was current when they were enqueued.

    from tenancy.tasks import tenant_task

    @tenant_task
    def send_invoice(invoice_id): ...

    with tenant_context("acme"):
        send_invoice.enqueue(42)        # runs in acme, on any backend

The slug travels as the keyword argument ``_tenant`` (visible in the task result's
``kwargs``), since a task carries nothing but its arguments; the task function does not
receive it. Enqueued with no tenant active, the task runs with none. The tenant is looked
up again when the task runs: one removed or suspended since fails the task. Called
directly (``send_invoice.call(42)``, ``await send_invoice.acall(42)``), a task is a plain
function call and runs in the caller's tenant.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from asgiref.sync import sync_to_async

try:
    from django.tasks import Task, TaskResult, task
except ImportError as exc:  # Django < 6.0
    raise ImportError("tenancy.tasks needs Django 6.0 or later (django.tasks).") from exc

from tenancy.context import tenant_context
from tenancy.jobs import current_slug, job_tenant, running_in, send_for_each_tenant

TENANT_KWARG = "_tenant"

if TYPE_CHECKING:
    _Task = Task[..., Any]
else:
    _Task = Task


class TenantTask(_Task):
    """A ``django.tasks.Task`` that records the current tenant when enqueued."""

    def enqueue(self, *args: Any, **kwargs: Any) -> TaskResult[..., Any]:
        return super().enqueue(*args, **{TENANT_KWARG: current_slug(), **kwargs})

    async def aenqueue(self, *args: Any, **kwargs: Any) -> TaskResult[..., Any]:
        return await super().aenqueue(*args, **{TENANT_KWARG: current_slug(), **kwargs})

    def call(self, *args: Any, **kwargs: Any) -> Any:
        if TENANT_KWARG not in kwargs:  # called as a function: in the caller's tenant
            return super().call(*args, **kwargs)
        with running_in(kwargs.pop(TENANT_KWARG)):
            return super().call(*args, **kwargs)

    async def acall(self, *args: Any, **kwargs: Any) -> Any:
        if TENANT_KWARG not in kwargs:
            return await super().acall(*args, **kwargs)
        tenant = await sync_to_async(job_tenant)(kwargs.pop(TENANT_KWARG))
        with tenant_context(tenant):
            return await super().acall(*args, **kwargs)


def tenant_task(function: Callable[..., Any] | None = None, **options: Any) -> Any:
    """``django.tasks.task`` (same options) for tasks that work on a tenant's data."""

    def wrap(func: Callable[..., Any]) -> TenantTask:
        plain = task(**options)(func)
        return TenantTask(**{field.name: getattr(plain, field.name) for field in fields(plain)})

    return wrap(function) if function is not None else wrap


def enqueue_for_each_tenant(
    task: Task[..., Any], *args: Any, **kwargs: Any
) -> list[TaskResult[..., Any]]:
    """Enqueue a ``tenant_task`` once for every active tenant."""
    return send_for_each_tenant(lambda: task.enqueue(*args, **kwargs))
