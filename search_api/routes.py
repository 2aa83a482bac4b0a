"""The HTTP routes: parse, call the collection (indexer.collection.Collection, through the server's
`Engines`: search_api.engines.collection), shape the answer.

Routes that touch the model or store are plain `def`: FastAPI runs them in its thread pool, so a slow
encode never blocks the event loop (and /healthz stays responsive).
"""

from __future__ import annotations

import mimetypes
import os
import time
from collections.abc import Callable
from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, Form, HTTPException, Path, Query, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from indexer.errors import BadInput, Conflict
from indexer.ingest.decode import pixel_count
from indexer.results import SearchResults
from indexer.search.engine import STAGES
from indexer.search.query import Term, keyword_text
from indexer.settings import Settings
from indexer.vlm import Query as VlmQuery
from search_api import vlm as stage
from search_api.deps import EnginesDep, JobsDep, MetricsDep, SettingsDep, VlmDep
from search_api.engines import collection as collection_of
from search_api.metrics import CONTENT_TYPE
from search_api.schemas import (
    COLLECTION_PATTERN,
    BrowseRequest,
    CheckResponse,
    ClassifyForm,
    ClassifyResponse,
    CollectionInfo,
    CollectionPath,
    CollectionsResponse,
    CollectionStatus,
    ErrorResponse,
    ExplainRequest,
    ExplainResponse,
    FacetCount,
    HealthResponse,
    ImageSearchForm,
    ItemResponse,
    LabelScore,
    NewVectorRequest,
    ReadinessResponse,
    SearchRequest,
    SearchResponse,
    SearchTimings,
    VectorInfo,
    VectorsResponse,
    VlmStatus,
)
from search_api.uploads import read_upload

meta = APIRouter(tags=["service"])
api = APIRouter(prefix="/v1")


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorResponse} for code in codes}


# 400: a body that is not UTF-8, a bad filter; 413: over the body limit, like an upload.
_QUERY_ERRORS = _errors(400, 404, 409, 413, 422, 503)
_UPLOAD_ERRORS = _errors(400, 404, 409, 413, 422, 503)

# Uploads are multipart/form-data; a form model holding an UploadFile is otherwise documented in the
# OpenAPI schema as application/x-www-form-urlencoded, which can't carry a file.
ImageSearchUpload = Annotated[ImageSearchForm, Form(media_type="multipart/form-data")]
ClassifyUpload = Annotated[ClassifyForm, Form(media_type="multipart/form-data")]
SWAGGER_ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
}


@meta.get(
    "/healthz",
    response_model=HealthResponse,
    operation_id="healthz",
    summary="Liveness probe (no API key needed)",
)
async def healthz(vlm: VlmDep) -> HealthResponse:
    return HealthResponse(status="ok", vlm=vlm.health()["status"])  # no request to the VLM: never slow


@meta.get(
    "/readyz",
    response_model=ReadinessResponse,
    operation_id="readyz",
    responses={503: {"model": ReadinessResponse}},
    summary="Readiness probe: 200 once the default collection's model is loaded and warm (no key)",
)
def readyz(engines: EnginesDep, request: Request) -> JSONResponse:
    watch = _watch_state(request, engines.default)
    extra = {} if watch is None else {"watch": watch}  # only a server with --watch folders says more
    reason = engines.readiness()
    if reason is not None:
        return JSONResponse({"status": "not ready", "reason": reason, **extra}, status_code=503)
    if watch is not None and watch["state"] == "syncing":  # a replica with part of the folders: not yet
        total = "?" if watch["total"] is None else watch["total"]
        reason = (f"the first sync of the --watch folders is running: {watch['done']} of {total} files "
                  "to embed done" + (f" (last error: {watch['last_error']})" if watch["last_error"] else ""))
        return JSONResponse({"status": "syncing", "reason": reason, **extra}, status_code=503)
    return JSONResponse({"status": "ready", "reason": None, **extra})


def _watch_state(request: Request, collection: str) -> dict[str, Any] | None:
    """The --watch sync's state when the server keeps `collection` in line with folders, else None."""
    watcher = getattr(request.app.state, "watcher", None)
    if watcher is None or watcher.settings.collection != collection:
        return None
    return watcher.state()


@meta.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    operation_id="metrics",
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
async def metrics(metrics: MetricsDep) -> Response:
    return Response(metrics.render(), media_type=CONTENT_TYPE)


@meta.get("/openapi.json", include_in_schema=False)
async def openapi(request: Request) -> JSONResponse:
    return JSONResponse(request.app.openapi())


