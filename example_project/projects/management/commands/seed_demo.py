"""Create the demo tenants alpha and beta, each with its own database and a few tasks,
and the demo users."""

from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.core.management.base import BaseCommand

from example_project.projects.models import Project, Task
from tenancy import tenant_context
from tenancy.models import Membership
from tenancy.provisioning import create_tenant

DEMO = {
    "alpha": ("Alpha Inc.", ["Write the launch plan", "Book the venue"]),
    "beta": ("Beta LLC", ["Fix the roof"]),
}
# username: (tenant memberships, admin of those tenants, platform superuser)
USERS = {
    "admin": ((), False, True),  # the main site's admin: provisions tenants
    "ann": (("alpha",), True, False),  # alpha's admin
    "bob": (("beta",), False, False),  # a member of beta
}
PASSWORD = "demo"


class Command(BaseCommand):
    help = "Create (or refresh) the demo tenants alpha and beta on localhost, and demo users."

    def handle(self, *args: Any, **options: Any) -> None:
        # beta on the second server when there is one (PostgreSQL, TENANCY_EXAMPLE_POSTGRES_2).
        second = "second" if "second" in settings.TENANCY["SERVERS"] else None
        tenants = {}
        for slug, (name, titles) in DEMO.items():
            server = second if slug == "beta" else None
            tenant = create_tenant(slug, name=name, domains=[f"{slug}.localhost"], server=server)
            with tenant_context(tenant):
                project, _ = Project.objects.get_or_create(name="Getting started")
                for title in titles:
                    Task.objects.get_or_create(project=project, title=title)
            tenants[slug] = tenant
            self.stdout.write(f"{slug}: http://{slug}.localhost:8000/")
        for username, (memberships, is_admin, superuser) in USERS.items():
            user, created = User.objects.get_or_create(
                username=username, defaults={"is_staff": superuser, "is_superuser": superuser}
            )
            if created:
                user.set_password(PASSWORD)
                user.save()
            for slug in memberships:
                Membership.objects.update_or_create(
                    user=user, tenant=tenants[slug], defaults={"is_admin": is_admin}
                )
        self.stdout.write(f"users: {', '.join(USERS)} (password {PASSWORD!r})")
