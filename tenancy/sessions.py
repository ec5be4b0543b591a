"""Sign-ins bound to their site: a session signed in on one tenant (or on the main site) is
anonymous everywhere else.

Users and sessions live in the main database, so without this the session cookie of a
sign-in on one tenant would sign its user in on any other tenant: replayed on another
tenant's host, or sent along under another tenant's path prefix. At every sign-in
(``user_logged_in``) the session records the site it was made on: the tenant's slug and
primary key (a tenant created again under the same slug is another site), or the main
site. ``TenantMiddleware`` then guards the request's session: a signed-in session of
another site is read as an empty, new one, as Django reads a session it cannot load. So
``request.user`` and ``await request.auser()`` are anonymous there, and so is
``django.contrib.auth.get_user(request)`` wherever it is called; none of the session's
data is seen, signing in there starts a session of its own, and the session itself is left
as it was for its own site. Sessions without a sign-in are not bound.

Platform staff may cross sites only through an explicit opt-in,
``TENANCY["CROSS_TENANT_LOGIN"]``: a function ``(user, tenant) -> bool`` (``tenant`` is
``None`` on the main site), asked on each request that uses a session made on another
site::

    def may_cross(user, tenant):
        return user.is_active and user.groups.filter(name="support").exists()

The session's data is then seen as it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth import (
    BACKEND_SESSION_KEY,
    HASH_SESSION_KEY,
    SESSION_KEY,
    get_user_model,
    load_backend,
)
from django.contrib.auth import middleware as auth_middleware
from django.contrib.auth.signals import user_logged_in
from django.contrib.sessions.backends.base import SessionBase
from django.core.exceptions import ValidationError
from django.http import HttpRequest
from django.utils.crypto import constant_time_compare
from django.utils.functional import SimpleLazyObject

from tenancy.conf import tenancy_settings
from tenancy.context import current_tenant

if TYPE_CHECKING:
    from tenancy.models import AbstractTenant

# Where a signed-in session records its site.
TENANT_SESSION_KEY = "_tenancy_tenant"


def site_of(tenant: AbstractTenant | None) -> str:
    """What a session signed in on ``tenant`` (``None``: the main site) records."""
    return "" if tenant is None else f"{tenant.slug}:{tenant.pk}"


def record_site(sender: Any, request: HttpRequest | None, **kwargs: Any) -> None:
    """``user_logged_in`` receiver: bind the session to the request's site. Outside a
    request (the test client's ``login()``), the current tenant is the site."""
    session = getattr(request, "session", None)
    if request is None or session is None:
        return
    tenant = request.tenant if hasattr(request, "tenant") else current_tenant()
    session[TENANT_SESSION_KEY] = site_of(tenant)


user_logged_in.connect(record_site, dispatch_uid="tenancy.sessions.record_site")


def guard_session(request: HttpRequest, tenant: AbstractTenant | None) -> None:
    """Let the request see its session only if it was signed in on ``tenant``'s site
    (``None``: the main site). Called by ``TenantMiddleware`` as soon as the tenant is
    known; the check runs when the session is first read, so it costs nothing until then.
    """
    session: SessionBase | None = getattr(request, "session", None)
    if session is None or session.session_key is None:
        return  # no cookie: a new session, bound when someone signs in
    if session.accessed:
        # Read by middleware before TenantMiddleware, before the tenant was known: only
        # its own site's session is kept (CROSS_TENANT_LOGIN is not asked here, where the
        # middleware may be running in the event loop).
        if not _belongs(dict(session.items()), tenant):
            _forget(session)
            session._session_cache = {}  # type: ignore[attr-defined]
            _forget_user(request)
        return
    load, aload = session.load, session.aload

    def guarded_load() -> dict[str, Any]:
        data = load()
        if _belongs(data, tenant) or _may_cross(data, tenant):
            return data
        _forget(session)
        return {}

    async def guarded_aload() -> dict[str, Any]:
        data = await aload()
        if _belongs(data, tenant) or (
            tenancy_settings.CROSS_TENANT_LOGIN is not None
            and await sync_to_async(_may_cross)(data, tenant)
        ):
            return data
        _forget(session)
        return {}

    # The store's own methods, replaced on this instance only: every way of reading the
    # session (auth.get_user, aget_user, login(), the view's own reads) goes through them.
    session.load = guarded_load  # type: ignore[method-assign]
    session.aload = guarded_aload  # type: ignore[method-assign]


def _forget_user(request: HttpRequest) -> None:
    """Drop the user that authentication middleware before TenantMiddleware may have
    read from the session already: it is worked out again from the session as it is now."""
    for cached in ("_cached_user", "_acached_user"):
        request.__dict__.pop(cached, None)
    if hasattr(request, "user"):
        request.user = SimpleLazyObject(partial(auth_middleware.get_user, request))  # type: ignore[assignment]
        request.auser = partial(auth_middleware.auser, request)


def _belongs(data: Mapping[str, Any], tenant: AbstractTenant | None) -> bool:
    return SESSION_KEY not in data or data.get(TENANT_SESSION_KEY) == site_of(tenant)


def _forget(session: SessionBase) -> None:
    """Make ``session`` a new, empty one for this request, as Django makes a session it
    cannot load; written to, it is saved as another session. The browser's cookie is
    left alone unless the request writes to the session: where cookies are shared by
    several sites (the path resolver), it still signs the user in on its own."""
    session._session_key = None
    is_empty = session.is_empty

    def is_empty_once_written() -> bool:
        # SessionMiddleware deletes the cookie of a request whose session is empty.
        return (session.modified or settings.SESSION_SAVE_EVERY_REQUEST) and is_empty()

    session.is_empty = is_empty_once_written  # type: ignore[method-assign]


def _may_cross(data: Mapping[str, Any], tenant: AbstractTenant | None) -> bool:
    allowed = tenancy_settings.CROSS_TENANT_LOGIN
    if allowed is None:
        return False
    user = _signed_in_user(data)
    return user is not None and bool(allowed(user, tenant))


def _signed_in_user(data: Mapping[str, Any]) -> Any:
    """The user the session data signs in, verified as ``auth.get_user`` verifies it (a
    session whose hash matches only one of ``SECRET_KEY_FALLBACKS`` does not count)."""
    backend_path = data.get(BACKEND_SESSION_KEY)
    if not isinstance(backend_path, str) or backend_path not in settings.AUTHENTICATION_BACKENDS:
        return None
    try:
        user_id = get_user_model()._meta.pk.to_python(data[SESSION_KEY])
    except ValidationError:
        return None
    user = load_backend(backend_path).get_user(user_id)
    if user is None:
        return None
    if hasattr(user, "get_session_auth_hash"):
        session_hash = data.get(HASH_SESSION_KEY)
        if not session_hash or not constant_time_compare(
            session_hash, user.get_session_auth_hash()
        ):
            return None
    return user
