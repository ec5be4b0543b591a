"""Django REST framework's test client for one tenant (needs ``djangorestframework``)."""

from __future__ import annotations

from rest_framework.test import APIClient

from tenancy.testing.client import TenantClient


class TenantAPIClient(TenantClient, APIClient):  # type: ignore[misc]
    """DRF's ``APIClient`` whose requests reach one tenant (the test tenant when
    ``tenant`` is ``None``), whatever the resolver; ``force_authenticate()``,
    ``credentials()`` and ``login()`` work as with DRF's own::

        client = TenantAPIClient(tenant)
        client.force_authenticate(user)
        client.post("/api/projects/", {"name": "Roof"}, format="json")
    """
