"""tenancy.cache.make_key for keys written on the way out of a tenant request: sessions
and the site-wide page cache, whose middleware comes before TenantMiddleware."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth.models import User
from django.core.cache import cache
from django.test import AsyncClient, Client

from tenancy import tenant_context
from tenancy.cache import make_key
from tests.test_sessions import is_sent_to_sign_in, sign_in, visit

MAIN = "admin.example.test"
SESSIONS = "django.contrib.sessions.middleware.SessionMiddleware"
TENANTS = "tenancy.middleware.TenantMiddleware"
AUTHENTICATION = "django.contrib.auth.middleware.AuthenticationMiddleware"


@pytest.fixture
def tenant_cache(settings, db_access: None) -> Iterator[None]:
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "LOCATION": "tenancy-cache-keys",
            "KEY_FUNCTION": "tenancy.cache.make_key",
        }
    }
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    yield
    cache.clear()
    User.objects.all().delete()


@pytest.mark.parametrize("engine", ["cache", "cached_db"])
def test_sessions_in_the_cache_survive_a_sign_in_on_a_tenant(
    settings, tenant_cache, notes, engine
):
    settings.SESSION_ENGINE = f"django.contrib.sessions.backends.{engine}"
    User.objects.create_user("ann", password="demo")
    client = Client()
    sign_in(client, "alpha")
    assert visit(client, "alpha", "/private/").json() == {"user": "ann", "notes": ["alpha note"]}
    assert is_sent_to_sign_in(visit(client, "beta", "/private/"))


def test_session_keys_are_shared_so_a_session_ended_anywhere_is_ended(
    settings, tenant_cache, notes
):
    settings.SESSION_ENGINE = "django.contrib.sessions.backends.cached_db"
    User.objects.create_user("ann", password="demo")
    client = Client()
    cookie = sign_in(client, "alpha")
    assert visit(client, "alpha", "/me/").json()["user"] == "ann"
    key = "django.contrib.sessions.cached_db" + cookie
    alpha, _ = notes
    with tenant_context(alpha):
        inside = make_key(key, "", 1)
    assert inside == make_key(key, "", 1) == f":shared:1:{key}"
    # Signing the user out everywhere, from the main site or a command.
    from django.contrib.sessions.backends.cached_db import SessionStore

    SessionStore(cookie).delete()
    assert visit(client, "alpha", "/me/").json()["user"] is None


def page_cache_middleware(settings) -> None:
    """The site-wide cache as Django documents it: UpdateCacheMiddleware first,
    FetchFromCacheMiddleware last."""
    settings.MIDDLEWARE = [
        "django.middleware.cache.UpdateCacheMiddleware",
        SESSIONS,
        TENANTS,
        AUTHENTICATION,
        "django.middleware.cache.FetchFromCacheMiddleware",
    ]


def page(client: Client | AsyncClient, tenant: str | None, path: str) -> str:
    """The page at ``path`` for ``tenant`` (the header resolver: the same URL for all)."""
    headers = {"X-Tenant": tenant} if tenant else {}
    if isinstance(client, AsyncClient):
        response = async_to_sync(client.get)(path, headers=headers)
    else:
        response = client.get(path, headers=headers, HTTP_HOST=MAIN)
    assert response.status_code == 200
    return response.content.decode()


@pytest.mark.parametrize("handler", ["wsgi", "asgi"])
@pytest.mark.parametrize("cached", ["site-wide", "cache_page"])
def test_a_page_cached_for_a_tenant_is_served_to_it_alone(
    settings, tenant_cache, alpha, beta, cached, handler
):
    settings.TENANCY = {**settings.TENANCY, "RESOLVER": "header"}
    if cached == "site-wide":
        page_cache_middleware(settings)
        path = "/page/"
    else:
        path = "/cached-page/"
    client = Client() if handler == "wsgi" else AsyncClient()
    alpha_page = page(client, "alpha", path)
    assert alpha_page.startswith("alpha ")
    assert page(client, "alpha", path) == alpha_page  # from the cache
    main_page = page(client, None, path)
    assert main_page.startswith("main ")
    assert page(client, None, path) == main_page
    beta_page = page(client, "beta", path)
    assert beta_page.startswith("beta ")
    assert page(client, "beta", path) == beta_page
    assert page(client, "alpha", path) == alpha_page
    # After the requests, keys made outside any tenant are shared again.
    cache.set("after", "shared")
    with tenant_context(alpha):
        assert cache.get("after") is None
    assert cache.get("after") == "shared"


def test_a_page_cached_on_a_tenants_host_is_served_there_alone(settings, tenant_cache, alpha):
    page_cache_middleware(settings)
    client = Client()
    alpha_page = client.get("/page/", HTTP_HOST="alpha.example.test").content
    assert alpha_page.startswith(b"alpha ")
    assert client.get("/page/", HTTP_HOST="alpha.example.test").content == alpha_page
    assert client.get("/page/", HTTP_HOST=MAIN).content.startswith(b"main ")


def test_keys_made_with_no_tenant_belong_to_the_responding_tenant_until_the_request_ends(
    settings, tenant_cache, alpha
):
    """Keys of middleware before TenantMiddleware, on the way out; then shared again."""
    settings.MIDDLEWARE = ["tests.test_cache_keys.count_visits", SESSIONS, TENANTS]
    client = Client()
    for _ in range(2):
        assert client.get("/page/", HTTP_HOST="alpha.example.test").status_code == 200
    client.get("/page/", HTTP_HOST=MAIN)
    with tenant_context(alpha):
        assert cache.get("visits") == 2
    assert cache.get("visits") == 1


def count_visits(get_response):
    """Middleware before TenantMiddleware that counts its site's visits on the way out."""

    def middleware(request):
        response = get_response(request)
        cache.add("visits", 0)
        cache.incr("visits")
        return response

    return middleware
