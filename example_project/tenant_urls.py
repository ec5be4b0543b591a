"""Each tenant's URLs (TENANCY['TENANT_URLCONF']), on the tenant's own host."""

from django.contrib.auth import views as auth_views
from django.urls import path

from example_project.projects import views
from example_project.projects.models import Project, Task
from tenancy.admin import TenantAdminSite, TenantModelAdmin

# Each tenant's own admin, on its domain, for its admin members.
tenant_admin = TenantAdminSite(name="tenant_admin")
tenant_admin.register(Project, TenantModelAdmin)
tenant_admin.register(Task, TenantModelAdmin)

urlpatterns = [
    path("", views.home, name="home"),
    path("api/tasks/", views.task_api, name="task-api"),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("manage/", tenant_admin.urls),
]
