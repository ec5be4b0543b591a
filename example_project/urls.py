from django.contrib import admin
from django.urls import path

from example_project.projects import views

urlpatterns = [
    path("", views.home, name="home"),
    path("api/tasks/", views.task_api, name="task-api"),
    path("admin/", admin.site.urls),
]
