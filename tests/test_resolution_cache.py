"""The per-process cache of tenant lookups (tenancy.registry_cache): no query on the main
database for a known tenant, and every change of the registry seen, at once in this process
and through the registry stamp from any other."""

import asyncio
import time
import warnings
from contextlib import contextmanager

import pytest
from django.db import connection, connections
from django.db.backends.signals import connection_created
from django.test.utils import CaptureQueriesContext

from tenancy import registry_cache
from tenancy.models import Domain, Tenant, TenantStatus
from tenancy.registry_stamp import read_stamp
from tests.settings import BACKEND
from tests.test_middleware import asgi_get

ALPHA, BETA = "alpha.example.test", "beta.example.test"


def tenancy_settings(settings, **values):
    settings.TENANCY = {**settings.TENANCY, **values}


@pytest.fixture(autouse=True)
def _stamp_read_once_per_test(settings):
    """The registry stamp is read again once a TTL has passed since its last reading; on a
    busy machine a test can outlast the default second and count that query. Tests of
    the TTL set their own."""
    tenancy_settings(settings, RESOLUTION_CACHE_TTL=60)


@contextmanager
def main_database_untouched(*, count_queries=True):
    """Fails if the block opens a connection to the main database (each request closes
    it, as CONN_MAX_AGE=0 says) or, in a sync block, queries it."""
    opened = []

    def record(sender, connection, **kwargs):
        if connection.alias == "default":
            opened.append(connection)

    connection_created.connect(record)
    try:
        if count_queries:
            with CaptureQueriesContext(connections["default"]) as queries:
                yield
            assert [query["sql"] for query in queries.captured_queries] == []
        else:
            yield
    finally:
        connection_created.disconnect(record)
    assert opened == []


def notes_on(client, host):
    response = client.get("/notes/", HTTP_HOST=host)
    assert response.status_code == 200, response.content
    return response.json()["notes"]


def test_a_known_tenant_is_served_without_touching_the_main_database(client, notes):
    assert notes_on(client, ALPHA) == ["alpha note"]  # looked up once
    with main_database_untouched():
        for _ in range(3):
            assert notes_on(client, ALPHA) == ["alpha note"]
            assert client.get("/notes/", HTTP_HOST="ALPHA.example.test:8000").status_code == 200


def test_each_host_is_cached_for_its_own_tenant(client, notes):
    for _ in range(2):
        assert notes_on(client, ALPHA) == ["alpha note"]
        assert notes_on(client, BETA) == ["beta note"]


def test_async_requests_use_the_cache_without_leaving_the_event_loop(notes):
    async def twice():
        first = await asgi_get("/anotes/", ALPHA)
        with main_database_untouched(count_queries=False):
            second = await asgi_get("/anotes/", ALPHA)
        return first, second

    first, second = asyncio.run(twice())
    assert first == second == (200, b'{"notes": ["alpha note"]}')


@pytest.mark.parametrize("resolver", ["path", "header", "subdomain"])
def test_slug_resolvers_are_cached_too(client, settings, notes, resolver):
    tenancy_settings(settings, RESOLVER=resolver, BASE_DOMAIN="example.test")
    request = {
        "path": ("/t/alpha/notes/", {}),
        "header": ("/notes/", {"HTTP_X_TENANT": "alpha"}),
        "subdomain": ("/notes/", {"HTTP_HOST": ALPHA}),
    }[resolver]
    assert client.get(request[0], **request[1]).json() == {"notes": ["alpha note"]}
    with main_database_untouched():
        assert client.get(request[0], **request[1]).json() == {"notes": ["alpha note"]}


def test_an_unknown_host_is_answered_from_the_cache_after_its_first_lookup(client, alpha):
    assert client.get("/notes/", HTTP_HOST="nobody.example.test").status_code == 404
    with main_database_untouched():
        assert client.get("/notes/", HTTP_HOST="nobody.example.test").status_code == 404