@meta.get("/docs", include_in_schema=False)
async def docs(request: Request) -> HTMLResponse:
    # Swagger UI's assets come from a packaged copy (fastapi-swagger), so /docs works offline.
    root = request.scope.get("root_path", "").rstrip("/")
    return get_swagger_ui_html(
        openapi_url=f"{root}/openapi.json",
        title=f"{request.app.title} - docs",
        swagger_js_url=f"{root}/docs/assets/swagger-ui-bundle.js",
        swagger_css_url=f"{root}/docs/assets/swagger-ui.css",
        swagger_favicon_url=f"{root}/docs/assets/favicon-32x32.png",
    )


@meta.get("/docs/assets/{name}", include_in_schema=False)
async def docs_asset(name: str) -> Response:
    if name not in SWAGGER_ASSETS:
        raise HTTPException(404, f"no such asset: {name}")
    data = resources.files("fastapi_swagger.resources").joinpath(name).read_bytes()
    return Response(data, media_type=SWAGGER_ASSETS[name], headers={"Cache-Control": "max-age=86400"})


def _k(request: Any, settings: Settings) -> int:
    """k within the server's max_k (a setting, so the static schema can't hold it)."""
    if "k" not in request.model_fields_set:  # the default may exceed a small max_k; the client didn't ask
        return min(request.k, settings.api.max_k)
    if request.k > settings.api.max_k:
        raise HTTPException(422, f"k must be between 1 and {settings.api.max_k}")  # as a schema error would
    return request.k


def _response(found: SearchResults, started: float, metrics: MetricsDep, answer: stage.VlmAnswer
              ) -> SearchResponse:
    timings = {**dict.fromkeys(STAGES, 0.0), **found.timings, **answer.timings}
    metrics.observe_stages(timings)
    ms = {name: round(seconds * 1000, 3) for name, seconds in timings.items()}
    return SearchResponse(
        results=answer.results,
        took_ms=round((time.perf_counter() - started) * 1000, 3),
        timings=SearchTimings(
            decode_ms=ms["decode"], encode_ms=ms["encode"], search_ms=ms["search"], fetch_ms=ms["fetch"],
            rerank_ms=ms.get("rerank", 0.0), explain_ms=ms.get("explain", 0.0),
        ),
        rerank=answer.rerank,
        facets=_facets(found) if found.facets else None,
        mode=found.mode,
    )


def _facets(found: SearchResults) -> dict[str, list[FacetCount]]:
    facets = found.facets.items()
    return {field: [FacetCount(value=v, count=n) for v, n in counts] for field, counts in facets}


@api.post(
    "/search",
    response_model=SearchResponse,
    tags=["search"],
    responses=_QUERY_ERRORS,
    operation_id="search",
    summary="Search by text, or by an indexed image's id; optionally re-ranked and explained by the VLM",
)
def search(
    body: SearchRequest, engines: EnginesDep, settings: SettingsDep, metrics: MetricsDep, vlm: VlmDep
) -> SearchResponse:
    started = time.perf_counter()
    k = _k(body, settings)
    ask = stage.VlmAsk.of(body.rerank_options(), body.explain, settings)
    window = ask.window(k, settings.api.max_k) if ask else k
    collection = collection_of(engines, body.collection)
    images = stage.item_images(collection)
    if body.positive is not None:
        found = collection.recommend_by(body.positive, body.negative or [], window, body.to_options())
        query = VlmQuery(image=images(body.positive[0])) if ask else VlmQuery()
    else:
        terms = body.terms()
        found = collection.query(terms, window, body.to_options())
        query = _vlm_query(terms, images) if ask else VlmQuery()
    answer = stage.run(vlm, ask, query, found.hits, images, k)
    return _response(found, started, metrics, answer)


@api.post(
    "/browse",
    response_model=SearchResponse,
    tags=["search"],
    responses=_QUERY_ERRORS,
    operation_id="browse",
    summary="Browse without a query: the items that pass a filter, sorted by a field",
)
def browse(body: BrowseRequest, engines: EnginesDep, settings: SettingsDep, metrics: MetricsDep,
           vlm_off: VlmDep) -> SearchResponse:
    started = time.perf_counter()
    k = _k(body, settings)
    collection = collection_of(engines, body.collection)
    found = collection.browse(k, body.to_options(), sort=body.sort)
    answer = stage.run(vlm_off, None, VlmQuery(), found.hits, stage.item_images(collection), k)  # no query
    return _response(found, started, metrics, answer)


