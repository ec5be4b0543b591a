"""The database router: tenant apps to the current tenant's database, the rest to default."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from django.core.exceptions import ImproperlyConfigured
from django.db import DEFAULT_DB_ALIAS
from django.db.models import Model

from tenancy.conf import tenancy_settings
from tenancy.connections import alias_for, is_tenant_alias, tenant_of_alias
from tenancy.context import current_tenant
from tenancy.exceptions import CrossTenantError, NoTenantError
from tenancy.replicas import read_alias, restamp
from tenancy.transactions import warn_if_only_default_in_transaction

if TYPE_CHECKING:
    from tenancy.models import AbstractTenant


def is_tenant_model(model: type[Model]) -> bool:
    """Whether ``model`` is routed to the current tenant: a tenant app's model, or a model
    of a shared-and-tenant app while a tenant is active (outside one, the main database's
    copy is used)."""
    label = model._meta.app_label
    if label in tenancy_settings.shared_and_tenant_app_labels:
        return current_tenant() is not None
    return label in tenancy_settings.tenant_app_labels


class TenantRouter:
    """Route tenant-app models to the current tenant; fail closed without one.

    Add it to ``DATABASE_ROUTERS``; put routers of your own for other databases before it.
    """

    def db_for_read(self, model: type[Model], **hints: Any) -> str | None:
        return self._route(model, hints, write=False)

    def db_for_write(self, model: type[Model], **hints: Any) -> str | None:
        alias = self._route(model, hints, write=True)
        if alias is not None and tenancy_settings.CHECK_TRANSACTIONS and is_tenant_alias(alias):
            warn_if_only_default_in_transaction(alias, model)
        return alias

    def _route(self, model: type[Model], hints: dict[str, Any], *, write: bool) -> str | None:
        instance = hints.get("instance")
        instance_db = getattr(getattr(instance, "_state", None), "db", None)
        label = model._meta.app_label
        if label in tenancy_settings.shared_and_tenant_app_labels:
            return self._route_shared_and_tenant(model, instance, instance_db)
        if label not in tenancy_settings.tenant_app_labels:
            # Django would otherwise follow the instance into its tenant database, e.g.
            # for `task.owner` where owner is a shared model.
            if instance_db is not None and is_tenant_alias(instance_db):
                return DEFAULT_DB_ALIAS
            return None
        tenant = current_tenant()
        if tenant is None:
            raise NoTenantError.for_model(model)
        loaded_from = tenant_of_alias(instance_db)
        if instance is not None and loaded_from not in (None, tenant.slug):
            raise CrossTenantError.for_instance(instance, loaded_from, tenant.slug)
        if not write:
            return read_alias(tenant)  # the primary's, or a read replica's
        if instance is not None:
            restamp(instance)  # read from a replica, written to the primary
        return alias_for(tenant)

    def _route_shared_and_tenant(
        self, model: type[Model], instance: Model | None, instance_db: str | None
    ) -> str | None:
        """A model with a copy in the main database and in every tenant's: the current
        tenant's copy, or the main database's outside any tenant. An object (or the object
        a relation is followed from) stays with the copy it was loaded from: saved or
        followed elsewhere it would reach another row with the same primary key."""
        tenant = current_tenant()
        active = tenant.slug if tenant is not None else None
        if instance_db is None:
            return alias_for(tenant) if tenant is not None else None
        loaded_from = tenant_of_alias(instance_db)
        if loaded_from is None:  # from the main database
            if tenant is not None and isinstance(instance, model):
                raise CrossTenantError.for_instance(instance, None, active)
            return None  # the main database's copy, as the object's relations are
        if loaded_from != active:
            raise CrossTenantError.for_instance(cast(Model, instance), loaded_from, active)
        return alias_for(cast("AbstractTenant", tenant))

    def allow_relation(self, obj1: Model, obj2: Model, **hints: Any) -> bool | None:
        tenant1, tenant2 = is_tenant_model(type(obj1)), is_tenant_model(type(obj2))
        if tenant1 != tenant2:
            return False
        db1, db2 = obj1._state.db, obj2._state.db
        # One tenant's objects relate even when loaded under two of its aliases (it was
        # registered again in between, or one was read from a replica).
        if (
            tenant1
            and db1 is not None
            and db2 is not None
            and (tenant_of_alias(db1) or db1) != (tenant_of_alias(db2) or db2)
        ):
            return False
        if tenant1:
            restamp(obj1)  # an object read from a replica relates as the primary's
            restamp(obj2)
        return None

    def allow_migrate(
        self, db: str, app_label: str, model_name: str | None = None, **hints: Any
    ) -> bool | None:
        try:
            return self._allow_migrate(db, app_label, model_name)
        except ImproperlyConfigured:
            # Settings that cannot be read, which the system checks report (tenancy.E001,
            # in one line; Django's model checks ask this too): nothing goes anywhere.
            return False

    def _allow_migrate(self, db: str, app_label: str, model_name: str | None) -> bool | None:
        # Decided by app label only, so historical models in migrations and RunPython
        # operations are routed the same way as the real models.
        if (app_label, model_name) == ("tenancy", "membership") and (
            tenancy_settings.users_per_tenant
        ):
            # Memberships point at main-database users; with users per tenant there are
            # none, and the table can exist nowhere.
            return False
        tenant_app = app_label in tenancy_settings.tenant_app_labels
        if is_tenant_alias(db):
            return tenant_app
        if tenant_app and app_label not in tenancy_settings.shared_and_tenant_app_labels:
            return False
        return None
