from django.urls import path

from tests import views

urlpatterns = [
    path("notes/", views.notes),
    path("anotes/", views.async_notes),
    path("stream/", views.stream_notes),
    path("astream/", views.async_stream_notes),
    path("whoami/", views.whoami),
    path("link/", views.link),
]
