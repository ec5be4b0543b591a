"""System checks: what can be found wrong at start-up is reported there, with a fix."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import TYPE_CHECKING, Any

from django.apps import apps
from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.db.models import Model
from django.utils.module_loading import import_string

from tenancy.conf import is_schema_server, tenancy_settings

if TYPE_CHECKING:
    from django.contrib.admin import AdminSite

ROUTER = "tenancy.routers.TenantRouter"


@checks.register()  # not tagged "database": Django 6 runs those only for migrate
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    errors: list[checks.CheckMessage] = []
    try:
        tenancy_settings.validate()
        _check_resolver()
    except ImproperlyConfigured as exc:
        return [checks.Error(str(exc), id="tenancy.E001")]
    if ROUTER not in getattr(settings, "DATABASE_ROUTERS", []):
        errors.append(
            checks.Error(
                f"{ROUTER} is not in DATABASE_ROUTERS, so tenant apps would use the "
                "default database.",
                hint=f"Add {ROUTER!r} to DATABASE_ROUTERS (after routers of your own).",
                id="tenancy.E002",
            )
        )
    errors.extend(_check_atomic_requests())
    for name, server in tenancy_settings.SERVERS.items():
        if server.get("OPTIONS", {}).get("pool"):
            errors.append(
                checks.Warning(
                    f"TENANCY['SERVERS'][{name!r}] enables psycopg pooling: Django keeps one "
                    "pool per alias, so every tenant gets pools of its own (min_size "
                    "connections and threads each).",
                    hint="Remove OPTIONS['pool'] from tenant servers; use PgBouncer in "
                    "front of the server to share connections between tenants.",
                    id="tenancy.W001",
                )
            )
        if (
            is_schema_server(server)
            and server.get("DISABLE_SERVER_SIDE_CURSORS")
            and not server.get("TRANSACTION_POOLING")
        ):
            errors.append(
                checks.Warning(
                    f"TENANCY['SERVERS'][{name!r}] holds tenants as schemas and disables "
                    "server-side cursors, as a server behind a pooler in transaction mode "
                    "does; there a search path set for the session would stay on a server "
                    "connection that another client gets next, with another tenant's "
                    "schema.",
                    hint="Behind PgBouncer with pool_mode = transaction, set "
                    "TRANSACTION_POOLING: True in the server entry (the search path is then "
                    "set per transaction); otherwise silence tenancy.W003.",
                    id="tenancy.W003",
                )
            )
    errors.extend(_check_main_database())
    return errors


def _check_main_database() -> list[checks.CheckMessage]:
    """A schema server keeping its tenants in the main database (``tenancy.main_database``):
    refused behind a pooler in transaction mode; a warning when the main database cannot
    share its connection with them."""
    from django.db import DEFAULT_DB_ALIAS, connections

    from tenancy.main_database import CONNECTION_KEYS, different_settings

    errors: list[checks.CheckMessage] = []
    if DEFAULT_DB_ALIAS not in settings.DATABASES:
        return errors
    for name, template in tenancy_settings.SERVERS.items():
        if not is_schema_server(template):
            continue
        from tenancy.backends.schemas import SchemaServer  # psycopg: schemas need it

        server = SchemaServer(name, template)
        if not server.holds_main_database:
            continue
        refusal = server.shared_database_refusal()  # behind a pooler in transaction mode
        if refusal is not None:
            errors.append(
                checks.Error(
                    refusal,
                    hint="Give the server's tenant schemas a database of their own, or reach "
                    "the main database without a pooler in transaction mode.",
                    id="tenancy.E012",
                )
            )
            continue
        main = connections[DEFAULT_DB_ALIAS].settings_dict
        if main.get("DISABLE_SERVER_SIDE_CURSORS"):
            errors.append(
                checks.Warning(
                    f"TENANCY['SERVERS'][{name!r}] keeps its tenants in the main database, "
                    "which disables server-side cursors as a database behind a pooler in "
                    "transaction mode does; there a search path set for the session would "
                    "stay on a server connection that another client gets next.",
                    hint="Behind a pooler in transaction mode, give the tenant schemas a "
                    "database of their own (with TRANSACTION_POOLING in the server entry); "
                    "otherwise silence tenancy.W003.",
                    id="tenancy.W003",
                )
            )
        # The names match (holds_main_database); a test run renames one before the other.
        tenants = server.lendable_settings() or {}  # not pooled: never None here
        differing = [key for key in different_settings(main, tenants) if key != "NAME"]
        if differing:
            errors.append(
                checks.Warning(
                    f"TENANCY['SERVERS'][{name!r}] keeps its tenants in the main database, "
                    f"but its {', '.join(differing)} differ from DATABASES['default']: the "
                    "main database keeps a connection of its own beside the tenants'.",
                    hint="Give the server entry the same "
                    f"{', '.join(key for key in CONNECTION_KEYS if key != 'NAME')} as "
                    "DATABASES['default'] to share one connection.",
                    id="tenancy.W005",
                )
            )
    return errors


@checks.register(checks.Tags.admin)
def check_admin_sites(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Tenant models belong on a TenantAdminSite, where a tenant is active, and shared
    models elsewhere: on a TenantAdminSite each tenant's admins would manage every
    tenant's rows."""
    if not apps.is_installed("django.contrib.admin"):
        return []
    try:
        labels = tenancy_settings.tenant_app_labels
    except ImproperlyConfigured:
        return []  # reported by check_settings
    from django.contrib.admin.sites import all_sites

    from tenancy.admin import TenantAdminSite

    _load_root_urlconf()
    errors: list[checks.CheckMessage] = []
    # A shared-and-tenant app's models have a main-database copy, for any admin site.
    only_tenant = labels - tenancy_settings.shared_and_tenant_app_labels
    tenant_models = [m for m in apps.get_models() if m._meta.app_label in only_tenant]
    for site in list(all_sites):
        if isinstance(site, TenantAdminSite):
            errors.extend(_check_tenant_admin_site(site, labels))
            continue
        for model in tenant_models:
            if site.is_registered(model):
                errors.append(
                    checks.Error(
                        f"{model._meta.label} is stored in tenant databases but registered "
                        f"on the admin site {site.name!r}, which has no tenant.",
                        hint="Register it on a tenancy.admin.TenantAdminSite, which is "
                        "reached on the tenant's own domain by the tenant's admins; for an "
                        "app that registers itself, tenant_admin.adopt_registrations("
                        f"{model._meta.app_label!r}, from_site={_site_expression(site)}).",
                        obj=site,
                        id="tenancy.E007",
                    )
                )
    return errors


