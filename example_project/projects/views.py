"""The example SaaS: each tenant's members sign in on the tenant's domain and work on its
projects and tasks, stored in the tenant's own database."""

from collections.abc import Callable
from functools import wraps
from typing import Any

from django import forms
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse, HttpResponseForbidden, JsonResponse
from django.shortcuts import redirect, render

from example_project.projects.models import Project, Task
from tenancy import get_tenant_model, require_tenant
from tenancy.models import Membership


def members_only(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Tenant pages are for the tenant's members; users live in the main database."""

    @wraps(view)
    def checked(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        tenant = require_tenant()
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        if not Membership.objects.filter(user_id=request.user.pk, tenant_id=tenant.pk).exists():
            return HttpResponseForbidden(
                f"{request.user} is not a member of {tenant.name}.", content_type="text/plain"
            )
        return view(request, *args, **kwargs)

    return checked


class TaskForm(forms.Form):
    project = forms.CharField(max_length=200, initial="Getting started")
    title = forms.CharField(max_length=200)


def home(request: HttpRequest) -> HttpResponse:
    if request.tenant is None:  # type: ignore[attr-defined]
        tenants = get_tenant_model().objects.prefetch_related("domains")
        return render(request, "projects/main_site.html", {"tenants": tenants})
    return tasks(request)


@members_only
def tasks(request: HttpRequest) -> HttpResponse:
    form = TaskForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        project, _ = Project.objects.get_or_create(name=form.cleaned_data["project"])
        Task.objects.create(project=project, title=form.cleaned_data["title"])
        return redirect("home")
    listed = Task.objects.select_related("project")
    return render(request, "projects/tenant_home.html", {"tasks": listed, "form": form})


@members_only
def task_api(request: HttpRequest) -> JsonResponse:
    tenant = require_tenant()
    listed = Task.objects.select_related("project")
    return JsonResponse(
        {
            "tenant": tenant.slug,
            "tasks": [
                {"id": t.id, "project": t.project.name, "title": t.title, "done": t.done}
                for t in listed
            ],
        }
    )