@api.post(
    "/search/image",
    response_model=SearchResponse,
    tags=["search"],
    responses=_UPLOAD_ERRORS,
    operation_id="search_image",
    summary="Search by an uploaded example image",
)
def search_image(
    form: ImageSearchUpload, engines: EnginesDep, settings: SettingsDep, metrics: MetricsDep, vlm: VlmDep
) -> SearchResponse:
    started = time.perf_counter()
    k = _k(form, settings)
    ask = stage.VlmAsk.of(form.rerank_options(), form.explain, settings)
    window = ask.window(k, settings.api.max_k) if ask else k
    data = read_upload(form.file, settings.api.max_upload_bytes)
    depth = settings.limits.json_depth
    terms, options = form.terms(data, depth), form.to_options(depth)
    collection = collection_of(engines, form.collection)
    with engines.pixel_budget.admit(pixel_count(data)):
        found = collection.query(terms, window, options)
    answer = stage.run(vlm, ask, VlmQuery(image=data), found.hits, stage.item_images(collection), k)
    return _response(found, started, metrics, answer)


def _vlm_query(terms: list[Term], images: Callable[[str], str | None]) -> VlmQuery:
    """What the VLM is told the search was for: the words of positive weight, else the first item."""
    words = keyword_text(terms)
    if words:
        return VlmQuery(text=words)
    first = next(t.image_id for t in terms if t.image_id is not None and t.weight > 0)
    return VlmQuery(image=images(first))


@api.post(
    "/classify",
    response_model=ClassifyResponse,
    tags=["classify"],
    responses=_UPLOAD_ERRORS,
    operation_id="classify",
    summary="Zero-shot classification of an uploaded image",
)
def classify(
    form: ClassifyUpload, engines: EnginesDep, settings: SettingsDep, metrics: MetricsDep
) -> ClassifyResponse:
    started = time.perf_counter()
    labels = form.label_list
    data = read_upload(form.file, settings.api.max_upload_bytes)
    with engines.pixel_budget.admit(pixel_count(data)):
        [scored] = collection_of(engines, form.collection).classify([data], labels)
    metrics.observe_stages({"encode": time.perf_counter() - started})
    return ClassifyResponse(labels=[LabelScore(label=x.label, score=x.score) for x in scored.labels])


_EXPLAIN_ERRORS = _errors(400, 404, 409, 413, 422, 503)


class EventStream(StreamingResponse):
    media_type = "text/event-stream"


def _explained(engines: EnginesDep, body: ExplainRequest) -> tuple[dict[str, Any], str | None]:
    """The hit to explain and its image file; ItemNotFound (404) before anything is sent to the VLM."""
    collection = collection_of(engines, body.collection)
    item = collection.get_item(body.image_id)
    return {"id": item.id, "uri": item.uri, "metadata": item.metadata}, collection.image_file(item.id)


@api.post(
    "/explain",
    response_model=ExplainResponse,
    tags=["vlm"],
    responses=_EXPLAIN_ERRORS,
    operation_id="explain",
    summary="Why an indexed image matches a query, in one or two sentences from the VLM",
    description="The VLM's failures (off, down, slow, refusing) are a 200 with `status: failed` and why.",
)
def explain(body: ExplainRequest, engines: EnginesDep, vlm: VlmDep) -> ExplainResponse:
    hit, image = _explained(engines, body)
    return stage.explain(vlm, body.query, hit, image)


