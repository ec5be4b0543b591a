"""TENANCY['PUBLIC_URLCONF'] of the URLconf tests: the main site, with the platform admin."""

from django.contrib import admin
from django.http import HttpRequest, JsonResponse
from django.template import engines
from django.urls import path, reverse

URL_TAG = engines["django"].from_string("{% url 'where' %}")


def where(request: HttpRequest) -> JsonResponse:
    """Which URLconf served the request, and what reverse() and {% url %} give in it."""
    return JsonResponse(
        {"urlconf": "public", "reverse": reverse("where"), "tag": URL_TAG.render({}, request)}
    )


async def async_where(request: HttpRequest) -> JsonResponse:
    return where(request)


# "where" is at another path than in tests.urls_tenant, so reverse() shows which one it used.
urlpatterns = [
    path("public/where/", where, name="where"),
    path("public/awhere/", async_where),
    path("admin/", admin.site.urls),
]
