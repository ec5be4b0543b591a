from django.http import HttpRequest, HttpResponse
from django.urls import path

from benchmarks.request_path_project.notes.models import Note


def note(request: HttpRequest) -> HttpResponse:
    """One row of the tenant's by primary key, and who is signed in (which reads the session
    and the user where the request carries a session cookie)."""
    title = Note.objects.get(pk=1).title
    return HttpResponse(f"{title} / {request.user.username}")


urlpatterns = [path("note/", note)]