def _load_root_urlconf() -> None:
    """Import the project's URLconf, where sites are usually built and registrations
    adopted: Django runs checks in no fixed order, so its own URL check may come later."""
    if not getattr(settings, "ROOT_URLCONF", None):
        return
    from django.urls import get_resolver

    try:
        get_resolver().url_patterns  # noqa: B018 - imports the module
    except Exception:  # reported by Django's own URL checks
        return


def _site_expression(site: AdminSite) -> str:
    from django.contrib import admin

    # admin.site is a lazy object: compared by its name, which URL namespaces keep unique.
    return "admin.site" if site.name == admin.site.name else f"<the admin site {site.name!r}>"


def _check_tenant_admin_site(
    site: AdminSite, labels: Collection[str]
) -> list[checks.CheckMessage]:
    shared = [model for model in site._registry if model._meta.app_label not in labels]
    return [
        checks.Error(
            f"{model._meta.label} is stored in the main database, shared by all tenants, "
            f"but registered on the tenant admin site {site.name!r}: each tenant's admins "
            "could change the rows of every tenant.",
            hint="Register it on an admin site of the main site (e.g. admin.site); a "
            "TenantAdminSite is for models of TENANCY['TENANT_APPS'].",
            obj=site,
            id="tenancy.E008",
        )
        for model in sorted(shared, key=lambda model: model._meta.label)
    ]


