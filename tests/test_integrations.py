"""Django REST framework and Sentry with tenants, each against the real package."""

import pytest
import sentry_sdk
from django.contrib.auth.models import User
from django.db import reset_queries
from django.test import TransactionTestCase
from django.test.utils import CaptureQueriesContext
from sentry_sdk.integrations.django import DjangoIntegration
from sentry_sdk.transport import Transport

import tenancy.sentry
from tenancy import tenant_connection, tenant_context
from tenancy.connections import alias_for
from tenancy.connections import reset_queries as tenancy_reset_queries
from tenancy.testing.drf import TenantAPIClient
from tests.tenantapp.models import Note
from tests.test_connection_limits import wsgi_get

TENANT_CACHE = {
    "default": {
        "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
        "KEY_FUNCTION": "tenancy.cache.make_key",
    }
}


@pytest.fixture
def user(db_access):
    made = User.objects.create_user("api-user")
    yield made
    made.delete()


def test_the_api_client_reaches_its_tenant_and_writes_there(notes, user):
    alpha, beta = notes
    client = TenantAPIClient(alpha)
    client.force_authenticate(user)
    response = client.post("/api/notes/", {"text": "from the API"}, format="json")
    assert response.status_code == 201
    assert response.json()["user"] == "api-user"
    assert client.get("/api/notes/").json() == {"notes": ["alpha note", "from the API"]}
    with tenant_context(beta):
        assert list(Note.objects.values_list("text", flat=True)) == ["beta note"]


def test_throttling_counts_per_tenant_with_tenancys_cache_keys(notes, settings):
    settings.CACHES = TENANT_CACHE
    alpha, beta = notes
    first, second = TenantAPIClient(alpha), TenantAPIClient(beta)
    assert first.get("/api/notes/").status_code == 200
    assert first.get("/api/notes/").status_code == 429  # one a minute, on alpha
    assert second.get("/api/notes/").status_code == 200  # beta counts its own


class Capture(Transport):
    """Keeps what Sentry would send."""

    envelopes: list = []

    def capture_envelope(self, envelope):
        self.envelopes.append(envelope)


@pytest.fixture
def sentry():
    Capture.envelopes = []
    sentry_sdk.init(
        dsn="http://public@sentry.invalid/1",
        transport=Capture,
        integrations=[DjangoIntegration()],
        default_integrations=False,
        traces_sample_rate=1.0,
    )
    tenancy.sentry.install()
    yield Capture.envelopes
    sentry_sdk.get_client().close()
    sentry_sdk.get_global_scope().set_client(None)


def sent(envelopes):
    """(kind, tags, message or transaction) of each event sent."""
    events = []
    for envelope in envelopes:
        for item in envelope.items:
            payload = item.payload.json or {}
            if item.type in ("event", "transaction"):
                exception = (payload.get("exception") or {}).get("values") or [{}]
                text = payload.get("transaction") if item.type == "transaction" else None
                events.append(
                    (item.type, payload.get("tags", {}), text or exception[-1].get("value"))
                )
    return events


def test_sentry_events_and_transactions_carry_the_tenant(alpha, sentry):
    # Through Django's WSGI handler, which Sentry's integration wraps in a transaction.
    assert wsgi_get("alpha.example.test", "/explode/")[0].startswith("500")
    assert wsgi_get("admin.example.test", "/admin/login/")[0] == "200 OK"  # the main site
    with tenant_context(alpha):
        try:
            raise ValueError("in a job")
        except ValueError as exc:
            sentry_sdk.capture_exception(exc)
    sentry_sdk.flush()
    events = sent(sentry)
    assert ("event", {"tenant": "alpha"}, "failed for alpha") in [
        (kind, {k: v for k, v in tags.items() if k == "tenant"}, text)
        for kind, tags, text in events
    ]
    assert any(
        kind == "event" and tags.get("tenant") == "alpha" and text == "in a job"
        for kind, tags, text in events
    )
    transactions = {
        text: tags.get("tenant") for kind, tags, text in events if kind == "transaction"
    }
    assert transactions.get("/explode/") == "alpha"
    assert "/admin/login/" in transactions
    assert transactions["/admin/login/"] is None  # the main site's request: no tenant


def test_query_counting_tools_see_the_tenants_queries(alpha, django_assert_num_queries):
    with tenant_context(alpha):
        connection = tenant_connection()
        with CaptureQueriesContext(connection) as captured:
            Note.objects.count()
        assert len(captured) == 1
        assert Note._meta.db_table in captured[0]["sql"]
        with django_assert_num_queries(1, connection=connection):
            Note.objects.exists()
        TransactionTestCase().assertNumQueries(1, Note.objects.count, using=alias_for(alpha))


def test_debug_query_logs_of_tenant_connections_are_reset_per_request(alpha, settings):
    settings.DEBUG = True
    with tenant_context(alpha):
        Note.objects.count()
        Note.objects.count()
        connection = tenant_connection()
    assert len(connection.queries) == 2
    reset_queries()  # Django's: its own databases only
    assert len(connection.queries) == 2
    tenancy_reset_queries()  # what tenancy runs at the start of each request
    assert connection.queries == []