def test_unknown_hosts_are_remembered_up_to_the_bound(client, settings, alpha):
    tenancy_settings(settings, RESOLUTION_CACHE_NOT_FOUND_SIZE=10, RESOLUTION_CACHE_SIZE=1)
    notes_on(client, ALPHA)
    for number in range(50):
        assert client.get("/notes/", HTTP_HOST=f"x{number}.example.test").status_code == 404
    assert registry_cache.cached_counts() == (1, 10)
    with main_database_untouched():  # the ten most recent, and the known tenant
        assert client.get("/notes/", HTTP_HOST="x49.example.test").status_code == 404
        notes_on(client, ALPHA)
    with CaptureQueriesContext(connections["default"]) as queries:  # forgotten
        assert client.get("/notes/", HTTP_HOST="x0.example.test").status_code == 404
    assert len(queries.captured_queries) == 1


def test_known_tenants_are_remembered_up_to_the_bound(client, settings, notes):
    tenancy_settings(settings, RESOLUTION_CACHE_SIZE=1)
    notes_on(client, ALPHA)
    notes_on(client, BETA)
    assert registry_cache.cached_counts() == (1, 0)
    with CaptureQueriesContext(connections["default"]) as queries:
        assert notes_on(client, ALPHA) == ["alpha note"]
    assert len(queries.captured_queries) == 1


def test_caching_off_looks_up_every_request(client, settings, notes):
    tenancy_settings(settings, RESOLUTION_CACHE_TTL=0)
    notes_on(client, ALPHA)
    with CaptureQueriesContext(connections["default"]) as queries:
        notes_on(client, ALPHA)
    assert len(queries.captured_queries) == 1
    assert registry_cache.cached_counts() == (0, 0)


def test_each_request_gets_its_own_tenant_instance(alpha):
    load = Tenant.objects.filter(slug="alpha").first
    first = registry_cache.lookup("slug", "alpha", lambda key: load())
    first.name = "changed by a view"
    second = registry_cache.lookup("slug", "alpha", lambda key: pytest.fail("not cached"))
    assert second is not first
    assert second.name == alpha.name
    assert second.pk == alpha.pk
    assert second._state.db == "default"
    assert not second._state.adding


# Changes made in this process are seen at once.


def test_a_domain_given_to_another_tenant_leads_there_at_once(client, notes):
    assert notes_on(client, ALPHA) == ["alpha note"]
    domain = Domain.objects.get(domain=ALPHA)
    domain.tenant = Tenant.objects.get(slug="beta")
    domain.is_primary = False
    domain.save()
    assert notes_on(client, ALPHA) == ["beta note"]


def test_a_domain_moved_by_update_leads_to_its_new_tenant_at_once(client, notes):
    assert notes_on(client, ALPHA) == ["alpha note"]
    beta = Tenant.objects.get(slug="beta")
    Domain.objects.filter(domain=ALPHA).update(tenant=beta, is_primary=False)
    assert notes_on(client, ALPHA) == ["beta note"]


def test_a_deleted_domain_is_not_found_at_once(client, notes):
    notes_on(client, ALPHA)
    Domain.objects.filter(domain=ALPHA).delete()
    assert client.get("/notes/", HTTP_HOST=ALPHA).status_code == 404


@pytest.mark.parametrize("how", ["save", "update", "bulk_update"])
def test_a_suspended_tenant_is_refused_at_once(client, notes, how):
    notes_on(client, ALPHA)
    tenant = Tenant.objects.get(slug="alpha")
    tenant.status = TenantStatus.SUSPENDED
    if how == "save":
        tenant.save()
    elif how == "update":
        Tenant.objects.filter(pk=tenant.pk).update(status=TenantStatus.SUSPENDED)
    else:
        Tenant.objects.bulk_update([tenant], ["status"])
    assert client.get("/notes/", HTTP_HOST=ALPHA).status_code == 503


