"""The tenant follows work into threads started with tenancy's helpers."""

import threading

import pytest
from django.db import connections

from tenancy import NoTenantError, tenant_connection, tenant_context
from tenancy.connections import alias_for
from tenancy.threads import TenantThread, TenantThreadPoolExecutor
from tests.tenantapp.models import Note


def texts():
    return list(Note.objects.values_list("text", flat=True))


def persistent_connections(settings):
    servers = {
        name: {**server, "CONN_MAX_AGE": None}
        for name, server in settings.TENANCY["SERVERS"].items()
    }
    settings.TENANCY = {**settings.TENANCY, "SERVERS": servers}


def test_a_plain_thread_starts_without_a_tenant_and_fails_closed(notes):
    errors = []

    def work():
        try:
            texts()
        except NoTenantError as exc:
            errors.append(exc)

    with tenant_context(notes[0]):
        thread = threading.Thread(target=work)
        thread.start()
    thread.join(timeout=60)
    assert len(errors) == 1


def test_tenant_thread_runs_in_the_tenant_it_was_created_in(notes):
    alpha, beta = notes
    seen, wrappers = [], []

    def work():
        seen.append(texts())
        wrappers.append(connections[alias_for(alpha)])

    with tenant_context(alpha):
        thread = TenantThread(target=work)
    with tenant_context(beta):
        thread.start()  # the creating context counts, not the starting one
    thread.join(timeout=60)
    assert seen == [["alpha note"]]
    assert wrappers[0].connection is None  # closed when the thread ended


def test_pool_calls_run_in_the_tenant_they_were_submitted_in(notes, settings):
    persistent_connections(settings)
    alpha, beta = notes
    wrappers = []

    def work():
        result = texts()
        wrappers.append(tenant_connection())
        return result

    with TenantThreadPoolExecutor(max_workers=1) as pool:
        futures = []
        for tenant in (alpha, beta, alpha, None):
            with tenant_context(tenant):
                futures.append(pool.submit(work))
        with tenant_context(beta):
            mapped = list(pool.map(lambda _: texts(), range(2)))
        results = [future.result(timeout=60) for future in futures[:3]]
        with pytest.raises(NoTenantError):
            futures[3].result(timeout=60)
        # One worker thread kept both tenants' connections open between calls.
        assert all(wrapper.connection is not None for wrapper in wrappers)
    assert results == [["alpha note"], ["beta note"], ["alpha note"]]
    assert mapped == [["beta note"], ["beta note"]]
    assert all(wrapper.connection is None for wrapper in wrappers)  # closed on shutdown
