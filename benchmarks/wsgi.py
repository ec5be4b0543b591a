"""A request through Django's WSGI handler in this process, as a WSGI server makes it."""

from __future__ import annotations

import io
import sys
from collections.abc import Callable
from typing import Any


def wsgi_get(
    handler: Callable[..., Any], host: str, path: str, cookie: str = ""
) -> tuple[str, bytes]:
    """The status line and body of GET ``path`` on ``host``; the response is closed, which
    sends ``request_finished``."""
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": host,
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": host,
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(),
        "wsgi.errors": sys.stderr,
    }
    if cookie:
        environ["HTTP_COOKIE"] = cookie
    status: list[str] = []
    response = handler(environ, lambda s, headers, exc_info=None: status.append(s))
    try:
        body = b"".join(response)
    finally:
        response.close()
    return status[0], body
