"""Server entries written as database URLs, as twelve-factor deployments keep them.

``TENANCY["SERVERS"]`` takes, for any server, the URL that ``dj-database-url`` and
``django-environ`` read, without a database name (each tenant's comes from
``DATABASE_NAME``)::

    from tenancy import server_from_url

    TENANCY = {
        "SERVERS": {
            "eu-1": server_from_url(os.environ["TENANT_DB_EU_1"]),
            # postgres://app:secret@db-eu-1.internal:5432/?sslmode=require
            "eu-2": server_from_url(os.environ["TENANT_DB_EU_2"], CONN_MAX_AGE=60),
        },
    }

``server_from_url`` gives the settings dict; the URL string itself is accepted as a server
entry too. Prefer the dict: Django's error pages under ``DEBUG`` hide a setting called
``PASSWORD``, not a password inside a URL. Either way tenancy never puts the password in an
error message or a log line (URLs are shown with ``********`` in its place).

- ``postgres://``, ``postgresql://``, ``pgsql://``: user, password, host (a name, an
  address, ``[::1]``, or a socket directory written percent-encoded: ``%2Fvar%2Frun``),
  port; each query parameter becomes an ``OPTIONS`` entry (libpq's ``sslmode``,
  ``connect_timeout``, ``application_name``, ...). Percent-encoded characters are decoded.
- ``sqlite:////absolute/directory`` (or ``sqlite:///relative/directory``): the
  ``DIRECTORY`` of a SQLite server.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

POSTGRESQL_SCHEMES = frozenset({"postgres", "postgresql", "pgsql"})
REDACTED = "********"


def server_from_url(url: str, **settings: Any) -> dict[str, Any]:
    """The server settings a database URL stands for, plus ``settings`` (Django's
    per-database keys such as ``CONN_MAX_AGE``). ``ImproperlyConfigured`` for a URL that
    is not one, naming it without its password."""
    try:
        server = _parse(url)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{redact(url)!r} is not a server URL: {exc}") from None
    return {**server, **settings}


def redact(url: str) -> str:
    """``url`` with everything after the user name up to its last ``@`` (the password,
    whatever characters it holds) replaced by ``********``."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        rest = url
    if "@" not in rest:
        return url
    credentials, _, location = rest.rpartition("@")
    if ":" not in credentials:
        return url  # a user name alone
    user = credentials.partition(":")[0].partition("/")[0]
    prefix = f"{scheme}://" if separator else ""
    return f"{prefix}{user}:{REDACTED}@{location}"


def _parse(url: str) -> dict[str, Any]:
    if not isinstance(url, str) or "://" not in url:
        raise ValueError("it needs a scheme, such as postgres:// or sqlite://")
    credentials = url.partition("://")[2].rpartition("@")[0]
    if any(character in credentials for character in "/?#"):
        raise ValueError(
            "its user or password holds '/', '?' or '#': percent-encode them (%2F, %3F, %23)"
        )
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "sqlite":
        if parts.netloc or parts.query:
            raise ValueError("a SQLite server is sqlite:////absolute/directory")
        directory = unquote(parts.path[1:])
        if not directory:
            raise ValueError("a SQLite server needs the directory of its tenants' files")
        return {"ENGINE": "django.db.backends.sqlite3", "DIRECTORY": directory}
    if scheme not in POSTGRESQL_SCHEMES:
        raise ValueError(
            f"the scheme {scheme!r} is not one tenancy serves (postgres://, sqlite://)"
        )
    if parts.path not in ("", "/"):
        raise ValueError(
            "it names a database; a server URL names none (each tenant's database name "
            "comes from TENANCY['DATABASE_NAME'])"
        )
    location = parts.netloc.rpartition("@")[2]
    if location.startswith("["):
        host = location[1 : location.index("]")]
    else:
        host = unquote(location.partition(":")[0])
    try:
        port = parts.port
    except ValueError:
        raise ValueError("its port is not a number from 0 to 65535") from None
    server: dict[str, Any] = {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": host,
        "PORT": str(port) if port is not None else "",
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
    }
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    if options:
        server["OPTIONS"] = options
    return server
