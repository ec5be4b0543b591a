"""How a request names its tenant: by host, subdomain, header, path prefix or a callable.

A resolver returns a ``Resolution``: no tenant (the request is for the main site), a
tenant, or a key that names no tenant or an archived one (the middleware answers 404).
Lookups go to the main database through ``resolve`` (sync) or ``aresolve`` (async ORM,
never blocking the event loop). The built-in resolvers' answers are cached in each process
(``tenancy.registry_cache``): a request for a known tenant costs no query.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from asgiref.sync import sync_to_async
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest
from django.http.request import split_domain_port
from django.urls import get_script_prefix, set_script_prefix
from django.utils.module_loading import import_string

from tenancy import registry_cache
from tenancy.conf import tenancy_settings
from tenancy.context import find_by_slug
from tenancy.models import AbstractTenant, Domain, TenantStatus
from tenancy.validators import is_valid_hostname, is_valid_slug

if TYPE_CHECKING:
    from contextlib import AbstractContextManager


@dataclass(frozen=True, slots=True)
class Resolution:
    """What a resolver found. ``key is None``: the main site, no tenant."""

    key: str | None = None
    tenant: AbstractTenant | None = None

    @property
    def not_found(self) -> bool:
        """Whether the key names no tenant, or one that is archived: kept for its data,
        never served (``tenancy.retention``)."""
        return self.key is not None and (
            self.tenant is None or self.tenant.status == TenantStatus.ARCHIVED
        )


MAIN_SITE = Resolution()


class TenantResolver:
    """Base class: subclasses say how to read the key and how to look it up.

    A resolver whose ``lookup`` reads only the tenant and domain tables may set
    ``cache_lookups = True`` to have its answers cached (the cache is kept current by
    writes of those two tables only). The setting counts from the class that defines the
    ``lookup`` in use down: a subclass with a ``lookup`` of its own is not cached unless it
    (or a subclass of it) says so too, and answers are kept apart by the class that defines
    the ``lookup``.
    """

    cache_lookups = False

    @classmethod
    def cache_kind(cls) -> str | None:
        """Under what name this resolver's answers are cached; ``None``: not cached."""
        return _cache_kind(cls)  # type: ignore[arg-type]

    def get_key(self, request: HttpRequest) -> str | None:
        """The tenant key the request carries, ``None`` for the main site. No queries."""
        raise NotImplementedError

    def lookup(self, key: str) -> AbstractTenant | None:
        raise NotImplementedError

    async def alookup(self, key: str) -> AbstractTenant | None:
        """``lookup`` from async code; override it with ``lookup`` (never alone)."""
        return await sync_to_async(self.lookup)(key)

    def resolve(self, request: HttpRequest) -> Resolution:
        key = self.get_key(request)
        if key is None:
            return MAIN_SITE
        if not self.is_valid_key(key):
            return Resolution(key)
        kind = self.cache_kind()
        if kind is None:
            return Resolution(key, self.lookup(key))
        return Resolution(key, registry_cache.lookup(kind, key, self.lookup))

    async def aresolve(self, request: HttpRequest) -> Resolution:
        key = self.get_key(request)
        if key is None:
            return MAIN_SITE
        if not self.is_valid_key(key):
            return Resolution(key)
        kind = self.cache_kind()
        if kind is None:
            return Resolution(key, await self.alookup(key))
        return Resolution(key, await registry_cache.alookup(kind, key, self.lookup))

    def is_valid_key(self, key: str) -> bool:
        return is_valid_slug(key)

    def activate(
        self, request: HttpRequest, resolution: Resolution
    ) -> AbstractContextManager[None]:
        """Adjust the request for the view while the tenant is active (path prefix)."""
        return _nothing()


class SlugResolver(TenantResolver):
    """Base for resolvers whose key is the tenant's slug."""

    cache_lookups = True

    def lookup(self, key: str) -> AbstractTenant | None:
        return find_by_slug(key)


def _request_host(request: HttpRequest) -> str:
    domain, _port = split_domain_port(request.get_host())
    return domain.lower().rstrip(".")


class HostResolver(TenantResolver):
    """The full hostname, looked up in the ``Domain`` table."""

    cache_lookups = True

    def get_key(self, request: HttpRequest) -> str | None:
        host = _request_host(request)
        return None if host in tenancy_settings.PUBLIC_HOSTS else host

    def is_valid_key(self, key: str) -> bool:
        return is_valid_hostname(key)

    def lookup(self, key: str) -> AbstractTenant | None:
        domain = Domain.objects.select_related("tenant").filter(domain=key).first()
        return domain.tenant if domain is not None else None


