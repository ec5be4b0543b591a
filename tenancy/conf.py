"""The ``TENANCY`` setting, read through one object with defaults and validation.

Every value is validated on first use and cached; ``setting_changed`` (for example
``override_settings(TENANCY=...)``) clears the cache. Errors are ``ImproperlyConfigured``
and name the key to fix.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Callable, Mapping
from functools import cached_property
from importlib import import_module
from pathlib import Path
from typing import Any, cast

from django.apps import apps
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.db import DEFAULT_DB_ALIAS
from django.db.utils import load_backend
from django.utils.module_loading import import_string

from tenancy.validators import validate_database_name, validate_hostname

TENANT_MODEL_SETTING = "TENANCY_TENANT_MODEL"
DEFAULT_TENANT_MODEL = "tenancy.Tenant"

SUPPORTED_VENDORS = ("postgresql", "sqlite")

# Keys of a server entry that tenancy reads itself; they never reach Django.
SERVER_ONLY_KEYS = (
    "DIRECTORY",
    "MAINTENANCE_DB",
    "PLACEMENT",
    "DATABASE",
    "TRANSACTION_POOLING",
    "DIRECT",
    "MAX_OPEN_CONNECTIONS",
    "CONNECTION_BUDGET",
    "REPLICAS",
    "REPLICA_MAX_LAG",
    "REPLICA_STICKY_SECONDS",
)

# What a read replica in a server entry's REPLICAS may set: the rest is the server's.
REPLICA_KEYS = ("HOST", "PORT", "OPTIONS", "USER", "PASSWORD")

# What a server entry's DIRECT may set: the address of the server itself, for PostgreSQL's
# client programs (backups, restores, moves), where HOST and PORT lead to a pooler.
DIRECT_KEYS = ("HOST", "PORT", "OPTIONS")

# Where a server keeps its tenants: a database each, or a schema each in one database.
DATABASES_PLACEMENT = "databases"
SCHEMAS_PLACEMENT = "schemas"
PLACEMENTS = (DATABASES_PLACEMENT, SCHEMAS_PLACEMENT)

# libpq parameters that would override where a tenant's connection goes (Django passes
# OPTIONS after the database name, so they win).
CONNECTION_TARGET_OPTIONS = ("dbname", "host", "hostaddr", "port", "service")

DEFAULTS: dict[str, Any] = {
    # Apps (labels or dotted names) whose tables live in every tenant database.
    "TENANT_APPS": (),
    # Apps whose tables live in the main database and in every tenant database: inside a
    # tenant its own copy is used, outside one the main database's (e.g. sites).
    "SHARED_AND_TENANT_APPS": (),
    # Named connection templates, everything but the database name. When unset, one
    # server named "default" is derived from DATABASES["default"].
    "SERVERS": None,
    "DEFAULT_SERVER": "default",
    # How a tenant's database is named; "-" in slugs becomes "_".
    "DATABASE_NAME": "tenant_{slug}",
    # "host", "subdomain", "header", "path", or the dotted path of a resolver class or
    # of a callable taking the request.
    "RESOLVER": "host",
    "BASE_DOMAIN": "",
    "PUBLIC_HOSTS": (),
    "HEADER": "X-Tenant",
    "PATH_PREFIX": "/t/",
    # Open connections to tenants' own databases per process, never exceeded: at the cap a
    # thread closes an idle one (the least recently used) before it opens another, or
    # waits up to CONNECTION_WAIT_TIMEOUT seconds for one to be released, then fails
    # (503 for a request). None: no cap. A server entry may set its own cap.
    "MAX_OPEN_CONNECTIONS": 100,
    "CONNECTION_WAIT_TIMEOUT": 5.0,
    # Seconds after its last use at which an idle tenant connection is closed at the next
    # safe point of its thread. None: kept as long as CONN_MAX_AGE allows.
    "IDLE_CONNECTION_TIMEOUT": None,
    # Seconds within which every process sees a change of the registry (a tenant
    # suspended, deleted or moved, a domain added or removed) made by another process;
    # the process that makes it sees it at once. 0: no caching, a query per request.
    "RESOLUTION_CACHE_TTL": 1.0,
    # Known tenants and names that name no tenant, kept per process (tenancy.registry_cache).
    "RESOLUTION_CACHE_SIZE": 10_000,
    "RESOLUTION_CACHE_NOT_FOUND_SIZE": 1_000,
    # New tenant databases are copies of a per-server template kept at the current schema.
    "USE_TEMPLATE_DATABASES": True,
    # Copies of the template kept ready per server: provisioning renames one (instant)
    # instead of copying the template, and a new copy is made in the background.
    "SPARE_DATABASES": 1,
    # Wrap each tenant request's view in a transaction on the tenant's database (needs
    # tenancy.middleware.TenantAtomicRequestsMiddleware, last in MIDDLEWARE).
    "ATOMIC_REQUESTS": False,
    # Warn (DefaultTransactionWarning) when a tenant model is written while only the main
    # database has a transaction open. None: when settings.DEBUG is on.
    "CHECK_TRANSACTIONS": None,
    # Start every query on a tenant database with /* tenant=<slug> */.
    "SQL_COMMENT": False,
    # Serve GET, HEAD and OPTIONS requests of a tenant being moved from its source, which
    # is read-only meanwhile; other requests get 503. False: 503 for every request.
    "READ_ONLY_WHILE_MOVING": True,
    # Days a deleted tenant's data is kept (the tenant archived, not served) before
    # purge_tenants drops it; delete_tenant --retain DAYS chooses per tenant. 0: dropped
    # at once.
    "RETENTION_DAYS": 0,
    # Set, an archived tenant's database is backed up into this directory and dropped
    # (the server's space freed), and restored from it when the tenant is reactivated.
    # None: the database itself is kept, read-only.
    "RETENTION_BACKUP_DIRECTORY": None,
    # Who may use a session signed in on one site (a tenant, or the main site) on another:
    # None (nobody), or a function (user, tenant) -> bool or its dotted path.
    "CROSS_TENANT_LOGIN": None,
    # Dotted paths of the URLconfs for the main site and for tenants. None: ROOT_URLCONF.
    "PUBLIC_URLCONF": None,
    "TENANT_URLCONF": None,
    # Dotted paths of views answering a key that names no tenant, (request, key), and a
    # tenant that is not active, (request, tenant). None: tenancy's own pages.
    "NOT_FOUND_VIEW": None,
    "UNAVAILABLE_VIEW": None,
}


def _error(key: str, message: str) -> ImproperlyConfigured:
    return ImproperlyConfigured(f"TENANCY[{key!r}] {message}")


class TenancySettings:
    """Validated view of ``settings.TENANCY``."""

    @cached_property
    def _raw(self) -> Mapping[str, Any]:
        raw = getattr(settings, "TENANCY", {})
        if not isinstance(raw, Mapping):
            raise ImproperlyConfigured("TENANCY must be a dict.")
        unknown = sorted(set(raw) - set(DEFAULTS))
        if unknown:
            raise ImproperlyConfigured(
                f"TENANCY has unknown key(s) {', '.join(map(repr, unknown))}; "
                f"known keys are {', '.join(sorted(DEFAULTS))}."
            )
        return {**DEFAULTS, **raw}

    def reset(self) -> None:
        self.__dict__.clear()

    @cached_property
    def TENANT_APPS(self) -> tuple[str, ...]:
        value = self._raw["TENANT_APPS"]
        if isinstance(value, str) or not all(isinstance(item, str) for item in value):
            raise _error("TENANT_APPS", "must be a list of app labels or dotted app names.")
        return tuple(value)

    @cached_property
    def SHARED_AND_TENANT_APPS(self) -> tuple[str, ...]:
        value = self._raw["SHARED_AND_TENANT_APPS"]
        if isinstance(value, str) or not all(isinstance(item, str) for item in value):
            raise _error(
                "SHARED_AND_TENANT_APPS", "must be a list of app labels or dotted app names."
            )
        return tuple(value)

    @cached_property
    def tenant_app_labels(self) -> frozenset[str]:
        """Labels of the apps with tables in every tenant database (``TENANT_APPS`` and
        ``SHARED_AND_TENANT_APPS``); needs the app registry to be ready."""
        return self._app_labels("TENANT_APPS") | self.shared_and_tenant_app_labels

    @cached_property
    def shared_and_tenant_app_labels(self) -> frozenset[str]:
        """Labels of the apps with tables in the main database and every tenant's."""
        labels = self._app_labels("SHARED_AND_TENANT_APPS")
        both = labels & self._app_labels("TENANT_APPS")
        if both:
            raise _error(
                "SHARED_AND_TENANT_APPS",
                f"and TENANT_APPS both name {', '.join(sorted(both))}; keep each app in one "
                "of them.",
            )
        return labels

    def _app_labels(self, key: str) -> frozenset[str]:
        by_name = {config.name: config.label for config in apps.get_app_configs()}
        labels = set()
        for entry in getattr(self, key):
            if entry in by_name:
                labels.add(by_name[entry])
            elif apps.is_installed(entry) or entry in by_name.values():
                labels.add(entry)
            else:
                raise _error(
                    key,
                    f"names {entry!r}, which is not an installed app; add it to "
                    f"INSTALLED_APPS or remove it from {key}.",
                )
        return frozenset(labels)

    @cached_property
    def users_per_tenant(self) -> bool:
        """Whether the user model is a tenant app's: each tenant has its own users, and
        there are no memberships of main-database users (``tenancy.Membership``)."""
        return str(settings.AUTH_USER_MODEL).partition(".")[0] in self.tenant_app_labels

    @cached_property
    def SERVERS(self) -> dict[str, dict[str, Any]]:
        value = self._raw["SERVERS"]
        if value is None:
            value = {"default": _server_from_default_database()}
        if not isinstance(value, Mapping) or not value:
            raise _error("SERVERS", "must be a non-empty dict of server name -> settings.")
        return {name: _validated_server(name, template) for name, template in value.items()}

    @cached_property
    def DEFAULT_SERVER(self) -> str:
        value = self._raw["DEFAULT_SERVER"]
        if value not in self.SERVERS:
            raise _error(
                "DEFAULT_SERVER",
                f"is {value!r}, which is not in TENANCY['SERVERS'] "
                f"({', '.join(map(repr, self.SERVERS))}).",
            )
        return str(value)

    @cached_property
    def DATABASE_NAME(self) -> str:
        value = self._raw["DATABASE_NAME"]
        if not isinstance(value, str) or "{slug}" not in value:
            raise _error("DATABASE_NAME", "must be a string containing '{slug}'.")
        try:
            validate_database_name(value.format(slug="x"))
        except (KeyError, IndexError, ValueError, ValidationError) as exc:
            raise _error(
                "DATABASE_NAME",
                f"({value!r}) must give a valid database name: lowercase letters, digits and "
                f"underscores besides '{{slug}}' ({exc}).",
            ) from exc
        # The fixed part appears in every name made from the pattern. With an underscore
        # in it, no slug can make one of PostgreSQL's own databases (postgres, template0,
        # template1): their names have none.
        fixed = value.format(slug="")
        if len(fixed) < 2 or "_" not in fixed:
            raise _error(
                "DATABASE_NAME",
                f"({value!r}) needs a fixed part of at least 2 characters with an "
                "underscore besides '{slug}', e.g. 'tenant_{slug}', so that no slug can "
                "name a system database such as 'postgres' or 'template1'.",
            )
        return value

    @cached_property
    def RESOLVER(self) -> Any:
        value = self._raw["RESOLVER"]
        if not (isinstance(value, str) and value) and not callable(value):
            raise _error("RESOLVER", "must be a resolver name, a dotted path or a callable.")
        return value

    @cached_property
    def BASE_DOMAIN(self) -> str:
        value = self._raw["BASE_DOMAIN"]
        if value:
            _validate_host("BASE_DOMAIN", value)
        return str(value or "")

    @cached_property
    def PUBLIC_HOSTS(self) -> frozenset[str]:
        value = self._raw["PUBLIC_HOSTS"]
        if isinstance(value, str):
            raise _error("PUBLIC_HOSTS", "must be a list of hostnames, not a string.")
        for host in value:
            _validate_host("PUBLIC_HOSTS", host)
        return frozenset(value)

    @cached_property
    def HEADER(self) -> str:
        value = self._raw["HEADER"]
        if not isinstance(value, str) or not value.replace("-", "").isalnum():
            raise _error("HEADER", "must be an HTTP header name such as 'X-Tenant'.")
        return value

    @cached_property
    def PATH_PREFIX(self) -> str:
        value = self._raw["PATH_PREFIX"]
        if not isinstance(value, str) or not value.startswith("/") or not value.endswith("/"):
            raise _error("PATH_PREFIX", "must start and end with '/', e.g. '/t/'.")
        return value

    @cached_property
    def MAX_OPEN_CONNECTIONS(self) -> int | None:
        value = self._raw["MAX_OPEN_CONNECTIONS"]
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise _error("MAX_OPEN_CONNECTIONS", "must be a positive integer or None (no cap).")
        return value

    @cached_property
    def CONNECTION_WAIT_TIMEOUT(self) -> float:
        value = self._raw["CONNECTION_WAIT_TIMEOUT"]
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise _error("CONNECTION_WAIT_TIMEOUT", "must be a number of seconds, 0 or more.")
        return float(value)

    def server_connection_cap(self, name: str) -> int | None:
        """Server ``name``'s own cap on open tenant connections per process, if it has one
        (and ``None`` for a server no longer configured)."""
        server = self.SERVERS.get(name)
        return None if server is None else cast(int | None, server.get("MAX_OPEN_CONNECTIONS"))

    @cached_property
    def IDLE_CONNECTION_TIMEOUT(self) -> float | None:
        value = self._raw["IDLE_CONNECTION_TIMEOUT"]
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float) or value <= 0
        ):
            raise _error(
                "IDLE_CONNECTION_TIMEOUT", "must be a positive number of seconds or None."
            )
        return cast(float | None, value)

    @cached_property
    def RESOLUTION_CACHE_TTL(self) -> float:
        value = self._raw["RESOLUTION_CACHE_TTL"]
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise _error(
                "RESOLUTION_CACHE_TTL", "must be a number of seconds, 0 to turn caching off."
            )
        return float(value)

    @cached_property
    def RESOLUTION_CACHE_SIZE(self) -> int:
        return self._positive_integer("RESOLUTION_CACHE_SIZE")

    @cached_property
    def RESOLUTION_CACHE_NOT_FOUND_SIZE(self) -> int:
        return self._positive_integer("RESOLUTION_CACHE_NOT_FOUND_SIZE")

    def _positive_integer(self, key: str) -> int:
        value = self._raw[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise _error(key, "must be a positive integer.")
        return value

    @cached_property
    def USE_TEMPLATE_DATABASES(self) -> bool:
        return self._boolean("USE_TEMPLATE_DATABASES")

    @cached_property
    def SPARE_DATABASES(self) -> int:
        value = self._raw["SPARE_DATABASES"]
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
            raise _error("SPARE_DATABASES", "must be a whole number from 0 to 100.")
        return value

    @cached_property
    def ATOMIC_REQUESTS(self) -> bool:
        return self._boolean("ATOMIC_REQUESTS")

    @cached_property
    def SQL_COMMENT(self) -> bool:
        return self._boolean("SQL_COMMENT")

    @cached_property
    def READ_ONLY_WHILE_MOVING(self) -> bool:
        return self._boolean("READ_ONLY_WHILE_MOVING")

    @cached_property
    def RETENTION_DAYS(self) -> int:
        value = self._raw["RETENTION_DAYS"]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise _error(
                "RETENTION_DAYS",
                f"must be a whole number of days, 0 to drop a deleted tenant at once, not "
                f"{value!r}.",
            )
        return value

    @cached_property
    def RETENTION_BACKUP_DIRECTORY(self) -> Path | None:
        value = self._raw["RETENTION_BACKUP_DIRECTORY"]
        if value is None:
            return None
        if not isinstance(value, str | os.PathLike) or not str(value):
            raise _error(
                "RETENTION_BACKUP_DIRECTORY",
                f"must be None or the path of a directory, not {value!r}.",
            )
        return Path(value)

    @cached_property
    def CROSS_TENANT_LOGIN(self) -> Callable[[Any, Any], Any] | None:
        value = self._raw["CROSS_TENANT_LOGIN"]
        expected = "must be None or a function (user, tenant) -> bool, or its dotted path"
        if isinstance(value, str):
            try:
                value = import_string(value)
            except ImportError as exc:
                raise _error("CROSS_TENANT_LOGIN", f"{expected}; {exc}.") from exc
        if value is not None and not callable(value):
            raise _error("CROSS_TENANT_LOGIN", f"{expected}, not {value!r}.")
        if value is not None and self.users_per_tenant:
            raise _error(
                "CROSS_TENANT_LOGIN",
                "cannot be used when each tenant has users of its own: a session's user "
                "is a user of the tenant it was signed in on.",
            )
        return cast(Callable[[Any, Any], Any] | None, value)

    @cached_property
    def PUBLIC_URLCONF(self) -> str | None:
        return self._urlconf("PUBLIC_URLCONF")

    @cached_property
    def TENANT_URLCONF(self) -> str | None:
        return self._urlconf("TENANT_URLCONF")

    @cached_property
    def NOT_FOUND_VIEW(self) -> Callable[..., Any] | None:
        return self._view("NOT_FOUND_VIEW", "(request, key)")

    @cached_property
    def UNAVAILABLE_VIEW(self) -> Callable[..., Any] | None:
        return self._view("UNAVAILABLE_VIEW", "(request, tenant)")

    def _urlconf(self, key: str) -> str | None:
        value = self._raw[key]
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise _error(
                key, f"must be the dotted path of a URLconf module or None, not {value!r}."
            )
        try:
            import_module(value)
        except ImportError as exc:
            raise _error(key, f"names {value!r}, which cannot be imported: {exc}.") from exc
        return value

    def _view(self, key: str, signature: str) -> Callable[..., Any] | None:
        value = self._raw[key]
        expected = f"must be None or the dotted path of a view {signature} -> response"
        if value is None:
            return None
        if not isinstance(value, str):
            raise _error(key, f"{expected}, not {value!r}.")
        try:
            view = import_string(value)
        except ImportError as exc:
            raise _error(key, f"{expected}; {exc}.") from exc
        if not callable(view):
            raise _error(key, f"{expected}; {value!r} is not callable.")
        return cast(Callable[..., Any], view)

    def _boolean(self, key: str) -> bool:
        value = self._raw[key]
        if not isinstance(value, bool):
            raise _error(key, "must be True or False.")
        return value

    @cached_property
    def CHECK_TRANSACTIONS(self) -> bool:
        value = self._raw["CHECK_TRANSACTIONS"]
        if value is None:
            return bool(settings.DEBUG)
        if not isinstance(value, bool):
            raise _error("CHECK_TRANSACTIONS", "must be True, False or None (follow DEBUG).")
        return value

    def template_database_name(self) -> str:
        """Name of each server's template database. A slug cannot start with "-" (which
        becomes "_"), so no tenant's database can have this name."""
        return as_test_database_name(self.DATABASE_NAME.format(slug="_template"))

    def spare_database_names(self) -> list[str]:
        """Names of each server's spare copies of its template (``SPARE_DATABASES``); like
        the template's, no tenant's database can have them."""
        return [
            as_test_database_name(self.DATABASE_NAME.format(slug=f"_spare_{number}"))
            for number in range(1, self.SPARE_DATABASES + 1)
        ]

    def is_spare_database_name(self, name: str) -> bool:
        """Whether ``name`` is a spare's name, whatever ``SPARE_DATABASES`` is now."""
        pattern = as_test_database_name(self.DATABASE_NAME.format(slug="_spare_\x00"))
        prefix, _, suffix = pattern.partition("\x00")
        number = name.removeprefix(prefix).removesuffix(suffix)
        return name == f"{prefix}{number}{suffix}" and number.isdigit()

    def validate(self) -> None:
        """Read every value, so that any error is raised now (used by the system check)."""
        for key in DEFAULTS:
            getattr(self, key)
        self.tenant_app_labels  # noqa: B018

    def server(self, name: str) -> dict[str, Any]:
        """The validated template of server ``name``; KeyError if it is not configured."""
        return self.SERVERS[name]

    def database_name_for(self, slug: str) -> str:
        """The name of ``slug``'s database, or of its schema on a schema server."""
        return as_test_database_name(self.DATABASE_NAME.format(slug=slug.replace("-", "_")))


def is_schema_server(template: Mapping[str, Any]) -> bool:
    """Whether the server entry ``template`` keeps its tenants as schemas of one database."""
    return bool(template.get("PLACEMENT", DATABASES_PLACEMENT) == SCHEMAS_PLACEMENT)


def shared_database_name(template: Mapping[str, Any]) -> str:
    """The database that holds a schema server's tenants (its test name in a test run)."""
    return as_test_database_name(str(template["DATABASE"]))


# Test runs name tenant databases as Django names test databases: "test_" + the name, plus
# the test worker's suffix. None: not a test run.
TEST_DATABASE_PREFIX = "test_"
_test_database_suffix: str | None = None


def use_test_database_names(suffix: str = "") -> None:
    """From now on, name tenant and template databases as test databases, and refuse
    connections to any other tenant database (see ``tenancy.testing``)."""
    global _test_database_suffix
    _test_database_suffix = suffix


def is_test_run() -> bool:
    return _test_database_suffix is not None


def as_test_database_name(name: str) -> str:
    """``name`` during a test run: ``test_<name>[_<worker>]``; otherwise ``name``."""
    if _test_database_suffix is None:
        return name
    suffix = f"_{_test_database_suffix}" if _test_database_suffix else ""
    return f"{TEST_DATABASE_PREFIX}{name}{suffix}"


def server_vendor(template: Mapping[str, Any]) -> str:
    vendor: str = load_backend(template["ENGINE"]).DatabaseWrapper.vendor
    return vendor


def _validate_host(key: str, value: object) -> None:
    try:
        validate_hostname(value)
    except ValidationError as exc:
        raise _error(key, f"contains an invalid hostname: {exc.messages[0]}") from exc


def _validated_server(name: object, template: object) -> dict[str, Any]:
    if not isinstance(name, str) or not name:
        raise _error("SERVERS", "keys must be non-empty strings.")
    if isinstance(template, str):
        from tenancy.server_urls import server_from_url

        try:
            template = server_from_url(template)
        except ImproperlyConfigured as exc:
            raise _server_error(name, f"is a URL that cannot be read: {exc}") from None
    if not isinstance(template, Mapping) or not template.get("ENGINE"):
        raise _server_error(name, "must be a dict of connection settings with an ENGINE.")
    try:
        vendor = server_vendor(template)
    except ImproperlyConfigured as exc:
        raise _server_error(name, f"has an ENGINE that cannot be loaded: {exc}") from exc
    if vendor not in SUPPORTED_VENDORS:
        raise _server_error(
            name, f"uses a {vendor} backend; tenancy supports {', '.join(SUPPORTED_VENDORS)}."
        )
    if "NAME" in template:
        raise _server_error(
            name,
            "must not set NAME: each tenant's database name comes from "
            "TENANCY['DATABASE_NAME'] (a SQLite server sets DIRECTORY instead).",
        )
    if template.get("ATOMIC_REQUESTS"):
        raise _server_error(
            name,
            "must not set ATOMIC_REQUESTS: Django would open every tenant's database on "
            "every request.",
        )
    options = template.get("OPTIONS") or {}
    if vendor == "postgresql":
        _refuse_odd_option_keys(name, options, "an OPTIONS key")
    chosen = sorted(set(options) & set(CONNECTION_TARGET_OPTIONS))
    if vendor == "postgresql" and chosen:
        raise _server_error(
            name,
            f"sets OPTIONS {', '.join(map(repr, chosen))}, which choose the server or the "
            "database a connection goes to: every tenant of the server would reach the same "
            "one. Use HOST and PORT; each tenant's database name comes from "
            "TENANCY['DATABASE_NAME'].",
        )
    _validate_placement(name, template, vendor)
    _validate_direct(name, template, vendor)
    _validate_replicas(name, template, vendor)
    for key in ("MAX_OPEN_CONNECTIONS", "CONNECTION_BUDGET"):
        value = template.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise _server_error(name, f"has {key} {value!r}; it must be a positive integer.")
    server = copy.deepcopy(dict(template))
    if vendor == "sqlite":
        if not template.get("DIRECTORY"):
            raise _server_error(
                name, "is a SQLite server and needs DIRECTORY, where tenant files live."
            )
        server["DIRECTORY"] = Path(template["DIRECTORY"])
    return server


def _validate_direct(name: object, template: Mapping[str, Any], vendor: str) -> None:
    direct = template.get("DIRECT")
    if direct is None:
        return
    if vendor != "postgresql":
        raise _server_error(name, "sets DIRECT, which only a PostgreSQL server uses.")
    if not isinstance(direct, Mapping) or not set(direct) <= set(DIRECT_KEYS):
        raise _server_error(
            name,
            "has DIRECT, which must be a dict of HOST, PORT and OPTIONS: the server's own "
            "address where HOST and PORT lead to a pooler, for pg_dump and pg_restore.",
        )
    _refuse_odd_option_keys(name, direct.get("OPTIONS") or {}, "a DIRECT OPTIONS key")
    chosen = sorted(set(direct.get("OPTIONS") or {}) & set(CONNECTION_TARGET_OPTIONS))
    if chosen:
        raise _server_error(
            name, f"sets DIRECT OPTIONS {', '.join(map(repr, chosen))}; use HOST and PORT."
        )


def _refuse_odd_option_keys(name: object, options: Mapping[str, Any], what: str) -> None:
    """libpq skips blanks around a keyword (" dbname" is dbname) and reads "a=b" as two:
    a key that is not a plain parameter name would get past the checks of the names."""
    if not all(re.fullmatch(r"[a-z_]+", str(key)) for key in options):
        raise _server_error(
            name, f"has {what} that is not a plain libpq or Django parameter name."
        )


def _validate_replicas(name: object, template: Mapping[str, Any], vendor: str) -> None:
    replicas = template.get("REPLICAS")
    if replicas is not None:
        if vendor != "postgresql":
            raise _server_error(name, "sets REPLICAS, which only a PostgreSQL server has.")
        if not isinstance(replicas, list | tuple) or not all(
            isinstance(replica, Mapping) and replica and set(replica) <= set(REPLICA_KEYS)
            for replica in replicas
        ):
            raise _server_error(
                name,
                "has REPLICAS, which must be a list of dicts of HOST, PORT, OPTIONS, USER "
                "and PASSWORD: where each read replica differs from the server (the "
                "database names are the same).",
            )
        for replica in replicas:
            _validate_replica(name, replica)
    for key, least in (("REPLICA_MAX_LAG", 0.0), ("REPLICA_STICKY_SECONDS", 0.0)):
        value = template.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float) or value < least
        ):
            raise _server_error(name, f"has {key} {value!r}; it must be a number of seconds.")


