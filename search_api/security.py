"""API-key authentication, as ASGI middleware.

Middleware rather than a route dependency: FastAPI reads and parses a request's body (uploads
included) before it solves dependencies, and a dependency only guards the routes it is attached to.
This refuses an unauthenticated request before its body is parsed or stored, on every path (unknown
ones, /docs and /openapi.json too), except /healthz which load balancers probe without a key.
"""

from __future__ import annotations

import hmac
from typing import Any

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from search_api.limits import drain_body, expects_continue

# Probes, and Swagger UI's static assets (a browser fetches them without the key; they hold no data).
OPEN_PATHS = frozenset(
    {
        "/healthz",
        "/readyz",
        "/docs/assets/swagger-ui-bundle.js",
        "/docs/assets/swagger-ui.css",
        "/docs/assets/favicon-32x32.png",
    }
)
API_KEY_HEADER = "X-API-Key"
UNAUTHORIZED = f"missing or invalid API key: send {API_KEY_HEADER}: <key> or Authorization: Bearer <key>"


def key_matches(headers: Headers, expected: str) -> bool:
    wanted = expected.encode("utf-8")
    candidates = [headers.get(API_KEY_HEADER)]
    scheme, _, credentials = (headers.get("authorization") or "").partition(" ")
    if scheme.lower() == "bearer":
        candidates.append(credentials.strip())
    # Starlette decodes header bytes as latin-1; encoding back gives the bytes the client sent.
    # compare_digest takes as long whatever the key's prefix, so timing does not leak it.
    return any(
        hmac.compare_digest(c.encode("latin-1", "replace"), wanted) for c in candidates if c is not None
    )


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp, api_key: str):
        self.app, self.api_key = app, api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _route_path(scope) in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        if not key_matches(Headers(scope=scope), self.api_key):
            if not expects_continue(scope):  # read, not parsed or kept: the client then reads our answer
                await drain_body(receive)
            response = JSONResponse({"detail": UNAUTHORIZED}, 401, headers={"WWW-Authenticate": "Bearer"})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _route_path(scope: Scope) -> str:
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def document_security(schema: dict[str, Any]) -> dict[str, Any]:
    """Declare both ways of sending the key in an OpenAPI document, on every operation but /healthz."""
    schema.setdefault("components", {})["securitySchemes"] = {
        "ApiKeyHeader": {"type": "apiKey", "in": "header", "name": API_KEY_HEADER},
        "BearerToken": {"type": "http", "scheme": "bearer"},
    }
    for path, operations in schema.get("paths", {}).items():
        if path in OPEN_PATHS:
            continue
        for operation in operations.values():
            operation["security"] = [{"ApiKeyHeader": []}, {"BearerToken": []}]
            operation.setdefault("responses", {})["401"] = {
                "description": "Missing or wrong API key",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
            }
    return schema
