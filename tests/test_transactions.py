"""tenancy.atomic, tenancy.on_commit, per-request transactions and the trap detector."""

import asyncio

import pytest
from asgiref.sync import sync_to_async
from django.db import transaction
from django.test import Client

import tenancy
from tenancy import NoTenantError, tenant_context
from tenancy.checks import check_settings
from tenancy.models import Domain, Tenant, TenantStatus
from tenancy.provisioning import deprovision_tenant
from tenancy.transactions import DefaultTransactionWarning
from tests.inflight import request_paused_in_view
from tests.settings import BACKEND, SERVER_1
from tests.tenantapp.models import Note, Tag


def texts(tenant):
    with tenant_context(tenant):
        return sorted(Note.objects.values_list("text", flat=True))


def test_exception_rolls_back_every_tenant_row(alpha):
    with tenant_context(alpha):
        with pytest.raises(RuntimeError), tenancy.atomic():
            note = Note.objects.create(text="order")
            Tag.objects.create(note=note, label="line")
            raise RuntimeError("payment failed")
        assert Note.objects.count() == Tag.objects.count() == 0


def test_commit_keeps_the_rows(alpha):
    with tenant_context(alpha), tenancy.atomic():
        Note.objects.create(text="order")
    assert texts(alpha) == ["order"]


def test_the_transaction_is_on_the_tenant_not_on_default(alpha, beta):
    with tenant_context(alpha), tenancy.atomic():
        assert tenancy.tenant_connection().in_atomic_block
        assert not transaction.get_connection().in_atomic_block  # default


def test_nested_atomic_rolls_back_to_its_savepoint(alpha):
    with tenant_context(alpha), tenancy.atomic():
        Note.objects.create(text="outer")
        with pytest.raises(ValueError), tenancy.atomic():
            Note.objects.create(text="inner")
            raise ValueError
    assert texts(alpha) == ["outer"]


def test_inner_block_without_savepoint_dooms_the_outer_one(alpha):
    with tenant_context(alpha), pytest.raises(ValueError), tenancy.atomic():
        Note.objects.create(text="outer")
        with tenancy.atomic(savepoint=False):
            Note.objects.create(text="inner")
            raise ValueError
    assert texts(alpha) == []


def test_durable_block_cannot_be_nested(alpha):
    with (
        tenant_context(alpha),
        tenancy.atomic(),
        pytest.raises(RuntimeError, match="durable atomic block cannot be nested"),
        tenancy.atomic(durable=True),
    ):
        pass


def test_decorator_with_and_without_parentheses_uses_the_tenant_of_each_call(alpha, beta):
    @tenancy.atomic
    def fail(text):
        Note.objects.create(text=text)
        raise ValueError

    @tenancy.atomic()
    def succeed(text):
        Note.objects.create(text=text)

    for tenant in (alpha, beta):
        with tenant_context(tenant):
            succeed(tenant.slug)
            with pytest.raises(ValueError):
                fail("lost")
    assert (texts(alpha), texts(beta)) == (["alpha"], ["beta"])


def test_without_tenant_atomic_and_on_commit_raise(db_access):
    with pytest.raises(NoTenantError), tenancy.atomic():
        pass
    with pytest.raises(NoTenantError):
        tenancy.on_commit(lambda: None)

    @tenancy.atomic
    def work():
        pass

    with pytest.raises(NoTenantError):
        work()


def test_async_callers_go_through_sync_to_async(alpha):
    @tenancy.atomic
    def place(text):
        Note.objects.create(text=text)
        if text == "bad":
            raise ValueError

    async def main():
        async with tenant_context(alpha):
            await sync_to_async(place)("good")
            with pytest.raises(ValueError):
                await sync_to_async(place)("bad")

    asyncio.run(main())
    assert texts(alpha) == ["good"]


def test_async_with_and_coroutine_functions_are_refused(alpha):
    async def main():
        async with tenant_context(alpha), tenancy.atomic():
            pass

    with pytest.raises(TypeError, match="cannot be used with `async with`"):
        asyncio.run(main())
    with pytest.raises(TypeError, match="cannot wrap the coroutine function"):

        @tenancy.atomic
        async def place():
            pass


def test_on_commit_runs_after_the_tenant_commit_and_not_on_rollback(alpha):
    ran = []
    with tenant_context(alpha):
        with tenancy.atomic():
            tenancy.on_commit(lambda: ran.append("committed"))
            assert ran == []
        assert ran == ["committed"]
        with pytest.raises(ValueError), tenancy.atomic():
            tenancy.on_commit(lambda: ran.append("rolled back"))
            raise ValueError
        tenancy.on_commit(lambda: ran.append("no transaction: at once"))
    assert ran == ["committed", "no transaction: at once"]


def test_on_commit_follows_the_tenant_not_default(alpha):
    ran = []
    with tenant_context(alpha), transaction.atomic():  # default
        with tenancy.atomic():
            tenancy.on_commit(lambda: ran.append("tenant committed"))
        assert ran == ["tenant committed"]


# The trap: transaction.atomic() (default) around tenant writes.