# Options that would let one replica entry reach several servers, or choose among them.
REPLICA_REFUSED_OPTIONS = (
    *CONNECTION_TARGET_OPTIONS,
    "load_balance_hosts",
    "target_session_attrs",
)


def _validate_replica(name: object, replica: Mapping[str, Any]) -> None:
    """One replica entry reaches exactly one server: what tenancy checks on it (how far it
    has replayed) must hold for every connection made with it."""
    options = replica.get("OPTIONS") or {}
    _refuse_odd_option_keys(name, options, "a replica with an OPTIONS key")
    chosen = sorted(set(options) & set(REPLICA_REFUSED_OPTIONS))
    if chosen:
        raise _server_error(
            name,
            f"has a replica with OPTIONS {', '.join(map(repr, chosen))}; give each replica "
            "its own entry, with HOST and PORT.",
        )
    if any("," in str(replica.get(key) or "") for key in ("HOST", "PORT")):
        raise _server_error(
            name,
            f"has a replica with several hosts ({replica.get('HOST')!r}); give each replica "
            "its own entry, never an address that leads to several servers.",
        )
    timeout = options.get("connect_timeout")
    if timeout is not None:
        try:
            valid = not isinstance(timeout, bool) and float(timeout) >= 1
        except (TypeError, ValueError):
            valid = False
        if not valid:
            raise _server_error(
                name,
                f"has a replica with connect_timeout {timeout!r}; it must be at least 1 "
                "(seconds).",
            )


