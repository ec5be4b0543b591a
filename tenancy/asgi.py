"""Entering the tenant from an ASGI scope, for connections that are not HTTP requests.

``TenantMiddleware`` serves HTTP. WebSocket consumers (Django Channels, or any ASGI app)
get their tenant from ``TenantScopeMiddleware``, resolved the same way from the
connection's host, headers or path (``TENANCY["RESOLVER"]``)::

    application = ProtocolTypeRouter({
        "http": get_asgi_application(),
        "websocket": TenantScopeMiddleware(AuthMiddlewareStack(URLRouter(routes))),
    })

The app runs inside the tenant's context and finds it in ``scope["tenant"]``. A connection
that names no tenant is refused with close code 4404, one for a tenant that is not active
with 4503, one with a host outside ``ALLOWED_HOSTS`` with 4400; the app never sees them.
"""

from __future__ import annotations

import io
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from django.core.exceptions import DisallowedHost
from django.core.handlers.asgi import ASGIRequest

from tenancy.context import tenant_context
from tenancy.resolvers import get_resolver

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CLOSE_BAD_HOST = 4400
CLOSE_NOT_FOUND = 4404
CLOSE_UNAVAILABLE = 4503


class TenantScopeMiddleware:
    """Run a WebSocket app inside the tenant its scope names; other scopes pass through."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return
        resolver = get_resolver()
        # Resolvers read requests; a WebSocket handshake is a GET.
        request = ASGIRequest({**scope, "method": "GET"}, io.BytesIO())
        try:
            resolution = await resolver.aresolve(request)
        except DisallowedHost:
            await _refuse(receive, send, CLOSE_BAD_HOST)
            return
        tenant = resolution.tenant
        if resolution.not_found:
            await _refuse(receive, send, CLOSE_NOT_FOUND)
            return
        if tenant is not None and not tenant.is_active:
            await _refuse(receive, send, CLOSE_UNAVAILABLE)
            return
        path_info = request.path_info
        with resolver.activate(request, resolution):
            inner = {**scope, "tenant": tenant}
            if request.path_info != path_info:  # the path resolver consumed its prefix
                inner["path"] = scope["path"][: len(scope["path"]) - len(path_info)]
                inner["path"] += request.path_info
            async with tenant_context(tenant):
                await self.app(inner, receive, send)


async def _refuse(receive: Receive, send: Send, code: int) -> None:
    # Closing before accepting makes the server reject the handshake (HTTP 403).
    message = await receive()
    if message["type"] == "websocket.connect":
        await send({"type": "websocket.close", "code": code})
