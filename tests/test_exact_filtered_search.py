"""Filtered search on the Qdrant stores: a filter that keeps few points is searched exactly.

HNSW with a filter that keeps few of many points loses recall (1M points, 1% kept: recall@10 0.977 at
hnsw_ef 256 on edge; docs/benchmarks.md), and Qdrant's own planner goes exact only under a per-segment
size. So the edge and server stores ask for an exact search whenever the points a filter keeps (the
engine's payload-index estimate) times the vector's dimensions are at most `EXACT_SCAN_MAX`; a wider
filter, and a search without one, use the index. A spy between the store and its real engine (edge's
shard; for the server store, qdrant-client's local mode taken for a server) records what each search
asks; the limit is lowered so that a small collection shows both sides of it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from indexer.schema import CollectionSchema, ModelIdentity
from indexer.stores import Record, open_store, qdrant_common
from indexer.stores.filters import FieldCondition, Filter, Range
from tests.helpers import make_settings

N, DIM, BUCKETS = 2_000, 16, 100


class ShardSpy:
    """Edge's real shard, with the `exact` flag of every query's search parameters written down."""

    def __init__(self, shard: Any) -> None:
        self._shard = shard
        self.exact: list[bool] = []

    def query(self, request: Any) -> Any:
        self.exact.append(bool(request.params.exact))
        return self._shard.query(request)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._shard, name)


class ClientSpy:
    """The real qdrant-client (local mode), with the `exact` flag of every query written down."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.exact: list[bool] = []

    def query_points(self, *args: Any, search_params: Any = None, **kwargs: Any) -> Any:
        self.exact.append(bool(search_params.exact))
        return self._client.query_points(*args, **kwargs)  # local mode is exact and takes no params

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def bucket_below(n: int) -> Filter:
    return Filter(must=[FieldCondition(key="metadata.bucket", range=Range(lt=n))])


@pytest.fixture
def vectors() -> np.ndarray:
    rows = np.random.default_rng(5).standard_normal((N, DIM)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.fixture(params=["edge", "qdrant"])
def store(request: pytest.FixtureRequest, tmp_path: Path, vectors: np.ndarray,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A store of N points with an indexed `bucket`, its engine spied on (`store.spy`)."""
    monkeypatch.setattr(qdrant_common, "EXACT_SCAN_MAX", 100 * DIM)  # exact for filters keeping <= 100 points
    settings = make_settings(tmp_path / "home", tmp_path / "unused.pt", store=request.param,
                             qdrant={"path": tmp_path / "qdrant"})
    identity = ModelIdentity("synthetic", "", "synthetic", "", DIM)
    schema = CollectionSchema.new(identity, fields={"bucket": "integer"})
    created = open_store(settings, "c", create=schema)
    created.upsert([Record(f"00000000-0000-0000-0000-{n:012d}", {"default": v},
                           {"uri": f"/p/{n}", "path": f"/p/{n}", "fingerprint": str(n),
                            "metadata": {"bucket": n % BUCKETS}})
                    for n, v in enumerate(vectors)])
    created.close()
    opened = open_store(settings, "c")
    if request.param == "edge":
        opened._shard = opened.spy = ShardSpy(opened.shard)
        yield opened
    else:
        real = opened.client
        opened._local = False  # as against a server: search parameters are sent
        opened._client = opened.spy = ClientSpy(real)
        yield opened
        opened._client = real  # the shared client is released by identity
    opened.close()


def test_a_filter_keeping_few_points_asks_for_an_exact_search_and_gets_the_exact_answer(
    store, vectors: np.ndarray
) -> None:
    query = vectors[7] + 0.5 * vectors[8]
    hits = store.search(query, 10, filter=bucket_below(2))  # 40 of 2,000 points
    assert store.spy.exact == [True]
    kept = np.flatnonzero(np.arange(N) % BUCKETS < 2)
    best = kept[np.argsort(-(vectors[kept] @ query), kind="stable")[:10]]
    assert [int(h.id.rsplit("-", 1)[1]) for h in hits] == [int(n) for n in best]


def test_a_wide_filter_and_no_filter_use_the_index(store, vectors: np.ndarray) -> None:
    store.search(vectors[3], 10, filter=bucket_below(50))  # 1,000 points: over the lowered limit
    store.search(vectors[3], 10)
    assert store.spy.exact == [False, False]