def _validate_placement(name: object, template: Mapping[str, Any], vendor: str) -> None:
    placement = template.get("PLACEMENT", DATABASES_PLACEMENT)
    if placement not in PLACEMENTS:
        raise _server_error(
            name,
            f"has PLACEMENT {placement!r}; use {DATABASES_PLACEMENT!r} (a database per "
            f"tenant, the default) or {SCHEMAS_PLACEMENT!r} (a schema per tenant in one "
            "database, named by DATABASE).",
        )
    if not isinstance(template.get("TRANSACTION_POOLING", False), bool):
        raise _server_error(
            name,
            "has TRANSACTION_POOLING, which must be True (the server is reached through "
            "a pooler in transaction mode, such as PgBouncer's pool_mode = transaction) "
            "or False.",
        )
    if placement == DATABASES_PLACEMENT:
        if "DATABASE" in template:
            raise _server_error(
                name,
                "sets DATABASE, which only a server with PLACEMENT 'schemas' uses (the "
                "database holding its tenants' schemas).",
            )
        return
    if vendor != "postgresql":
        raise _server_error(
            name,
            f"is a {vendor} server, which has no schemas; PLACEMENT 'schemas' needs "
            "PostgreSQL. Keep SQLite tenants in a database (a file) each.",
        )
    try:
        validate_database_name(template.get("DATABASE"))
    except ValidationError as exc:
        raise _server_error(
            name,
            "has PLACEMENT 'schemas' and needs DATABASE, the name of the database that "
            f"holds its tenants' schemas: {exc.messages[0]}",
        ) from None
    if "pool" in (template.get("OPTIONS") or {}):
        raise _server_error(
            name,
            "has PLACEMENT 'schemas' and sets OPTIONS 'pool': the tenants of a schema "
            "server already share one connection per thread; remove 'pool'.",
        )


def _server_error(name: object, message: str) -> ImproperlyConfigured:
    return ImproperlyConfigured(f"TENANCY['SERVERS'][{name!r}] {message}")


def _server_from_default_database() -> dict[str, Any]:
    default = dict(settings.DATABASES.get(DEFAULT_DB_ALIAS, {}))
    engine = default.get("ENGINE", "")
    if engine and server_vendor(default) == "sqlite":
        name = str(default.get("NAME", ""))
        if not name or name == ":memory:" or name.startswith("file:"):
            raise _error(
                "SERVERS",
                "is not set and the default database is an in-memory SQLite database; "
                "set TENANCY['SERVERS'] to say where tenant databases live.",
            )
        return {"ENGINE": engine, "DIRECTORY": Path(name).parent / "tenants"}
    for key in ("NAME", "TEST", "ATOMIC_REQUESTS"):
        default.pop(key, None)
    return default


tenancy_settings = TenancySettings()
