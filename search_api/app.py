"""`create_app`: the FastAPI application over one collection.

The collection's engine (store + model) is opened by the first request that needs it and kept warm
until shutdown; a missing collection is a 404 until it is indexed, never a failed start.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.concurrency import run_in_threadpool

from indexer.models.loading import ClipModel
from indexer.settings import Settings
from indexer.vlm import Vlm
from search_api import backups, curation, dedupe, items, routes
from search_api.engines import Engines
from search_api.errors import install_error_handlers
from search_api.jobs import VectorJobs
from search_api.limits import BodyLimitMiddleware, Utf8PathMiddleware, body_limit
from search_api.metrics import Metrics, MetricsMiddleware
from search_api.security import ApiKeyMiddleware, document_security
from search_api.watch import DEFAULT_INTERVAL, watching

DESCRIPTION = """Semantic image search over the collections indexed by `clipsearch index`:
text-to-image, image-to-image and zero-shot classification with open_clip models.

Every error is `{"detail": "..."}`. When the server has an API key, every route but `/healthz`
needs it, as `X-API-Key: <key>` or `Authorization: Bearer <key>`."""


def _version() -> str:
    try:
        return metadata.version("clipsearch")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def create_app(
    settings: Settings | None = None,
    model: ClipModel | None = None,
    watch: Sequence[str | Path] = (),
    watch_interval: float = DEFAULT_INTERVAL,
    url: str | None = None,
) -> FastAPI:
    """The API over every collection of the configured store, `settings.collection` by default.
    `model`, when given, serves the collections that record it (tests and embedding reuse a loaded one).
    With `watch` folders, the server also keeps the default collection in line with them (watch.py).
    `url`: where the server answers, left in the embedded collections it holds so the CLI finds it."""
    settings = settings or Settings()
    engines = Engines(settings, model, url)
    jobs = VectorJobs(engines)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The watcher first: it may create the collection that the default engine then opens. Opening
        # at start holds an embedded collection (a second `clipsearch index` is refused at once) and
        # loads the model now, not at the first query; /readyz says when that is done.
        async with (
            vlm_stage(app, settings),
            watching(engines, watch, watch_interval, model) as app.state.watcher,
        ):
            metrics.watcher = app.state.watcher
            await run_in_threadpool(engines.open_default)
            await run_in_threadpool(jobs.resume, settings.collection)
            try:
                yield
            finally:
                await run_in_threadpool(jobs.stop)
        await run_in_threadpool(engines.close)  # waits for running queries; closing flushes the stores

    app = FastAPI(
        title="clipsearch",
        version=_version(),
        description=DESCRIPTION,
        lifespan=lifespan,
        # Served by routes.meta instead, so that they sit behind the API key like everything else.
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.engines = engines
    app.state.jobs = jobs
    app.state.metrics = metrics = Metrics(engines)
    # An off stand-in until the lifespan starts the real one (it owns a thread and an event loop).
    app.state.vlm = Vlm(settings.model_copy(update={"vlm": settings.vlm.model_copy(update={"url": None})}))

    install_error_handlers(app)
    app.include_router(routes.meta)
    app.include_router(routes.api)
    app.include_router(curation.router)
    app.include_router(dedupe.router)
    app.include_router(items.router)
    app.include_router(backups.router)
    app.openapi = _openapi(app, settings)  # type: ignore[method-assign]

    # add_middleware wraps: the last added is outermost. The body limit inside auth, so a request
    # without the key is refused whatever its size; CORS outside auth, so preflights (which carry no
    # key) are answered; metrics outside auth, so 401s are counted too.
    app.add_middleware(
        BodyLimitMiddleware, max_body=body_limit(settings), max_upload=settings.api.max_upload_bytes,
        archives=backups.ARCHIVE_PATHS, max_archive=settings.api.max_restore_bytes,
    )
    app.add_middleware(Utf8PathMiddleware)
    if settings.api.key or settings.api.read_keys:
        app.add_middleware(ApiKeyMiddleware, api_key=settings.api.key, read_keys=settings.api.read_keys)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    if settings.api.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.api.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type"],
        )
    return app


@asynccontextmanager
async def vlm_stage(app: FastAPI, settings: Settings) -> AsyncIterator[Vlm]:
    """The VLM stage while the app runs (off, a stand-in, before it starts): asked for its models in the
    background at start, so /healthz says up or down soon without holding the start back."""
    vlm = Vlm(settings)
    app.state.vlm = app.state.metrics.vlm = vlm
    if vlm.enabled:
        threading.Thread(target=vlm.probe, name="clipsearch-vlm-probe", daemon=True).start()
    try:
        yield vlm
    finally:
        await run_in_threadpool(vlm.close)


def _openapi(app: FastAPI, settings: Settings) -> Any:
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = document_max_k(document_errors(original()), settings.api.max_k)
            keyed = settings.api.key or settings.api.read_keys
            app.openapi_schema = document_security(schema) if keyed else schema
        return app.openapi_schema

    return openapi


# What any /v1 operation may answer besides its own codes: a bad collection name or filter (400), an
# unknown collection or item (404), a busy collection (409), a request that fails validation (422) or a
# store that is unavailable (503). All in the one error shape, which FastAPI's own 422 schema is not.
COMMON_ERRORS = ("400", "404", "409", "422", "503")
_ERROR_SCHEMA = {"$ref": "#/components/schemas/ErrorResponse"}


def document_errors(schema: dict[str, Any]) -> dict[str, Any]:
    """Every error response documented as {"detail": "..."} (what the handlers send), and the common
    ones on every /v1 operation, so the schema says what the server answers."""
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            for code in COMMON_ERRORS if path.startswith("/v1/") else ("422",) if "422" in responses else ():
                described = responses.get(code, {}).get("description") or "Error"
                responses[code] = {
                    "description": described,
                    "content": {"application/json": {"schema": _ERROR_SCHEMA}},
                }
    components = schema.get("components", {}).get("schemas", {})
    components.setdefault(
        "ErrorResponse",
        {
            "properties": {"detail": {"type": "string", "title": "Detail"}},
            "required": ["detail"],
            "type": "object",
            "title": "ErrorResponse",
        },
    )
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    return schema


def document_max_k(schema: dict[str, Any], max_k: int) -> dict[str, Any]:
    """`k` is bounded by a setting (CLIPSEARCH_API_MAX_K): say this server's bound in its schema."""
    for component in schema.get("components", {}).get("schemas", {}).values():
        k = component.get("properties", {}).get("k")
        if k is not None and k.get("type") == "integer":
            k["maximum"] = max_k
    return schema

