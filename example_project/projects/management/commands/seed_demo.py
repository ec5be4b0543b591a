"""Create the demo tenants alpha and beta, each with its own database and a few tasks."""

from typing import Any

from django.core.management import call_command
from django.core.management.base import BaseCommand

from example_project.projects.models import Project, Task
from tenancy import get_tenant_model, tenant_context
from tenancy.backends import get_server
from tenancy.connections import alias_for
from tenancy.models import Domain, TenantStatus

DEMO = {
    "alpha": ("Alpha Inc.", ["Write the launch plan", "Book the venue"]),
    "beta": ("Beta LLC", ["Fix the roof"]),
}


class Command(BaseCommand):
    help = "Create (or refresh) the demo tenants alpha and beta on localhost."

    def handle(self, *args: Any, **options: Any) -> None:
        for slug, (name, titles) in DEMO.items():
            tenant, _ = get_tenant_model().objects.get_or_create(
                slug=slug, defaults={"name": name}
            )
            Domain.objects.get_or_create(
                domain=f"{slug}.localhost", defaults={"tenant": tenant, "is_primary": True}
            )
            get_server(tenant.server).create_database(tenant.database_name)
            call_command("migrate", database=alias_for(tenant), verbosity=0)
            with tenant_context(tenant):
                project, _ = Project.objects.get_or_create(name="Getting started")
                for title in titles:
                    Task.objects.get_or_create(project=project, title=title)
            tenant.status = TenantStatus.ACTIVE
            tenant.save()
            self.stdout.write(f"{slug}: http://{slug}.localhost:8000/")
