"""A load client for the served example project: one keep-alive connection per thread,
signed in as a member on every tenant through a session made for each (a session is
bound to the tenant it was signed in on)."""

from __future__ import annotations

import http.client
import json
import threading

CSRF = "loadtestcsrftokenloadtestcsrftok"  # 32 characters: a valid unmasked token


def create_fleet(tenants: int) -> str:
    """`manage.py shell` code: TENANTS tenants spread over the servers, a user "load"
    who is a member of each, and a session of that user signed in on each (printed last,
    as JSON without spaces: slug -> session key)."""
    return f"""
import json
from django.conf import settings
from django.contrib.auth import get_user_model
from tenancy.models import Membership
from tenancy.provisioning import create_tenant
from tenancy.testing import TenantClient

servers = list(settings.TENANCY["SERVERS"])
user, _ = get_user_model().objects.get_or_create(username="load")
sessions = {{}}
for number in range({tenants}):
    slug = f"load-{{number:02d}}"
    server = servers[number % len(servers)]
    tenant = create_tenant(slug, server=server, domains=[f"{{slug}}.localhost"])
    Membership.objects.get_or_create(user=user, tenant=tenant)
    client = TenantClient(tenant)
    client.force_login(user)
    sessions[slug] = client.cookies[settings.SESSION_COOKIE_NAME].value
print(json.dumps(sessions, separators=(",", ":")))
"""


class LoadClient:
    """One keep-alive connection per client thread, signed in as a member on every tenant.
    ``sessions`` is what ``create_fleet`` printed."""

    def __init__(self, port: int, sessions: str) -> None:
        self.port = port
        self.sessions: dict[str, str] = json.loads(sessions)
        self.local = threading.local()

    def request(self, method: str, slug: str, path: str, body: str = "") -> tuple[int, bytes]:
        cookie = f"sessionid={self.sessions[slug]}; csrftoken={CSRF}"
        headers = {"Host": f"{slug}.localhost:{self.port}", "Cookie": cookie}
        if method == "POST":
            headers |= {
                "X-CSRFToken": CSRF,
                "Content-Type": "application/x-www-form-urlencoded",
            }
        for attempt in (1, 2):  # once more on a connection the server had closed
            connection = getattr(self.local, "connection", None)
            if connection is None:
                connection = self.local.connection = http.client.HTTPConnection(
                    "127.0.0.1", self.port, timeout=60
                )
            try:
                connection.request(method, path, body=body or None, headers=headers)
                response = connection.getresponse()
                return response.status, response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                connection.close()
                self.local.connection = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


def tasks_of(client: LoadClient, slug: str) -> tuple[int, dict[str, object] | None]:
    status, body = client.request("GET", slug, "/api/tasks/")
    return status, json.loads(body) if status == 200 else None
