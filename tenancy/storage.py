"""File storage that keeps each tenant's files apart.

Every tenant's files live under ``<prefix>/<slug>/`` of the storage, the main site's
under ``shared/``: two subtrees that cannot overlap, so no name given on one site can
reach a file of another. The directory follows the tenant current at each call (a storage
instance is shared by every request), never the one current when the storage was made.

Local files (``STORAGES["default"]["BACKEND"] = "tenancy.storage.TenantFileSystemStorage"``)::

    <MEDIA_ROOT>/tenants/acme/avatars/a.png   <MEDIA_URL>tenants/acme/avatars/a.png
    <MEDIA_ROOT>/shared/avatars/a.png         <MEDIA_URL>shared/avatars/a.png

Any other backend (django-storages' S3, GCS, ...)::

    class TenantS3Storage(TenantPrefixMixin, S3Storage):
        pass
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured, SuspiciousFileOperation
from django.core.files.storage import FileSystemStorage, Storage, default_storage
from django.http import Http404, HttpRequest, HttpResponseBase
from django.views.static import serve

from tenancy.context import current_tenant
from tenancy.validators import is_valid_slug

TENANTS_PREFIX = "tenants"
SHARED_PREFIX = "shared"

_SEGMENT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*\Z")


class _TenantLayout:
    """The two prefixes, validated once, and the current site's directory."""

    tenants_prefix: str
    shared_prefix: str

    def _set_prefixes(self, tenants_prefix: str, shared_prefix: str) -> None:
        for argument, value in (
            ("tenants_prefix", tenants_prefix),
            ("shared_prefix", shared_prefix),
        ):
            if not isinstance(value, str) or not _SEGMENT_RE.match(value):
                raise ImproperlyConfigured(
                    f"{type(self).__name__}: {argument}={value!r} must be one path segment "
                    "of letters, digits, '-' and '_', e.g. 'tenants' or 'shared'."
                )
        # Compared case-insensitively: on a case-insensitive file system "Shared" and
        # "shared" would be one directory.
        if tenants_prefix.casefold() == shared_prefix.casefold():
            raise ImproperlyConfigured(
                f"{type(self).__name__}: tenants_prefix and shared_prefix are both "
                f"{tenants_prefix!r}; the main site's files would mix with the tenants': "
                "choose two different names."
            )
        self.tenants_prefix = tenants_prefix
        self.shared_prefix = shared_prefix

    def tenant_directory(self) -> str:
        """The current site's directory, relative to the storage's root:
        ``<tenants_prefix>/<slug>`` in a tenant, ``<shared_prefix>`` on the main site."""
        tenant = current_tenant()
        if tenant is None:
            return self.shared_prefix
        # Slugs are validated when saved; checked again because this one becomes a path.
        if not is_valid_slug(tenant.slug):
            raise SuspiciousFileOperation(
                f"Tenant slug {tenant.slug!r} cannot name a directory of files."
            )
        return f"{self.tenants_prefix}/{tenant.slug}"


class TenantFileSystemStorage(_TenantLayout, FileSystemStorage):
    """``FileSystemStorage`` in the current tenant's directory.

    Names are relative to ``<location>/<tenants_prefix>/<slug>/`` (``location`` defaults
    to ``MEDIA_ROOT``) and URLs to ``<base_url><tenants_prefix>/<slug>/`` (``base_url``
    defaults to ``MEDIA_URL``); on the main site to ``<shared_prefix>/``. Every method,
    ``path()``, ``url()``, ``save()``, ``listdir()``... acts in the directory of the
    tenant current at the call. The prefixes are options::

        STORAGES = {
            "default": {
                "BACKEND": "tenancy.storage.TenantFileSystemStorage",
                "OPTIONS": {"tenants_prefix": "tenants", "shared_prefix": "shared"},
            },
            ...
        }
    """

    def __init__(
        self,
        location: str | os.PathLike[str] | None = None,
        base_url: str | None = None,
        *args: Any,
        tenants_prefix: str = TENANTS_PREFIX,
        shared_prefix: str = SHARED_PREFIX,
        **kwargs: Any,
    ) -> None:
        super().__init__(location, base_url, *args, **kwargs)
        self._root, self._root_url = location, base_url
        self._set_prefixes(tenants_prefix, shared_prefix)

    # FileSystemStorage caches these three on first use; here they change with the
    # tenant, so they are computed on each use.

    @property
    def base_location(self) -> str:
        """The root of every site's directory: ``location`` or ``MEDIA_ROOT``."""
        root: str | os.PathLike[str] = self._value_or_setting(self._root, settings.MEDIA_ROOT)
        return os.fspath(root)

    @property
    def location(self) -> str:
        return os.path.abspath(os.path.join(self.base_location, self.tenant_directory()))

    @property
    def base_url(self) -> str:
        root: str = self._value_or_setting(self._root_url, settings.MEDIA_URL)
        if root and not root.endswith("/"):
            root += "/"
        return f"{root}{self.tenant_directory()}/"


