from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core.signals import setting_changed
from django.db.models.signals import post_migrate, pre_delete, pre_migrate
from django.utils.translation import gettext_lazy as _

from tenancy.conf import DEFAULT_TENANT_MODEL, TENANT_MODEL_SETTING

# Like AUTH_USER_MODEL, the setting always exists, so that migrations of any app that
# refer to the tenant model (written as settings.TENANCY_TENANT_MODEL) load.
if not hasattr(settings, TENANT_MODEL_SETTING):
    setattr(settings, TENANT_MODEL_SETTING, DEFAULT_TENANT_MODEL)


class TenancyConfig(AppConfig):
    name = "tenancy"
    verbose_name = _("Tenancy")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Registers the system checks, the per-request work on tenant connections, and
        # the binding of each sign-in to its site.
        from tenancy import checks, connections, sessions  # noqa: F401

        setting_changed.connect(_tenancy_setting_changed, dispatch_uid="tenancy.settings")

        from tenancy import guards

        guards.install()  # CrossTenantError for objects the router never sees

        from tenancy import main_database

        main_database.install()  # schema tenants in the main database share its connection

        _install_contrib_sites()

        from tenancy import registry_cache, registry_stamp

        registry_cache.connect_signals(getattr(settings, TENANT_MODEL_SETTING))
        post_migrate.connect(
            registry_stamp.install_after_migrate,
            sender=self,
            dispatch_uid="tenancy.registry_stamp.install_after_migrate",
        )

        from tenancy import ledger

        pre_migrate.connect(
            ledger.unread_before_migrate,
            sender=self,
            dispatch_uid="tenancy.ledger.unread_before_migrate",
        )
        post_migrate.connect(
            ledger.record_after_migrate,
            sender=self,
            dispatch_uid="tenancy.ledger.record_after_migrate",
        )

        from tenancy.admin_log import delete_tenant_log_entries

        # By label: a wrong TENANCY_TENANT_MODEL is reported by the system checks.
        pre_delete.connect(
            delete_tenant_log_entries,
            sender=getattr(settings, TENANT_MODEL_SETTING),
            dispatch_uid="tenancy.admin_log.delete_tenant_log_entries",
        )


def _install_contrib_sites() -> None:
    """A Site per tenant, when sites is a tenant app (``tenancy.contrib_sites``)."""
    from django.apps import apps
    from django.core.exceptions import ImproperlyConfigured

    from tenancy.conf import tenancy_settings

    try:
        labels = tenancy_settings.tenant_app_labels
    except ImproperlyConfigured:
        return  # reported by the system checks
    if "sites" in labels and apps.is_installed("django.contrib.sites"):
        from tenancy import contrib_sites

        contrib_sites.install()


def _tenancy_setting_changed(*, setting: str, **kwargs: Any) -> None:
    from tenancy.registry_cache import forget_all

    if setting == "TENANCY":
        from tenancy.conf import tenancy_settings
        from tenancy.connections import unregister_all

        tenancy_settings.reset()
        unregister_all()
    if setting in ("TENANCY", "DATABASE_ROUTERS", TENANT_MODEL_SETTING):
        forget_all()  # the registry's database, or what it answers, may be another
