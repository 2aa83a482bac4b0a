"""The HTTP routes: parse, call the engine through its holder, shape the answer.

Routes that touch the model or store are plain `def`: FastAPI runs them in its thread pool, so a slow
encode never blocks the event loop (and /healthz stays responsive).
"""

from __future__ import annotations

import mimetypes
import os
import time
from typing import Annotated, Any

from fastapi import APIRouter, Form, HTTPException, Path, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response

from indexer.engine import Result
from indexer.settings import Settings
from search_api.deps import EnginesDep, MetricsDep, SettingsDep
from search_api.engines import Timed
from search_api.metrics import CONTENT_TYPE
from search_api.schemas import (
    ClassifyForm,
    ClassifyResponse,
    CollectionInfo,
    CollectionsResponse,
    ErrorResponse,
    HealthResponse,
    ImageSearchForm,
    LabelScore,
    SearchRequest,
    SearchResponse,
    SearchResult,
    SearchTimings,
)
from search_api.uploads import decode_upload

meta = APIRouter(tags=["service"])
api = APIRouter(prefix="/v1")


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorResponse} for code in codes}


# 400: a body that is not UTF-8 (FastAPI can't parse it); 413: over the body limit, like an upload.
_QUERY_ERRORS = _errors(400, 404, 409, 413, 422, 503)
_UPLOAD_ERRORS = _errors(400, 404, 409, 413, 422, 503)

# Uploads are multipart/form-data; a form model holding an UploadFile is otherwise documented in the
# OpenAPI schema as application/x-www-form-urlencoded, which can't carry a file.
ImageSearchUpload = Annotated[ImageSearchForm, Form(media_type="multipart/form-data")]
ClassifyUpload = Annotated[ClassifyForm, Form(media_type="multipart/form-data")]


@meta.get("/healthz", response_model=HealthResponse, operation_id="healthz",
          summary="Liveness probe (no API key needed)")
async def healthz() -> HealthResponse:
    return HealthResponse(status="ok")


@meta.get("/metrics", summary="Prometheus metrics", response_class=Response, operation_id="metrics",
          responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}})
async def metrics(metrics: MetricsDep) -> Response:
    return Response(metrics.render(), media_type=CONTENT_TYPE)


@meta.get("/openapi.json", include_in_schema=False)
async def openapi(request: Request) -> JSONResponse:
    return JSONResponse(request.app.openapi())


@meta.get("/docs", include_in_schema=False)
async def docs(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "").rstrip("/")
    return get_swagger_ui_html(openapi_url=f"{root}/openapi.json", title=f"{request.app.title} - docs")


def _k(request: SearchRequest | ImageSearchForm, settings: Settings) -> int:
    """k within the server's max_k (a setting, so the static schema can't hold it)."""
    if "k" not in request.model_fields_set:  # the default may exceed a small max_k; the client didn't ask
        return min(request.k, settings.max_k)
    if request.k > settings.max_k:
        raise HTTPException(422, f"k must be between 1 and {settings.max_k}")  # as a schema error would
    return request.k


def _search_response(timed: Timed[list[Result]], started: float, metrics: MetricsDep) -> SearchResponse:
    metrics.observe_stages(timed.stages)
    ms = {stage: round(seconds * 1000, 3) for stage, seconds in timed.stages.items()}
    return SearchResponse(
        results=[SearchResult(id=r.id, uri=r.uri, score=r.score, metadata=r.metadata) for r in timed.value],
        took_ms=round((time.perf_counter() - started) * 1000, 3),
        timings=SearchTimings(encode_ms=ms["encode"], search_ms=ms["search"], fetch_ms=ms["fetch"]),
    )


@api.post("/search", response_model=SearchResponse, tags=["search"], responses=_QUERY_ERRORS,
          operation_id="search", summary="Search by text, or by an indexed image's id")
def search(
    body: SearchRequest, engines: EnginesDep, settings: SettingsDep, metrics: MetricsDep
) -> SearchResponse:
    started = time.perf_counter()
    k = _k(body, settings)
    if body.text is not None:
        text = body.text
        timed = engines.call(lambda engine: engine.search_text(text, k))
    else:
        image_id = body.image_id or ""
        timed = engines.call(lambda engine: engine.search_similar(image_id, k))
    return _search_response(timed, started, metrics)


@api.post("/search/image", response_model=SearchResponse, tags=["search"], responses=_UPLOAD_ERRORS,
          operation_id="search_image", summary="Search by an uploaded example image")
def search_image(
    form: ImageSearchUpload, engines: EnginesDep, settings: SettingsDep, metrics: MetricsDep
) -> SearchResponse:
    started = time.perf_counter()
    k = _k(form, settings)
    image = decode_upload(form.file, settings, engines.draft_size())
    metrics.observe_stages({"decode": time.perf_counter() - started})
    timed = engines.call(lambda engine: engine.search_image(image, k))
    return _search_response(timed, started, metrics)


@api.post("/classify", response_model=ClassifyResponse, tags=["classify"], responses=_UPLOAD_ERRORS,
          operation_id="classify", summary="Zero-shot classification of an uploaded image")
def classify(
    form: ClassifyUpload, engines: EnginesDep, settings: SettingsDep, metrics: MetricsDep
) -> ClassifyResponse:
    started = time.perf_counter()
    labels = form.label_list
    image = decode_upload(form.file, settings, engines.draft_size())
    metrics.observe_stages({"decode": time.perf_counter() - started})
    timed = engines.call(lambda engine: engine.classify_images([image], labels))
    metrics.observe_stages({"encode": timed.stages["encode"]})
    return ClassifyResponse(labels=[LabelScore(label=label, score=score) for label, score in timed.value[0]])


# Formats the indexer accepts that Python's mimetypes may not know.
_MEDIA_TYPES = {".webp": "image/webp", ".heic": "image/heic", ".heif": "image/heif", ".avif": "image/avif"}

_IMAGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/*": {"schema": {"type": "string", "format": "binary"}}},
          "description": "The image file, with its content type"},
    **_errors(404, 422, 503),
}


@api.get("/images/{id}", tags=["images"], response_class=FileResponse, responses=_IMAGE_RESPONSES,
         operation_id="get_image", summary="The bytes of an indexed image")
def get_image(
    id: Annotated[str, Path(description="Id of an indexed image, as search results give it.")],
    engines: EnginesDep,
) -> FileResponse:
    # The path comes from the indexed payload only; the id is never used to build one, so "../x" or an
    # absolute path is just an id that is not indexed (404).
    payload = engines.call(lambda engine: engine.item(id)).value
    path = payload.get("path")
    if not isinstance(path, str) or not os.path.isfile(path):
        raise HTTPException(404, f"image {id} is indexed but its file is gone; re-run clipsearch index")
    ext = os.path.splitext(path)[1].lower()
    media_type = _MEDIA_TYPES.get(ext) or mimetypes.guess_type(path)[0] or "application/octet-stream"
    return FileResponse(path, media_type=media_type, headers={"X-Content-Type-Options": "nosniff"})


@api.get("/collections", response_model=CollectionsResponse, tags=["collections"], responses=_errors(503),
         operation_id="list_collections", summary="Every collection with its size and model")
def collections(engines: EnginesDep) -> CollectionsResponse:
    return CollectionsResponse(collections=[CollectionInfo(**found) for found in engines.collections()])
