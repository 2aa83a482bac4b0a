"""Curation reports for the UI: duplicate groups, clusters and outliers of a collection; exports (a
document, or a folder export as a tar archive), eval on a labelled dataset, snapshots.

Each runs in the server process on the collection's open store (the engine's), alone like any other
call on it; duplicates store the hashes of files indexed before hashes were taken, nothing else is
written. Reports are computed on request: the UI caches them.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict
from pathlib import Path as FilePath
from typing import Annotated, Any, Literal

from fastapi import APIRouter, BackgroundTasks, Query
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from indexer.curation.duplicates import DEFAULT_THRESHOLD, HASH_DISTANCE
from search_api.deps import EnginesDep
from search_api.engines import collection as collection_of
from search_api.schemas import CollectionPath, ErrorResponse, EvalRequest, FolderExportRequest

router = APIRouter(prefix="/v1/collections/{collection}", tags=["curation"])
VectorQuery = Annotated[str | None, Query(description="Named vector [default: the active one].")]
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 404, 409, 503)
}


@router.get("/duplicates", responses=_ERRORS, operation_id="duplicates",
            summary="Groups of exact and near-duplicate images, each with the one to keep")
def duplicates(
    collection: CollectionPath,
    engines: EnginesDep,
    threshold: Annotated[float, Query(ge=0.0, le=1.01, description="CLIP cosine of near duplicates; "
                                      "above 1 turns this path off.")] = DEFAULT_THRESHOLD,
    hash_distance: Annotated[int, Query(ge=-1, le=32, description="Perceptual-hash bits; -1: off.")]
    = HASH_DISTANCE,
    vector: VectorQuery = None,
) -> dict[str, Any]:
    """`{"groups": [{"kind": "exact"|"near", "keep", "others", "scores", "ids"}], ...}`: `ids` are the
    keeper's then the others' (for GET /v1/images/{id})."""
    found = collection_of(engines, collection).duplicates(threshold=threshold, hash_distance=hash_distance,
                                                          vector=vector)
    return asdict(found)


@router.get("/clusters", responses=_ERRORS, operation_id="clusters",
            summary="k-means clusters with their sizes and most central images")
def clusters(
    collection: CollectionPath,
    engines: EnginesDep,
    k: Annotated[int, Query(ge=1, le=1000, description="Number of clusters.")] = 20,
    central: Annotated[int, Query(ge=0, le=100, description="Central images per cluster.")] = 6,
    seed: Annotated[int, Query(description="k-means seed.")] = 0,
    vector: VectorQuery = None,
) -> dict[str, Any]:
    """`{"k", "clusters": [{"cluster", "size", "central": [{"id", "uri", "score"}]}], "outliers", ...}`."""
    clusters = collection_of(engines, collection).clusters(k, central=central, seed=seed, vector=vector)
    return {"k": clusters.k, "clusters": [asdict(c) for c in clusters.clusters], "outliers": []}


@router.get("/outliers", responses=_ERRORS, operation_id="outliers",
            summary="The most isolated images first")
def outliers(
    collection: CollectionPath,
    engines: EnginesDep,
    limit: Annotated[int, Query(ge=1, le=1000, description="How many.")] = 50,
    neighbours_k: Annotated[int, Query(alias="neighbours", ge=1, le=100,
                                       description="Score: 1 - mean cosine to this many nearest.")] = 10,
    vector: VectorQuery = None,
) -> dict[str, Any]:
    """`{"outliers": [{"id", "uri", "score"}]}`, most isolated first."""
    found = collection_of(engines, collection).outliers(limit, neighbours=neighbours_k, vector=vector)
    return {"outliers": [asdict(o) for o in found.outliers]}


class ExportRequest(BaseModel):
    """Which items, in which one-document format (folders are exported where the collection is)."""

    format: Literal["csv", "jsonl", "coco"] = Field("csv", description="The document's format.")
    filter: dict[str, Any] | None = Field(None, description="A filter, as in /v1/search.")
    run: str | None = Field(None, max_length=200, description="A label run whose labels to include "
                            '("@duplicates": the duplicate groups).')
    csv_formulas: bool = Field(False, description="csv: cells that start with =, +, -, @, tab or CR as they "
                               "are (data pipelines); by default they get a leading ' (shown as text).")

    model_config = ConfigDict(extra="forbid", strict=True)


class ExportResponse(BaseModel):
    format: str
    items: int
    labelled: int
    document: str = Field(description="The csv, jsonl or COCO JSON document, as text.")


@router.post("/export", response_model=ExportResponse, responses=_ERRORS, operation_id="export",
             summary="The items passing a filter as one csv, jsonl or COCO document")
def export(collection: CollectionPath, body: ExportRequest, engines: EnginesDep) -> ExportResponse:
    document, report = collection_of(engines, collection).export_document(
        body.format, filter=body.filter, run=body.run, formulas=body.csv_formulas)
    return ExportResponse(format=report.format, items=report.items, labelled=report.labelled,
                          document=document)


_ARCHIVE = {"schema": {"type": "string", "format": "binary"}}


@router.post("/snapshot", response_class=FileResponse, operation_id="snapshot",
             responses={**_ERRORS, 200: {
                 "content": {"application/x-tar": _ARCHIVE, "application/gzip": _ARCHIVE},
                 "description": "The archive (`clipsearch restore` reads it)"}},
             summary="A portable archive of every point (vectors, payloads, schema), as a .tar download")
def snapshot(
    collection: CollectionPath, engines: EnginesDep, tasks: BackgroundTasks,
    gzip: Annotated[bool, Query(description="A gzip-compressed tar (.tar.gz).")] = False,
) -> FileResponse:
    archive = _scratch(engines) / f"{collection}.tar{'.gz' if gzip else ''}"
    try:
        collection_of(engines, collection).snapshot(archive)
    except BaseException:
        _remove(archive)
        raise
    tasks.add_task(_remove, archive)
    return FileResponse(archive, media_type="application/gzip" if gzip else "application/x-tar",
                        filename=archive.name)


_FOLDER_EXPORT_ERRORS: dict[int | str, dict[str, Any]] = {
    **_ERRORS, 422: {"model": ErrorResponse},
    200: {"content": {"application/x-tar": _ARCHIVE},
          "description": "The export folder as a tar archive (the images copied in); headers "
          "`X-Export-Items` and `X-Export-Labelled` count them"},
}


@router.post("/export/archive", response_class=FileResponse, operation_id="export_folder",
             responses=_FOLDER_EXPORT_ERRORS,
             summary="The items passing a filter as an imagefolder or fiftyone folder, in a tar archive")
def export_folder(collection: CollectionPath, body: FolderExportRequest, engines: EnginesDep,
                  tasks: BackgroundTasks) -> FileResponse:
    archive = _scratch(engines) / f"{collection}-{body.format}.tar"
    try:
        report = collection_of(engines, collection).export_archive(archive, body.format, filter=body.filter,
                                                                   run=body.run)
    except BaseException:
        _remove(archive)
        raise
    tasks.add_task(_remove, archive)
    counts = {"X-Export-Items": str(report.items), "X-Export-Labelled": str(report.labelled)}
    return FileResponse(archive, media_type="application/x-tar", filename=archive.name, headers=counts)


@router.post("/eval", responses={**_ERRORS, 422: {"model": ErrorResponse}}, operation_id="eval",
             summary="The stored vectors measured on a labelled dataset of indexed images (paths and labels)")
def evaluate(collection: CollectionPath, body: EvalRequest, engines: EnginesDep) -> dict[str, Any]:
    """The document of `clipsearch eval --json`: zero-shot top-1/5, text-to-image and image-to-image
    recall (`{"systems": {...}}` for several vectors)."""
    return collection_of(engines, collection).eval_labelled(body.paths, body.labels, vectors=body.vectors,
                                                            templates=body.templates)


def _scratch(engines: EnginesDep) -> FilePath:
    """A new folder for one response's file, in the server's home (removed with the file)."""
    return FilePath(tempfile.mkdtemp(prefix="download-", dir=engines.settings.home))


def _remove(path: FilePath) -> None:
    path.unlink(missing_ok=True)
    path.parent.rmdir()