def test_a_new_domain_for_a_host_known_as_unknown_is_served_at_once(client, notes):
    assert client.get("/notes/", HTTP_HOST="new.example.test").status_code == 404
    Domain.objects.create(domain="new.example.test", tenant=Tenant.objects.get(slug="beta"))
    assert notes_on(client, "new.example.test") == ["beta note"]


def test_bulk_created_domains_are_served_at_once(client, notes):
    assert client.get("/notes/", HTTP_HOST="bulk.example.test").status_code == 404
    beta = Tenant.objects.get(slug="beta")
    Domain.objects.bulk_create([Domain(domain="bulk.example.test", tenant=beta)])
    assert notes_on(client, "bulk.example.test") == ["beta note"]


def test_a_deleted_tenant_is_not_found_at_once(client, notes):
    notes_on(client, ALPHA)
    Domain.objects.filter(tenant__slug="alpha").delete()
    Tenant.objects.filter(slug="alpha").delete()
    assert client.get("/notes/", HTTP_HOST=ALPHA).status_code == 404


def test_a_lookup_inside_a_transaction_of_its_own_is_not_cached(alpha):
    from django.db import transaction

    with transaction.atomic():
        Tenant.objects.filter(slug="alpha").update(status=TenantStatus.SUSPENDED)
        load = Tenant.objects.filter(slug="alpha").first
        inside = registry_cache.lookup("slug", "alpha", lambda key: load())
        assert inside.status == TenantStatus.SUSPENDED
        transaction.set_rollback(True)
    assert registry_cache.cached_counts() == (0, 0)
    outside = registry_cache.lookup("slug", "alpha", lambda key: load())
    assert outside.status == TenantStatus.ACTIVE


# Changes made elsewhere (raw SQL here: no signal reaches this process) are seen through
# the registry stamp.


def raw(statement, *params):
    with connection.cursor() as cursor:
        cursor.execute(statement, params)


def test_a_change_made_without_the_orm_is_seen_within_the_ttl(client, settings, notes):
    tenancy_settings(settings, RESOLUTION_CACHE_TTL=0.2)
    assert notes_on(client, ALPHA) == ["alpha note"]
    beta = Tenant.objects.get(slug="beta")
    raw("UPDATE tenancy_domain SET tenant_id = %s, is_primary = %s WHERE domain = %s",
        beta.pk, False, ALPHA)  # fmt: skip
    deadline = time.monotonic() + 5
    seen = notes_on(client, ALPHA)
    while seen != ["beta note"] and time.monotonic() < deadline:
        time.sleep(0.05)
        seen = notes_on(client, ALPHA)
    assert seen == ["beta note"]


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE tenancy_tenant SET name = 'x'",
        "UPDATE tenancy_domain SET is_primary = is_primary",
        "DELETE FROM tenancy_domain WHERE domain = 'beta.example.test'",
        "INSERT INTO tenancy_domain (domain, tenant_id, is_primary) "
        "SELECT 'other.example.test', id, false FROM tenancy_tenant WHERE slug = 'alpha'",
    ],
)
def test_every_write_of_the_registry_changes_the_stamp(notes, statement):
    before = read_stamp(connection)
    raw(statement)
    assert read_stamp(connection) != before


@pytest.mark.skipif(BACKEND != "postgresql", reason="TRUNCATE is PostgreSQL's")
def test_truncating_the_domains_changes_the_stamp(notes):
    before = read_stamp(connection)
    raw("TRUNCATE tenancy_domain")
    assert read_stamp(connection) != before


def test_writes_of_other_tables_leave_the_stamp_alone(notes):
    before = read_stamp(connection)
    raw("UPDATE tenancy_membership SET is_admin = is_admin")
    assert read_stamp(connection) == before


