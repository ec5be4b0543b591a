"""for_each_tenant: one fan-out for work over many tenants. Each tenant's work sees its own
tenant's rows only; a failure is that tenant's result; a dead worker fails only its
tenants; per-server limits and max_failures hold."""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import pytest

from tenancy import current_tenant, fanout, tenant_context
from tenancy.connections import registered_aliases
from tenancy.fanout import for_each_tenant
from tenancy.models import Tenant, TenantStatus
from tests.tenantapp.models import Note


@dataclasses.dataclass
class FakeTenant:
    slug: str
    server: str = "one"


def texts() -> list[str]:
    return sorted(Note.objects.values_list("text", flat=True))


@pytest.mark.parametrize("jobs", [1, 3])
def test_each_tenants_work_sees_its_own_rows_only(alpha, beta, gamma, jobs):
    expected = {}
    for tenant in (alpha, beta, gamma):
        with tenant_context(tenant):
            Note.objects.create(text=f"only {tenant.slug}'s")
            expected[tenant.slug] = texts()
    Tenant.objects.filter(slug="beta").update(status=TenantStatus.SUSPENDED)

    def report(tenant):
        assert current_tenant() == tenant
        return texts()

    results = {r.slug: r for r in for_each_tenant(report, jobs=jobs)}
    # Every active tenant (suspended beta is not one), each with its own rows.
    assert sorted(results) == ["alpha", "gamma"]
    assert {slug: r.value for slug, r in results.items()} == {
        slug: expected[slug] for slug in ("alpha", "gamma")
    }
    assert not any(r.failed for r in results.values())
    # The tenants' connections went with their work.
    assert not {f"tenant:{slug}" for slug in results} & set(registered_aliases())


def test_a_failing_tenant_is_its_own_result(alpha, beta, gamma):
    def count(tenant):
        if tenant.slug == "beta":
            raise ValueError(f"no report for {tenant.slug}\nsecond line")
        return Note.objects.count()

    results = {r.slug: r for r in for_each_tenant(count, [alpha, beta, gamma])}
    assert results["beta"].error == "ValueError: no report for beta second line"
    assert results["beta"].value is None
    assert results["alpha"].value == results["gamma"].value - 25  # gamma has 25 notes
    assert not results["alpha"].failed


def test_max_failures_starts_no_tenant_more():
    def fail(tenant):
        raise RuntimeError(tenant.slug)

    tenants = [FakeTenant(slug) for slug in "abcdef"]
    assert [r.slug for r in for_each_tenant(fail, tenants, max_failures=2)] == ["a", "b"]
    results = list(for_each_tenant(fail, tenants, jobs=2, max_failures=2))
    assert 2 <= len(results) <= 3  # those in work when the second failed finish
    assert all(r.failed for r in results)


def test_stop_starts_no_tenant_more():
    tenants = [FakeTenant(slug) for slug in "abcdef"]
    fan_out = for_each_tenant(lambda tenant: tenant.slug, tenants)
    first = next(fan_out)
    fan_out.stop()
    assert (first.value, list(fan_out)) == ("a", [])


def test_at_most_per_server_tenants_of_one_server_at_once():
    lock, running, peak = threading.Lock(), {"one": 0, "two": 0}, {"one": 0, "two": 0}

    def work(tenant):
        with lock:
            running[tenant.server] += 1
            peak[tenant.server] = max(peak[tenant.server], running[tenant.server])
        time.sleep(0.05)
        with lock:
            running[tenant.server] -= 1

    tenants = [FakeTenant(f"{server}-{n}", server) for n in range(4) for server in ("one", "two")]
    results = list(for_each_tenant(work, tenants, jobs=4, per_server=2))
    assert len(results) == 8
    assert peak == {"one": 2, "two": 2}


def die_for_a(tenant):
    if tenant.slug == "a" and str(os.getpid()) != os.environ["TENANCY_TEST_PROCESS"]:
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.3)  # b is still in work when a's worker dies
    return tenant.slug.upper()


def test_after_a_worker_died_the_other_tenants_go_on_in_a_new_pool(monkeypatch):
    monkeypatch.setenv("TENANCY_TEST_PROCESS", str(os.getpid()))
    tenants = [FakeTenant(slug) for slug in "abcde"]
    fan_out = for_each_tenant(die_for_a, tenants, jobs=2, processes=True)
    results = {r.slug: r for r in fan_out}
    assert sorted(results) == list("abcde")
    assert results["a"].failed
    assert results["b"].failed  # in work in the same pool
    assert "worker process died" in results["b"].error
    assert [results[slug].value for slug in "cde"] == ["C", "D", "E"]


class PoolBrokenOnSubmit(ThreadPoolExecutor):
    """A pool whose worker died between the fan-out's last wait and its next submit."""

    broken = 0

    def submit(self, fn, /, *args, **kwargs):
        if PoolBrokenOnSubmit.broken == 0 and args[0].slug == "c":
            PoolBrokenOnSubmit.broken += 1
            raise BrokenProcessPool("a child process terminated abruptly")
        return super().submit(fn, *args, **kwargs)


def test_a_pool_found_broken_when_submitting_loses_no_tenant(monkeypatch):
    def make_pool(self, jobs, processes):
        return PoolBrokenOnSubmit(jobs), lambda tenant: fanout._work(self.function, tenant)

    monkeypatch.setattr(fanout._Run, "make_pool", make_pool)
    tenants = [FakeTenant(slug) for slug in "abcde"]
    results = {r.slug: r for r in for_each_tenant(lambda t: t.slug.upper(), tenants, jobs=2)}
    assert PoolBrokenOnSubmit.broken == 1
    assert {slug: result.value for slug, result in results.items()} == {
        slug: slug.upper() for slug in "abcde"
    }


def test_jobs_and_per_server_must_be_positive():
    with pytest.raises(ValueError, match="at least 1"):
        for_each_tenant(len, [], jobs=0)
