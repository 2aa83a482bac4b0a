"""Clusters and outliers of a collection's vectors: spherical k-means (FAISS) and neighbour isolation.

- `kmeans`: k clusters of unit vectors, numbered by decreasing size, each with its members' cosine to
  the centroid (the most central first); seeded k-means++ starts, so well-separated groups come out
  right every time rather than most times.
- `neighbours`: each item's nearest other items through the store's own search (what duplicates use).
- `outlier_scores`: 1 - mean cosine to the k nearest other items; the most isolated score highest.
- `cluster_collection`: both over a store, optionally written back as the declared payload fields
  `cluster` (integer) and `outlier` (float), so filters and exports can use them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from indexer.errors import BadInput
from indexer.schema import FieldType
from indexer.stores import VectorStore

CLUSTER_FIELDS: dict[str, FieldType] = {"cluster": "integer", "outlier": "float"}
WRITE_BATCH = 1024


@dataclass
class Clustering:
    assignment: np.ndarray  # (n,) cluster of each vector, 0 = the largest cluster
    similarity: np.ndarray  # (n,) cosine of each vector to its cluster's centroid
    centroids: np.ndarray  # (k, d) unit vectors

    def members(self, cluster: int) -> np.ndarray:
        """Indices of the cluster's vectors, most central first (ties by index)."""
        idx = np.flatnonzero(self.assignment == cluster)
        return idx[np.lexsort((idx, -self.similarity[idx]))]


