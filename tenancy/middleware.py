"""TenantMiddleware: find the request's tenant and make it current for the view."""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.db import DatabaseError, InterfaceError, OperationalError
from django.http import FileResponse, HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from django.http.request import split_domain_port
from django.template import TemplateDoesNotExist, loader
from django.urls import get_script_prefix, set_script_prefix, set_urlconf
from django.utils.html import escape

from tenancy.backends import get_server
from tenancy.cache import keep_space_for_response
from tenancy.conf import tenancy_settings
from tenancy.connections import connection_failed
from tenancy.context import tenant_context
from tenancy.exceptions import ConnectionLimitReached, TenancyError, TenantRemoved
from tenancy.models import AbstractTenant, TenantStatus
from tenancy.resolvers import HostResolver, Resolution, get_resolver
from tenancy.sessions import guard_session
from tenancy.transactions import atomic

logger = logging.getLogger("tenancy.middleware")

_PAGE = (
    '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title></head>'
    "<body><h1>{title}</h1><p>{text}</p></body></html>"
)


def tenant_not_found(request: HttpRequest, key: str) -> HttpResponseBase:
    """The 404 answer to a request whose key names no tenant: ``TENANCY['NOT_FOUND_VIEW']``
    if set, else JSON when the client prefers it, else ``tenancy/not_found.html`` (context:
    ``key``) if a template of that name exists, else a plain page."""
    view = tenancy_settings.NOT_FOUND_VIEW
    if view is not None:
        return view(request, key)  # type: ignore[no-any-return]
    key = key[:255]
    return _error_page(
        request,
        status=404,
        error="tenant_not_found",
        title="Not found",
        detail=f"There is no site at {key}.",
        template_name="tenancy/not_found.html",
        context={"key": key},
    )


def tenant_unavailable(
    request: HttpRequest, tenant: AbstractTenant, retry_after: int = 120
) -> HttpResponseBase:
    """The 503 answer to a request for a tenant that is not active (or whose database
    cannot be reached, or that got no connection under the cap):
    ``TENANCY['UNAVAILABLE_VIEW']`` if set, else JSON when the client prefers it, else
    ``tenancy/unavailable.html`` (context: ``tenant``) if a template of that name exists,
    else a plain page; the last three say Retry-After (seconds)."""
    view = tenancy_settings.UNAVAILABLE_VIEW
    if view is not None:
        return view(request, tenant)  # type: ignore[no-any-return]
    return _error_page(
        request,
        status=503,
        error="tenant_unavailable",
        title="Temporarily unavailable",
        detail=f"The site {tenant.slug} is not available right now.",
        template_name="tenancy/unavailable.html",
        context={"tenant": tenant},
        headers={"Retry-After": str(retry_after)},
    )


def _error_page(
    request: HttpRequest,
    *,
    status: int,
    error: str,
    title: str,
    detail: str,
    template_name: str,
    context: dict[str, Any],
    headers: dict[str, str] | None = None,
) -> HttpResponse:
    if request.get_preferred_type(["text/html", "application/json"]) == "application/json":
        return JsonResponse({"error": error, "detail": detail}, status=status, headers=headers)
    try:
        template = loader.get_template(template_name)
    except TemplateDoesNotExist:
        content = _PAGE.format(title=title, text=escape(detail))
    else:
        content = template.render(context, request)
    return HttpResponse(content, status=status, headers=headers)


def _use_urlconf(request: HttpRequest, tenant: AbstractTenant | None) -> None:
    """Serve the request with the URLconf of its site. Django resolves the view with
    ``request.urlconf`` and resets the thread's URLconf when the request finishes; it is
    set here as well so that ``reverse()`` in later middleware is already right. Unset:
    ``ROOT_URLCONF``, or what middleware before this one chose."""
    configured = (
        tenancy_settings.PUBLIC_URLCONF if tenant is None else tenancy_settings.TENANT_URLCONF
    )
    if configured is not None:
        request.urlconf = configured
        set_urlconf(configured)


