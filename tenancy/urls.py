"""Which URLconf serves a site: ``TENANCY['PUBLIC_URLCONF']`` on the main site,
``TENANCY['TENANT_URLCONF']`` on tenants, ``ROOT_URLCONF`` for either one left unset.

``TenantMiddleware`` sets ``request.urlconf`` from it, so ``reverse()`` and ``{% url %}``
are right during a request. Outside requests (commands, tasks, code inside
``tenant_context()``) Django's ``reverse()`` uses ``ROOT_URLCONF``: use ``reverse`` from
here, which takes the URLconf from the tenant.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.urls import reverse as django_reverse

from tenancy.conf import tenancy_settings
from tenancy.context import current_tenant

if TYPE_CHECKING:
    from tenancy.models import AbstractTenant


class _Current:
    def __repr__(self) -> str:
        return "CURRENT"


CURRENT: Any = _Current()


def urlconf_for(tenant: AbstractTenant | None) -> str:
    """The dotted path of the URLconf serving ``tenant`` (``None``: the main site)."""
    configured = (
        tenancy_settings.PUBLIC_URLCONF if tenant is None else tenancy_settings.TENANT_URLCONF
    )
    return configured or str(settings.ROOT_URLCONF)


def reverse(
    viewname: Any,
    *,
    tenant: AbstractTenant | None = CURRENT,
    args: Sequence[Any] | None = None,
    kwargs: dict[str, Any] | None = None,
    current_app: str | None = None,
) -> str:
    """``django.urls.reverse`` in the URLconf of ``tenant`` (by default the current
    tenant; ``None`` for the main site), wherever it is called::

        with tenant_context(tenant):
            path = reverse("invoice", kwargs={"pk": invoice.pk})

    It changes no thread state, so it is safe in tasks and threads. The path starts
    with the current script prefix; it has no host, and under the path resolver no
    tenant prefix outside the tenant's own requests.
    """
    if tenant is CURRENT:
        tenant = current_tenant()
    return django_reverse(
        viewname, urlconf=urlconf_for(tenant), args=args, kwargs=kwargs, current_app=current_app
    )
