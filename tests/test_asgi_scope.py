"""WebSocket connections enter the tenant their scope names."""

import asyncio

import pytest
from asgiref.sync import sync_to_async

from tenancy import current_tenant
from tenancy.asgi import TenantScopeMiddleware
from tenancy.models import TenantStatus
from tests.tenantapp.models import Note


async def report(scope, receive, send):
    """A WebSocket app: accepts, then says which tenant it is in and what it sees."""
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    tenant = await sync_to_async(current_tenant)()
    texts = [note.text async for note in Note.objects.all()]
    slug = scope["tenant"].slug
    await send({"type": "websocket.send", "text": f"{tenant.slug}/{slug} {scope['path']} {texts}"})


def connect(host, path="/ws/", scope_type="websocket", app=report):
    """Drive the middleware as an ASGI server would; returns what the app sent."""
    scope = {
        "type": scope_type,
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", host.encode())],
        "scheme": "ws",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000),
        "subprotocols": [],
    }
    messages = [{"type": "websocket.connect"}, {"type": "websocket.disconnect", "code": 1000}]
    sent = []

    async def receive():
        return messages.pop(0)

    async def send(message):
        sent.append(message)

    asyncio.run(TenantScopeMiddleware(app)(scope, receive, send))
    return sent


def test_websocket_app_runs_in_the_tenant_of_its_host(notes):
    assert connect("alpha.example.test")[1]["text"] == "alpha/alpha /ws/ ['alpha note']"
    assert connect("beta.example.test")[1]["text"] == "beta/beta /ws/ ['beta note']"


def test_path_prefix_is_consumed_like_for_requests(notes, settings):
    settings.TENANCY = {**settings.TENANCY, "RESOLVER": "path"}
    assert connect("example.test", path="/t/beta/ws/")[1]["text"] == "beta/beta /ws/ ['beta note']"


@pytest.mark.parametrize(
    ("host", "code"),
    [("nobody.example.test", 4404), ("alpha.example.test", 4503), ("bad host", 4400)],
)
def test_connection_without_an_active_tenant_is_refused(notes, host, code):
    alpha = notes[0]
    alpha.status = TenantStatus.SUSPENDED
    alpha.save()
    assert connect(host) == [{"type": "websocket.close", "code": code}]


def test_other_scopes_pass_through_without_a_tenant(notes):
    seen = []

    async def lifespan(scope, receive, send):
        seen.append((scope["type"], await sync_to_async(current_tenant)()))

    connect("alpha.example.test", scope_type="lifespan", app=lifespan)
    assert seen == [("lifespan", None)]
