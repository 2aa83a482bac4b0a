"""API-key authentication and key scopes, as ASGI middleware.

Two kinds of key: `api.key` (CLIPSEARCH_API_KEY) may do everything; each of `api.read_keys`
(CLIPSEARCH_API_READ_KEYS, comma-separated) may only read. What reads is decided by method and route
(`is_read`): GET, HEAD and OPTIONS, and the POSTs that only compute an answer (READ_POSTS: search,
classify, explain). Every other request writes (PUT, PATCH, DELETE, and any other POST: adding or
activating vectors, label reviews...), so a route added later is a write until listed here; a read
key gets 403 on it, with a message. Without a valid key, 401.

Middleware rather than a route dependency: FastAPI reads and parses a request's body (uploads
included) before it solves dependencies, and a dependency only guards the routes it is attached to.
This refuses an unauthenticated request before its body is parsed or stored, on every path (unknown
ones, /docs and /openapi.json too), except /healthz which load balancers probe without a key.
"""

from __future__ import annotations

import hmac
import re
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
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# POSTs that change nothing (routes without their /v1 prefix's root_path).
READ_POSTS = frozenset(
    {"/v1/search", "/v1/search/image", "/v1/browse", "/v1/classify", "/v1/explain", "/v1/explain/stream"}
)
# ... and those under a collection: an export (a document, or a folder's archive), a snapshot download,
# an eval (it matches the paths sent against the items' and computes). Restore and copy write.
READ_POST_PATTERN = re.compile(r"/v1/collections/[^/]+/(export|export/archive|snapshot|eval)")
FORBIDDEN = (
    "this API key may only read (search, classify, explain, GET): {method} {path} writes; use the "
    "server's CLIPSEARCH_API_KEY for writes"
)


def is_read(method: str, path: str) -> bool:
    """Whether a request only reads: what a read key may do."""
    path = path.rstrip("/")
    return method.upper() in READ_METHODS or (
        method.upper() == "POST" and (path in READ_POSTS or READ_POST_PATTERN.fullmatch(path) is not None))


def key_matches(headers: Headers, expected: str) -> bool:
    return any_key_matches(headers, [expected])


def any_key_matches(headers: Headers, keys: list[str]) -> bool:
    wanted = [key.encode("utf-8") for key in keys if key]
    candidates = [headers.get(API_KEY_HEADER)]
    scheme, _, credentials = (headers.get("authorization") or "").partition(" ")
    if scheme.lower() == "bearer":
        candidates.append(credentials.strip())
    # Starlette decodes header bytes as latin-1; encoding back gives the bytes the client sent.
    # compare_digest takes as long whatever the key's prefix, so timing does not leak it.
    # Every key is compared (no early exit), so timing does not say which one nearly matched.
    matched = [
        hmac.compare_digest(c.encode("latin-1", "replace"), key)
        for c in candidates if c is not None for key in wanted
    ]
    return any(matched)


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp, api_key: str | None, read_keys: list[str] | tuple[str, ...] = ()):
        self.app, self.api_key, self.read_keys = app, api_key, [k for k in read_keys if k]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = _route_path(scope) if scope["type"] == "http" else ""
        if scope["type"] != "http" or path in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if self.api_key and key_matches(headers, self.api_key):
            await self.app(scope, receive, send)
            return
        if any_key_matches(headers, self.read_keys):
            if is_read(scope["method"], path):
                await self.app(scope, receive, send)
                return
            detail, status, extra = FORBIDDEN.format(method=scope["method"], path=path), 403, None
        else:
            detail, status, extra = UNAUTHORIZED, 401, {"WWW-Authenticate": "Bearer"}
        if not expects_continue(scope):  # read, not parsed or kept: the client then reads our answer
            await drain_body(receive)
        await JSONResponse({"detail": detail}, status, headers=extra)(scope, receive, send)


def _route_path(scope: Scope) -> str:
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def document_security(schema: dict[str, Any]) -> dict[str, Any]:
    """Declare both ways of sending the key in an OpenAPI document, on every operation but /healthz."""
    schema.setdefault("components", {})["securitySchemes"] = {
        "ApiKeyHeader": {"type": "apiKey", "in": "header", "name": API_KEY_HEADER},
        "BearerToken": {"type": "http", "scheme": "bearer"},
    }
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
    for path, operations in schema.get("paths", {}).items():
        if path in OPEN_PATHS:
            continue
        for operation in operations.values():
            operation["security"] = [{"ApiKeyHeader": []}, {"BearerToken": []}]
            operation.setdefault("responses", {})["401"] = {
                "description": "Missing or wrong API key", "content": error,
            }
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            if path not in OPEN_PATHS and not is_read(method, path):
                operation["responses"]["403"] = {"description": "A read-only key (CLIPSEARCH_API_READ_KEYS)",
                                                 "content": error}
    return schema
