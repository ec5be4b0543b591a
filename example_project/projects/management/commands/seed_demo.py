"""Create the demo tenants alpha and beta, each with its own database and a few tasks."""

from typing import Any

from django.core.management.base import BaseCommand

from example_project.projects.models import Project, Task
from tenancy import tenant_context
from tenancy.provisioning import create_tenant

DEMO = {
    "alpha": ("Alpha Inc.", ["Write the launch plan", "Book the venue"]),
    "beta": ("Beta LLC", ["Fix the roof"]),
}


class Command(BaseCommand):
    help = "Create (or refresh) the demo tenants alpha and beta on localhost."

    def handle(self, *args: Any, **options: Any) -> None:
        for slug, (name, titles) in DEMO.items():
            tenant = create_tenant(slug, name=name, domains=[f"{slug}.localhost"])
            with tenant_context(tenant):
                project, _ = Project.objects.get_or_create(name="Getting started")
                for title in titles:
                    Task.objects.get_or_create(project=project, title=title)
            self.stdout.write(f"{slug}: http://{slug}.localhost:8000/")
