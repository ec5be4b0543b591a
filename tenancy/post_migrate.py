"""``post_migrate`` for a tenant whose content types and permissions are all there.

After migrating a database Django sends ``post_migrate`` once per installed app, and two
receivers of its own answer each: ``contenttypes``' ``create_contenttypes`` and
``auth``'s ``create_permissions`` read the app's content types and permissions (four
queries per app) to create those missing. For a tenant that already has them all (a
migration that adds no model and no permission, the usual case in a fleet) that is most
of the cost of migrating it.

``emit_post_migrate`` reads the database's content types and permissions in two queries
and, when nothing is missing that either receiver would create, sends the signal to every
other receiver, in Django's order, without those two. When anything is missing, or the
signal has asynchronous receivers, Django sends it as always, so what either receiver
creates is always Django's own doing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.apps import apps as global_apps
from django.core.management.sql import emit_post_migrate_signal
from django.db import router
from django.db.models.signals import post_migrate


def emit_post_migrate(using: str, state_apps: Any, **kwargs: Any) -> None:
    """``emit_post_migrate_signal(0, False, using, apps=state_apps, **kwargs)``, without
    Django's content type and permission receivers when they have nothing to create."""
    djangos = _djangos_receivers()
    receivers = _receivers_by_app()
    if djangos and receivers is not None and not _anything_to_create(using, state_apps):
        named = {"verbosity": 0, "interactive": False, "using": using, "apps": state_apps}
        for app_config, found in receivers:
            for receiver in found:
                if receiver not in djangos:
                    receiver(
                        signal=post_migrate,
                        sender=app_config,
                        app_config=app_config,
                        **named,
                        **kwargs,
                    )
        return
    emit_post_migrate_signal(0, False, using, apps=state_apps, **kwargs)


def _djangos_receivers() -> tuple[Callable[..., Any], ...]:
    found = []
    if global_apps.is_installed("django.contrib.contenttypes"):
        from django.contrib.contenttypes.management import create_contenttypes

        found.append(create_contenttypes)
    if global_apps.is_installed("django.contrib.auth"):
        from django.contrib.auth.management import create_permissions

        found.append(create_permissions)
    return tuple(found)


def _receivers_by_app() -> list[tuple[Any, list[Callable[..., Any]]]] | None:
    """Each app with models and its synchronous ``post_migrate`` receivers, as Django's
    ``send`` finds them; ``None`` when any is asynchronous (Django runs those together,
    after the others) or the signal's internals are not as expected."""
    found = []
    for app_config in global_apps.get_app_configs():
        if app_config.models_module is None:
            continue
        try:
            sync, asynchronous = post_migrate._live_receivers(app_config)
        except (AttributeError, TypeError, ValueError):
            return None
        if asynchronous:
            return None
        found.append((app_config, list(sync)))
    return found


def _anything_to_create(using: str, state_apps: Any) -> bool:
    """Whether ``create_contenttypes`` or ``create_permissions`` would create a row in
    ``using`` for the models of ``state_apps`` (the project state after migrating): a
    content type of a model of an installed app, or one of a model's permissions (by
    content type and codename, as they compare). Also true whenever they would do
    something this does not look at."""
    from django.contrib.auth.management import (  # type: ignore[attr-defined]
        _get_all_permissions,
    )

    try:
        content_type = state_apps.get_model("contenttypes", "ContentType")
    except LookupError:
        return True
    if not router.allow_migrate_model(using, content_type):
        return True  # create_permissions would still make content types there
    try:
        permission = state_apps.get_model("auth", "Permission")
    except LookupError:
        permission = None
    if permission is not None and not router.allow_migrate_model(using, permission):
        permission = None
    content_types = {
        (app_label, model): pk
        for pk, app_label, model in content_type.objects.using(using).values_list(
            "pk", "app_label", "model"
        )
    }
    permissions = (
        set(permission.objects.using(using).values_list("content_type", "codename"))
        if permission is not None
        else set()
    )
    for app_config in global_apps.get_app_configs():
        if app_config.models_module is None:
            continue
        try:
            models = list(state_apps.get_app_config(app_config.label).get_models())
        except LookupError:
            continue
        for model in models:
            pk = content_types.get((model._meta.app_label, model._meta.model_name))
            if pk is None:
                return True
            if permission is None:
                continue
            for codename, _name in _get_all_permissions(model._meta):
                if (pk, codename) not in permissions:
                    return True
    return False
