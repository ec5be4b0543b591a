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
from django.urls import get_script_prefix
from django.urls import reverse as django_reverse

from tenancy.conf import tenancy_settings
from tenancy.context import current_tenant
from tenancy.resolvers import PathResolver, get_resolver

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
    with the current script prefix and has no host. Under the path resolver it starts
    with ``tenant``'s own prefix (``/t/<slug>/``, none for the main site), whichever
    tenant's request it is called in.
    """
    if tenant is CURRENT:
        tenant = current_tenant()
    path = django_reverse(
        viewname, urlconf=urlconf_for(tenant), args=args, kwargs=kwargs, current_app=current_app
    )
    if not isinstance(get_resolver(), PathResolver):
        return path
    prefix = get_script_prefix()
    current = current_tenant()
    site_root = prefix
    if current is not None and prefix.endswith(_segment(current.slug)):
        site_root = prefix[: -len(_segment(current.slug))]  # this request's tenant prefix
    target = site_root if tenant is None else f"{site_root}{_segment(tenant.slug)}"
    return f"{target}{path.removeprefix(prefix)}"


def _segment(slug: str) -> str:
    """The path resolver's part of the script prefix for tenant ``slug``."""
    return f"{tenancy_settings.PATH_PREFIX.lstrip('/')}{slug}/"
