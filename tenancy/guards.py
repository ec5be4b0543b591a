"""Refuse objects of one tenant in queries that run on another tenant's database.

The router sees an object only where Django passes it as a hint (``save()``, ``delete()``,
related managers). Filter values (``filter(note=obj)``, ``note__in=[...]``, ``Q`` objects,
conditions in expressions, subqueries), ``update()`` values and the objects given to
``bulk_create()`` and ``bulk_update()`` reach the database without a router call: an
object loaded in tenant alpha and used while beta is current would match, change or
overwrite beta's rows that happen to have the same primary key.

``install()`` (called once from ``TenancyConfig.ready()``) wraps the few Django methods
where both the objects and the database are known:

- the related lookups (``RelatedExact`` and the other comparisons, ``RelatedIn``) note the
  tenant objects they are given, before Django turns them into primary keys, and check
  them when they are compiled for a connection: every filter on a relation goes through
  one of them, wherever the condition ends up (combined querysets, subqueries);
- ``SQLUpdateCompiler.as_sql`` checks the objects among the ``update()`` values;
- ``QuerySet.bulk_update`` and ``QuerySet._prepare_for_bulk_create`` check the objects;
- the related managers' ``add()``, ``remove()`` and ``set()`` (many-to-many, reverse
  foreign keys) check the objects against the database they write to: Django turns the
  objects into primary keys before any router call, so ``beta_label.notes.remove(note)``
  would unlink beta's note with alpha's note's key (the factories that make the manager
  classes are wrapped, the async methods call the sync ones);
- ``prefetch_one_level`` refuses instances of two tenants in one list: Django queries the
  database of the first one with the keys of all;
- ``Model.refresh_from_db`` checks the object against the database of ``from_queryset``.

Only objects loaded from a tenant database are looked at, and objects of an app in
``SHARED_AND_TENANT_APPS`` loaded from the main database (whose copy is another row in a
tenant's); unsaved objects (``_state.db`` is ``None``) pass. Filters on other fields
(``filter(text=...)``) are not wrapped at all.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Iterable
from typing import Any

from django.db import router
from django.db.models import Model, QuerySet, query
from django.db.models.fields import related_descriptors
from django.db.models.fields.related_lookups import RelatedIn, RelatedLookupMixin
from django.db.models.sql.compiler import SQLUpdateCompiler

from tenancy.conf import tenancy_settings
from tenancy.connections import is_tenant_alias, tenant_of_alias
from tenancy.context import current_tenant
from tenancy.exceptions import CrossTenantError
from tenancy.routers import is_tenant_model

# Set on a related lookup given tenant objects: the objects, checked at compilation.
_TENANT_OBJECTS = "_tenancy_objects"

_installed = False


def install() -> None:
    """Wrap Django's methods (see the module docstring). Calling it again does nothing."""
    global _installed
    if _installed:
        return
    _installed = True
    for lookup in (RelatedLookupMixin, RelatedIn):
        _wrap(lookup, "get_prep_lookup", _noting_tenant_objects)
        _wrap(lookup, "as_sql", _checking_lookup)
    _wrap(SQLUpdateCompiler, "as_sql", _checking_update_values)
    _wrap(QuerySet, "_prepare_for_bulk_create", _checking_bulk_create)
    _wrap(QuerySet, "bulk_update", _checking_bulk_update)
    # Module functions, looked up by name when a descriptor first makes its manager class
    # (``related_manager_cls``) and by ``prefetch_related_objects()``.
    _wrap(related_descriptors, "create_forward_many_to_many_manager", _checking_managers)
    _wrap(related_descriptors, "create_reverse_many_to_one_manager", _checking_managers)
    _wrap(query, "prefetch_one_level", _checking_prefetch)
    _wrap(Model, "refresh_from_db", _checking_refresh)


def _refuse_other_tenants(objects: Iterable[Model], alias: str) -> None:
    """``CrossTenantError`` for the first of ``objects`` that was loaded from a tenant
    database other than ``alias``, when ``alias`` is a tenant's."""
    active = tenant_of_alias(alias)
    if active is not None:
        _refuse_other_than(objects, active)
        return
    for obj in objects:  # on the main database: a tenant's copy is another row there
        loaded = tenant_of_alias(obj._state.db)
        if loaded is not None and _in_both(obj):
            raise CrossTenantError.for_instance(obj, loaded, None)


def _refuse_other_than(objects: Iterable[Model], active: str) -> None:
    """``CrossTenantError`` for the first of ``objects`` loaded from a tenant database
    other than tenant ``active``'s, or from the main database's copy of a model that
    tenants have copies of too (``SHARED_AND_TENANT_APPS``)."""
    for obj in objects:
        db = obj._state.db
        loaded = tenant_of_alias(db)
        if loaded is not None and loaded != active:
            raise CrossTenantError.for_instance(obj, loaded, active)
        if loaded is None and db is not None and _in_both(obj):
            raise CrossTenantError.for_instance(obj, None, active)


def _in_both(obj: Model) -> bool:
    return obj._meta.app_label in tenancy_settings.shared_and_tenant_app_labels


def _tenant_objects(values: Collection[object]) -> list[Model]:
    """The model instances among ``values`` that were loaded from a tenant database, or
    from the main database's copy of a shared-and-tenant app."""
    # Looking at the types first is four times faster on a long list of plain values
    # (``pk__in=[...]``): isinstance() against a class with a metaclass is slow.
    if not any(issubclass(kind, Model) for kind in set(map(type, values))):
        return []
    return [
        value
        for value in values
        if isinstance(value, Model)
        and (is_tenant_alias(value._state.db or "") or (value._state.db and _in_both(value)))
    ]