class TenantMiddleware:
    """Resolve the tenant (see ``TENANCY['RESOLVER']``) and run the view inside its context.

    Sets ``request.tenant`` (``None`` on the main site). A key that names no tenant (or an
    archived one) is answered with 404, a tenant that is not active with 503, before any
    view runs. The tenant is reset when the response is returned, and a streaming response
    produces each chunk inside the tenant's context.
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
        guard_session(request, tenant)
        _use_urlconf(request, tenant)
        _report_tenant(tenant)
        with resolver.activate(request, resolution), tenant_context(tenant):
            response = self.get_response(request)
            prefix = get_script_prefix()
        keep_space_for_response(tenant)
        return _keep_tenant_while_streaming(response, tenant, prefix)

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        resolver = get_resolver()
        resolution = await resolver.aresolve(request)
        refusal = self._refuse(request, resolution)
        if refusal is not None:
            return refusal
        tenant = request.tenant = resolution.tenant  # type: ignore[attr-defined]
        guard_session(request, tenant)
        _use_urlconf(request, tenant)
        _report_tenant(tenant)
        get_response: Callable[[HttpRequest], Awaitable[HttpResponseBase]] = self.get_response
        with resolver.activate(request, resolution):
            async with tenant_context(tenant):
                response = await get_response(request)
            prefix = get_script_prefix()
        keep_space_for_response(tenant)
        return _keep_tenant_while_streaming(response, tenant, prefix)

    def process_exception(
        self, request: HttpRequest, exception: Exception
    ) -> HttpResponseBase | None:
        """A tenant whose database cannot be reached (its server is down, say) is answered
        with 503 rather than 500; the other tenants are not affected. A request whose
        tenant was deleted or archived while it ran is answered with 404, as if that had
        happened before, and one whose tenant is being deleted (or was suspended)
        meanwhile with 503. See ``tenant_error_response``."""
        tenant = getattr(request, "tenant", None)
        if tenant is None:
            return None
        return tenant_error_response(request, tenant, exception)

    @staticmethod
    def _refuse(request: HttpRequest, resolution: Resolution) -> HttpResponseBase | None:
        tenant = resolution.tenant
        unavailable = (
            tenant is not None
            and not tenant.is_active
            and not _served_while_moving(request, tenant)
        )
        if resolution.not_found or unavailable:
            # Answered for no tenant: links on the page lead to the main site.
            _use_urlconf(request, None)
        if resolution.not_found:
            return tenant_not_found(request, resolution.key or "")
        if unavailable:
            return tenant_unavailable(request, tenant)  # type: ignore[arg-type]
        if tenant is not None and not tenant.is_active:
            _keep_session_unsaved(request)  # a read served while the tenant moves
        return None


def _report_tenant(tenant: AbstractTenant | None) -> None:
    """Tag the request's Sentry scope with the tenant, once ``tenancy.sentry`` is installed."""
    sentry = sys.modules.get("tenancy.sentry")
    if tenant is not None and sentry is not None and sentry.is_installed():
        sentry.tag_request(tenant)


def _served_while_moving(request: HttpRequest, tenant: AbstractTenant) -> bool:
    """A read of a tenant being moved, served from its source: only where the server keeps
    every write out of it meanwhile (PostgreSQL), so that no write can land in a database
    about to be dropped."""
    if not (
        tenant.status == TenantStatus.MOVING
        and request.method in _READS
        and tenancy_settings.READ_ONLY_WHILE_MOVING
    ):
        return False
    try:
        if not get_server(tenant.server).fences_writers:
            return False
    except TenancyError:
        return False  # its server left the settings: not served
    return True


def _keep_session_unsaved(request: HttpRequest) -> None:
    """A session kept in the tenant's database is not saved: it is read-only meanwhile."""
    session = getattr(request, "session", None)
    if session is not None and "sessions" in tenancy_settings.tenant_app_labels:
        session.save = _no_save


def _no_save(*args: Any, **kwargs: Any) -> None:
    return None


_READS = ("GET", "HEAD", "OPTIONS")
# Seconds a client is asked to wait after a request refused at the connection cap.
CONNECTION_RETRY_AFTER = 5
# PostgreSQL's SQLSTATE for a write in a read-only transaction.
_READ_ONLY_TRANSACTION = "25006"


