"""One error shape for the whole API, {"detail": "..."}, and the status of each library error."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from indexer.decode import ImageDecodeError
from indexer.engine import ItemNotFound
from indexer.locking import CollectionLocked
from indexer.models import ModelLoadError, ModelMismatchError
from indexer.stores import CollectionNotFound, StoreError

log = logging.getLogger(__name__)

# Library errors a client or operator can act on. Starlette picks the handler of the closest class in
# the exception's MRO, so CollectionNotFound (a StoreError) gets 404, other StoreErrors 503.
LIBRARY_ERRORS: dict[type[Exception], int] = {
    ItemNotFound: 404,
    CollectionNotFound: 404,
    ImageDecodeError: 400,
    ModelMismatchError: 409,
    ModelLoadError: 503,
    CollectionLocked: 503,
    StoreError: 503,
}


def _message(exc: Exception) -> str:
    if isinstance(exc, ItemNotFound):  # a KeyError: str() would add quotes
        return f"no indexed image with id {exc.args[0]!r}" if exc.args else "no such image"
    return str(exc) or type(exc).__name__


def install_error_handlers(app: FastAPI) -> None:
    async def library_error(request: Request, exc: Exception) -> JSONResponse:
        status = next(code for cls, code in LIBRARY_ERRORS.items() if isinstance(exc, cls))
        if status >= 500:
            log.warning("%s %s: %s", request.method, request.url.path, exc)
        return JSONResponse({"detail": _message(exc)}, status_code=status)

    for cls in LIBRARY_ERRORS:
        app.add_exception_handler(cls, library_error)

    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    app.add_exception_handler(StarletteHTTPException, http_error)

    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default detail is a list of objects; the API promises a sentence.
        return JSONResponse({"detail": describe_validation(exc)}, status_code=422)

    app.add_exception_handler(RequestValidationError, validation_error)

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Still logged with its traceback by the server; the client gets the promised shape, no internals.
        return JSONResponse({"detail": "internal server error"}, status_code=500)

    app.add_exception_handler(Exception, unexpected)


def describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path", "header"))
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts) or "invalid request"
