"""Celery: a task runs in the tenant that was current when it was sent.

Use tenancy's task class for the app (it also connects the signal that adds the tenant to
every message sent from this process)::

    app = Celery("proj", task_cls="tenancy.celery:TenantTask")

    @app.task
    def send_invoice(invoice_id): ...       # runs in the sender's tenant

    with tenant_context("acme"):
        send_invoice.delay(42)              # the message carries "acme"

A task sent with no tenant active runs with none (tenant models fail closed there); one
called directly, or with ``apply()``, runs in the caller's tenant. The worker looks the
tenant up when the task starts: a tenant removed or suspended since fails the task with
``TenantNotFound``/``TenantUnavailable``. After each task the worker thread closes its
tenant connections as Django would (``CONN_MAX_AGE``, the connection cap).
"""

from __future__ import annotations

from typing import Any

from celery import Task, signals
from celery.result import AsyncResult

from tenancy.jobs import current_slug, running_in, send_for_each_tenant

# The message header that carries the tenant's slug.
HEADER = "tenancy_tenant"


def _add_tenant(headers: dict[str, Any] | None = None, **kwargs: Any) -> None:
    if headers is not None and HEADER not in headers:  # an explicit header wins
        headers[HEADER] = current_slug()


signals.before_task_publish.connect(_add_tenant, dispatch_uid="tenancy.celery.add_tenant")


class TenantTask(Task):  # type: ignore[misc]
    """Runs each task in the tenant its message names."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        request = self.request
        # apply() and task_always_eager run in the caller's context, and so does a task
        # called as a function (`send_invoice(42)`, also from inside another task).
        if request.is_eager or request.called_directly:
            return super().__call__(*args, **kwargs)
        slug = getattr(request, HEADER, None) or (request.headers or {}).get(HEADER)
        with running_in(slug):
            return super().__call__(*args, **kwargs)


def delay_for_each_tenant(task: Task, *args: Any, **kwargs: Any) -> list[AsyncResult]:
    """Send ``task`` once for every active tenant, each message carrying its tenant."""
    return send_for_each_tenant(lambda: task.delay(*args, **kwargs))
