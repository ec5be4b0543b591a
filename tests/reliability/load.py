"""A load client for the served example project: one keep-alive connection per thread,
signed in as a member of every tenant through a session made for it."""

from __future__ import annotations

import http.client
import json
import threading

CSRF = "loadtestcsrftokenloadtestcsrftok"  # 32 characters: a valid unmasked token


def create_fleet(tenants: int) -> str:
    """`manage.py shell` code: TENANTS tenants spread over the servers, a user "load"
    who is a member of each, and a session of that user (its key printed)."""
    return f"""
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.contrib.auth import get_user_model
from django.contrib.sessions.backends.db import SessionStore
from tenancy.models import Membership
from tenancy.provisioning import create_tenant

servers = list(settings.TENANCY["SERVERS"])
user, _ = get_user_model().objects.get_or_create(username="load")
for number in range({tenants}):
    slug = f"load-{{number:02d}}"
    server = servers[number % len(servers)]
    tenant = create_tenant(slug, server=server, domains=[f"{{slug}}.localhost"])
    Membership.objects.get_or_create(user=user, tenant=tenant)
session = SessionStore()
session[SESSION_KEY] = str(user.pk)
session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
session[HASH_SESSION_KEY] = user.get_session_auth_hash()
session.create()
print(session.session_key)
"""


class LoadClient:
    """One keep-alive connection per client thread, signed in as a member of every tenant."""

    def __init__(self, port: int, session_key: str) -> None:
        self.port = port
        self.cookie = f"sessionid={session_key}; csrftoken={CSRF}"
        self.local = threading.local()

    def request(self, method: str, slug: str, path: str, body: str = "") -> tuple[int, bytes]:
        headers = {"Host": f"{slug}.localhost:{self.port}", "Cookie": self.cookie}
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
