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
"""

from __future__ import annotations

from tenancy.context import current_tenant


def make_key(key: str, key_prefix: str, version: int | str) -> str:
    """Django's default key layout with the tenant's slug (``t.<slug>``) or ``shared``."""
    tenant = current_tenant()
    space = f"t.{tenant.slug}" if tenant is not None else "shared"
    return f"{key_prefix}:{space}:{version}:{key}"
