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
- ``QuerySet.bulk_update`` and ``QuerySet._prepare_for_bulk_create`` check the objects.

Only objects whose ``_state.db`` is a tenant alias, in queries on a tenant alias, are
looked at; unsaved objects (``_state.db`` is ``None``) pass. Filters on other fields
(``filter(text=...)``) are not wrapped at all.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Iterable
from typing import Any

from django.db.models import Model, QuerySet
from django.db.models.fields.related_lookups import RelatedIn, RelatedLookupMixin
from django.db.models.sql.compiler import SQLUpdateCompiler

from tenancy.connections import is_tenant_alias, tenant_of_alias
from tenancy.exceptions import CrossTenantError

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


def _refuse_other_tenants(objects: Iterable[Model], alias: str) -> None:
    """``CrossTenantError`` for the first of ``objects`` that was loaded from a tenant
    database other than ``alias``, when ``alias`` is a tenant's."""
    active = tenant_of_alias(alias)
    if active is None:
        return
    for obj in objects:
        loaded = tenant_of_alias(obj._state.db)
        if loaded is not None and loaded != active:
            raise CrossTenantError.for_instance(obj, loaded, active)


def _tenant_objects(values: Collection[object]) -> list[Model]:
    """The model instances among ``values`` that were loaded from a tenant database."""
    # Looking at the types first is four times faster on a long list of plain values
    # (``pk__in=[...]``): isinstance() against a class with a metaclass is slow.
    if not any(issubclass(kind, Model) for kind in set(map(type, values))):
        return []
    return [
        value
        for value in values
        if isinstance(value, Model) and is_tenant_alias(value._state.db or "")
    ]


def _wrap(cls: type, name: str, make_wrapper: Callable[[Any], Any]) -> None:
    original = getattr(cls, name)
    setattr(cls, name, functools.wraps(original)(make_wrapper(original)))


def _noting_tenant_objects(get_prep_lookup: Any) -> Any:
    def noting(lookup: Any) -> Any:
        rhs = lookup.rhs
        if isinstance(rhs, Model):
            objects = _tenant_objects((rhs,))
        elif isinstance(rhs, Collection) and not isinstance(rhs, str | bytes):
            objects = _tenant_objects(rhs)  # __in
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
