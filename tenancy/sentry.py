"""Sentry: what is reported from inside a tenant carries its slug as the tag ``tenant``.

After ``sentry_sdk.init(...)`` (with Django's integration), in ``settings.py``::

    import tenancy.sentry
    tenancy.sentry.install()

Then every error event captured while a tenant is current (in a request, a Celery task,
a ``tenant_context`` block, a thread from ``tenancy.threads``) is tagged with the tenant,
and so are the request's performance transaction and its spans' events: the middleware
tags the request's scope (Sentry's Django integration gives each request a scope of its
own). Nothing is sent for requests of the main site. Needs ``sentry-sdk`` (the
``tenancy[sentry]`` extra).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import sentry_sdk
from sentry_sdk.scope import add_global_event_processor

from tenancy.context import current_tenant

if TYPE_CHECKING:
    from sentry_sdk._types import Event

    from tenancy.models import AbstractTenant

TAG = "tenant"
_installed = False


def install() -> None:
    """Tag Sentry's events with the current tenant (once per process; idempotent)."""
    global _installed
    if _installed:
        return
    add_global_event_processor(_tag_event)
    _installed = True


def is_installed() -> bool:
    return _installed


def tag_request(tenant: AbstractTenant) -> None:
    """Tag the current request's scope (the middleware calls it once per tenant request)."""
    sentry_sdk.get_isolation_scope().set_tag(TAG, tenant.slug)


def _tag_event(event: Event, hint: dict[str, Any]) -> Event:
    tenant = current_tenant()
    if tenant is not None:
        tags = event.setdefault("tags", {})
        if isinstance(tags, dict):
            tags.setdefault(TAG, tenant.slug)
    return event
