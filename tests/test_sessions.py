"""Sign-ins belong to the site they were made on: a tenant, or the main site.

Users and sessions live in the main database, so a session cookie of one tenant, replayed
on another tenant's host (or simply used under another tenant's path prefix), would sign its
user in there; these tests show the other tenant's rows that such a request would see.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from asgiref.sync import async_to_sync
from django.conf import settings as django_settings
from django.contrib.auth.middleware import AuthenticationMiddleware
from django.contrib.auth.models import Group, User
from django.contrib.sessions.middleware import SessionMiddleware
from django.contrib.sessions.models import Session
from django.core.cache import caches
from django.test import Client

from tenancy.checks import check_session_binding, check_settings
from tenancy.models import Domain, Tenant, TenantStatus
from tenancy.testing import TenantAsyncClient, TenantClient
from tests.conftest import make_tenant

MAIN = "admin.example.test"
ENGINES = ["db", "cache", "cached_db", "signed_cookies"]


@pytest.fixture
def users(db_access: None, settings) -> Iterator[None]:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    User.objects.create_user("ann", password="demo")
    yield
    Session.objects.all().delete()
    User.objects.all().delete()
    Group.objects.all().delete()
    caches["default"].clear()


def use(settings, engine: str = "db", resolver: str = "host") -> None:
    settings.SESSION_ENGINE = f"django.contrib.sessions.backends.{engine}"
    settings.TENANCY = {**settings.TENANCY, "RESOLVER": resolver}


def visit(client: Client, site: str | None, path: str, data: dict | None = None):
    """GET (or POST ``data``) ``path`` on tenant ``site`` (``None``: the main site)."""
    if django_settings.TENANCY.get("RESOLVER") == "path":
        host, path = MAIN, (path if site is None else f"/t/{site}{path}")
    else:
        host = MAIN if site is None else f"{site}.example.test"
    if data is None:
        return client.get(path, HTTP_HOST=host)
    return client.post(path, data, HTTP_HOST=host)


def sign_in(client: Client, site: str | None, username: str = "ann") -> str:
    """Sign in on ``site`` as a sign-in form would; the session cookie's value."""
    response = visit(client, site, "/sign-in/", {"username": username, "password": "demo"})
    assert response.content == b"signed in"
    return client.cookies[django_settings.SESSION_COOKIE_NAME].value


def replay(client: Client, cookie: str) -> None:
    client.cookies[django_settings.SESSION_COOKIE_NAME] = cookie


def with_cookie(cookie: str, client: Client | None = None) -> Client:
    client = client or Client()
    replay(client, cookie)
    return client


def is_sent_to_sign_in(response) -> bool:
    return response.status_code == 302 and response.url.startswith("/accounts/login/")


@pytest.mark.parametrize("resolver", ["host", "path"])
@pytest.mark.parametrize("engine", ENGINES)
def test_a_sign_in_on_a_tenant_is_anonymous_on_other_sites(
    settings, users, notes, engine, resolver
):
    use(settings, engine, resolver)
    client = Client()
    cookie = sign_in(client, "alpha")
    assert visit(client, "alpha", "/private/").json() == {"user": "ann", "notes": ["alpha note"]}
    for site in ("beta", None):
        assert is_sent_to_sign_in(visit(client, site, "/private/"))
        assert client.cookies[django_settings.SESSION_COOKIE_NAME].value == cookie
    # The session and its cookie are left alone: they still sign ann in on alpha.
    assert visit(client, "alpha", "/private/").json()["user"] == "ann"


@pytest.mark.parametrize("engine", ENGINES)
def test_a_sign_in_on_the_main_site_is_anonymous_on_tenants(settings, users, notes, engine):
    use(settings, engine)
    client = Client()
    cookie = sign_in(client, None)
    assert visit(client, None, "/me/").json() == {"user": "ann", "get_user": "ann"}
    assert is_sent_to_sign_in(visit(client, "alpha", "/private/"))
    assert visit(with_cookie(cookie), None, "/me/").json()["user"] == "ann"


