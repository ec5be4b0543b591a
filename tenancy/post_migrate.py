"""``post_migrate`` for a tenant whose content types and permissions are all there.

After migrating a database Django sends ``post_migrate`` once per installed app, and two
receivers of its own answer each: ``contenttypes``' ``create_contenttypes`` and
``auth``'s ``create_permissions`` read the app's content types and permissions (four
queries per app) to create those missing. For a tenant that already has them all (a
migration that adds no model and no permission, the usual case in a fleet) that is most
of the cost of migrating it.

``emit_post_migrate`` reads the database's content types and permissions in two queries
and sends the signal to every receiver, in Django's order, leaving those two out for the
apps where they have nothing to create. Where anything is missing they run, so what
either creates is always Django's own doing; where an app has asynchronous receivers,
Django sends the signal for it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.apps import apps as global_apps
from django.core.management.sql import emit_post_migrate_signal
from django.db import router
from django.db.models.signals import post_migrate


def emit_post_migrate(using: str, state_apps: Any, **kwargs: Any) -> None:
    """``emit_post_migrate_signal(0, False, using, apps=state_apps, **kwargs)``, with
    Django's content type and permission receivers left out for the apps where they have
    nothing to create. Each app's receivers are read when its turn comes, as ``send``
    reads them; what is missing is read again after a receiver of the project's own ran
    (it may have removed rows Django's would make again)."""
    djangos = _djangos_receivers()
    if not djangos:
        emit_post_migrate_signal(0, False, using, apps=state_apps, **kwargs)
        return
    named = {"verbosity": 0, "interactive": False, "using": using, "apps": state_apps, **kwargs}
    missing: set[str] | None = None  # apps with something to create; None: not read yet
    for app_config in global_apps.get_app_configs():
        if app_config.models_module is None:
            continue
        receivers = _sync_receivers(app_config)
        if receivers is None:  # asynchronous receivers: Django sends it, all together
            post_migrate.send(sender=app_config, app_config=app_config, **named)
            missing = None
            continue
        for receiver in receivers:
            if receiver in djangos:
                if missing is None:
                    missing = _apps_missing_rows(using, state_apps)
                if missing is not None and app_config.label not in missing:
                    continue
            receiver(signal=post_migrate, sender=app_config, app_config=app_config, **named)
            if receiver not in djangos and not _djangos_own(receiver):
                missing = None
        if missing is not None:
            missing.discard(app_config.label)  # Django's made them, if they had to


def _djangos_receivers() -> tuple[Callable[..., Any], ...]:
    found = []
    if global_apps.is_installed("django.contrib.contenttypes"):
        from django.contrib.contenttypes.management import create_contenttypes

        found.append(create_contenttypes)
    if global_apps.is_installed("django.contrib.auth"):
        from django.contrib.auth.management import create_permissions

        found.append(create_permissions)
    return tuple(found)


def _sync_receivers(app_config: Any) -> list[Callable[..., Any]] | None:
    """The app's ``post_migrate`` receivers, as ``send`` finds them; ``None`` when any is
    asynchronous (Django runs those together, after the others) or the signal's
    internals are not as expected."""
    try:
        sync, asynchronous = post_migrate._live_receivers(app_config)
    except (AttributeError, TypeError, ValueError):
        return None
    return None if asynchronous else list(sync)


# Django's other post_migrate receivers, which neither remove nor rename a content type or
# a permission of another app than the one they run for (sites' default site; Django 6's
# renaming of a renamed model's permissions, within its app).
_HARMLESS = frozenset(
    {
        "django.contrib.sites.management.create_default_site",
        "django.contrib.auth.management.rename_permissions_after_model_rename",
    }
)


def _djangos_own(receiver: Callable[..., Any]) -> bool:
    """One of ``_HARMLESS`` (named exactly: code run by ``manage.py shell`` has a module
    name of Django's too)."""
    name = f"{getattr(receiver, '__module__', '')}.{getattr(receiver, '__qualname__', '')}"
    return name in _HARMLESS


def _apps_missing_rows(using: str, state_apps: Any) -> set[str] | None:
    """The labels of the apps for which ``create_contenttypes`` or ``create_permissions``
    would create a row in ``using`` for the models of ``state_apps`` (the project state
    after migrating): a content type of a model, or one of a model's permissions (by
    content type and codename, as they compare). ``None`` when they would do something
    this does not look at: let them run for every app."""
    from django.contrib.auth.management import (  # type: ignore[attr-defined]
        _get_all_permissions,
    )

    try:
        content_type = state_apps.get_model("contenttypes", "ContentType")
    except LookupError:
        return None
    if not router.allow_migrate_model(using, content_type):
        return None  # create_permissions would still make content types there
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
    missing = set()
    for app_config in global_apps.get_app_configs():
        if app_config.models_module is None:
            continue
        try:
            models = list(state_apps.get_app_config(app_config.label).get_models())
        except LookupError:
            continue
        for model in models:
            pk = content_types.get((model._meta.app_label, model._meta.model_name))
            if pk is None or (
                permission is not None
                and any(
                    (pk, codename) not in permissions
                    for codename, _name in _get_all_permissions(model._meta)
                )
            ):
                missing.add(app_config.label)
                break
    return missing
