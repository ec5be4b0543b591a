from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

from example_project.projects.models import Task
from tenancy import get_tenant_model, require_tenant


def home(request: HttpRequest) -> HttpResponse:
    if request.tenant is None:  # type: ignore[attr-defined]
        tenants = get_tenant_model().objects.prefetch_related("domains")
        return render(request, "projects/main_site.html", {"tenants": tenants})
    tasks = Task.objects.select_related("project")
    return render(request, "projects/tenant_home.html", {"tasks": tasks})


def task_api(request: HttpRequest) -> JsonResponse:
    tenant = require_tenant()
    tasks = Task.objects.select_related("project")
    return JsonResponse(
        {
            "tenant": tenant.slug,
            "tasks": [
                {"id": t.id, "project": t.project.name, "title": t.title, "done": t.done}
                for t in tasks
            ],
        }
    )