@checks.register(checks.Tags.models)
def check_models(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    try:
        tenancy_settings.validate()
    except ImproperlyConfigured:
        return []  # reported by check_settings
    models = apps.get_models()
    if tenancy_settings.users_per_tenant:
        # Without shared users, tenancy.Membership has no table anywhere (the router).
        models = [model for model in models if model._meta.label != "tenancy.Membership"]
    return check_relations(models)


@checks.register(checks.Tags.models)
def check_registry_managers(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    from tenancy.models import Domain, get_tenant_model

    try:
        tenant_model = get_tenant_model()
    except ImproperlyConfigured:
        return []  # Django reports a swappable model that does not exist
    return registry_manager_warnings([tenant_model, Domain])


def registry_manager_warnings(models: Iterable[type[Model]]) -> list[checks.CheckMessage]:
    """``tenancy.W002`` for a registry model whose default manager's queryset forgets
    nothing in the resolution cache on ``update()``."""
    from tenancy.registry_cache import RegistryQuerySet

    return [
        checks.Warning(
            f"{model._meta.label}'s default manager makes querysets that do not subclass "
            "tenancy.registry_cache.RegistryQuerySet: after its update() or bulk_create(), "
            "this process serves the old tenants until RESOLUTION_CACHE_TTL has passed.",
            hint="Make the manager with models.Manager.from_queryset(RegistryQuerySet) "
            "(or subclass RegistryQuerySet in your queryset class).",
            obj=model,
            id="tenancy.W002",
        )
        for model in models
        if not issubclass(model._default_manager._queryset_class, RegistryQuerySet)  # type: ignore[attr-defined]
    ]


def check_relations(models: Iterable[type[Model]]) -> list[checks.CheckMessage]:
    """Report relations between tenant and shared models: they would cross databases."""
    labels = tenancy_settings.tenant_app_labels
    both = tenancy_settings.shared_and_tenant_app_labels
    messages: list[checks.CheckMessage] = []
    for model in models:
        model_is_tenant = model._meta.app_label in labels
        for field in model._meta.get_fields(include_hidden=False):
            if not (field.is_relation and (field.concrete or field.many_to_many)):
                continue
            if field.auto_created or not isinstance(field.related_model, type):
                continue
            related = field.related_model
            # A shared-and-tenant model has a copy on both sides; one in every database
            # must find its related table in every database too.
            if related._meta.app_label in both:
                continue
            related_is_tenant = related._meta.app_label in labels
            if model._meta.app_label in both:
                from_tenant = not related_is_tenant  # its tenant copies reach no shared table
            elif related_is_tenant == model_is_tenant:
                continue
            else:
                from_tenant = model_is_tenant
            contrib = _contrib_hint(model, related)
            if from_tenant:
                messages.append(
                    checks.Error(
                        f"{model._meta.label}.{field.name} relates tenant model "
                        f"{model._meta.label} to shared model {related._meta.label}, which "
                        "lives in the default database: the constraint cannot be created "
                        "and joins across databases are impossible.",
                        hint=contrib
                        or f"Store the {related._meta.label} primary key in a plain field "
                        f"(e.g. {field.name}_id = models.BigIntegerField(db_index=True)) and "
                        "fetch it with a separate query.",
                        obj=field,
                        id="tenancy.E003",
                    )
                )
            else:
                messages.append(
                    checks.Error(
                        f"{model._meta.label}.{field.name} relates shared model "
                        f"{model._meta.label} to tenant model {related._meta.label}, which "
                        "lives in every tenant's database, not the default one.",
                        hint=contrib
                        or "Store the tenant object's primary key (and the tenant) in plain "
                        "fields, or move the model into a tenant app.",
                        obj=field,
                        id="tenancy.E004",
                    )
                )
    return messages


def _contrib_hint(model: type[Model], related: type[Model]) -> str | None:
    """The fix when one side is a model of Django's contrib apps, which a project cannot
    give a plain field: put the apps on the same side."""
    if not any(m._meta.app_config.name.startswith("django.contrib.") for m in (model, related)):
        return None
    label = related._meta.app_label
    if label in tenancy_settings.tenant_app_labels:
        label = model._meta.app_label
    return (
        f"Add {label!r} to TENANCY['TENANT_APPS'] too, or to "
        f"TENANCY['SHARED_AND_TENANT_APPS'] to keep a copy in the main database as well."
    )


ATOMIC_MIDDLEWARE = "tenancy.middleware.TenantAtomicRequestsMiddleware"


def _check_atomic_requests() -> list[checks.CheckMessage]:
    middleware = list(getattr(settings, "MIDDLEWARE", []))
    if tenancy_settings.ATOMIC_REQUESTS and ATOMIC_MIDDLEWARE not in middleware:
        return [
            checks.Error(
                "TENANCY['ATOMIC_REQUESTS'] is on, but no middleware applies it.",
                hint=f"Add {ATOMIC_MIDDLEWARE!r} as the last entry of MIDDLEWARE.",
                id="tenancy.E005",
            )
        ]
    if ATOMIC_MIDDLEWARE in middleware and middleware[-1] != ATOMIC_MIDDLEWARE:
        return [
            checks.Error(
                f"{ATOMIC_MIDDLEWARE} must be the last entry of MIDDLEWARE: it calls the view, "
                "so the process_view of any middleware after it (CSRF protection among "
                "them) would not run.",
                hint="Move it to the end of MIDDLEWARE.",
                id="tenancy.E006",
            )
        ]
    return []


SESSION_MIDDLEWARE = "django.contrib.sessions.middleware.SessionMiddleware"
TENANT_MIDDLEWARE = "tenancy.middleware.TenantMiddleware"
AUTHENTICATION_MIDDLEWARE = "django.contrib.auth.middleware.AuthenticationMiddleware"
TOOLBAR_MIDDLEWARE = "debug_toolbar.middleware.DebugToolbarMiddleware"


@checks.register(checks.Tags.security)
def check_session_binding(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """TenantMiddleware binds each sign-in to its site (``tenancy.sessions``): it needs the
    session, and must guard it before anything can sign the user in from it. Subclasses
    of the three middleware count as they do (as Django's admin checks count them)."""
    middleware = list(getattr(settings, "MIDDLEWARE", []))
    tenant = _positions(middleware, TENANT_MIDDLEWARE)
    if not tenant:
        return []
    position = tenant[0]
    if any(index > position for index in _positions(middleware, SESSION_MIDDLEWARE)):
        return [
            checks.Error(
                f"{TENANT_MIDDLEWARE} comes before {SESSION_MIDDLEWARE}, so it cannot bind "
                "sessions to their tenant: a session signed in on one tenant would sign its "
                "user in on every other.",
                hint=f"Move {TENANT_MIDDLEWARE!r} after {SESSION_MIDDLEWARE!r} in MIDDLEWARE.",
                id="tenancy.E009",
            )
        ]
    if any(index < position for index in _positions(middleware, AUTHENTICATION_MIDDLEWARE)):
        return [
            checks.Error(
                f"{AUTHENTICATION_MIDDLEWARE} comes before {TENANT_MIDDLEWARE}: middleware "
                "in between could read request.user from a session signed in on another "
                "tenant before the tenant is known.",
                hint=f"Move {AUTHENTICATION_MIDDLEWARE!r} after {TENANT_MIDDLEWARE!r} in "
                "MIDDLEWARE.",
                id="tenancy.E010",
            )
        ]
    return []


def _check_resolver() -> None:
    """``RESOLVER`` names a resolver that can be made (a typo would otherwise surface only
    at the first request)."""
    from tenancy.resolvers import BUILTIN_RESOLVERS, get_resolver

    value = tenancy_settings.RESOLVER
    try:
        get_resolver()
    except (ImportError, ImproperlyConfigured) as exc:
        names = ", ".join(map(repr, BUILTIN_RESOLVERS))
        raise ImproperlyConfigured(
            f"TENANCY['RESOLVER'] is {value!r}, which is neither a resolver name ({names}) "
            f"nor the dotted path of a TenantResolver subclass or function ({exc})."
        ) from exc


def _positions(middleware: list[str], dotted_path: str) -> list[int]:
    """Where ``dotted_path``, or a subclass of it, stands in ``middleware``."""
    base = import_string(dotted_path)
    positions = []
    for index, entry in enumerate(middleware):
        try:
            cls = import_string(entry) if entry != dotted_path else base
        except ImportError:
            continue  # Django reports it when it loads the middleware
        if isinstance(cls, type) and issubclass(cls, base):
            positions.append(index)
    return positions


@checks.register()
def check_debug_toolbar(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """django-debug-toolbar set up for tenants (``tenancy.debug_toolbar``)."""
    if not apps.is_installed("debug_toolbar"):
        return []
    from debug_toolbar.settings import get_config, get_panels

    from tenancy.debug_toolbar import SQL_PANEL, STORE, TOOLBAR_SQL_PANELS

    problems = []
    if TOOLBAR_SQL_PANELS.intersection(get_panels()):
        problems.append(
            (
                "DEBUG_TOOLBAR_PANELS has the toolbar's own SQL panel, which lists no query "
                "of a tenant's database.",
                f"Use {SQL_PANEL!r} in its place: DEBUG_TOOLBAR_PANELS = "
                "tenancy.debug_toolbar.panels() gives the toolbar's defaults with it.",
            )
        )
    if get_config()["TOOLBAR_STORE_CLASS"] != STORE:
        problems.append(
            (
                "The debug toolbar keeps every site's requests in one store: a toolbar opened "
                "on one tenant's host can read another tenant's requests, SQL and all.",
                f'Set DEBUG_TOOLBAR_CONFIG["TOOLBAR_STORE_CLASS"] = {STORE!r}.',
            )
        )
    middleware = list(getattr(settings, "MIDDLEWARE", []))
    toolbar = _positions(middleware, TOOLBAR_MIDDLEWARE)
    tenant = _positions(middleware, TENANT_MIDDLEWARE)
    if toolbar and tenant and toolbar[0] < tenant[0]:
        problems.append(
            (
                f"{TOOLBAR_MIDDLEWARE} comes before {TENANT_MIDDLEWARE}, so the toolbar "
                "records and shows each request outside its tenant.",
                f"Move {TOOLBAR_MIDDLEWARE!r} after {TENANT_MIDDLEWARE!r} in MIDDLEWARE.",
            )
        )
    return [checks.Warning(msg, hint=hint, id="tenancy.W004") for msg, hint in problems]