def test_signing_in_on_another_tenant_starts_a_session_of_its_own(settings, users, notes):
    client = Client()
    alpha_cookie = sign_in(client, "alpha")
    beta_cookie = sign_in(client, "beta")  # the same user, with alpha's cookie
    assert beta_cookie != alpha_cookie
    assert visit(client, "beta", "/private/").json() == {"user": "ann", "notes": ["beta note"]}
    assert is_sent_to_sign_in(visit(client, "alpha", "/private/"))
    replay(client, alpha_cookie)
    assert visit(client, "alpha", "/private/").json() == {"user": "ann", "notes": ["alpha note"]}


def asgi_get(cookie: str, tenant: Tenant, path: str):
    """GET ``path`` on ``tenant`` through the ASGI handler, with session cookie ``cookie``."""
    client = with_cookie(cookie, TenantAsyncClient(tenant))
    return async_to_sync(client.get)(path)


@pytest.mark.parametrize("path", ["/me/", "/ame/"])
@pytest.mark.parametrize("handler", ["wsgi", "asgi"])
def test_auser_and_get_user_are_anonymous_on_another_tenant(users, alpha, beta, handler, path):
    """``request.user``, ``await request.auser()`` and ``auth.get_user(request)``."""
    client = Client()
    cookie = sign_in(client, "alpha")
    for tenant, user in ((alpha, "ann"), (beta, None)):
        if handler == "wsgi":
            response = visit(with_cookie(cookie), tenant.slug, path)
        else:
            response = asgi_get(cookie, tenant, path)
        assert set(response.json().values()) == {user}


def test_a_tenant_created_again_under_its_slug_does_not_inherit_sessions(users, alpha):
    client = Client()
    sign_in(client, "alpha")
    Tenant.objects.filter(pk=alpha.pk).delete()
    again = make_tenant("alpha", "one", status=TenantStatus.ACTIVE)
    again.save()
    Domain.objects.create(domain="alpha.example.test", tenant=again, is_primary=True)
    assert visit(client, "alpha", "/me/").json() == {"user": None, "get_user": None}


def reads_the_session(get_response):
    """Middleware before TenantMiddleware that reads the session, as a theme switch might."""

    def middleware(request):
        request.session.get("theme")
        return get_response(request)

    return middleware


def reads_the_user(get_response):
    """Middleware before TenantMiddleware that looks at the user (a "last seen" stamp)."""

    def middleware(request):
        request.user.is_authenticated  # noqa: B018
        return get_response(request)

    return middleware


def test_a_user_read_before_the_tenant_is_known_is_worked_out_again(settings, users, notes):
    settings.MIDDLEWARE = [
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "tests.test_sessions.reads_the_user",
        "tenancy.middleware.TenantMiddleware",
    ]
    client = Client()
    cookie = sign_in(client, "alpha")
    assert visit(with_cookie(cookie), "beta", "/me/").json() == {"user": None, "get_user": None}
    assert visit(with_cookie(cookie), "beta", "/private/").status_code == 302
    assert visit(with_cookie(cookie), "alpha", "/me/").json()["user"] == "ann"


class OwnSessionMiddleware(SessionMiddleware):
    pass


class OwnAuthenticationMiddleware(AuthenticationMiddleware):
    pass


def test_subclasses_of_the_session_and_authentication_middleware_are_checked(settings):
    own_sessions = "tests.test_sessions.OwnSessionMiddleware"
    own_authentication = "tests.test_sessions.OwnAuthenticationMiddleware"
    settings.MIDDLEWARE = [TENANTS, own_sessions, AUTHENTICATION]
    assert [error.id for error in check_session_binding()] == ["tenancy.E009"]
    settings.MIDDLEWARE = [SESSIONS, own_authentication, TENANTS]
    assert [error.id for error in check_session_binding()] == ["tenancy.E010"]
    settings.MIDDLEWARE = [own_sessions, TENANTS, own_authentication]
    assert check_session_binding() == []


def test_a_session_read_before_the_tenant_is_known_is_guarded_too(settings, users, notes):
    settings.MIDDLEWARE = [
        "django.contrib.sessions.middleware.SessionMiddleware",
        "tests.test_sessions.reads_the_session",
        "tenancy.middleware.TenantMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
    ]
    client = Client()
    cookie = sign_in(client, "alpha")
    assert visit(client, "alpha", "/private/").json()["notes"] == ["alpha note"]
    assert visit(client, "beta", "/me/").json() == {"user": None, "get_user": None}
    assert visit(with_cookie(cookie), "alpha", "/me/").json()["user"] == "ann"