@api.post(
    "/explain/stream",
    response_class=EventStream,
    tags=["vlm"],
    responses={
        200: {
            "content": {"text/event-stream": {"schema": {  # one event
                "type": "object",
                "required": ["data"],
                "properties": {
                    "event": {"type": "string", "enum": ["done", "error"],
                              "description": "Absent for the pieces of text."},
                    "data": {"type": "string", "description": "A JSON object."},
                },
            }}},
            "description": 'Server-sent events: `data: {"text": "..."}` for each piece as the VLM writes it, '
            'then `event: done` with `data: {"explanation", "ms"}`; or, at any point, `event: error` with '
            '`data: {"error", "reason", "text"}` (the VLM failed; `text`: what came before).',
        },
        # JSON, as everywhere: said outright, as the route's own media type is the event stream's.
        **{code: {"description": "Error", "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/ErrorResponse"}}}} for code in _EXPLAIN_ERRORS},
    },
    operation_id="explain_stream",
    summary="The same explanation, streamed as the VLM writes it (server-sent events)",
)
def explain_stream(body: ExplainRequest, engines: EnginesDep, vlm: VlmDep) -> EventStream:
    hit, image = _explained(engines, body)
    # no-cache and no proxy buffering: each piece must reach the client when it is written.
    return EventStream(stage.explain_events(vlm, body.query, hit, image),
                       headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@api.get(
    "/vlm",
    response_model=VlmStatus,
    tags=["vlm"],
    responses=_errors(422),
    operation_id="vlm_status",
    summary="The VLM stage: its endpoint, model, and whether it answers",
)
def vlm_status(
    vlm: VlmDep,
    probe: Annotated[
        bool, Query(description="Ask the endpoint for its models now (at most 2 s) rather than report the "
                    "last requests.")
    ] = False,
) -> VlmStatus:
    return VlmStatus(**(vlm.probe() if probe else vlm.health()))


# Formats the indexer accepts that Python's mimetypes may not know.
_MEDIA_TYPES = {".webp": "image/webp", ".heic": "image/heic", ".heif": "image/heif", ".avif": "image/avif"}

_IMAGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"image/*": {"schema": {"type": "string", "format": "binary"}}},
        "description": "The image file, with its content type",
    },
    **_errors(404, 422, 503),
}


@api.get(
    "/images/{id}",
    tags=["images"],
    response_class=FileResponse,
    responses=_IMAGE_RESPONSES,
    operation_id="get_image",
    summary="The bytes of an indexed image",
)
def get_image(
    id: Annotated[str, Path(description="Id of an indexed image, as search results give it.")],
    engines: EnginesDep,
    collection: Annotated[str | None, Query(pattern=COLLECTION_PATTERN,
                                            description="Collection; default: the server's.")] = None,
) -> FileResponse:
    # The path comes from the indexed payload only; the id is never used to build one, so "../x" or an
    # absolute path is just an id that is not indexed (404).
    path = collection_of(engines, collection).image_file(id)
    if path is None or not os.path.isfile(path):
        raise HTTPException(
            404,
            f"image {id} is indexed but its file is gone; the next sync removes it (`clipsearch serve "
            f"--watch FOLDER`, or `clipsearch index FOLDER` when no server holds the collection)",
        )
    ext = os.path.splitext(path)[1].lower()
    media_type = _MEDIA_TYPES.get(ext) or mimetypes.guess_type(path)[0] or "application/octet-stream"
    return FileResponse(path, media_type=media_type, headers={"X-Content-Type-Options": "nosniff"})


# HEAD answers as GET does, without the body (Starlette drops it); one documented operation is enough.
api.add_api_route("/images/{id}", get_image, methods=["HEAD"], include_in_schema=False)


@api.get(
    "/collections",
    response_model=CollectionsResponse,
    tags=["collections"],
    responses=_errors(503),
    operation_id="list_collections",
    summary="Every collection with its size and model",
)
def collections(engines: EnginesDep) -> CollectionsResponse:
    return CollectionsResponse(collections=[CollectionInfo(**found) for found in engines.collections()])


def _with_jobs(status: dict[str, Any], jobs: JobsDep) -> list[VectorInfo]:
    running = jobs.jobs(status["collection"])
    return [
        VectorInfo(**v, job=running[v["name"]].to_dict() if v["name"] in running else None)
        for v in status["vectors"]
    ]


@api.get(
    "/collections/{collection}/status",
    response_model=CollectionStatus,
    tags=["collections"],
    responses=_errors(400, 404, 409, 503),
    operation_id="collection_status",
    summary="A collection's size, vectors, fields and failed files",
)
def collection_status(collection: CollectionPath, engines: EnginesDep, jobs: JobsDep,
                      request: Request) -> CollectionStatus:
    status = engines.status(collection)
    return CollectionStatus(**{**status, "vectors": _with_jobs(status, jobs),
                               "watch": _watch_state(request, status["collection"])})


@api.get(
    "/collections/{collection}/check",
    response_model=CheckResponse,
    tags=["collections"],
    responses=_errors(400, 404, 409, 503),
    operation_id="check_collection",
    summary="Verify a collection's vectors, payloads, counts, indexes and files (reads every point)",
)
def check(collection: CollectionPath, engines: EnginesDep) -> CheckResponse:
    return CheckResponse(**collection_of(engines, collection).check())


