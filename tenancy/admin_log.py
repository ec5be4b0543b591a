"""Django's admin log, told apart by tenant.

``django.contrib.admin`` logs every change in the main database and names the changed
object by content type and primary key, which objects of different tenants share: the
history of alpha's note 1 would list beta's changes to its note 1, and each tenant's
"Recent actions" the entries of every tenant. ``tenancy.admin.TenantAdminSite`` records
the tenant of each entry it writes (``TenantLogEntry``) and shows only its tenant's;
a tenant's entries are deleted with the tenant.

With ``django.contrib.admin`` in ``TENANCY["TENANT_APPS"]`` each tenant's database has a
log of its own, and nothing needs to be recorded.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from django.apps import apps
from django.db import router, transaction

from tenancy.conf import tenancy_settings
from tenancy.models import AbstractTenant, TenantLogEntry

if TYPE_CHECKING:
    from django.contrib.admin.models import LogEntry
    from django.db.models import QuerySet


def is_shared() -> bool:
    """Whether the admin log is in the main database, shared by all tenants."""
    if not apps.is_installed("django.contrib.admin"):
        return False
    from django.contrib.admin.models import LogEntry

    return LogEntry._meta.app_label not in tenancy_settings.tenant_app_labels


def tenant_log_entries(tenant: AbstractTenant) -> QuerySet[LogEntry]:
    """The admin log entries about objects of ``tenant``."""
    from django.contrib.admin.models import LogEntry

    if not is_shared():
        return LogEntry.objects.all()  # the tenant's own database
    recorded = TenantLogEntry.objects.filter(tenant_id=tenant.pk).values("log_entry_id")
    return LogEntry.objects.filter(pk__in=recorded)


def log_transaction() -> transaction.Atomic:
    """A transaction around writing log entries and recording their tenant, so that no
    entry is left without its tenant."""
    from django.contrib.admin.models import LogEntry

    return transaction.atomic(using=router.db_for_write(LogEntry))


def record_tenant(tenant: AbstractTenant, entries: Iterable[LogEntry | Any]) -> None:
    """Record that ``entries``, just written, are about objects of ``tenant``."""
    from django.contrib.admin.models import LogEntry

    if is_shared():
        TenantLogEntry.objects.bulk_create(
            TenantLogEntry(log_entry_id=entry.pk, tenant_id=tenant.pk)
            for entry in entries
            # A ModelAdmin may log elsewhere and return something else.
            if isinstance(entry, LogEntry)
        )


def delete_tenant_log_entries(sender: Any, instance: AbstractTenant, **kwargs: Any) -> None:
    """``pre_delete`` receiver of the tenant model: a deleted tenant's log entries (the
    names of its objects and their changes) go with it rather than stay behind with no
    tenant; its ``TenantLogEntry`` rows go by the cascade."""
    if is_shared():
        tenant_log_entries(instance).delete()