CROSSINGS: list[tuple[str, str | None]] = []


def may_cross(user: User, tenant: Tenant | None) -> bool:
    """The tests' opt-in: members of the "support" group use their session anywhere."""
    CROSSINGS.append((user.username, tenant.slug if tenant else None))
    return user.groups.filter(name="support").exists()


def staff(username: str, **fields: object) -> str:
    """A staff user signed in on the main site; the session cookie's value."""
    User.objects.create_user(username, password="demo", is_staff=True, **fields)
    return sign_in(Client(), None, username)


def test_platform_staff_cross_tenants_only_where_the_setting_lets_them(settings, users, notes):
    root = staff("root", is_superuser=True)
    sam = staff("sam")
    User.objects.get(username="sam").groups.add(Group.objects.create(name="support"))
    for cookie in (root, sam):
        assert is_sent_to_sign_in(visit(with_cookie(cookie), "alpha", "/private/"))
    settings.TENANCY = {**settings.TENANCY, "CROSS_TENANT_LOGIN": "tests.test_sessions.may_cross"}
    CROSSINGS.clear()
    # A superuser is not let through for being one.
    assert is_sent_to_sign_in(visit(with_cookie(root), "alpha", "/private/"))
    client = with_cookie(sam)
    assert visit(client, "alpha", "/private/").json() == {"user": "sam", "notes": ["alpha note"]}
    assert visit(client, "beta", "/private/").json() == {"user": "sam", "notes": ["beta note"]}
    _, beta = notes
    assert asgi_get(sam, beta, "/ame/").json() == {"user": "sam"}
    assert CROSSINGS == [("root", "alpha"), ("sam", "alpha"), ("sam", "beta"), ("sam", "beta")]
    # Where the session was made it is the user's own: there is nothing to decide.
    assert visit(client, None, "/me/").json()["user"] == "sam"
    assert len(CROSSINGS) == 4


@pytest.mark.parametrize("value", [True, "tests.test_sessions.no_such_function"])
def test_cross_tenant_login_setting_is_validated(settings, value):
    settings.TENANCY = {**settings.TENANCY, "CROSS_TENANT_LOGIN": value}
    errors = check_settings()
    assert [error.id for error in errors] == ["tenancy.E001"]
    assert errors[0].msg.startswith("TENANCY['CROSS_TENANT_LOGIN'] ")
    assert "function (user, tenant)" in errors[0].msg


def test_tenant_clients_sign_in_on_their_tenant(users, alpha, beta):
    ann = User.objects.get(username="ann")
    client = TenantClient(alpha)
    client.force_login(ann)
    assert client.get("/me/").json()["user"] == "ann"
    cookie = client.cookies[django_settings.SESSION_COOKIE_NAME].value
    other = with_cookie(cookie, TenantClient(beta))
    assert other.get("/me/").json()["user"] is None
    assert other.login(username="ann", password="demo")
    assert other.get("/me/").json()["user"] == "ann"
    async_client = TenantAsyncClient(beta)
    async_to_sync(async_client.aforce_login)(ann)
    assert async_to_sync(async_client.get)("/ame/").json() == {"user": "ann"}
    cookie = async_client.cookies[django_settings.SESSION_COOKIE_NAME].value
    assert with_cookie(cookie, TenantClient(alpha)).get("/me/").json()["user"] is None


SESSIONS = "django.contrib.sessions.middleware.SessionMiddleware"
TENANTS = "tenancy.middleware.TenantMiddleware"
AUTHENTICATION = "django.contrib.auth.middleware.AuthenticationMiddleware"


def test_tenant_middleware_must_sit_between_sessions_and_authentication(settings):
    assert check_session_binding() == []
    settings.MIDDLEWARE = [TENANTS, SESSIONS, AUTHENTICATION]
    assert [error.id for error in check_session_binding()] == ["tenancy.E009"]
    settings.MIDDLEWARE = [SESSIONS, AUTHENTICATION, TENANTS]
    assert [error.id for error in check_session_binding()] == ["tenancy.E010"]
    settings.MIDDLEWARE = [SESSIONS, AUTHENTICATION]  # no tenants served: nothing to bind
    assert check_session_binding() == []
