"""TenantMiddleware with each resolver, under WSGI-style and ASGI-style requests."""

import asyncio
import json
import os

import pytest
from django.core.handlers.asgi import ASGIHandler
from django.db import OperationalError, connections
from django.test.utils import CaptureQueriesContext

from tenancy import NoTenantError, current_tenant, tenant_context
from tenancy.connections import alias_for, registered_aliases, unregister
from tenancy.models import Domain, Tenant, TenantStatus
from tenancy.provisioning import create_tenant, deprovision_tenant
from tests.inflight import request_paused_in_view, run_in_subprocess
from tests.settings import BACKEND, PGBOUNCER, SERVER_1
from tests.tenantapp.models import Note


async def asgi_get(path, host="testserver", query="", accept=""):
    """A GET through Django's ASGI handler, as an ASGI server would send it."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "headers": [(b"host", host.encode())] + ([(b"accept", accept.encode())] if accept else []),
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    received = asyncio.Event()
    sent = []

    async def receive():
        if received.is_set():
            await asyncio.Event().wait()  # no disconnect: wait until cancelled
        received.set()
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    await ASGIHandler()(scope, receive, send)
    return sent[0]["status"], b"".join(message.get("body", b"") for message in sent[1:])


def asgi_json(path, host="testserver", query=""):
    status, body = asyncio.run(asgi_get(path, host, query))
    assert status == 200, body
    return json.loads(body)


def add_notes(tenant, *texts):
    with tenant_context(tenant):
        Note.objects.bulk_create([Note(text=text) for text in texts])


@pytest.fixture
def two_tenants(alpha, beta):
    add_notes(alpha, "a1", "a2")
    add_notes(beta, "b1")
    return alpha, beta


def tenancy_settings(settings, **values):
    settings.TENANCY = {**settings.TENANCY, **values}


# Host resolver (the default).


def test_each_host_sees_its_own_tenant(client, two_tenants):
    assert client.get("/notes/", HTTP_HOST="alpha.example.test").json() == {"notes": ["a1", "a2"]}
    assert client.get("/notes/", HTTP_HOST="beta.example.test").json() == {"notes": ["b1"]}
    assert client.get("/notes/", HTTP_HOST="ALPHA.example.test:8000").json()["notes"] == [
        "a1",
        "a2",
    ]


def test_tenant_is_reset_and_connection_closed_after_the_request(client, alpha):
    response = client.get("/whoami/", HTTP_HOST="alpha.example.test")
    assert response.json()["tenant"] == "alpha"
    assert current_tenant() is None
    assert connections[alias_for(alpha)].connection is None


def test_unknown_host_is_404_and_touches_no_tenant(client, alpha):
    with CaptureQueriesContext(connections["default"]) as queries:
        response = client.get("/notes/", HTTP_HOST="nobody.example.test")
    assert response.status_code == 404
    assert b"There is no site at nobody.example.test" in response.content
    assert len(queries) == 1  # the Domain lookup
    assert registered_aliases() == {}


@pytest.mark.parametrize(
    "status",
    [
        TenantStatus.SUSPENDED,
        TenantStatus.PROVISIONING,
        TenantStatus.FAILED,
        TenantStatus.DELETING,
    ],
)
def test_tenant_that_is_not_active_is_503(client, alpha, status):
    alpha.status = status
    alpha.save()
    response = client.get("/notes/", HTTP_HOST="alpha.example.test")
    assert response.status_code == 503
    assert response["Retry-After"] == "120"
    assert b"alpha is not available" in response.content
    assert registered_aliases() == {}


def test_a_moving_tenant_serves_reads_and_answers_503_to_the_rest(client, notes):
    alpha, _ = notes
    alpha.status = TenantStatus.MOVING
    alpha.save()
    read = client.get("/notes/", HTTP_HOST="alpha.example.test")
    if BACKEND == "postgresql":  # the source is read-only while the tenant moves
        assert (read.status_code, read.json()) == (200, {"notes": ["alpha note"]})
    else:  # SQLite keeps no writer out of a file: no reads either
        assert read.status_code == 503
    for method in (client.post, client.put, client.delete, client.patch):
        refused = method("/notes/", HTTP_HOST="alpha.example.test")
        assert (refused.status_code, refused["Retry-After"]) == (503, "120")


def test_public_host_is_the_main_site_without_tenant(client, alpha, settings):
    tenancy_settings(settings, PUBLIC_HOSTS=["www.example.test"])
    assert client.get("/whoami/", HTTP_HOST="www.example.test").json()["tenant"] is None
    with pytest.raises(NoTenantError):
        client.get("/notes/", HTTP_HOST="www.example.test")


@pytest.mark.parametrize(
    "host",
    [
        "a" * 300 + ".example.test",
        "alpha.example.test'; DROP TABLE tenancy_tenant; --",
        "ålpha.example.test",
        "alpha..example.test",
        "alpha.example.test:port",
        '"alpha".example.test',
    ],
)
def test_hostile_host_headers_never_reach_a_tenant(client, alpha, host):
    response = client.get("/notes/", HTTP_HOST=host)
    assert response.status_code in (400, 404)
    assert registered_aliases() == {}


def test_sync_streaming_response_is_produced_inside_the_tenant(client, two_tenants):
    response = client.get("/stream/", HTTP_HOST="alpha.example.test")
    assert current_tenant() is None
    assert b"".join(response.streaming_content) == b"a1\na2\ntenant=alpha\n"
    assert current_tenant() is None


# ASGI: the middleware runs in async mode; a synchronous ORM call in the event loop
# would raise SynchronousOnlyOperation.


def test_async_view_sees_its_tenant(two_tenants):
    assert asgi_json("/anotes/", "alpha.example.test") == {"notes": ["a1", "a2"]}
    assert asgi_json("/anotes/", "beta.example.test") == {"notes": ["b1"]}


def test_concurrent_async_requests_for_different_tenants(two_tenants):
    async def main():
        hosts = ["alpha.example.test", "beta.example.test"] * 10
        return await asyncio.gather(*(asgi_get("/anotes/", host) for host in hosts))

    bodies = [json.loads(body)["notes"] for _, body in asyncio.run(main())]
    assert bodies == [["a1", "a2"], ["b1"]] * 10


def test_sync_view_under_asgi_sees_its_tenant(two_tenants):
    assert asgi_json("/notes/", "beta.example.test") == {"notes": ["b1"]}


def test_async_unknown_host_is_404(alpha):
    status, body = asyncio.run(asgi_get("/anotes/", "nobody.example.test"))
    assert (status, b"There is no site at nobody.example.test" in body) == (404, True)


def test_async_suspended_tenant_is_503(alpha):
    alpha.status = TenantStatus.SUSPENDED
    alpha.save()
    assert asyncio.run(asgi_get("/anotes/", "alpha.example.test"))[0] == 503


def test_async_streaming_response_is_produced_inside_the_tenant(two_tenants):
    status, body = asyncio.run(asgi_get("/astream/", "beta.example.test"))
    assert (status, body) == (200, b"b1\ntenant=beta\n")


@pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume synchronous")
def test_sync_streaming_response_under_asgi_is_produced_inside_the_tenant(two_tenants):
    status, body = asyncio.run(asgi_get("/stream/", "alpha.example.test"))
    assert (status, body) == (200, b"a1\na2\ntenant=alpha\n")


# The other resolvers.


def test_subdomain_resolver(client, two_tenants, settings):
    tenancy_settings(settings, RESOLVER="subdomain", BASE_DOMAIN="example.test")
    assert client.get("/notes/", HTTP_HOST="beta.example.test").json() == {"notes": ["b1"]}
    assert client.get("/whoami/", HTTP_HOST="example.test").json()["tenant"] is None
    assert client.get("/notes/", HTTP_HOST="x.alpha.example.test").status_code == 404
    assert client.get("/notes/", HTTP_HOST="alpha.elsewhere.test").status_code == 404
    assert client.get("/notes/", HTTP_HOST="nobody.example.test").status_code == 404


def test_header_resolver(client, two_tenants, settings):
    tenancy_settings(settings, RESOLVER="header")
    response = client.get("/notes/", HTTP_HOST="any.test", HTTP_X_TENANT="alpha")
    assert response.json() == {"notes": ["a1", "a2"]}
    assert client.get("/whoami/", HTTP_HOST="any.test").json()["tenant"] is None
    hostile = client.get("/notes/", HTTP_HOST="any.test", HTTP_X_TENANT="alpha' OR 1=1")
    assert hostile.status_code == 404


def test_path_resolver(client, two_tenants, settings):
    tenancy_settings(settings, RESOLVER="path")
    assert client.get("/t/beta/notes/").json() == {"notes": ["b1"]}
    whoami = client.get("/t/alpha/whoami/").json()
    assert whoami == {"tenant": "alpha", "request_tenant": "alpha", "path_info": "/whoami/"}
    assert client.get("/t/alpha/link/").content == b"/t/alpha/notes/"
    assert client.get("/link/").content == b"/notes/"
    assert client.get("/whoami/").json()["tenant"] is None
    assert client.get("/t/nobody/notes/").status_code == 404


def resolve_by_query_parameter(request):
    from tenancy.models import Tenant

    slug = request.GET.get("tenant")
    return Tenant.objects.get(slug=slug) if slug else None


async def aresolve_by_query_parameter(request):
    from tenancy.models import Tenant

    slug = request.GET.get("tenant")
    return await Tenant.objects.aget(slug=slug) if slug else None


def test_callable_resolver(client, two_tenants, settings):
    tenancy_settings(settings, RESOLVER="tests.test_middleware.resolve_by_query_parameter")
    assert client.get("/notes/?tenant=beta").json() == {"notes": ["b1"]}
    assert client.get("/whoami/").json()["tenant"] is None
    assert asgi_json("/anotes/", query="tenant=alpha") == {"notes": ["a1", "a2"]}


def test_async_callable_resolver(two_tenants, settings):
    tenancy_settings(settings, RESOLVER="tests.test_middleware.aresolve_by_query_parameter")
    assert asgi_json("/anotes/", query="tenant=beta") == {"notes": ["b1"]}
    assert asgi_json("/whoami/")["tenant"] is None


# A tenant whose server is down.

SECRET = "pw-that-must-not-leak"


@pytest.fixture
def lost(alpha, settings):
    """Tenant "lost", active, on a server that cannot be reached (with a password)."""
    if BACKEND == "postgresql":
        down = {**SERVER_1, "PORT": "1", "PASSWORD": SECRET}  # nothing listens there
    else:
        down = {**SERVER_1, "DIRECTORY": "/dev/null/nowhere", "PASSWORD": SECRET}
    tenancy_settings(settings, SERVERS={**settings.TENANCY["SERVERS"], "down": down})
    tenant = Tenant.objects.create(
        slug="lost", name="Lost", server="down", status=TenantStatus.ACTIVE
    )
    Domain.objects.create(tenant=tenant, domain="lost.example.test", is_primary=True)
    return tenant


def test_tenant_on_an_unreachable_server_is_503_and_others_are_served(client, lost, caplog):
    add_notes(Tenant.objects.get(slug="alpha"), "a1")
    response = client.get("/notes/", HTTP_HOST="lost.example.test")
    assert response.status_code == 503
    assert b"lost is not available" in response.content
    assert client.get("/notes/", HTTP_HOST="alpha.example.test").json()["notes"] == ["a1"]
    assert "Tenant lost: its database is unreachable" in caplog.text
    assert SECRET not in caplog.text
    assert SECRET.encode() not in response.content


def test_async_tenant_on_an_unreachable_server_is_503(lost):
    status, body = asyncio.run(asgi_get("/anotes/", "lost.example.test"))
    assert status == 503
    assert b"lost is not available" in body


def test_operational_error_not_raised_by_the_tenants_database_stays_an_error(client, alpha):
    with pytest.raises(OperationalError, match="not from a database"):
        client.get("/fail-outside/", HTTP_HOST="alpha.example.test")


def test_debug_error_page_hides_tenant_server_credentials(lost, rf, settings):
    """Django's debug page lists the settings; TENANCY's server passwords are masked."""
    import sys

    from django.views.debug import technical_500_response

    settings.DEBUG = True
    request = rf.get("/notes/", HTTP_HOST="lost.example.test")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        page = technical_500_response(request, *sys.exc_info()).content.decode()
    assert "TENANCY" in page
    assert "&#x27;down&#x27;" in page  # the server is listed ...
    assert SECRET not in page  # ... without its password


# A tenant removed while its requests run.


@pytest.fixture
def inflight_views(settings):
    settings.ROOT_URLCONF = "tests.inflight"


def test_request_whose_tenant_is_deleted_while_it_holds_a_cursor_is_404(alpha, inflight_views):
    with request_paused_in_view("/cursor-across-pause/", "alpha.example.test") as responses:
        deprovision_tenant(alpha, keep_database=True)
    [response] = responses
    assert response.status_code == 404
    assert b"There is no site at alpha.example.test" in response.content


@pytest.mark.skipif(
    PGBOUNCER,
    reason="PgBouncer holds a client for a missing database until query_wait_timeout",
)
def test_request_whose_tenant_database_is_dropped_while_it_runs_is_404(db_access, inflight_views):
    doomed = create_tenant("doomed", domains=["doomed.example.test"])
    with request_paused_in_view("/orm-across-pause/", "doomed.example.test") as responses:
        deprovision_tenant(doomed)
    [response] = responses
    assert response.status_code == 404
    assert b"There is no site at doomed.example.test" in response.content


def test_request_whose_tenant_is_being_deleted_is_503(alpha, inflight_views):
    with request_paused_in_view("/cursor-across-pause/", "alpha.example.test") as responses:
        Tenant.objects.filter(pk=alpha.pk).update(status=TenantStatus.DELETING)
        unregister(alpha)  # what deleting it does first
    [response] = responses
    assert response.status_code == 503
    assert b"alpha is not available" in response.content


def test_requests_in_flight_while_their_tenant_is_deleted_are_never_500(db_access):
    """Threads serve a tenant through Django's WSGI handler, and it is deleted while
    each of them is inside a statement on its database (in a process of its own: closing
    a SQLite connection under a running statement kills the process)."""
    threads = 4
    outcome = run_in_subprocess(
        "requests_while_deleted", threads=threads, suffix=f"inflight_{os.getpid()}"
    )
    assert outcome["failures"] == []
    statuses = outcome["statuses"]
    assert len(statuses) == threads
    for mine in statuses:
        assert set(mine) <= {200, 404, 503}
        assert mine[-1] == 404


# The 404 and 503 pages: replaceable by a view or a template, JSON for JSON clients.

JSON = "application/json"


def test_not_found_view_replaces_the_404_page(client, alpha, settings):
    tenancy_settings(settings, NOT_FOUND_VIEW="tests.error_pages.not_found")
    response = client.get("/notes/", HTTP_HOST="nobody.example.test")
    assert (response.status_code, response.content) == (404, b"custom: no nobody.example.test")


def test_unavailable_view_replaces_the_503_pages(client, lost, settings):
    tenancy_settings(settings, UNAVAILABLE_VIEW="tests.error_pages.unavailable")
    response = client.get("/notes/", HTTP_HOST="lost.example.test")  # its server is down
    assert (response.status_code, response.content) == (503, b"custom: lost is resting")
    Tenant.objects.filter(slug="alpha").update(status=TenantStatus.SUSPENDED)
    response = client.get("/notes/", HTTP_HOST="alpha.example.test")
    assert (response.status_code, response.content) == (503, b"custom: alpha is resting")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("NOT_FOUND_VIEW", "tests.error_pages.no_such_view"),
        ("UNAVAILABLE_VIEW", "tests.error_pages.NOT_A_VIEW"),
        ("UNAVAILABLE_VIEW", 42),
    ],
)
def test_error_view_that_is_not_a_view_is_refused(settings, key, value):
    from django.core.exceptions import ImproperlyConfigured

    from tenancy.conf import tenancy_settings as conf

    tenancy_settings(settings, **{key: value})
    with pytest.raises(ImproperlyConfigured, match=rf"TENANCY\['{key}'\] must be None or"):
        conf.validate()


@pytest.fixture
def error_templates(settings, tmp_path):
    """tenancy/not_found.html and tenancy/unavailable.html in the project's templates."""
    (tmp_path / "tenancy").mkdir()
    (tmp_path / "tenancy" / "not_found.html").write_text(
        "<p>No {{ key }} here. <a href=\"{% url 'where' %}\">Home</a></p>"
    )
    (tmp_path / "tenancy" / "unavailable.html").write_text("<p>{{ tenant.name }} is away.</p>")
    settings.TEMPLATES = [{**settings.TEMPLATES[0], "DIRS": [tmp_path]}]


