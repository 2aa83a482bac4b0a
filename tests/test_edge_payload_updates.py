"""Bulk payload updates on the edge store (label runs, reviews, metadata edits) do not rebuild its index.

Qdrant Edge moves every point whose payload changes out of its indexed segment (indexer.stores.edge),
so a label run over a whole collection leaves every point unindexed. Specification:
- a label run's flush and close leave those points as they are (no index rebuild), and searches over
  them are exact: the brute-force answer, with and without a filter on the new labels;
- a later write of vectors (an index run) builds the index again at close;
- a server opening such a collection builds the index in a thread (`optimize_in_background`) while
  searches keep answering exactly, and closing waits for it.
The collection is just large enough (12,000 512-d vectors) for edge to index a segment at all.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from indexer.curation import labels as lb
from indexer.schema import CollectionSchema, ModelIdentity
from indexer.stores import Record, open_store
from indexer.stores.base import canonical_id
from indexer.stores.edge import EdgeStore
from indexer.stores.filters import Filter
from tests.helpers import make_settings

N, DIM = 12_000, 512
LABELS = [f"label {i}" for i in range(20)]


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def ids(count: int, start: int = 0) -> list[str]:
    return [canonical_id(f"00000000-0000-0000-0000-{i:012d}") for i in range(start, start + count)]


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return unit(np.random.default_rng(3).standard_normal((N, DIM)).astype(np.float32))


@pytest.fixture
def settings(tmp_path: Path):
    return make_settings(tmp_path / "home", tmp_path / "unused.pt", store="edge")


def build(settings, vectors: np.ndarray) -> None:
    identity = ModelIdentity("synthetic", "", "synthetic", "", DIM)
    store = open_store(settings, "c", create=CollectionSchema.new(identity))
    store.upsert([Record(i, {"default": v}, {"uri": f"/p/{n}", "path": f"/p/{n}", "fingerprint": str(n)})
                  for n, (i, v) in enumerate(zip(ids(len(vectors)), vectors, strict=True))])
    store.close()  # builds the index


def plain_vectors(settings) -> int:
    """Vectors stored in the shard's plain (brute-force) segments, as their files record them (each
    chunked vector storage starts its status file with its length, a little-endian u64)."""
    import json
    import struct

    total = 0
    for segment in (settings.collection_dir("c") / "shard" / "segments").iterdir():
        config = json.loads((segment / "segment.json").read_text())["config"]["vector_data"]
        if all(v["index"]["type"] == "plain" for v in config.values()):
            for status in segment.glob("vector_storage*/vectors/status.dat"):
                total += struct.unpack("<Q", status.read_bytes()[:8])[0]
    return total


def edge(settings) -> EdgeStore:
    store = open_store(settings, "c")
    assert isinstance(store, EdgeStore)
    return store


def assert_exact(store: EdgeStore, vectors: np.ndarray, queries: np.ndarray, keep: np.ndarray | None = None,
                 store_filter: Filter | None = None) -> None:
    all_ids = np.array(ids(len(vectors)))
    assert len(queries) > 0
    for query in queries:
        scores = vectors @ query
        if keep is not None:
            scores = np.where(keep, scores, -np.inf)
        expected = list(all_ids[np.argsort(-scores)[:10]])
        assert [h.id for h in store.search(query, 10, filter=store_filter)] == expected


def finds_themselves(store: EdgeStore, vectors: np.ndarray, rows: range = range(0, N, N // 7)) -> bool:
    """Whether stored vectors, asked for, come first: what an approximate (HNSW, int8) index answers
    (random 512-d vectors are its worst case for recall over random queries)."""
    all_ids = ids(len(vectors))
    return all(store.search(vectors[row], 1)[0].id == all_ids[row] for row in rows)


def test_a_label_run_leaves_the_index_alone_and_searches_stay_exact(settings, vectors: np.ndarray) -> None:
    build(settings, vectors)
    store = edge(settings)
    assert store.unindexed() == 0
    label_vectors = unit(np.random.default_rng(4).standard_normal((len(LABELS), DIM)).astype(np.float32))
    report = lb.label_store(store, None, LABELS, label_vectors=label_vectors, logit_scale=100.0, top_k=1,
                            progress=False)
    assert report.labeled == N
    store.close()

    store = edge(settings)
    try:
        assert store.unindexed() == N  # every point moved by its payload update, and none rebuilt:
        assert plain_vectors(settings) >= N  # their vectors sit in plain segments
        queries = unit(np.random.default_rng(5).standard_normal((5, DIM)).astype(np.float32))
        assert_exact(store, vectors, queries)
        first = lb.effective_label(store.retrieve(ids(1))[0].payload["metadata"])
        keep = np.array([lb.effective_label(r.payload["metadata"]) == first
                         for r in store.retrieve(ids(N))])
        assert 0 < keep.sum() < N
        assert_exact(store, vectors, queries, keep, lb.run_filter(lb.DEFAULT_RUN, first))
        # A write of vectors builds the index at close, the moved points' included.
        more = unit(np.random.default_rng(6).standard_normal((10, DIM)).astype(np.float32))
        store.upsert([Record(i, {"default": v}, {"uri": i, "path": i, "fingerprint": i})
                      for i, v in zip(ids(10, N), more, strict=True)])
    finally:
        store.close()
    store = edge(settings)
    try:
        assert store.unindexed() == 0
        assert plain_vectors(settings) < N
        assert finds_themselves(store, np.vstack([vectors, more]), range(0, N + 10, 1001))
    finally:
        store.close()


def test_a_server_builds_the_index_in_the_background_and_answers_meanwhile(settings, vectors) -> None:
    build(settings, vectors)
    store = edge(settings)
    store.set_payloads({i: {"uri": i, "path": i, "fingerprint": i, "metadata": {"note": "edited"}}
                        for i in ids(N)})
    store.close()
    store = edge(settings)
    assert plain_vectors(settings) >= N
    queries = unit(np.random.default_rng(7).standard_normal((5, DIM)).astype(np.float32))
    try:
        assert store.unindexed() == N
        assert_exact(store, vectors, queries)  # the moved points, by brute force
        assert not store.optimize_in_background(backlog=N + 1)  # fewer unindexed points than that
        assert store.optimize_in_background(backlog=N)
        assert not store.optimize_in_background(backlog=N)  # one at a time
        assert finds_themselves(store, vectors)  # while it builds
    finally:
        store.close()  # waits for the build
    store = edge(settings)
    try:
        assert store.unindexed() == 0
        assert plain_vectors(settings) < N
        assert not store.optimize_in_background(backlog=1)  # nothing left to build
        assert finds_themselves(store, vectors)
    finally:
        store.close()
