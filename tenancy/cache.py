"""One cache for every tenant, without leaks: keys made inside a tenant are its own.

In settings::

    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:6379",
            "KEY_FUNCTION": "tenancy.cache.make_key",
        }
    }

Every operation that names keys (``get``/``set``/``get_many``/``set_many``/``delete_many``,
``incr``, ``cache_page``, template fragment caching, ...) then works in the current
tenant's key space, and outside any tenant in a shared one. ``clear()`` names no key and
empties the whole cache, every tenant's keys included, as Django documents it.

Two kinds of keys are placed on purpose:

- Middleware before ``TenantMiddleware`` in ``MIDDLEWARE`` does its response work after
  the tenant has been reset: the site-wide cache's ``UpdateCacheMiddleware`` stores the
  page there. Until the request ends (``request_finished``), keys made with no tenant
  current are the request's tenant's, so the page is stored where
  ``FetchFromCacheMiddleware`` (after ``TenantMiddleware``) looks for it, and a tenant's
  page is never served to another tenant or to the main site. (A response that is never
  closed, such as middleware called directly in a test, keeps the space until the
  thread's next request starts.)
- Session keys (the ``cache`` and ``cached_db`` engines) are always shared: sessions are
  rows of the main database, bound to the site they were signed in on by
  ``tenancy.sessions``, and a session ended outside any tenant (signing a user out
  everywhere, say) must be gone for every tenant.
"""

from __future__ import annotations

import functools
from contextvars import ContextVar
from importlib import import_module
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.signals import request_finished, request_started

from tenancy.context import current_tenant

if TYPE_CHECKING:
    from tenancy.models import AbstractTenant

SHARED = "shared"

# The tenant of the request whose response is on its way out, for the middleware that
# handles it after TenantMiddleware has reset the current tenant.
_responding: ContextVar[AbstractTenant | None] = ContextVar(
    "tenancy_cache_responding_tenant", default=None
)


def make_key(key: str, key_prefix: str, version: int | str) -> str:
    """Django's default key layout with the tenant's slug (``t.<slug>``) or ``shared``."""
    if key.startswith(_session_key_prefixes(settings.SESSION_ENGINE)):
        space = SHARED
    else:
        tenant = current_tenant() or _responding.get()
        space = f"t.{tenant.slug}" if tenant is not None else SHARED
    return f"{key_prefix}:{space}:{version}:{key}"


def keep_space_for_response(tenant: AbstractTenant | None) -> None:
    """Called by ``TenantMiddleware`` when the response leaves the tenant's context: keys
    made with no tenant current belong to ``tenant`` until the request ends."""
    _responding.set(tenant)


def _request_boundary(**kwargs: Any) -> None:
    # Set without a token: under WSGI the value must outlive TenantMiddleware's call, and
    # each request (and its end) starts again from no tenant.
    _responding.set(None)


request_started.connect(_request_boundary, dispatch_uid="tenancy.cache.request_started")
request_finished.connect(_request_boundary, dispatch_uid="tenancy.cache.request_finished")


@functools.lru_cache(maxsize=8)
def _session_key_prefixes(engine: str) -> tuple[str, ...]:
    """Prefixes of the session keys of Django's cache engines and of ``engine``."""
    from django.contrib.sessions.backends import cache, cached_db

    prefixes = {cache.KEY_PREFIX, cached_db.KEY_PREFIX}
    try:
        prefix = getattr(import_module(engine).SessionStore, "cache_key_prefix", None)
    except (ImportError, AttributeError):
        prefix = None  # a wrong SESSION_ENGINE is reported when sessions are used
    if isinstance(prefix, str) and prefix:
        prefixes.add(prefix)
    return tuple(sorted(prefixes))