class SubdomainResolver(SlugResolver):
    """``<slug>.<BASE_DOMAIN>``; the base domain itself and PUBLIC_HOSTS are the main site."""

    def get_key(self, request: HttpRequest) -> str | None:
        base = tenancy_settings.BASE_DOMAIN
        if not base:
            raise ImproperlyConfigured(
                "TENANCY['BASE_DOMAIN'] must be set to use the subdomain resolver."
            )
        host = _request_host(request)
        if host == base or host in tenancy_settings.PUBLIC_HOSTS:
            return None
        label, dot, rest = host.partition(".")
        # A host outside the base domain, or more than one level below it, names no tenant.
        return label if dot and rest == base else host


class HeaderResolver(SlugResolver):
    """The slug in a request header (``TENANCY['HEADER']``). Only behind a trusted proxy
    that sets the header itself: clients could otherwise pick any tenant."""

    def get_key(self, request: HttpRequest) -> str | None:
        return request.headers.get(tenancy_settings.HEADER) or None


class PathResolver(SlugResolver):
    """``<PATH_PREFIX><slug>/...``; the view sees the rest of the path, and ``reverse()``
    includes the prefix. Other paths are the main site."""

    def get_key(self, request: HttpRequest) -> str | None:
        prefix = tenancy_settings.PATH_PREFIX
        if not request.path_info.startswith(prefix):
            return None
        return request.path_info[len(prefix) :].partition("/")[0]

    def activate(
        self, request: HttpRequest, resolution: Resolution
    ) -> AbstractContextManager[None]:
        if resolution.key is None:
            return _nothing()
        return self._strip_prefix(request, resolution.key)

    @contextmanager
    def _strip_prefix(self, request: HttpRequest, slug: str) -> Iterator[None]:
        consumed = f"{tenancy_settings.PATH_PREFIX}{slug}"
        request.path_info = request.path_info[len(consumed) :] or "/"
        old_prefix = get_script_prefix()
        set_script_prefix(f"{old_prefix.rstrip('/')}{consumed}/")
        try:
            yield
        finally:
            set_script_prefix(old_prefix)


class CallableResolver(TenantResolver):
    """Wraps a function ``(request) -> tenant | None`` (sync or async); None: main site."""

    def __init__(self, func: Callable[[HttpRequest], Any]) -> None:
        self.func = func
        self.is_async = inspect.iscoroutinefunction(func)

    def resolve(self, request: HttpRequest) -> Resolution:
        if self.is_async:
            raise ImproperlyConfigured(
                "An async TENANCY['RESOLVER'] function needs the middleware to run under ASGI."
            )
        return self._resolution(self.func(request))

    async def aresolve(self, request: HttpRequest) -> Resolution:
        if self.is_async:
            tenant = await self.func(request)
        else:
            tenant = await sync_to_async(self.func)(request)
        return self._resolution(tenant)

    @staticmethod
    def _resolution(tenant: AbstractTenant | None) -> Resolution:
        return MAIN_SITE if tenant is None else Resolution(tenant.slug, tenant)


@functools.cache
def _cache_kind(resolver: type[TenantResolver]) -> str | None:
    # The class whose lookup (or alookup) is in use, and whether it or a subclass asks for
    # caching. A class that overrides alookup alone is not cached: its answers in async
    # code would differ from the sync lookup that fills the cache.
    mro = resolver.__mro__
    owner = next(i for i, klass in enumerate(mro) if {"lookup", "alookup"} & set(vars(klass)))
    if "lookup" not in vars(mro[owner]):
        return None
    cached = next(
        (
            vars(klass)["cache_lookups"]
            for klass in mro[: owner + 1]
            if "cache_lookups" in vars(klass)
        ),
        False,
    )
    return f"{mro[owner].__module__}.{mro[owner].__qualname__}" if cached else None


BUILTIN_RESOLVERS: dict[str, type[TenantResolver]] = {
    "host": HostResolver,
    "subdomain": SubdomainResolver,
    "header": HeaderResolver,
    "path": PathResolver,
}


def get_resolver() -> TenantResolver:
    """The resolver configured by ``TENANCY['RESOLVER']``."""
    value = tenancy_settings.RESOLVER
    if isinstance(value, str):
        value = BUILTIN_RESOLVERS.get(value) or import_string(value)
    if isinstance(value, type) and issubclass(value, TenantResolver):
        return value()
    if isinstance(value, TenantResolver):
        return value
    if callable(value):
        return CallableResolver(value)
    raise ImproperlyConfigured(f"TENANCY['RESOLVER'] is not a resolver: {value!r}.")


@contextmanager
def _nothing() -> Iterator[None]:
    yield
