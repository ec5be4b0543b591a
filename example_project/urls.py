"""The main site's URLs (TENANCY['PUBLIC_URLCONF']): the list of tenants and the platform
admin, which tenants' hosts do not serve. The tenants' own are in tenant_urls.py."""

from django.contrib import admin
from django.urls import path

from example_project.projects import views

urlpatterns = [
    path("", views.home, name="home"),
    path("admin/", admin.site.urls),
]