@api.get(
    "/collections/{collection}/items/{id}",
    response_model=ItemResponse,
    tags=["collections"],
    responses=_errors(400, 404, 409, 503),
    operation_id="get_item",
    summary="An indexed item's metadata",
)
def get_item(
    collection: CollectionPath,
    id: Annotated[str, Path(description="Id of an indexed item.")],
    engines: EnginesDep,
) -> ItemResponse:
    item = collection_of(engines, collection).get_item(id)
    return ItemResponse(id=id, uri=item.uri, metadata=item.metadata)


@api.get(
    "/collections/{collection}/vectors",
    response_model=VectorsResponse,
    tags=["vectors"],
    responses=_errors(400, 404, 409, 503),
    operation_id="list_vectors",
    summary="A collection's named vectors, with model and progress",
)
def list_vectors(collection: CollectionPath, engines: EnginesDep, jobs: JobsDep) -> VectorsResponse:
    return VectorsResponse(vectors=_with_jobs(engines.status(collection), jobs))


@api.post(
    "/collections/{collection}/vectors",
    response_model=VectorsResponse,
    status_code=202,
    tags=["vectors"],
    responses=_errors(400, 404, 409, 422, 503),
    operation_id="add_vector",
    summary="Embed the collection with another model into a new vector, in the background",
)
def add_vector(
    collection: CollectionPath, body: NewVectorRequest, engines: EnginesDep, jobs: JobsDep
) -> VectorsResponse:
    collection_of(engines, collection).status()  # a missing collection is this request's 404
    jobs.start(collection, body.model, body.pretrained, body.name)
    return VectorsResponse(vectors=_with_jobs(engines.status(collection), jobs))


@api.post(
    "/collections/{collection}/vectors/{name}/activate",
    response_model=VectorsResponse,
    tags=["vectors"],
    responses=_errors(400, 404, 409, 503),
    operation_id="activate_vector",
    summary="Make a ready vector the one queries use, at once",
)
def activate_vector(
    collection: CollectionPath,
    name: Annotated[str, Path(description="Vector name.")],
    engines: EnginesDep,
    jobs: JobsDep,
) -> VectorsResponse:
    collection_of(engines, collection).activate(name)
    return VectorsResponse(vectors=_with_jobs(engines.status(collection), jobs))


@api.delete(
    "/collections/{collection}/vectors/{name}",
    response_model=VectorsResponse,
    tags=["vectors"],
    responses=_errors(400, 404, 409, 503),
    operation_id="drop_vector",
    summary="Remove a vector that is not the active one, with its storage",
)
def delete_vector(
    collection: CollectionPath,
    name: Annotated[str, Path(description="Vector name.")],
    engines: EnginesDep,
    jobs: JobsDep,
) -> VectorsResponse:
    if name in jobs.jobs(collection) and jobs.jobs(collection)[name].state in ("starting", "running"):
        raise Conflict(f"vector {name!r} is being embedded; wait for it to finish")
    collection_of(engines, collection).drop_vector(name)
    return VectorsResponse(vectors=_with_jobs(engines.status(collection), jobs))


SYNC_WAIT_S = 3600.0  # a full sync of large folders; the sync goes on if the client gives up


class SyncRequest(BaseModel):
    sources: list[str] = Field(default_factory=list, max_length=1000,
                               description="Folders the client asked to index: each must be a --watch folder "
                               "of this server (or inside one). Empty: all of them.")

    model_config = ConfigDict(extra="forbid", strict=True)


@api.post(
    "/collections/{collection}/sync",
    tags=["collections"],
    responses=_errors(400, 404, 409, 422, 503),
    operation_id="sync_watched",
    summary="Bring the server's --watch folders in line now, and wait for it (`clipsearch index` of a "
    "watched folder while the server holds the collection)",
)
def sync_watched(collection: CollectionPath, body: SyncRequest, request: Request, settings: SettingsDep
                 ) -> dict[str, Any]:
    watcher = getattr(request.app.state, "watcher", None)
    if watcher is None or collection != settings.collection:
        raise Conflict(f"this server holds collection {collection!r} but watches no folders for it: stop it "
                       "and run `clipsearch index`, or restart it with `clipsearch serve --watch FOLDER`")
    outside = [s for s in body.sources if not any(_within(s, folder) for folder in watcher.folders)]
    if outside:
        raise BadInput(f"{outside[0]} is not a --watch folder of this server (it watches "
                       f"{', '.join(watcher.folders)}): add it with --watch (restart the server), or "
                       "stop the server and run `clipsearch index`")
    report = watcher.sync_now(timeout=SYNC_WAIT_S)
    return dict(report.summary())


def _within(path: str, folder: str) -> bool:
    path, folder = os.path.normpath(path), os.path.normpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)
