"""Transactions on the current tenant's database.

Django's ``transaction.atomic()`` and ``transaction.on_commit()`` mean the ``default``
database unless told otherwise, and ``default`` is the main database here. These do the
same on the current tenant's database::

    with tenancy.atomic():
        order.save()
        line.save()          # both or neither

    tenancy.on_commit(lambda: send_receipt(order.pk))
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar, cast, overload

from django.db import DEFAULT_DB_ALIAS, connections, transaction

from tenancy.connections import alias_for
from tenancy.context import require_tenant

F = TypeVar("F", bound=Callable[..., Any])


def tenant_alias() -> str:
    """The connection alias of the current tenant; ``NoTenantError`` without one."""
    return alias_for(require_tenant())


class TenantAtomic:
    """``transaction.atomic`` on the current tenant's database (see ``atomic``)."""

    def __init__(self, savepoint: bool = True, durable: bool = False) -> None:
        self.savepoint = savepoint
        self.durable = durable
        self._entered: list[transaction.Atomic] = []

    def __enter__(self) -> None:
        inner = transaction.atomic(
            using=tenant_alias(), savepoint=self.savepoint, durable=self.durable
        )
        inner.__enter__()
        self._entered.append(inner)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._entered.pop().__exit__(exc_type, exc, tb)

    async def __aenter__(self) -> None:
        raise TypeError(
            "tenancy.atomic() cannot be used with `async with`: Django runs a transaction in "
            "one thread. Put the transactional code in a sync function decorated with "
            "@tenancy.atomic and call it with sync_to_async (the tenant goes along)."
        )

    async def __aexit__(self, *exc_info: object) -> None:
        """Never reached: ``__aenter__`` refuses."""

    def __call__(self, func: F) -> F:
        if inspect.iscoroutinefunction(func):
            raise TypeError(
                f"tenancy.atomic cannot wrap the coroutine function {func.__qualname__}: "
                "Django runs a transaction in one thread. Decorate a sync function and "
                "call it with sync_to_async."
            )
        savepoint, durable = self.savepoint, self.durable

        @functools.wraps(func)
        def inner(*args: Any, **kwargs: Any) -> Any:
            # A fresh instance per call: concurrent calls never share state.
            with TenantAtomic(savepoint, durable):
                return func(*args, **kwargs)

        return cast(F, inner)


@overload
def atomic(func: F, /) -> F: ...
@overload
def atomic(*, savepoint: bool = True, durable: bool = False) -> TenantAtomic: ...
def atomic(
    func: Callable[..., Any] | None = None, /, *, savepoint: bool = True, durable: bool = False
) -> Any:
    """A transaction on the current tenant's database, like ``transaction.atomic``.

    Context manager or decorator, with or without parentheses; ``savepoint`` and
    ``durable`` mean what they mean in Django. The tenant is looked up when the block is
    entered, so a decorated function uses the tenant current at each call. Without a
    tenant it raises ``NoTenantError``::

        @tenancy.atomic
        def place_order(cart): ...

        with tenancy.atomic(durable=True):
            ...
    """
    if func is not None:
        return TenantAtomic()(func)
    return TenantAtomic(savepoint=savepoint, durable=durable)


def on_commit(func: Callable[[], object], robust: bool = False) -> None:
    """Run ``func`` after the current tenant's transaction commits (at once outside one);
    never if it rolls back. ``NoTenantError`` without a tenant."""
    transaction.on_commit(func, using=tenant_alias(), robust=robust)


class DefaultTransactionWarning(RuntimeWarning):
    """A tenant model was written inside a transaction on the main database only."""


def warn_if_only_default_in_transaction(alias: str, model: type[Any]) -> None:
    """Warn when ``default`` has a transaction open and the tenant's database has none:
    the write is not part of that transaction (``transaction.atomic()`` without
    ``using=``, where ``tenancy.atomic()`` was meant)."""
    default = connections[DEFAULT_DB_ALIAS]
    if not default.in_atomic_block or connections[alias].in_atomic_block:
        return
    warnings.warn(
        f"{model._meta.label} is written to {alias!r} while a transaction is open on the main "
        "database and none on the tenant's: this write will not roll back with it. Use "
        "tenancy.atomic() instead of transaction.atomic() for tenant data.",
        DefaultTransactionWarning,
        stacklevel=5,
    )
