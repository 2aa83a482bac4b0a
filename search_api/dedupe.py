"""Curation reports for the UI: duplicate groups, clusters and outliers of a collection.

Each runs in the server process on the collection's open store (the engine's), alone like any other
call on it; duplicates store the hashes of files indexed before hashes were taken, nothing else is
written. Reports are computed on request: the UI caches them.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from indexer.curation.clusters import cluster_collection, load_vectors, neighbours, outlier_scores
from indexer.curation.duplicates import DEFAULT_THRESHOLD, HASH_DISTANCE, find_duplicates
from search_api.deps import EnginesDep
from search_api.schemas import CollectionPath, ErrorResponse

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
    return engines.call(collection, lambda engine: find_duplicates(
        engine.store, threshold=threshold, hash_distance=hash_distance, vector=vector))


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
    return engines.call(collection, lambda engine: cluster_collection(
        engine.store, k, vector=vector, central=central, outliers=0, seed=seed))


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

    def run(engine: Any) -> dict[str, Any]:
        ids, payloads, x = load_vectors(engine.store, vector)
        if len(ids) < 2:
            return {"outliers": []}
        _, near = neighbours(engine.store, ids, x, min(neighbours_k, len(ids) - 1), using=vector)
        scores = outlier_scores(near)
        order = sorted(range(len(ids)), key=lambda i: (-scores[i], i))[:limit]
        return {"outliers": [{"id": ids[i], "uri": payloads[i].get("uri", ""),
                              "score": round(float(scores[i]), 6)} for i in order]}

    return engines.call(collection, run)
