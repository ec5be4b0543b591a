from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core.signals import setting_changed
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
        # Registers the system checks, and the per-request work on tenant connections.
        from tenancy import checks, connections  # noqa: F401

        setting_changed.connect(_tenancy_setting_changed, dispatch_uid="tenancy.settings")


def _tenancy_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting == "TENANCY":
        from tenancy.conf import tenancy_settings
        from tenancy.connections import unregister_all

        tenancy_settings.reset()
        unregister_all()
