from django.http import HttpRequest, JsonResponse
from django.urls import path
from notes.models import Note


def notes(request: HttpRequest) -> JsonResponse:
    texts = list(Note.objects.order_by("pk").values_list("text", flat=True))
    return JsonResponse({"tenant": request.tenant.slug, "notes": texts})


urlpatterns = [path("notes/", notes)]