@pytest.fixture
def check_transactions(settings):
    settings.TENANCY = {**settings.TENANCY, "CHECK_TRANSACTIONS": True}


def test_tenant_write_inside_a_default_transaction_is_reported(alpha, check_transactions):
    with (
        tenant_context(alpha),
        pytest.warns(DefaultTransactionWarning, match="tenancy.atomic"),
        transaction.atomic(),
    ):
        Note.objects.create(text="not covered")


def test_tenant_write_inside_a_tenant_transaction_is_fine(alpha, check_transactions, recwarn):
    with tenant_context(alpha):
        with tenancy.atomic():
            Note.objects.create(text="covered")
        with transaction.atomic(), tenancy.atomic():
            Note.objects.create(text="covered too")
        Note.objects.create(text="autocommit")
    assert not [w for w in recwarn if issubclass(w.category, DefaultTransactionWarning)]


def test_the_check_is_off_without_debug(alpha, recwarn):
    with tenant_context(alpha), transaction.atomic():
        Note.objects.create(text="unchecked")
    assert not [w for w in recwarn if issubclass(w.category, DefaultTransactionWarning)]


# Per-request transactions.


@pytest.fixture
def atomic_requests(settings):
    settings.MIDDLEWARE = [
        *settings.MIDDLEWARE,
        "tenancy.middleware.TenantAtomicRequestsMiddleware",
    ]
    settings.TENANCY = {**settings.TENANCY, "ATOMIC_REQUESTS": True}


def test_failing_view_rolls_back_its_tenant_writes(alpha, atomic_requests):
    client = Client(raise_request_exception=False)
    assert client.get("/write-fail/", HTTP_HOST="alpha.example.test").status_code == 500
    assert client.get("/write-ok/", HTTP_HOST="alpha.example.test").status_code == 200
    assert texts(alpha) == ["whole order"]


def test_exempt_view_is_not_wrapped(alpha, atomic_requests):
    client = Client(raise_request_exception=False)
    assert client.get("/write-fail-exempt/", HTTP_HOST="alpha.example.test").status_code == 500
    assert texts(alpha) == ["exempt"]


def test_without_the_setting_views_autocommit(alpha, settings):
    settings.MIDDLEWARE = [
        *settings.MIDDLEWARE,
        "tenancy.middleware.TenantAtomicRequestsMiddleware",
    ]
    client = Client(raise_request_exception=False)
    assert client.get("/write-fail/", HTTP_HOST="alpha.example.test").status_code == 500
    assert texts(alpha) == ["half an order"]


def test_async_views_are_refused(alpha, atomic_requests):
    client = Client()
    with pytest.raises(RuntimeError, match="cannot wrap async views"):
        client.get("/async-write/", HTTP_HOST="alpha.example.test")


def test_atomic_requests_middleware_must_be_configured_and_last(settings):
    settings.TENANCY = {**settings.TENANCY, "ATOMIC_REQUESTS": True}
    assert [m.id for m in check_settings()] == ["tenancy.E005"]
    settings.MIDDLEWARE = [
        "tenancy.middleware.TenantMiddleware",
        "tenancy.middleware.TenantAtomicRequestsMiddleware",
        "django.middleware.csrf.CsrfViewMiddleware",
    ]
    assert [m.id for m in check_settings()] == ["tenancy.E006"]


# Per-request transactions on a tenant whose database fails.


def failing_tenant(settings, failure):
    """An active tenant, reached at failing.example.test, whose database cannot be used."""
    if failure == "server down":
        if BACKEND == "postgresql":
            down = {**SERVER_1, "PORT": "1"}  # nothing listens there
        else:
            down = {**SERVER_1, "DIRECTORY": "/dev/null/nowhere"}
        settings.TENANCY = {
            **settings.TENANCY,
            "SERVERS": {**settings.TENANCY["SERVERS"], "down": down},
        }
        server = "down"
    else:  # "database missing": on a server that works, never created
        server = "one"
    tenant = Tenant.objects.create(
        slug="failing", name="Failing", server=server, status=TenantStatus.ACTIVE
    )
    Domain.objects.create(tenant=tenant, domain="failing.example.test", is_primary=True)
    return tenant


@pytest.mark.parametrize("failure", ["server down", "database missing"])
def test_tenant_whose_database_fails_is_503_with_atomic_requests(
    db_access, atomic_requests, settings, failure
):
    failing_tenant(settings, failure)
    client = Client(raise_request_exception=False)
    response = client.get("/write-ok/", HTTP_HOST="failing.example.test")
    assert response.status_code == 503
    assert b"failing is not available" in response.content


def test_tenant_deleted_inside_its_request_transaction_is_404(alpha, atomic_requests, settings):
    """The view's queries after the deletion never leave its transaction for a new
    connection (the database is kept, so one would reach it)."""
    settings.ROOT_URLCONF = "tests.inflight"
    with request_paused_in_view("/orm-across-pause/", "alpha.example.test") as responses:
        deprovision_tenant(alpha, keep_database=True)
    [response] = responses
    assert response.status_code == 404
