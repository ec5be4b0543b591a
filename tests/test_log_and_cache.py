"""The tenant named in log records, SQL and cache keys."""

import logging

import pytest
from django.core.cache import cache
from django.db import connections

from tenancy import tenant_connection, tenant_context
from tenancy.log import TenantLogFilter
from tests.tenantapp.models import Note


def test_log_records_name_the_current_tenant(alpha):
    record = logging.LogRecord("app", logging.INFO, __file__, 1, "hello", None, None)
    log_filter = TenantLogFilter()
    assert log_filter.filter(record) is True
    assert record.tenant == "-"
    with tenant_context(alpha):
        log_filter.filter(record)
    assert record.tenant == "alpha"


def executed_sql(connection, work):
    """The SQL that reaches the driver while ``work`` runs."""
    seen = []

    def spy(execute, sql, params, many, context):
        seen.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(spy):
        work()
    return seen


def test_sql_comment_names_the_tenant_when_enabled(alpha, settings):
    with tenant_context(alpha):
        assert executed_sql(tenant_connection(), Note.objects.count)[0].startswith("SELECT")
    settings.TENANCY = {**settings.TENANCY, "SQL_COMMENT": True}
    with tenant_context(alpha):
        sql = executed_sql(tenant_connection(), lambda: Note.objects.create(text="commented"))
        assert Note.objects.get().text == "commented"
    assert [statement[:22] for statement in sql] == ["/* tenant=alpha */ INS"]
    # The main database's queries are left as they are.
    default = connections["default"]
    assert executed_sql(default, lambda: default.cursor().execute("SELECT 1")) == ["SELECT 1"]


@pytest.fixture
def tenant_cache(settings):
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "LOCATION": "tenancy-tests",
            "KEY_FUNCTION": "tenancy.cache.make_key",
        }
    }
    yield cache
    cache.clear()


def test_cache_keys_are_the_current_tenants_own(alpha, beta, tenant_cache):
    with tenant_context(alpha):
        tenant_cache.set("plan", "alpha's")
    with tenant_context(beta):
        assert tenant_cache.get("plan") is None
        tenant_cache.set("plan", "beta's")
    assert tenant_cache.get("plan") is None  # the shared space, outside any tenant
    tenant_cache.set("plan", "shared")
    with tenant_context(alpha):
        assert tenant_cache.get("plan") == "alpha's"
        assert tenant_cache.add("visits", 0)
        assert tenant_cache.incr("visits") == 1
    with tenant_context(beta):
        assert tenant_cache.get("plan") == "beta's"
        assert not tenant_cache.has_key("visits")
    assert tenant_cache.get("plan") == "shared"


def test_cache_many_operations_stay_within_the_tenant(alpha, beta, tenant_cache):
    with tenant_context(alpha):
        assert tenant_cache.set_many({"x": 1, "y": 2}) == []
    with tenant_context(beta):
        tenant_cache.set_many({"x": 10})
        assert tenant_cache.get_many(["x", "y"]) == {"x": 10}
    with tenant_context(alpha):
        assert tenant_cache.get_many(["x", "y"]) == {"x": 1, "y": 2}
        tenant_cache.delete_many(["x", "y"])
        assert tenant_cache.get_many(["x", "y"]) == {}
    with tenant_context(beta):
        assert tenant_cache.get_many(["x", "y"]) == {"x": 10}


def test_cache_clear_empties_every_tenants_keys(alpha, beta, tenant_cache):
    for tenant in (alpha, beta, None):
        with tenant_context(tenant):
            tenant_cache.set("k", "v")
    with tenant_context(alpha):
        tenant_cache.clear()
    for tenant in (alpha, beta, None):
        with tenant_context(tenant):
            assert tenant_cache.get("k") is None