# Storages (by id) with a call in progress in this context: their own methods call each
# other (FileSystemStorage._save calls path()), and a name is mapped once, at the outermost
# call.
_mapping: ContextVar[frozenset[int]] = ContextVar("tenancy_storage_mapping", default=frozenset())


def _unchanged(directory: str, result: Any) -> Any:
    return result


def _relative_name(directory: str, result: Any) -> str:
    # The base storage returns the name it saved, inside the directory; the application
    # keeps the part relative to it.
    name = str(result).replace("\\", "/")
    if not name.startswith(f"{directory}/"):
        raise SuspiciousFileOperation(
            f"The storage saved {name!r} outside the site's directory ({directory}/)."
        )
    return name.removeprefix(f"{directory}/")


def _mapped(name: str, result: Callable[[str, Any], Any] = _unchanged) -> Callable[..., Any]:
    """The base storage's method ``name``, called with the name in the current site's
    directory; ``result`` maps what it returns."""

    def method(self: TenantPrefixMixin, path: str, *args: Any, **kwargs: Any) -> Any:
        base = getattr(super(TenantPrefixMixin, self), name)
        active = _mapping.get()
        if id(self) in active:
            return base(path, *args, **kwargs)
        directory = self.tenant_directory()
        token = _mapping.set(active | {id(self)})
        try:
            return result(directory, base(self._tenant_name(directory, path), *args, **kwargs))
        finally:
            _mapping.reset(token)

    method.__name__ = name
    method.__qualname__ = f"TenantPrefixMixin.{name}"
    method.__doc__ = f"``{name}()`` of the base storage, in the current site's directory."
    return method


class TenantPrefixMixin(_TenantLayout):
    """Put the current tenant's files under ``<tenants_prefix>/<slug>/`` of any storage.

    Mix it in before the storage class; the names the application sees (and stores in
    ``FileField`` columns) stay relative to the tenant's directory::

        class TenantS3Storage(TenantPrefixMixin, S3Storage):
            pass

        STORAGES = {"default": {"BACKEND": "myproject.storage.TenantS3Storage"}}

    The main site's files go under ``<shared_prefix>/``. Names with ``..`` that leave the
    directory, and absolute names, raise ``SuspiciousFileOperation``.
    """

    def __init__(
        self,
        *args: Any,
        tenants_prefix: str = TENANTS_PREFIX,
        shared_prefix: str = SHARED_PREFIX,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._set_prefixes(tenants_prefix, shared_prefix)

    def _tenant_name(self, directory: str, name: str) -> str:
        """``name`` in ``directory``; refused when it would leave it."""
        name = str(name).replace("\\", "/")
        normalized = posixpath.normpath(name) if name else ""
        if (
            name.startswith("/")
            or os.path.isabs(name)
            or normalized == ".."
            or normalized.startswith("../")
        ):
            raise SuspiciousFileOperation(
                f"The name {name!r} leaves the directory of the site's files ({directory}/)."
            )
        return f"{directory}/{'' if normalized in ('', '.') else normalized}"

    _open = _mapped("_open")
    _save = _mapped("_save", _relative_name)
    path = _mapped("path")
    delete = _mapped("delete")
    exists = _mapped("exists")
    listdir = _mapped("listdir")
    size = _mapped("size")
    url = _mapped("url")
    get_accessed_time = _mapped("get_accessed_time")
    get_created_time = _mapped("get_created_time")
    get_modified_time = _mapped("get_modified_time")


def serve_tenant_media(
    request: HttpRequest, path: str, storage: Storage | None = None
) -> HttpResponseBase:
    """Serve a file of the request's site only, for development (like
    ``django.views.static.serve``, which it uses).

    ``path`` is the URL after ``MEDIA_URL``: ``<tenants_prefix>/<slug>/<name>`` on the
    tenant ``<slug>``, ``<shared_prefix>/<name>`` on the main site; anything else, another
    tenant's files included, is a 404. ``storage`` is a ``TenantFileSystemStorage``
    (default: the default storage)::

        urlpatterns += [re_path(r"^media/(?P<path>.*)$", serve_tenant_media)]
    """
    storage = default_storage if storage is None else storage
    if not isinstance(storage, TenantFileSystemStorage):
        raise ImproperlyConfigured(
            "serve_tenant_media serves a TenantFileSystemStorage's files, not a "
            f"{storage.__class__.__name__}'s: make the default storage one, or pass one in "
            "the URL pattern's kwargs, {'storage': ...}."
        )
    if not hasattr(request, "tenant"):
        raise ImproperlyConfigured(
            "serve_tenant_media needs tenancy.middleware.TenantMiddleware in MIDDLEWARE, "
            "to know the request's tenant."
        )
    tenant = request.tenant
    current = current_tenant()
    # The storage follows the current tenant: it must be the request's.
    if (tenant is None) != (current is None) or (
        tenant is not None and current is not None and tenant.pk != current.pk
    ):
        raise Http404("This file is not available here.")
    name = posixpath.normpath(path).lstrip("/")
    directory = storage.tenant_directory()
    if not name.startswith(f"{directory}/"):
        raise Http404("This file is not available here.")
    return serve(request, name.removeprefix(f"{directory}/"), document_root=storage.location)
