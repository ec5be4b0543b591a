"""TENANCY['PUBLIC_URLCONF'] and TENANCY['TENANT_URLCONF']: each site has its own URLs."""

import asyncio
import json

import pytest
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.core.handlers.wsgi import WSGIHandler
from django.test import RequestFactory
from django.urls import NoReverseMatch, get_script_prefix, get_urlconf, set_script_prefix

from tenancy import tenant_context
from tenancy.conf import tenancy_settings as conf
from tenancy.urls import reverse
from tests.test_middleware import asgi_get, tenancy_settings

PUBLIC = "admin.example.test"
ALPHA = "alpha.example.test"


@pytest.fixture
def split(settings):
    tenancy_settings(
        settings, PUBLIC_URLCONF="tests.urls_public", TENANT_URLCONF="tests.urls_tenant"
    )


def test_public_host_is_served_by_the_public_urlconf(client, alpha, split):
    assert client.get("/public/where/", HTTP_HOST=PUBLIC).json() == {
        "urlconf": "public",
        "reverse": "/public/where/",
        "tag": "/public/where/",
    }
    # A tenant view is not there: 404, not NoTenantError.
    assert client.get("/notes/", HTTP_HOST=PUBLIC).status_code == 404
    assert client.get("/admin/", HTTP_HOST=PUBLIC).status_code == 302  # to its sign-in


def test_tenant_host_is_served_by_the_tenant_urlconf(client, alpha, split):
    assert client.get("/where/", HTTP_HOST=ALPHA).json() == {
        "urlconf": "tenant",
        "reverse": "/where/",
        "tag": "/where/",
    }
    assert client.get("/notes/", HTTP_HOST=ALPHA).json() == {"notes": []}
    # The platform admin is not on a tenant's host.
    assert client.get("/admin/", HTTP_HOST=ALPHA).status_code == 404
    assert client.get("/public/where/", HTTP_HOST=ALPHA).status_code == 404
    assert get_urlconf() is None  # reset when the request finished


def test_async_requests_are_served_by_their_sites_urlconf(alpha, split):
    status, body = asyncio.run(asgi_get("/awhere/", ALPHA))
    assert (status, json.loads(body)["reverse"]) == (200, "/where/")
    status, body = asyncio.run(asgi_get("/public/awhere/", PUBLIC))
    assert (status, json.loads(body)["reverse"]) == (200, "/public/where/")
    assert asyncio.run(asgi_get("/anotes/", PUBLIC))[0] == 404
    assert asyncio.run(asgi_get("/admin/", ALPHA))[0] == 404


def wsgi_get(path, script_name=""):
    """A GET through Django's WSGI handler, which (unlike the test client) sets the script
    prefix from SCRIPT_NAME, as a WSGI server mounting the site at a sub-path would."""
    environ = RequestFactory()._base_environ(PATH_INFO=path, SCRIPT_NAME=script_name)
    started = []
    response = WSGIHandler()(environ, lambda status, headers: started.append(status))
    try:
        return started[0], b"".join(response)
    finally:
        response.close()


@pytest.fixture
def script_prefix():
    yield
    set_script_prefix("/")  # WSGIHandler leaves it set, as it does between requests


def test_path_resolver_keeps_the_tenant_prefix_and_script_name(
    client, alpha, split, settings, script_prefix
):
    tenancy_settings(settings, RESOLVER="path")
    assert client.get("/t/alpha/where/").json()["reverse"] == "/t/alpha/where/"
    status, body = wsgi_get("/t/alpha/where/", script_name="/app")
    assert (status, json.loads(body)) == (
        "200 OK",
        {"urlconf": "tenant", "reverse": "/app/t/alpha/where/", "tag": "/app/t/alpha/where/"},
    )
    status, body = wsgi_get("/public/where/", script_name="/app")
    assert json.loads(body)["reverse"] == "/app/public/where/"
    assert wsgi_get("/t/alpha/admin/")[0].startswith("404")
    assert wsgi_get("/admin/")[0].startswith("302")
    assert get_urlconf() is None
    assert get_script_prefix() == "/"


def test_streaming_responses_reverse_with_the_tenants_prefix(client, alpha, split, settings):
    tenancy_settings(settings, RESOLVER="path")
    response = client.get("/t/alpha/streamed-where/")
    assert b"".join(response.streaming_content) == b"/t/alpha/where/;/t/alpha/where/;"
    assert get_script_prefix() == "/"  # and not left set between chunks


def test_reverse_for_another_site_has_that_sites_path_prefix(client, alpha, beta, split, settings):
    tenancy_settings(settings, RESOLVER="path")
    body = client.get("/t/alpha/other-sites/").json()
    assert body == {"main": "/public/where/", "beta": "/t/beta/where/"}
    assert client.get("/t/beta/where/").json()["urlconf"] == "tenant"
    assert reverse("where", tenant=alpha) == "/t/alpha/where/"  # outside requests too


def test_unset_urlconfs_are_root_urlconf(client, alpha):
    assert client.get("/link/", HTTP_HOST=ALPHA).content == b"/notes/"
    assert client.get("/admin/", HTTP_HOST=ALPHA).status_code == 302


def test_reverse_takes_the_urlconf_from_the_tenant(alpha, split):
    assert reverse("where") == "/public/where/"  # no tenant: the main site
    with tenant_context(alpha):
        assert reverse("where") == "/where/"
        assert reverse("where", tenant=None) == "/public/where/"
        with pytest.raises(NoReverseMatch):
            reverse("admin:index")
    assert reverse("where", tenant=alpha) == "/where/"
    assert reverse("admin:index") == "/admin/"
    assert get_urlconf() is None  # no thread state was changed


@pytest.mark.parametrize("key", ["PUBLIC_URLCONF", "TENANT_URLCONF"])
@pytest.mark.parametrize(
    ("value", "message"),
    [("tests.no_such_urls", "cannot be imported"), ("", "dotted path"), (3, "dotted path")],
)
def test_urlconf_that_cannot_be_imported_is_refused(settings, key, value, message):
    tenancy_settings(settings, **{key: value})
    with pytest.raises(ImproperlyConfigured, match=rf"TENANCY\['{key}'\] .*{message}"):
        conf.validate()
    errors = [e for e in checks.run_checks() if e.id == "tenancy.E001"]
    assert len(errors) == 1
    assert key in errors[0].msg
