from django.db import models

from tenancy.models import Tenant


class Plan(models.Model):
    """A shared model: lives only in the default database."""

    name = models.CharField(max_length=50)


class OperatorTenant(Tenant):
    """A proxy of the tenant model, as an admin of its own would use."""

    class Meta:
        proxy = True