def tenant_error_response(
    request: HttpRequest, tenant: AbstractTenant, exception: Exception
) -> HttpResponseBase | None:
    """The answer to ``exception`` raised while serving ``tenant``, when it is an error of
    the tenant's own database; ``None`` for any other error.

    Only errors of the tenant's own connections count: Django marks a connection on
    which an error other than a data or integrity error occurred, and tenancy raises
    ``TenantRemoved`` for a connection of a tenant removed from the process meanwhile.
    The registry decides the answer: 404 when the tenant is gone or archived, 503 when it
    is not active (being deleted, say) or its database cannot be reached.
    """
    if isinstance(exception, ConnectionLimitReached):
        # Logged where it was raised, with the process's connections.
        return tenant_unavailable(request, tenant, retry_after=CONNECTION_RETRY_AFTER)
    if isinstance(exception, TenantRemoved):
        if exception.slug != tenant.slug:
            return None
    elif (
        tenant.status == TenantStatus.MOVING
        and getattr(exception.__cause__, "sqlstate", None) == _READ_ONLY_TRANSACTION
    ):
        # A read served while the tenant moves that wrote after all.
        return tenant_unavailable(request, tenant)
    elif not isinstance(exception, DatabaseError) or not connection_failed(tenant):
        return None
    status = (
        type(tenant)._default_manager.filter(pk=tenant.pk).values_list("status", flat=True).first()
    )
    if status is None or status == TenantStatus.ARCHIVED:
        logger.warning(
            "Tenant %s was %s while a request for it ran", tenant.slug, status or "deleted"
        )
        return tenant_not_found(request, _tenant_key(request, tenant))
    if status != TenantStatus.ACTIVE:
        return tenant_unavailable(request, tenant)
    if isinstance(exception, TenantRemoved):
        logger.warning("Tenant %s: %s", tenant.slug, exception)
    elif isinstance(exception, OperationalError | InterfaceError):
        # The message names host and database, never credentials (psycopg leaves them out).
        logger.error("Tenant %s: its database is unreachable: %s", tenant.slug, exception)
    else:
        return None
    return tenant_unavailable(request, tenant)


def _tenant_key(request: HttpRequest, tenant: AbstractTenant) -> str:
    """What the request named its tenant by, for the 404 page."""
    if isinstance(get_resolver(), HostResolver):
        return split_domain_port(request.get_host())[0].lower()
    return tenant.slug


def _keep_tenant_while_streaming(
    response: HttpResponseBase, tenant: AbstractTenant | None, prefix: str
) -> HttpResponseBase:
    if not response.streaming or isinstance(response, FileResponse) or tenant is None:
        return response
    content = response.streaming_content  # type: ignore[attr-defined]
    if response.is_async:  # type: ignore[attr-defined]
        response.streaming_content = _aiter_in_context(content, tenant, prefix)  # type: ignore[attr-defined]
    else:
        response.streaming_content = _iter_in_context(content, tenant, prefix)  # type: ignore[attr-defined]
    return response


@contextmanager
def _as_for_the_view(tenant: AbstractTenant, prefix: str) -> Iterator[None]:
    """The tenant, and the script prefix the view had (the path resolver's, so that
    ``reverse()`` while streaming gives the tenant's URLs), for one chunk."""
    outside = get_script_prefix()
    set_script_prefix(prefix)
    try:
        with tenant_context(tenant):
            yield
    finally:
        set_script_prefix(outside)


def _iter_in_context(
    content: Iterator[bytes], tenant: AbstractTenant, prefix: str
) -> Iterator[bytes]:
    # Each chunk is produced inside the context and the tenant is reset in between, so
    # it never stays set in the server's thread while the response is being sent.
    iterator = iter(content)
    while True:
        with _as_for_the_view(tenant, prefix):
            try:
                chunk = next(iterator)
            except StopIteration:
                return
        yield chunk


async def _aiter_in_context(
    content: AsyncIterator[bytes], tenant: AbstractTenant, prefix: str
) -> AsyncIterator[bytes]:
    iterator = aiter(content)
    while True:
        with _as_for_the_view(tenant, prefix):
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
        try:
            with atomic():
                return view(request, *args, **kwargs)
        except Exception as exc:
            # Django hands an exception raised here to no process_exception(): answer
            # what TenantMiddleware would answer.
            response = tenant_error_response(request, request.tenant, exc)  # type: ignore[attr-defined]
            if response is None:
                raise
            return response


V = TypeVar("V", bound=Callable[..., Any])


def non_atomic_tenant_request(view: V) -> V:
    """Exempt a view from ``TENANCY['ATOMIC_REQUESTS']``."""
    view._non_atomic_tenant_request = True  # type: ignore[attr-defined]
    return view
