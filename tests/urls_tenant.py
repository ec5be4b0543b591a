"""TENANCY['TENANT_URLCONF'] of the URLconf tests: tenant views, no platform admin."""

from django.http import HttpRequest, JsonResponse, StreamingHttpResponse
from django.template import engines
from django.urls import path, reverse

from tests import views

URL_TAG = engines["django"].from_string("{% url 'where' %}")


def where(request: HttpRequest) -> JsonResponse:
    """Which URLconf served the request, and what reverse() and {% url %} give in it."""
    return JsonResponse(
        {"urlconf": "tenant", "reverse": reverse("where"), "tag": URL_TAG.render({}, request)}
    )


async def async_where(request: HttpRequest) -> JsonResponse:
    return where(request)


def other_sites(request: HttpRequest) -> JsonResponse:
    """tenancy.urls.reverse() for the main site and for another tenant, from a tenant."""
    from tenancy.models import Tenant
    from tenancy.urls import reverse as site_reverse

    beta = Tenant.objects.get(slug="beta")
    return JsonResponse(
        {"main": site_reverse("where", tenant=None), "beta": site_reverse("where", tenant=beta)}
    )


def streamed_where(request: HttpRequest) -> StreamingHttpResponse:
    """reverse() while each chunk of a streaming response is produced."""
    return StreamingHttpResponse(f"{reverse('where')};" for _ in range(2))


urlpatterns = [
    path("where/", where, name="where"),
    path("awhere/", async_where),
    path("streamed-where/", streamed_where),
    path("other-sites/", other_sites),
    path("notes/", views.notes),
    path("anotes/", views.async_notes),
]
