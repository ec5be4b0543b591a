from django.db import models


class Plan(models.Model):
    """A shared model: lives only in the default database."""

    name = models.CharField(max_length=50)
