"""TenantMiddleware: find the request's tenant and make it current for the view."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.db import InterfaceError, OperationalError, connections
from django.http import FileResponse, HttpRequest, HttpResponse, HttpResponseBase
from django.utils.html import escape

from tenancy.conf import tenancy_settings
from tenancy.connections import alias_for
from tenancy.context import tenant_context
from tenancy.models import AbstractTenant
from tenancy.resolvers import Resolution, get_resolver
from tenancy.transactions import atomic

logger = logging.getLogger("tenancy.middleware")

_PAGE = (
    '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title></head>'
    "<body><h1>{title}</h1><p>{text}</p></body></html>"
)


def tenant_not_found(request: HttpRequest, key: str) -> HttpResponse:
    return HttpResponse(
        _PAGE.format(title="Not found", text=f"There is no site at {escape(key[:255])}."),
        status=404,
    )


def tenant_unavailable(request: HttpRequest, tenant: AbstractTenant) -> HttpResponse:
    return HttpResponse(
        _PAGE.format(
            title="Temporarily unavailable",
            text=f"The site {escape(tenant.slug)} is not available right now.",
        ),
        status=503,
        headers={"Retry-After": "120"},
    )


class TenantMiddleware:
    """Resolve the tenant (see ``TENANCY['RESOLVER']``) and run the view inside its context.

    Sets ``request.tenant`` (``None`` on the main site). A key that names no tenant is
    answered with 404, a tenant that is not active with 503, before any view runs. The
    tenant is reset when the response is returned, and a streaming response produces each
    chunk inside the tenant's context.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        resolver = get_resolver()
        resolution = resolver.resolve(request)
        refusal = self._refuse(request, resolution)
        if refusal is not None:
            return refusal
        tenant = request.tenant = resolution.tenant  # type: ignore[attr-defined]
        with resolver.activate(request, resolution), tenant_context(tenant):
            response = self.get_response(request)
        return _keep_tenant_while_streaming(response, tenant)

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        resolver = get_resolver()
        resolution = await resolver.aresolve(request)
        refusal = self._refuse(request, resolution)
        if refusal is not None:
            return refusal
        tenant = request.tenant = resolution.tenant  # type: ignore[attr-defined]
        get_response: Callable[[HttpRequest], Awaitable[HttpResponseBase]] = self.get_response
        with resolver.activate(request, resolution):
            async with tenant_context(tenant):
                response = await get_response(request)
        return _keep_tenant_while_streaming(response, tenant)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        """A tenant whose database cannot be reached (its server is down, say) is answered
        with 503 rather than 500; the other tenants are not affected. Only errors of the
        tenant's own connection count: Django marks a connection on which an error
        other than a data or integrity error occurred."""
        tenant = getattr(request, "tenant", None)
        if tenant is None or not isinstance(exception, OperationalError | InterfaceError):
            return None
        if not getattr(connections[alias_for(tenant)], "errors_occurred", False):
            return None
        # The message names host and database, never credentials (psycopg leaves them out).
        logger.error("Tenant %s: its database is unreachable: %s", tenant.slug, exception)
        return tenant_unavailable(request, tenant)

    @staticmethod
    def _refuse(request: HttpRequest, resolution: Resolution) -> HttpResponse | None:
        if resolution.not_found:
            return tenant_not_found(request, resolution.key or "")
        tenant = resolution.tenant
        if tenant is not None and not tenant.is_active:
            return tenant_unavailable(request, tenant)
        return None


def _keep_tenant_while_streaming(
    response: HttpResponseBase, tenant: AbstractTenant | None
) -> HttpResponseBase:
    if not response.streaming or isinstance(response, FileResponse) or tenant is None:
        return response
    content = response.streaming_content  # type: ignore[attr-defined]
    if response.is_async:  # type: ignore[attr-defined]
        response.streaming_content = _aiter_in_context(content, tenant)  # type: ignore[attr-defined]
    else:
        response.streaming_content = _iter_in_context(content, tenant)  # type: ignore[attr-defined]
    return response


def _iter_in_context(content: Iterator[bytes], tenant: AbstractTenant) -> Iterator[bytes]:
    # Each chunk is produced inside the context and the tenant is reset in between, so
    # it never stays set in the server's thread while the response is being sent.
    iterator = iter(content)
    while True:
        with tenant_context(tenant):
            try:
                chunk = next(iterator)
            except StopIteration:
                return
        yield chunk


async def _aiter_in_context(
    content: AsyncIterator[bytes], tenant: AbstractTenant
) -> AsyncIterator[bytes]:
    iterator = aiter(content)
    while True:
        async with tenant_context(tenant):
            try:
                chunk = await anext(iterator)
            except StopAsyncIteration:
                return
        yield chunk


class TenantAtomicRequestsMiddleware:
    """With ``TENANCY['ATOMIC_REQUESTS']``, run each tenant request's view in a
    transaction on that tenant's database, as Django's ``ATOMIC_REQUESTS`` does for a
    configured database: an exception from the view rolls back its tenant writes.

    It calls the view from ``process_view``, so it must be the last entry in
    ``MIDDLEWARE`` (checked): later middleware's ``process_view`` would not run. Views
    marked with ``tenancy.middleware.non_atomic_tenant_request`` are left alone; async
    views are refused, as Django refuses them for ``ATOMIC_REQUESTS``.
    """

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> Any:
        return self.get_response(request)

    def process_view(
        self,
        request: HttpRequest,
        view: Callable[..., HttpResponseBase],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> HttpResponseBase | None:
        if (
            not tenancy_settings.ATOMIC_REQUESTS
            or getattr(request, "tenant", None) is None
            or getattr(view, "_non_atomic_tenant_request", False)
        ):
            return None
        if iscoroutinefunction(view):
            raise RuntimeError("TENANCY['ATOMIC_REQUESTS'] cannot wrap async views.")
        with atomic():
            return view(request, *args, **kwargs)


V = TypeVar("V", bound=Callable[..., Any])


def non_atomic_tenant_request(view: V) -> V:
    """Exempt a view from ``TENANCY['ATOMIC_REQUESTS']``."""
    view._non_atomic_tenant_request = True  # type: ignore[attr-defined]
    return view