def test_error_templates_replace_the_built_in_pages(client, alpha, settings, error_templates):
    tenancy_settings(settings, RESOLVER="header", PUBLIC_URLCONF="tests.urls_public")
    response = client.get("/notes/", HTTP_X_TENANT="<b>")
    assert response.status_code == 404
    # Autoescaped, and links are to the main site's URLs.
    assert response.content == b'<p>No &lt;b&gt; here. <a href="/public/where/">Home</a></p>'
    alpha.status = TenantStatus.SUSPENDED
    alpha.save()
    response = client.get("/notes/", HTTP_X_TENANT="alpha")
    assert (response.status_code, response["Retry-After"]) == (503, "120")
    assert response.content == b"<p>Alpha is away.</p>"


def test_json_clients_get_json_errors(client, alpha, lost):
    response = client.get("/notes/", HTTP_HOST="nobody.example.test", HTTP_ACCEPT=JSON)
    assert (response.status_code, response["Content-Type"]) == (404, JSON)
    assert response.json() == {
        "error": "tenant_not_found",
        "detail": "There is no site at nobody.example.test.",
    }
    response = client.get("/notes/", HTTP_HOST="lost.example.test", HTTP_ACCEPT=JSON)
    assert (response.status_code, response["Retry-After"]) == (503, "120")
    assert response.json() == {
        "error": "tenant_unavailable",
        "detail": "The site lost is not available right now.",
    }
    status, body = asyncio.run(asgi_get("/anotes/", "nobody.example.test", accept=JSON))
    assert (status, json.loads(body)["error"]) == (404, "tenant_not_found")


def test_clients_preferring_html_get_the_page(client, alpha):
    for accept in (f"text/html, {JSON};q=0.9", f"{JSON};q=0.5, */*", ""):
        response = client.get("/notes/", HTTP_HOST="nobody.example.test", HTTP_ACCEPT=accept)
        assert response.status_code == 404
        assert b"<h1>Not found</h1>" in response.content, accept
