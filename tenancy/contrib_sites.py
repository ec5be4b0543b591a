"""``django.contrib.sites`` with a Site per tenant.

With ``django.contrib.sites`` in ``TENANCY["SHARED_AND_TENANT_APPS"]`` the main site uses
the main database's Site and each tenant the Site in its own database, which is kept
matching the tenant's primary domain: written when the tenant is provisioned and again
whenever its domains change. ``get_current_site(request)`` then works everywhere.

Django caches Sites per process in ``django.contrib.sites.models.SITE_CACHE``, keyed by
``SITE_ID`` or by host: every tenant would be served the first tenant's Site 1. The cache
is replaced with one kept apart per tenant (``install``, from ``TenancyConfig.ready``).
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.db.models.signals import post_delete, post_save, pre_save

from tenancy.conf import tenancy_settings
from tenancy.context import current_tenant, tenant_context
from tenancy.models import MIGRATED_STATUSES, AbstractTenant, Domain, get_tenant_model
from tenancy.signals import tenant_deprovisioned, tenant_provisioned

if TYPE_CHECKING:
    from django.contrib.sites.models import SiteManager

SITES = "django.contrib.sites"


class TenantSiteCache(MutableMapping[Any, Any]):
    """``SITE_CACHE``, one dict per tenant (and one for the main site)."""

    def __init__(self) -> None:
        self._caches: dict[str | None, dict[Any, Any]] = {}

    def _cache(self) -> dict[Any, Any]:
        tenant = current_tenant()
        return self._caches.setdefault(tenant.slug if tenant else None, {})

    def __getitem__(self, key: Any) -> Any:
        return self._cache()[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        self._cache()[key] = value

    def __delitem__(self, key: Any) -> None:
        del self._cache()[key]

    def __iter__(self) -> Iterator[Any]:
        return iter(list(self._cache()))

    def __len__(self) -> int:
        return len(self._cache())

    def clear(self) -> None:
        """Forget every tenant's Sites, as ``Site.objects.clear_cache()`` does."""
        self._caches.clear()

    def forget(self, slug: str) -> None:
        self._caches.pop(slug, None)


def _clear_cache(manager: SiteManager) -> None:
    # Django's rebinds the module's SITE_CACHE to a plain dict, shared by all tenants.
    from django.contrib.sites import models as sites_models

    sites_models.SITE_CACHE.clear()


def install() -> None:
    """Keep the Site cache apart per tenant and each tenant's Site in step with its
    primary domain. Idempotent."""
    from django.contrib.sites import models as sites_models

    if not isinstance(sites_models.SITE_CACHE, TenantSiteCache):
        sites_models.SITE_CACHE = TenantSiteCache()
        sites_models.SiteManager.clear_cache = _clear_cache  # type: ignore[method-assign,assignment]
    tenant_provisioned.connect(_provisioned, dispatch_uid="tenancy.contrib_sites.provisioned")
    tenant_deprovisioned.connect(_forget, dispatch_uid="tenancy.contrib_sites.deprovisioned")
    pre_save.connect(_domain_moving, sender=Domain, dispatch_uid="tenancy.contrib_sites.saving")
    post_save.connect(_domain_changed, sender=Domain, dispatch_uid="tenancy.contrib_sites.saved")
    post_delete.connect(
        _domain_changed, sender=Domain, dispatch_uid="tenancy.contrib_sites.deleted"
    )


def update_tenant_site(tenant: AbstractTenant) -> None:
    """Make ``tenant``'s Site (``SITE_ID``, or its first) name its primary domain."""
    from django.contrib.sites.models import Site

    # The primary domain, else another of the tenant's: a domain that left the tenant
    # (deleted, or given to another tenant) must not stay its Site's.
    primary = Domain.objects.filter(tenant_id=tenant.pk).order_by("-is_primary", "domain").first()
    if primary is None:
        return  # no domain left: nothing to match; the Site stays as it is
    with tenant_context(tenant):
        site_id = getattr(settings, "SITE_ID", None)
        sites = Site.objects.order_by("pk")
        site = (sites.filter(pk=site_id) if site_id else sites).first() or Site(pk=site_id)
        if (site.domain, site.name) != (primary.domain, str(tenant.name)[:50]):
            site.domain, site.name = primary.domain, str(tenant.name)[:50]
            site.save()


def _provisioned(sender: Any, tenant: AbstractTenant, **kwargs: Any) -> None:
    update_tenant_site(tenant)


def _forget(sender: Any, tenant: AbstractTenant, **kwargs: Any) -> None:
    from django.contrib.sites import models as sites_models

    if isinstance(sites_models.SITE_CACHE, TenantSiteCache):
        sites_models.SITE_CACHE.forget(tenant.slug)


def _domain_moving(sender: Any, instance: Domain, **kwargs: Any) -> None:
    """Remember the tenant a domain is taken from, whose Site must follow too."""
    if instance.pk is not None and not kwargs.get("raw"):
        stored = Domain.objects.filter(pk=instance.pk).values_list("tenant_id", flat=True)
        instance._tenancy_previous_tenant = stored.first()  # type: ignore[attr-defined]


def _domain_changed(sender: Any, instance: Domain, **kwargs: Any) -> None:
    if kwargs.get("raw"):
        return  # loaddata
    tenant_ids = {instance.tenant_id, getattr(instance, "_tenancy_previous_tenant", None)}

    def update() -> None:
        model = get_tenant_model()
        for tenant in model._default_manager.filter(pk__in=tenant_ids - {None}):
            # A tenant still being provisioned gets its Site then (tenant_provisioned).
            if tenant.status in MIGRATED_STATUSES:
                update_tenant_site(tenant)

    # Only once the change is kept, and outside the main database's transaction.
    transaction.on_commit(update, using="default")


@checks.register(checks.Tags.sites)
def check_sites_placement(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Sites only in tenant databases leave the main site (its admin login, among others)
    without a Site."""
    try:
        only_tenant = (
            tenancy_settings.tenant_app_labels - tenancy_settings.shared_and_tenant_app_labels
        )
    except ImproperlyConfigured:
        return []  # reported by tenancy.checks.check_settings
    if "sites" not in only_tenant:
        return []
    return [
        checks.Error(
            f"{SITES} is in TENANCY['TENANT_APPS'], so the main database has no Site: "
            "get_current_site() on the main site (its admin login, among others) fails.",
            hint=f"Move {SITES!r} to TENANCY['SHARED_AND_TENANT_APPS']: the main site then "
            "uses the main database's Site, and each tenant a Site of its own.",
            id="tenancy.E011",
        )
    ]
