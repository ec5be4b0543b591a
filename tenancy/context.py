"""The current tenant, kept in a ContextVar.

asgiref's ``sync_to_async``/``async_to_sync``, ``asyncio`` tasks and ``asyncio.to_thread``
carry the value; plain ``threading.Thread`` and ``ThreadPoolExecutor.submit`` start with
no tenant, so tenant queries there fail closed with ``NoTenantError`` (``tenancy.threads``
has a thread and a pool that carry it).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from contextvars import ContextVar, Token
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, cast

from tenancy.exceptions import NoTenantError, TenantNotFound
from tenancy.validators import is_valid_slug

if TYPE_CHECKING:
    from tenancy.models import AbstractTenant

F = TypeVar("F", bound=Callable[..., Any])

_current: ContextVar[AbstractTenant | None] = ContextVar("tenancy_current_tenant", default=None)


def current_tenant() -> AbstractTenant | None:
    """The tenant active in this context, or ``None``."""
    return _current.get()


def require_tenant() -> AbstractTenant:
    """The tenant active in this context; ``NoTenantError`` when there is none."""
    tenant = _current.get()
    if tenant is None:
        raise NoTenantError(
            "No tenant is active here. Wrap the code in `with tenancy.tenant_context(tenant):` "
            "(the middleware does this for requests)."
        )
    return tenant


class tenant_context:
    """Make ``tenant`` current for a block, a function or a coroutine function.

    ``tenant`` is a tenant instance, a slug (looked up in the main database), or ``None``
    to run without a tenant. Nesting restores the outer tenant on exit::

        with tenant_context("acme"):
            Project.objects.count()          # acme's database

        @tenant_context(tenant)
        async def report(): ...

        async with tenant_context("acme"):   # slug looked up with the async ORM
            await Project.objects.acount()
    """

    def __init__(self, tenant: AbstractTenant | str | None) -> None:
        self._tenant = tenant
        self._tokens: list[Token[AbstractTenant | None]] = []

    def __enter__(self) -> AbstractTenant | None:
        tenant = self._tenant
        if isinstance(tenant, str):
            tenant = _get_by_slug(tenant)
        return self._push(tenant)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _current.reset(self._tokens.pop())

    async def __aenter__(self) -> AbstractTenant | None:
        tenant = self._tenant
        if isinstance(tenant, str):
            tenant = await _aget_by_slug(tenant)
        return self._push(tenant)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def _push(self, tenant: AbstractTenant | None) -> AbstractTenant | None:
        self._tokens.append(_current.set(tenant))
        return tenant

    def __call__(self, func: F) -> F:
        # A fresh context manager per call, so concurrent calls never share tokens.
        tenant = self._tenant
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                async with tenant_context(tenant):
                    return await func(*args, **kwargs)

            return cast(F, async_wrapper)

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with tenant_context(tenant):
                return func(*args, **kwargs)

        return cast(F, wrapper)


def _not_found(slug: str) -> TenantNotFound:
    if not is_valid_slug(slug):
        return TenantNotFound(f"{slug[:80]!r} is not a valid tenant slug, so no tenant has it.")
    return TenantNotFound(
        f"No tenant with slug {slug!r}. Create it with `manage.py create_tenant {slug}`."
    )


def find_by_slug(slug: str) -> AbstractTenant | None:
    """The tenant with ``slug``, or ``None``: one query on the main database."""
    from tenancy.models import get_tenant_model

    return get_tenant_model()._default_manager.filter(slug=slug).first()


def _get_by_slug(slug: str) -> AbstractTenant:
    if not is_valid_slug(slug):
        raise _not_found(slug)
    tenant = find_by_slug(slug)
    if tenant is None:
        raise _not_found(slug)
    return tenant


async def _aget_by_slug(slug: str) -> AbstractTenant:
    from tenancy.models import get_tenant_model

    if not is_valid_slug(slug):
        raise _not_found(slug)
    model = get_tenant_model()
    try:
        return await model._default_manager.aget(slug=slug)
    except model.DoesNotExist:
        raise _not_found(slug) from None
