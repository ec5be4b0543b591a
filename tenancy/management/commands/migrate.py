"""manage.py migrate: Django's, which migrates one database, plus a line saying that the
tenant databases are migrated by ``migrate_tenants``.

Django runs the ``migrate`` of the first app in ``INSTALLED_APPS`` that has one, so list
``tenancy`` before other apps that override ``migrate`` to keep this line (or after them
to keep theirs); ``migrate_tenants`` runs Django's own ``migrate`` either way.
"""

from __future__ import annotations

from typing import Any

from django.core.management.commands.migrate import Command as DjangoMigrateCommand
from django.db import DEFAULT_DB_ALIAS, DatabaseError

from tenancy.conf import tenancy_settings
from tenancy.models import MIGRATED_STATUSES, get_tenant_model


class Command(DjangoMigrateCommand):
    def handle(self, *args: Any, **options: Any) -> None:
        super().handle(*args, **options)
        if (
            options["database"] != DEFAULT_DB_ALIAS  # a tenant's, say, from migrate_tenants
            or options["verbosity"] < 1
            or options["plan"]
            or options["prune"]
            or not tenancy_settings.tenant_app_labels
        ):
            return
        try:
            tenants = get_tenant_model()._default_manager.filter(status__in=MIGRATED_STATUSES)
            count = tenants.count()
        except DatabaseError:  # `migrate` of other apps, before tenancy's table exists
            return
        self.stdout.write(
            f"Tenant databases are migrated by `manage.py migrate_tenants` ({count} tenant(s))."
        )