def _normalised(vectors: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def _kmeans_pp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy k-means++ starting centroids (as scikit-learn: of 2 + log k D²-sampled candidates, the one
    that lowers the potential most), from at most 256 points per cluster."""
    if len(x) > 256 * k:
        x = x[rng.choice(len(x), 256 * k, replace=False)]
    tries = 2 + int(np.log(k))
    chosen = [int(rng.integers(len(x)))]
    dist = np.maximum(2.0 - 2.0 * x @ x[chosen[0]], 0.0)  # squared distance of unit vectors
    for _ in range(1, k):
        total = float(dist.sum())
        if total <= 0:  # fewer distinct points than clusters
            candidates = rng.integers(len(x), size=tries)
        else:
            candidates = rng.choice(len(x), size=tries, p=dist / total)
        options = np.minimum(dist[None, :], np.maximum(2.0 - 2.0 * x[candidates] @ x.T, 0.0))
        best = int(options.sum(axis=1).argmin())
        chosen.append(int(candidates[best]))
        dist = options[best]
    return np.ascontiguousarray(x[chosen])


# FAISS keeps the seed in a C int, and each of the `redo` runs adds one to it.
MAX_SEED = 2**31 - 1 - 16


def kmeans(vectors: np.ndarray, k: int, *, seed: int = 0, niter: int = 25, redo: int = 3) -> Clustering:
    """Spherical k-means of `vectors` (normalised here): the best of `redo` seeded runs by objective."""
    try:
        import faiss
    except ImportError as exc:  # an optional dependency: say how to get it
        raise BadInput("clustering needs FAISS: pip install 'clipsearch[faiss]' (faiss-cpu)") from exc
    x = _normalised(vectors)
    n, dim = x.shape
    if not 1 <= k <= n:
        raise BadInput(f"--k must be between 1 and the number of items ({n}), not {k}")
    if not 0 <= seed <= MAX_SEED:
        raise BadInput(f"--seed must be between 0 and {MAX_SEED}, not {seed}")
    rng = np.random.default_rng(seed)
    best: tuple[float, np.ndarray] | None = None
    for attempt in range(redo):
        km = faiss.Kmeans(dim, k, niter=niter, spherical=True, seed=seed + attempt, verbose=False)
        km.cp.min_points_per_centroid = 1  # small collections are fine; no warning on stderr
        km.train(x, init_centroids=_kmeans_pp(x, k, rng))
        objective = float(km.obj[-1]) if len(km.obj) else 0.0  # sum of similarities: higher is better
        if best is None or objective > best[0]:
            best = (objective, np.array(km.centroids, dtype=np.float32))
    assert best is not None
    centroids = _normalised(best[1])
    scores = x @ centroids.T
    assignment = scores.argmax(axis=1)
    # Number clusters by decreasing size (then by first member) so reports and tests are stable.
    sizes = np.bincount(assignment, minlength=k)
    first = np.array([np.flatnonzero(assignment == c)[0] if sizes[c] else n for c in range(k)])
    order = np.lexsort((first, -sizes))
    rank = np.empty(k, dtype=np.int64)
    rank[order] = np.arange(k)
    return Clustering(rank[assignment], scores[np.arange(n), assignment], centroids[order])


def load_vectors(
    store: VectorStore, vector: str | None = None
) -> tuple[list[str], list[dict[str, Any]], np.ndarray]:
    """Ids, payloads and the (n, d) unit vectors of every item that has vector `vector`, ordered by id."""
    name = store.schema.vector(vector).name
    records = sorted((r for r in store.scan(with_vectors=[name]) if name in r.vectors), key=lambda r: r.id)
    dim = store.schema.vector(name).dim
    matrix = np.zeros((len(records), dim), dtype=np.float32)
    for i, record in enumerate(records):
        matrix[i] = record.vectors[name]
    return [r.id for r in records], [r.payload for r in records], _normalised(matrix)


def neighbours(
    store: VectorStore,
    ids: Sequence[str],
    vectors: np.ndarray,
    k: int,
    *,
    using: str | None = None,
    progress: bool = False,
    what: str = "neighbours",
) -> tuple[np.ndarray, np.ndarray]:
    """Each item's k nearest other items through the store's search: (n, k) indices into `ids`
    (-1 where there are fewer) and (n, k) cosines, best first."""
    position = {id_: i for i, id_ in enumerate(ids)}
    found = np.full((len(ids), k), -1, dtype=np.int64)
    scores = np.full((len(ids), k), -np.inf, dtype=np.float32)
    for i in tqdm(range(len(ids)), desc=what, unit="img", disable=not progress, smoothing=0.1):
        hits = store.search(vectors[i], k + 1, using=using)
        others = [(position[h.id], h.score) for h in hits if h.id != ids[i] and h.id in position][:k]
        for j, (other, score) in enumerate(others):
            found[i, j], scores[i, j] = other, score
    return found, scores


def outlier_scores(scores: np.ndarray) -> np.ndarray:
    """1 - mean cosine to the nearest others (rows of `neighbours` scores; missing ones count as 0)."""
    if scores.shape[1] == 0:
        return np.zeros(len(scores), dtype=np.float32)
    return (1.0 - np.where(np.isfinite(scores), scores, 0.0).mean(axis=1)).astype(np.float32)


def cluster_collection(
    store: VectorStore,
    k: int,
    *,
    vector: str | None = None,
    central: int = 5,
    outliers: int = 20,
    neighbours_k: int = 10,
    save: bool = False,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """The clusters report of a collection: {"k", "clusters": [{"cluster", "size", "central": [item]}],
    "outliers": [item], "stored", "seconds"}, items as {"id", "uri", "score"}. With `save`, every item
    gets `cluster` and `outlier` in its payload metadata (declared fields)."""
    started = time.perf_counter()
    ids, payloads, x = load_vectors(store, vector)
    if not ids:
        raise BadInput(f"collection {store.name!r} has no vectors to cluster: index some images first")
    clustering = kmeans(x, k, seed=seed)
    isolation = np.zeros(len(ids), dtype=np.float32)
    if (outliers or save) and len(ids) > 1:  # the neighbour searches are most of the time: only if asked
        _, near = neighbours(
            store, ids, x, min(neighbours_k, len(ids) - 1), using=vector, progress=progress, what="outliers"
        )
        isolation = outlier_scores(near)

    def item(i: int, score: float) -> dict[str, Any]:
        return {"id": ids[i], "uri": payloads[i].get("uri", ""), "score": round(float(score), 6)}

    clusters = []
    for c in range(k):
        members = clustering.members(c)
        clusters.append({
            "cluster": c,
            "size": int(len(members)),
            "central": [item(i, clustering.similarity[i]) for i in members[:central]],
        })
    isolated = np.lexsort((np.arange(len(ids)), -isolation))[:outliers]
    if save:
        store_clusters(store, ids, payloads, clustering.assignment, isolation)
    return {
        "k": k,
        "clusters": clusters,
        "outliers": [item(i, isolation[i]) for i in isolated],
        "stored": save,
        "seconds": round(time.perf_counter() - started, 3),
    }


def store_clusters(
    store: VectorStore,
    ids: Sequence[str],
    payloads: Sequence[dict[str, Any]],
    assignment: np.ndarray,
    isolation: np.ndarray,
) -> None:
    """Write `cluster` and `outlier` into each item's payload metadata, declaring the fields first."""
    missing = {f: t for f, t in CLUSTER_FIELDS.items() if f not in store.schema.fields}
    if missing:
        store.set_schema(store.schema.with_fields(missing))
    for start in range(0, len(ids), WRITE_BATCH):
        batch = {}
        for i in range(start, min(start + WRITE_BATCH, len(ids))):
            meta = {**payloads[i].get("metadata", {}), "cluster": int(assignment[i])}
            meta["outlier"] = round(float(isolation[i]), 6)
            batch[ids[i]] = {**payloads[i], "metadata": meta}
        store.set_payloads(batch)
    store.flush()
