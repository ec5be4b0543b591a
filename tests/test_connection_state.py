"""What a process's tenant connections look like: snapshot(), the admin page, metrics."""

import contextlib

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from tenancy import atomic, connection_cap, tenant_context
from tenancy.connections import close_all, snapshot
from tenancy.exceptions import ConnectionLimitReached
from tenancy.metrics import register
from tests.tenantapp.models import Note
from tests.test_admin import client_for, users  # noqa: F401 (a fixture)


@contextlib.contextmanager
def one_refusal(alpha, settings):
    """alpha's connection open, and one refused beside it at a cap of 1 on server one."""
    servers = settings.TENANCY["SERVERS"]
    settings.TENANCY = {
        **settings.TENANCY,
        "SERVERS": {**servers, "one": {**servers["one"], "MAX_OPEN_CONNECTIONS": 1}},
        "CONNECTION_WAIT_TIMEOUT": 0,
    }
    with connection_cap._state.condition:
        connection_cap._state.refused.clear()
    other = alpha.__class__.objects.create(slug="gamma-cap", server="one", status="active")
    other.database_name = alpha.database_name  # never opened: refused before connecting
    with tenant_context(alpha), atomic():
        Note.objects.count()
        with pytest.raises(ConnectionLimitReached), tenant_context(other):
            Note.objects.count()
        yield
    close_all()


def test_the_snapshot_counts_open_connections_and_refusals(alpha, settings):
    with one_refusal(alpha, settings):
        state = snapshot()
    assert state.servers["one"].open == 1
    assert state.servers["one"].refused == 1
    assert state.servers["one"].cap == 1
    assert "one: 1 open (0 idle), 0 waiting, 1 refused, cap 1" in state.summary()


def test_staff_see_the_connections_page(alpha, settings, users):  # noqa: F811
    staff, other = client_for("view_tenant"), client_for()
    with one_refusal(alpha, settings):
        response = staff.get("/admin/tenancy/tenant/connections/")
    assert response.status_code == 200
    page = response.content.decode()
    assert "<tr><td>one</td><td>1</td><td>0</td><td>0</td><td>1</td><td>1</td></tr>" in page
    changelist = staff.get("/admin/tenancy/tenant/")
    assert b"/admin/tenancy/tenant/connections/" in changelist.content
    assert other.get("/admin/tenancy/tenant/connections/").status_code == 403


def test_metrics_read_the_snapshot(alpha, settings):
    registry = CollectorRegistry()
    register(registry)
    with one_refusal(alpha, settings):
        text = generate_latest(registry).decode()
    assert 'tenancy_connections_open{server="one"} 1.0' in text
    assert 'tenancy_connections_refused_total{server="one"} 1.0' in text
    assert "tenancy_connections_cap 100.0" in text
