from django.contrib import admin
from django.urls import path

from tenancy.admin import TenantAdminSite, TenantModelAdmin
from tests import views
from tests.tenantapp.models import Note

# The tenant's own admin, for its admins, on its domain.
tenant_admin = TenantAdminSite(name="tenant_admin")
tenant_admin.register(Note, TenantModelAdmin)

urlpatterns = [
    path("notes/", views.notes),
    path("notes-page/", views.notes_page),
    path("api/notes/", views.NotesAPI.as_view()),
    path("explode/", views.explode),
    path("anotes/", views.async_notes),
    path("stream/", views.stream_notes),
    path("astream/", views.async_stream_notes),
    path("whoami/", views.whoami),
    path("fail-outside/", views.fail_outside_the_database),
    path("link/", views.link),
    path("write-fail/", views.write_then_fail),
    path("write-ok/", views.write_ok),
    path("write-fail-exempt/", views.write_then_fail_exempt),
    path("async-write/", views.async_write),
    path("private/", views.private_notes),
    path("me/", views.me),
    path("ame/", views.async_me),
    path("sign-in/", views.sign_in),
    path("page/", views.tenant_page),
    path("cached-page/", views.cached_tenant_page),
    path("admin/", admin.site.urls),
    path("manage/", tenant_admin.urls),
]