def test_the_stamp_is_read_at_most_once_per_ttl(client, settings, notes):
    tenancy_settings(settings, RESOLUTION_CACHE_TTL=60)
    notes_on(client, ALPHA)
    with CaptureQueriesContext(connections["default"]) as queries:
        for _ in range(5):
            notes_on(client, ALPHA)
    assert queries.captured_queries == []


def test_background_jobs_find_their_tenant_in_the_cache(alpha):
    from tenancy.jobs import job_tenant

    assert job_tenant("alpha").pk == alpha.pk
    with CaptureQueriesContext(connections["default"]) as queries:
        assert job_tenant("alpha").pk == alpha.pk
    assert queries.captured_queries == []
    Tenant.objects.filter(pk=alpha.pk).update(status=TenantStatus.SUSPENDED)
    with pytest.raises(Exception, match="'alpha' is suspended"):
        job_tenant("alpha")


def test_a_forked_child_starts_with_an_empty_cache(client, notes):
    import os

    notes_on(client, ALPHA)
    assert registry_cache.cached_counts() == (1, 0)
    read, write = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12 warns when other threads run (asgiref's executor's, say): the child
        # here only reports and exits.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: report and leave at once
        os.write(write, repr(registry_cache.cached_counts()).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as child:
        assert child.read() == "(0, 0)"
    assert registry_cache.cached_counts() == (1, 0)


@pytest.mark.parametrize("lookup", ["sync", "async"])
def test_answers_of_one_test_case_transaction_are_not_used_in_the_next(db_access, lookup):
    """Django's TestCase rolls every test back, sending no signal: a tenant cached in one
    test must not be found in the next."""
    from asgiref.sync import async_to_sync
    from django.db import transaction

    from tenancy.context import find_by_slug

    def test_case_transaction():
        atomic = transaction.atomic()
        atomic._from_testcase = True  # as django.test.TestCase marks its own
        return atomic

    def find(slug):
        if lookup == "sync":
            return registry_cache.lookup("slug", slug, find_by_slug)
        # As Django runs an async test: the event loop in another thread, the ORM back in
        # this one, inside the test's transaction.
        return async_to_sync(registry_cache.alookup)("slug", slug, find_by_slug)

    with test_case_transaction():
        Tenant.objects.create(slug="gamma", name="gamma", server="one")
        assert registry_cache.lookup("slug", "gamma", find_by_slug).slug == "gamma"
        assert find("gamma").slug == "gamma"  # cached for this test
        transaction.set_rollback(True)
    with test_case_transaction():
        assert find("gamma") is None
        transaction.set_rollback(True)


def test_a_resolver_with_a_lookup_of_its_own_is_cached_only_under_its_own_name(
    client, settings, notes
):
    """A subclass of a cached resolver that looks keys up differently (a partner code for
    a domain of another tenant) neither shares the built-in slug answers, which background
    jobs use, nor is cached unless it says so."""
    from asgiref.sync import async_to_sync
    from django.test import RequestFactory

    from tenancy.jobs import job_tenant
    from tenancy.resolvers import HeaderResolver

    class PartnerCodes(HeaderResolver):
        def lookup(self, key):
            domain = Domain.objects.select_related("tenant").filter(domain=f"{key}.partners")
            return domain.first().tenant if domain.exists() else None

    class CachedPartnerCodes(PartnerCodes):
        cache_lookups = True

    Domain.objects.create(domain="alpha.partners", tenant=Tenant.objects.get(slug="beta"))
    assert PartnerCodes.cache_kind() is None
    assert CachedPartnerCodes.cache_kind().endswith(".PartnerCodes")
    request = RequestFactory().get("/", HTTP_X_TENANT="alpha")
    for resolver in (PartnerCodes, CachedPartnerCodes):
        tenancy_settings(settings, RESOLVER=resolver)
        assert client.get("/notes/", HTTP_X_TENANT="alpha").json() == {"notes": ["beta note"]}
        assert async_to_sync(resolver().aresolve)(request).tenant.slug == "beta"
        assert job_tenant("alpha").slug == "alpha"
    tenancy_settings(settings, RESOLVER="header")
    assert client.get("/notes/", HTTP_X_TENANT="alpha").json() == {"notes": ["alpha note"]}


def test_registry_writes_under_manual_transaction_management(client, notes):
    """Autocommit off (no atomic block): the writes work as before, lookups meanwhile
    bypass the cache, and a rolled-back suspension is never served."""
    from django.db import transaction

    notes_on(client, ALPHA)
    transaction.set_autocommit(False)
    try:
        Tenant.objects.filter(slug="alpha").update(status=TenantStatus.SUSPENDED)
        tenant = Tenant.objects.get(slug="beta")
        tenant.name = "Beta, renamed"
        tenant.save()
        load = Tenant.objects.filter(slug="alpha").first
        assert registry_cache.lookup("slug", "alpha", lambda key: load()).status == "suspended"
        assert registry_cache.cached_counts() == (0, 0)
        transaction.rollback()
    finally:
        transaction.set_autocommit(True)
    assert notes_on(client, ALPHA) == ["alpha note"]


def test_values_that_change_in_place_are_not_shared_between_requests(db_access):
    from django.db import models
    from django.test.utils import isolate_apps

    from tenancy.models import AbstractTenant

    with isolate_apps("tests.sharedapp"):

        class FeatureTenant(AbstractTenant):
            features = models.JSONField(default=dict)

            class Meta(AbstractTenant.Meta):
                app_label = "sharedapp"

    row = {
        "id": 1,
        "slug": "acme",
        "name": "Acme",
        "status": "active",
        "server": "one",
        "database_name": "tenancy_acme",
        "features": {"plan": "free"},
    }
    fields = [field.attname for field in FeatureTenant._meta.concrete_fields]
    loaded = FeatureTenant.from_db("default", fields, [row.get(name) for name in fields])
    first = registry_cache.lookup("features", "acme", lambda key: loaded)
    first.features["plan"] = "enterprise (unsaved)"
    second = registry_cache.lookup("features", "acme", lambda key: pytest.fail("not cached"))
    assert second.features == {"plan": "free"}
    assert second.name == "Acme"


def test_a_lookup_that_defers_fields_is_cached_without_fetching_them(alpha):
    def load(slug):
        return Tenant.objects.only("slug", "status", "server", "database_name").get(slug=slug)

    registry_cache.lookup("only", "alpha", load)
    with CaptureQueriesContext(connections["default"]) as queries:
        tenant = registry_cache.lookup("only", "alpha", load)
        assert (tenant.slug, tenant.server) == ("alpha", alpha.server)
    assert queries.captured_queries == []
    assert tenant.name == alpha.name  # fetched when asked for, as Django does


def test_a_tenant_suspended_through_a_proxy_model_is_refused_at_once(client, notes):
    from tests.sharedapp.models import OperatorTenant

    notes_on(client, ALPHA)
    tenant = OperatorTenant.objects.get(slug="alpha")
    tenant.status = TenantStatus.SUSPENDED
    tenant.save()
    assert client.get("/notes/", HTTP_HOST=ALPHA).status_code == 503


@pytest.mark.skipif(BACKEND != "postgresql", reason="search paths are PostgreSQL's")
def test_a_writer_with_another_search_path_or_a_shadowing_table_still_changes_the_stamp(notes):
    from django.db import transaction

    before = read_stamp(connection)
    with transaction.atomic():
        raw("CREATE TEMPORARY TABLE tenancy_registrystamp (id int PRIMARY KEY, stamp bigint)")
        raw("SET LOCAL search_path = pg_catalog")
        raw("UPDATE public.tenancy_tenant SET name = 'x' WHERE slug = 'alpha'")
        raw('SET LOCAL search_path = "$user", public')
        raw("DROP TABLE pg_temp.tenancy_registrystamp")
    assert read_stamp(connection) != before


def test_installing_the_triggers_changes_the_stamp(notes):
    from tenancy.registry_stamp import install_triggers

    before = read_stamp(connection)
    install_triggers("default", ["tenancy_tenant", "tenancy_domain"])
    assert read_stamp(connection) != before


def test_a_resolver_overriding_alookup_alone_is_not_cached():
    from tenancy.resolvers import HostResolver

    class AsyncOnly(HostResolver):
        async def alookup(self, key):
            return None

    assert AsyncOnly.cache_kind() is None
    assert HostResolver.cache_kind() == "tenancy.resolvers.HostResolver"


@pytest.mark.skipif(BACKEND != "postgresql", reason="session_replication_role is PostgreSQL's")
def test_a_write_that_skips_the_triggers_is_seen_within_the_maximum_age(
    client, settings, notes, monkeypatch
):
    from django.db import transaction

    monkeypatch.setattr(registry_cache, "MAX_AGE_TTLS", 4)
    tenancy_settings(settings, RESOLUTION_CACHE_TTL=0.1)
    assert notes_on(client, ALPHA) == ["alpha note"]
    before = read_stamp(connection)
    with transaction.atomic():  # as logical replication applies changes: no trigger fires
        raw("SET LOCAL session_replication_role = replica")
        raw("UPDATE tenancy_tenant SET status = 'suspended' WHERE slug = 'alpha'")
    assert read_stamp(connection) == before
    deadline = time.monotonic() + 5
    while client.get("/notes/", HTTP_HOST=ALPHA).status_code != 503:
        assert time.monotonic() < deadline, "still served after 50 TTLs"
        time.sleep(0.05)


@pytest.mark.skipif(BACKEND != "postgresql", reason="roles are PostgreSQL's")
def test_a_role_that_may_write_the_tenant_table_changes_the_stamp_without_rights_on_it(notes):
    from django.db import transaction

    before = read_stamp(connection)
    with transaction.atomic():  # the role goes with the rollback
        raw("CREATE ROLE tenancy_test_writer")
        raw("GRANT SELECT, UPDATE ON tenancy_tenant TO tenancy_test_writer")
        raw("SET LOCAL ROLE tenancy_test_writer")
        raw("UPDATE tenancy_tenant SET name = 'x' WHERE slug = 'alpha'")
        raw("RESET ROLE")
        changed = read_stamp(connection)
        transaction.set_rollback(True)
    assert changed != before


@pytest.mark.skipif(BACKEND != "postgresql", reason="SQLite writes one at a time")
def test_concurrent_installs_of_the_triggers_all_succeed(db_access):
    from concurrent.futures import ThreadPoolExecutor

    from tenancy.registry_stamp import install_triggers

    def install(_):
        try:
            install_triggers("default", ["tenancy_tenant", "tenancy_domain"])
        finally:
            connections.close_all()

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(install, range(12)))  # raises what a thread raised


def test_an_answer_is_read_again_after_the_maximum_age(client, settings, notes, monkeypatch):
    monkeypatch.setattr(registry_cache, "MAX_AGE_TTLS", 2)
    tenancy_settings(settings, RESOLUTION_CACHE_TTL=60)  # the stamp is not read again
    notes_on(client, ALPHA)
    with CaptureQueriesContext(connections["default"]) as queries:
        notes_on(client, ALPHA)
    assert queries.captured_queries == []
    tenancy_settings(settings, RESOLUTION_CACHE_TTL=0.05)
    notes_on(client, ALPHA)  # kept at a TTL of 0.05 s: read again after 0.1 s
    time.sleep(0.15)
    registry_cache._cache.checked_at = time.monotonic()  # no stamp read in between
    with CaptureQueriesContext(connections["default"]) as queries:
        notes_on(client, ALPHA)
    assert len(queries.captured_queries) == 1
    assert registry_cache.cached_counts() == (1, 0)
