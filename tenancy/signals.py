"""Extension points of the tenant lifecycle.

Receivers run inside the tenant's context, so tenant models can be used directly::

    @receiver(tenant_provisioned)
    def seed(sender, tenant, **kwargs):
        Category.objects.create(name="General")
"""

from django.dispatch import Signal

# A tenant's database was created and migrated; sent before the tenant becomes active.
# A receiver that raises makes provisioning fail (the tenant is marked failed). Keep
# receivers idempotent: provisioning can run again after a failure.
tenant_provisioned = Signal()

# A tenant was removed. ``keep_database`` says whether its database was kept.
tenant_deprovisioned = Signal()
