"""Validation of untrusted names: tenant slugs, hostnames and database names.

These run before any name reaches a query, a file path or a connection alias. SQL
identifiers are additionally quoted with psycopg's ``sql.Identifier`` where used.
"""

from __future__ import annotations

import re

from django.core.exceptions import ValidationError
from django.utils.translation import gettext_lazy as _

SLUG_MAX_LENGTH = 63
HOSTNAME_MAX_LENGTH = 253
DATABASE_NAME_MAX_LENGTH = 63  # PostgreSQL's NAMEDATALEN - 1, in bytes

# A lowercase DNS label: usable as a subdomain, in a URL and (with "-" -> "_") in a
# database name. Deliberately ASCII only; \Z rather than $ so a trailing newline fails.
_SLUG_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")
_LABEL_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")
_DATABASE_NAME_RE = re.compile(r"[a-z_][a-z0-9_]{0,62}\Z")


def validate_slug(value: object) -> None:
    """Accept a lowercase DNS label of 1-63 characters: letters, digits and inner hyphens."""
    if not isinstance(value, str) or not _SLUG_RE.match(value):
        raise ValidationError(
            _(
                "%(value)r is not a valid tenant slug: use 1-63 lowercase letters, digits "
                "and hyphens, starting and ending with a letter or digit (e.g. 'acme-corp')."
            ),
            code="invalid_slug",
            params={"value": _shorten(value)},
        )


def validate_hostname(value: object) -> None:
    """Accept a lowercase ASCII hostname (internationalised names in their xn-- form)."""
    labels = value.split(".") if isinstance(value, str) else []
    if (
        not isinstance(value, str)
        or not value
        or len(value) > HOSTNAME_MAX_LENGTH
        or not all(_LABEL_RE.match(label) for label in labels)
    ):
        raise ValidationError(
            _(
                "%(value)r is not a valid hostname: use lowercase letters, digits, hyphens "
                "and dots, at most 63 characters between dots and 253 in all, without a port "
                "(e.g. 'acme.example.com'; internationalised names in their 'xn--' form)."
            ),
            code="invalid_hostname",
            params={"value": _shorten(value)},
        )


def validate_tenant_hostname(value: object) -> None:
    """``validate_hostname``, and not a host of the main site: a request for one of
    ``TENANCY["PUBLIC_HOSTS"]`` or for ``TENANCY["BASE_DOMAIN"]`` never reaches a tenant,
    so such a domain would be a tenant's in the registry only."""
    validate_hostname(value)
    from tenancy.conf import tenancy_settings  # conf validates its hosts with this module

    if value in tenancy_settings.PUBLIC_HOSTS or value == tenancy_settings.BASE_DOMAIN:
        raise ValidationError(
            _(
                "%(value)r is a host of the main site (TENANCY['PUBLIC_HOSTS'] or "
                "TENANCY['BASE_DOMAIN']), which never reaches a tenant: choose another domain."
            ),
            code="public_hostname",
            params={"value": value},
        )


def validate_database_name(value: object) -> None:
    """Accept 1-63 lowercase letters, digits and underscores, not starting with a digit."""
    if not isinstance(value, str) or not _DATABASE_NAME_RE.match(value):
        raise ValidationError(
            _(
                "%(value)r is not a valid tenant database name: use 1-63 lowercase letters, "
                "digits and underscores, starting with a letter or underscore."
            ),
            code="invalid_database_name",
            params={"value": _shorten(value)},
        )


def is_valid_slug(value: object) -> bool:
    return isinstance(value, str) and _SLUG_RE.match(value) is not None


def is_valid_hostname(value: object) -> bool:
    try:
        validate_hostname(value)
    except ValidationError:
        return False
    return True


def _shorten(value: object, limit: int = 80) -> str:
    text = str(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
