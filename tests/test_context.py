"""tenant_context and its propagation through threads, asyncio and asgiref."""

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from asgiref.sync import async_to_sync, sync_to_async

from tenancy import (
    NoTenantError,
    TenantNotFound,
    current_tenant,
    require_tenant,
    tenant_context,
)
from tests.tenantapp.models import Note


def test_no_tenant_by_default():
    assert current_tenant() is None
    with pytest.raises(NoTenantError, match="No tenant is active"):
        require_tenant()


def test_nesting_restores_the_outer_tenant(alpha, beta):
    with tenant_context(alpha):
        with tenant_context(beta):
            assert current_tenant() == beta
            with tenant_context(None):
                assert current_tenant() is None
            assert require_tenant() == beta
        assert current_tenant() == alpha
    assert current_tenant() is None


def test_tenant_is_reset_when_the_block_raises(alpha):
    with pytest.raises(RuntimeError), tenant_context(alpha):
        raise RuntimeError
    assert current_tenant() is None


def test_slug_is_looked_up(alpha):
    with tenant_context("alpha") as tenant:
        assert tenant == alpha
        assert current_tenant().pk == alpha.pk


def test_unknown_slug_raises(db_access):
    with pytest.raises(TenantNotFound, match="create_tenant nobody"), tenant_context("nobody"):
        pass


@pytest.mark.parametrize("slug", ["Alpha", "al'pha", "alpha; DROP TABLE x", "a" * 300, "ålpha"])
def test_invalid_slug_raises_without_query(db_access, django_assert_num_queries, slug):
    with (
        django_assert_num_queries(0),
        pytest.raises(TenantNotFound, match="not a valid"),
        tenant_context(slug),
    ):
        pass


def test_decorator_on_sync_function(alpha):
    @tenant_context("alpha")
    def count():
        Note.objects.create(text="x")
        return require_tenant().slug, Note.objects.count()

    assert count() == ("alpha", 1)
    assert current_tenant() is None


def test_decorator_on_coroutine_function(alpha):
    @tenant_context("alpha")
    async def count():
        await Note.objects.acreate(text="x")
        return require_tenant().slug, await Note.objects.acount()

    assert asyncio.run(count()) == ("alpha", 1)


def test_async_with_looks_up_slug_with_async_orm(alpha):
    async def main():
        async with tenant_context("alpha") as tenant:
            return tenant.slug, await Note.objects.acount()

    assert asyncio.run(main()) == ("alpha", 0)


def test_gathered_tasks_for_different_tenants_see_their_own_data(alpha, beta):
    for tenant in (alpha, beta):
        with tenant_context(tenant):
            Note.objects.bulk_create([Note(text=tenant.slug) for _ in range(3)])

    async def read(tenant, rounds):
        seen = set()
        async with tenant_context(tenant):
            for _ in range(rounds):
                seen.update([n.text async for n in Note.objects.all()])
                await asyncio.sleep(0)
                seen.add(require_tenant().slug)
        return seen

    async def main():
        return await asyncio.gather(*(read(t, 5) for t in [alpha, beta] * 4))

    results = asyncio.run(main())
    assert results == [{"alpha"}, {"beta"}] * 4


def test_sync_to_async_carries_the_tenant(alpha):
    async def main():
        async with tenant_context(alpha):
            return await sync_to_async(lambda: require_tenant().slug)()

    assert asyncio.run(main()) == "alpha"


def test_async_to_sync_carries_the_tenant(alpha):
    async def slug_and_count():
        return require_tenant().slug, await Note.objects.acount()

    with tenant_context(alpha):
        assert async_to_sync(slug_and_count)() == ("alpha", 0)


def test_value_set_inside_sync_to_async_does_not_leak_out(alpha):
    def enter_and_leave():
        with tenant_context(alpha):
            return require_tenant().slug

    async def main():
        inside = await sync_to_async(enter_and_leave)()
        return inside, current_tenant()

    assert asyncio.run(main()) == ("alpha", None)


def test_to_thread_carries_the_tenant(alpha):
    async def main():
        async with tenant_context(alpha):
            return await asyncio.to_thread(lambda: require_tenant().slug)

    assert asyncio.run(main()) == "alpha"


def test_plain_executor_does_not_carry_the_tenant(alpha):
    with tenant_context(alpha), ThreadPoolExecutor(1) as pool:
        assert pool.submit(current_tenant).result() is None


def test_threads_have_independent_tenants(alpha, beta):
    barrier = threading.Barrier(2)
    seen = {}

    def work(tenant):
        with tenant_context(tenant):
            barrier.wait()
            seen[tenant.slug] = require_tenant().slug

    threads = [threading.Thread(target=work, args=(t,)) for t in (alpha, beta)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen == {"alpha": "alpha", "beta": "beta"}
