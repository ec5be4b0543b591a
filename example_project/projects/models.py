"""Tenant data: every tenant's database has these tables, and only those."""

from django.db import models


class Project(models.Model):
    # Unique in its tenant: the task form finds or creates a project by its name, and
    # two requests doing that at once must not make two.
    name = models.CharField(max_length=200, unique=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Task(models.Model):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="tasks")
    title = models.CharField(max_length=200)
    done = models.BooleanField(default=False)
    # The auth.User lives in the main database: keep its id, not a foreign key.
    assignee_id = models.BigIntegerField(null=True, blank=True, db_index=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.title
