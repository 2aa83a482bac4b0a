"""One error shape for the whole API, {"detail": "..."}, with the status of each error kind.

The status comes from the one table, indexer.errors.ERROR_KINDS, which the CLI reads for its exit
codes: an error means the same thing whichever way it reaches a user.
"""

from __future__ import annotations

import logging
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from indexer.errors import ClipsearchError, Unavailable, outcome

log = logging.getLogger(__name__)


def error_response(exc: ClipsearchError) -> JSONResponse:
    """The answer to one of our errors: its kind's status and its message."""
    status = outcome(exc).http_status  # type: ignore[union-attr]  # ours, so never None
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else {}
    if isinstance(exc, Unavailable) and exc.retry_after_s is not None:
        headers["Retry-After"] = str(exc.retry_after_s)
    return JSONResponse({"detail": exc.message}, status_code=status, headers=headers or None)


def install_error_handlers(app: FastAPI) -> None:
    async def clipsearch_error(request: Request, exc: ClipsearchError) -> JSONResponse:
        # Starlette picks the handler of the closest class in the exception's MRO: every subclass lands here.
        response = error_response(exc)
        if response.status_code >= 500:
            log.warning("%s %s: %s", request.method, request.url.path, exc)
        return response

    app.add_exception_handler(ClipsearchError, clipsearch_error)  # type: ignore[arg-type]

    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # Starlette names one route's methods; a path may have several routes
            headers["Allow"] = ", ".join(allowed_methods(request))
        return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code, headers=headers)

    app.add_exception_handler(StarletteHTTPException, http_error)  # type: ignore[arg-type]

    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default detail is a list of objects; the API promises a sentence.
        return JSONResponse({"detail": describe_validation(exc)}, status_code=422)

    app.add_exception_handler(RequestValidationError, validation_error)  # type: ignore[arg-type]

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Still logged with its traceback by the server; the client gets the promised shape, no internals.
        return JSONResponse({"detail": "internal server error"}, status_code=500)

    app.add_exception_handler(Exception, unexpected)


def describe_validation(exc: RequestValidationError) -> str:
    """FastAPI's validation errors as one sentence a person can act on."""
    parts = []
    for error in exc.errors():
        kind = error.get("type")
        if kind == "json_invalid":  # loc is ("body", position): the position is no field name
            reason = (error.get("ctx") or {}).get("error", "")
            parts.append(f"the body is not valid JSON: {reason} (at character {error['loc'][-1]})")
            continue
        loc = tuple(error.get("loc", ()))
        if loc[:1] in (("body",), ("query",), ("path",), ("header",)):  # the source; a field may be "query"
            loc = loc[1:]
        where = ".".join(str(p) for p in loc)
        if kind == "missing":  # an empty form field arrives as missing: say both
            message = "required, and must not be empty"
        else:
            message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts) or "invalid request"


def allowed_methods(request: Request) -> list[str]:
    """The methods the API documents for this request's path (a path may have several routes, and
    Starlette's 405 names only the first one's); HEAD wherever GET is."""
    path = request.scope["path"]
    methods: set[str] = set()
    for template, operations in request.app.openapi().get("paths", {}).items():
        if re.fullmatch(re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)), path):
            methods |= {method.upper() for method in operations}
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)
