"""Views for TENANCY['NOT_FOUND_VIEW'] and TENANCY['UNAVAILABLE_VIEW'] in the tests."""

from django.http import HttpRequest, HttpResponse

from tenancy.models import AbstractTenant


def not_found(request: HttpRequest, key: str) -> HttpResponse:
    return HttpResponse(f"custom: no {key}", status=404)


def unavailable(request: HttpRequest, tenant: AbstractTenant) -> HttpResponse:
    return HttpResponse(f"custom: {tenant.slug} is resting", status=503)


NOT_A_VIEW = "a string"
