"""Filtered search on the edge store: a filter that keeps few points is searched exactly.

HNSW with a filter that keeps few of many points loses recall (1M points, 1% kept: recall@10 0.977 at
hnsw_ef 256; docs/benchmarks.md), and edge's own planner goes exact only under a per-segment size. So
the store asks edge for an exact search whenever the points a filter keeps (the payload index's
estimate) times the vector's dimensions are at most `EXACT_SCAN_MAX`; a wider filter, and a search
without one, use the index. A spy between the store and its real shard records what each search asks;
the limit is lowered so that a small collection shows both sides of it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from indexer.schema import CollectionSchema, ModelIdentity
from indexer.stores import Record, edge, open_store
from indexer.stores.filters import FieldCondition, Filter, Range
from tests.helpers import make_settings

N, DIM, BUCKETS = 2_000, 16, 100


class ShardSpy:
    """The real shard, with the `exact` flag of every query's search parameters written down."""

    def __init__(self, shard: Any) -> None:
        self._shard = shard
        self.exact: list[bool] = []

    def query(self, request: Any) -> Any:
        self.exact.append(bool(request.params.exact))
        return self._shard.query(request)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._shard, name)


def bucket_below(n: int) -> Filter:
    return Filter(must=[FieldCondition(key="metadata.bucket", range=Range(lt=n))])


@pytest.fixture
def vectors() -> np.ndarray:
    rows = np.random.default_rng(5).standard_normal((N, DIM)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.fixture
def store(tmp_path: Path, vectors: np.ndarray, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(edge, "EXACT_SCAN_MAX", 100 * DIM)  # exact for filters keeping <= 100 points
    settings = make_settings(tmp_path / "home", tmp_path / "unused.pt", store="edge")
    identity = ModelIdentity("synthetic", "", "synthetic", "", DIM)
    schema = CollectionSchema.new(identity, fields={"bucket": "integer"})
    created = open_store(settings, "c", create=schema)
    created.upsert([Record(f"00000000-0000-0000-0000-{n:012d}", {"default": v},
                           {"uri": f"/p/{n}", "path": f"/p/{n}", "fingerprint": str(n),
                            "metadata": {"bucket": n % BUCKETS}})
                    for n, v in enumerate(vectors)])
    created.close()
    opened = open_store(settings, "c")
    opened._shard = ShardSpy(opened.shard)
    yield opened
    opened.close()


def test_a_filter_keeping_few_points_asks_for_an_exact_search_and_gets_the_exact_answer(
    store, vectors: np.ndarray
) -> None:
    query = vectors[7] + 0.5 * vectors[8]
    hits = store.search(query, 10, filter=bucket_below(2))  # 40 of 2,000 points
    assert store.shard.exact == [True]
    kept = np.flatnonzero(np.arange(N) % BUCKETS < 2)
    best = kept[np.argsort(-(vectors[kept] @ query), kind="stable")[:10]]
    assert [int(h.id.rsplit("-", 1)[1]) for h in hits] == [int(n) for n in best]


def test_a_wide_filter_and_no_filter_use_the_index(store, vectors: np.ndarray) -> None:
    store.search(vectors[3], 10, filter=bucket_below(50))  # 1,000 points: over the lowered limit
    store.search(vectors[3], 10)
    assert store.shard.exact == [False, False]