def _wrap(owner: object, name: str, make_wrapper: Callable[[Any], Any]) -> None:
    original = getattr(owner, name)
    setattr(owner, name, functools.wraps(original)(make_wrapper(original)))


def _noting_tenant_objects(get_prep_lookup: Any) -> Any:
    def noting(lookup: Any) -> Any:
        rhs = lookup.rhs
        if isinstance(rhs, Model):
            objects = _tenant_objects((rhs,))
        elif isinstance(rhs, Collection) and not isinstance(rhs, str | bytes):
            objects = _tenant_objects(rhs)  # __in
        elif isinstance(rhs, Iterable) and not hasattr(rhs, "as_sql"):
            # Any other iterable without SQL of its own (an evaluated RawQuerySet):
            # RelatedIn iterates it once as well, into a list.
            lookup.rhs = list(rhs)
            objects = _tenant_objects(lookup.rhs)
        else:
            return get_prep_lookup(lookup)
        if objects:
            setattr(lookup, _TENANT_OBJECTS, objects)
        return get_prep_lookup(lookup)

    return noting


def _checking_lookup(as_sql: Any) -> Any:
    def checking(lookup: Any, compiler: Any, connection: Any) -> Any:
        objects = lookup.__dict__.get(_TENANT_OBJECTS)
        if objects:
            _refuse_other_tenants(objects, connection.alias)
        return as_sql(lookup, compiler, connection)

    return checking


def _checking_update_values(as_sql: Any) -> Any:
    def checking(compiler: Any, *args: Any, **kwargs: Any) -> Any:
        objects = _tenant_objects([value for _, _, value in compiler.query.values])
        if objects:
            _refuse_other_tenants(objects, compiler.connection.alias)
        return as_sql(compiler, *args, **kwargs)

    return checking


def _checking_bulk_create(prepare: Any) -> Any:
    # Called by bulk_create() with the objects as a list, after it set _for_write.
    def checking(queryset: QuerySet[Any], objs: list[Model]) -> Any:
        objects = _tenant_objects(objs)
        if objects:
            _refuse_other_tenants(objects, queryset.db)
        return prepare(queryset, objs)

    return checking


def _checking_bulk_update(bulk_update: Any) -> Any:
    def checking(queryset: QuerySet[Any], objs: Iterable[Model], *args: Any, **kwargs: Any) -> Any:
        objs = tuple(objs)
        objects = _tenant_objects(objs)
        if objects:
            # As bulk_update() does before it picks the database.
            queryset._for_write = True  # type: ignore[attr-defined]
            _refuse_other_tenants(objects, queryset.db)
        return bulk_update(queryset, objs, *args, **kwargs)

    return checking


def _checking_managers(make_manager_class: Any) -> Any:
    def making(*args: Any, **kwargs: Any) -> Any:
        manager_class = make_manager_class(*args, **kwargs)
        # remove() exists only where the foreign key is nullable.
        for name in ("add", "remove"):
            if name in vars(manager_class):
                _wrap(manager_class, name, _checking_manager_objects)
        _wrap(manager_class, "set", _checking_manager_set)
        return manager_class

    return making


def _refuse_in_manager(manager: Any, objs: tuple[object, ...]) -> None:
    if not is_tenant_model(manager.model):
        return
    objects = _tenant_objects(objs)
    if objects:
        # The database the manager writes to, as the manager finds it.
        model = getattr(manager, "through", manager.model)
        _refuse_other_tenants(objects, router.db_for_write(model, instance=manager.instance))


def _checking_manager_objects(method: Any) -> Any:
    def checking(manager: Any, *objs: object, **kwargs: Any) -> Any:
        _refuse_in_manager(manager, objs)
        return method(manager, *objs, **kwargs)

    return checking


def _checking_manager_set(set_objects: Any) -> Any:
    def checking(manager: Any, objs: Iterable[object], *args: Any, **kwargs: Any) -> Any:
        objs = tuple(objs)  # as set() does: a queryset is evaluated once
        _refuse_in_manager(manager, objs)
        return set_objects(manager, objs, *args, **kwargs)

    return checking


def _checking_prefetch(prefetch_one_level: Any) -> Any:
    def checking(instances: list[Model], *args: Any) -> Any:
        objects = _tenant_objects(instances)
        if len({tenant_of_alias(obj._state.db) for obj in objects}) > 1:
            tenant = current_tenant()
            active = tenant.slug if tenant is not None else tenant_of_alias(objects[0]._state.db)
            _refuse_other_than(objects, active or "")
        return prefetch_one_level(instances, *args)

    return checking


def _checking_refresh(refresh_from_db: Any) -> Any:
    def checking(
        obj: Model,
        using: str | None = None,
        fields: Iterable[str] | None = None,
        from_queryset: QuerySet[Any] | None = None,
    ) -> Any:
        if from_queryset is not None and is_tenant_model(type(obj)):
            queryset = from_queryset.using(using) if using is not None else from_queryset
            _refuse_other_tenants((obj,), queryset.db)
        return refresh_from_db(obj, using=using, fields=fields, from_queryset=from_queryset)

    return checking
