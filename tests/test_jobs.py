"""Background jobs carry the tenant: Celery (a real worker, in-memory broker) and
Django's task framework."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from celery import Celery
from celery.contrib.testing.worker import start_worker

from tenancy import current_tenant, tenant_context
from tenancy.models import Tenant, TenantStatus
from tests.tenantapp.models import Note

app = Celery("tenancy-tests", task_cls="tenancy.celery:TenantTask")
app.conf.update(
    broker_url="memory://",
    result_backend="cache+memory://",
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_transport_options={"polling_interval": 0.05},
)


@app.task
def note_texts() -> list[str]:
    return sorted(Note.objects.values_list("text", flat=True))


@app.task
def tenant_slug() -> str | None:
    tenant = current_tenant()
    return None if tenant is None else tenant.slug


@app.task
def tenant_slug_of_a_direct_call() -> str | None:
    return tenant_slug()  # called as a function, inside this task


@pytest.fixture(scope="module")
def celery_worker() -> Iterator[Any]:
    """One worker thread of the solo pool: every task runs on the same thread."""
    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10) as w:
        yield w


@pytest.fixture
def worker(celery_worker: Any, db_access: None) -> Any:
    return celery_worker


def test_celery_tasks_of_interleaved_tenants_see_only_their_own_data(
    worker: Any, notes: tuple[Tenant, Tenant]
) -> None:
    sent = []
    for number in range(12):
        tenant = notes[number % 2]
        with tenant_context(tenant):
            sent.append((tenant.slug, note_texts.delay()))
    for slug, result in sent:
        assert result.get(timeout=20) == [f"{slug} note"]


def test_celery_task_sent_without_a_tenant_runs_with_none(worker: Any, alpha: Tenant) -> None:
    with tenant_context(alpha):
        assert tenant_slug.delay().get(timeout=20) == "alpha"
    assert tenant_slug.delay().get(timeout=20) is None
    failed = note_texts.delay()
    with pytest.raises(Exception, match="no tenant is active"):
        failed.get(timeout=20)


def test_celery_task_of_a_suspended_tenant_fails(worker: Any, alpha: Tenant) -> None:
    # Suspended before the task is sent (sent first, the worker could run it before the
    # update): the worker looks the tenant up when the task starts, not the sender.
    Tenant.objects.filter(pk=alpha.pk).update(status=TenantStatus.SUSPENDED)
    with tenant_context(alpha):
        result = tenant_slug.delay()
    with pytest.raises(Exception, match="'alpha' is suspended"):
        result.get(timeout=20)


def test_celery_task_for_each_tenant(worker: Any, notes: tuple[Tenant, Tenant]) -> None:
    from tenancy.celery import delay_for_each_tenant

    _, beta = notes
    Tenant.objects.filter(pk=beta.pk).update(status=TenantStatus.SUSPENDED)
    results = delay_for_each_tenant(note_texts)
    assert [result.get(timeout=20) for result in results] == [["alpha note"]]


def test_celery_eager_task_runs_in_the_callers_tenant(notes: tuple[Tenant, Tenant]) -> None:
    alpha, _ = notes
    with tenant_context(alpha):
        assert note_texts.apply().get() == ["alpha note"]


def test_celery_task_called_directly_runs_in_the_callers_tenant(
    worker: Any, notes: tuple[Tenant, Tenant]
) -> None:
    alpha, beta = notes
    with tenant_context(alpha):
        assert note_texts() == ["alpha note"]
    with tenant_context(beta):
        assert tenant_slug_of_a_direct_call.delay().get(timeout=20) == "beta"


try:
    from tenancy.tasks import enqueue_for_each_tenant, tenant_task
except ImportError:  # Django < 6.0 has no django.tasks
    tenant_task = None
else:

    @tenant_task
    def texts() -> list[str]:
        return sorted(Note.objects.values_list("text", flat=True))


@pytest.mark.skipif(tenant_task is None, reason="django.tasks is new in Django 6.0")
def test_django_tasks_run_in_the_tenant_they_were_enqueued_in(
    settings: Any, notes: tuple[Tenant, Tenant]
) -> None:
    settings.TASKS = {"default": {"BACKEND": "django.tasks.backends.immediate.ImmediateBackend"}}
    alpha, beta = notes
    for tenant in (alpha, beta, alpha):
        with tenant_context(tenant):
            result = texts.enqueue()
        assert result.return_value == [f"{tenant.slug} note"]
        assert result.kwargs == {"_tenant": tenant.slug}
    without = texts.enqueue()
    assert without.status == "FAILED"
    assert "no tenant is active" in without.errors[0].traceback
    results = enqueue_for_each_tenant(texts)
    assert [result.return_value for result in results] == [["alpha note"], ["beta note"]]
    # Workers that run tasks with the async API.
    assert async_to_sync(texts.acall)(_tenant="beta") == ["beta note"]


@pytest.mark.skipif(tenant_task is None, reason="django.tasks is new in Django 6.0")
def test_django_task_called_directly_runs_in_the_callers_tenant(
    notes: tuple[Tenant, Tenant],
) -> None:
    alpha, beta = notes
    with tenant_context(alpha):
        assert texts.call() == ["alpha note"]
    with tenant_context(beta):
        assert async_to_sync(texts.acall)() == ["beta note"]
