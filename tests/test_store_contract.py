"""The VectorStore contract: every store kind must pass every test here.

To add a store kind, add it to STORE_KINDS (and, if it needs settings, to `_settings_for`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from indexer.settings import Settings
from indexer.stores import (
    CollectionNotFound,
    Record,
    StoreError,
    VectorStore,
    drop_collection,
    list_collections,
    open_store,
)

STORE_KINDS = ["edge", "qdrant", "faiss"]
DIM = 32
REPO = Path(__file__).resolve().parents[1]


def _settings_for(kind: str, root: Path) -> Settings:
    extra: dict[str, Any] = {"qdrant_path": root / "qdrant"} if kind == "qdrant" else {}
    return Settings(home=root / "home", store=kind, **extra)


class StoreFactory:
    """Opens stores of one kind in a temporary directory; closes whatever is left open."""

    def __init__(self, kind: str, root: Path) -> None:
        self.kind = kind
        self.settings = _settings_for(kind, root)
        self._open: list[VectorStore] = []

    def __call__(self, collection: str = "photos", dim: int | None = DIM) -> VectorStore:
        store = open_store(self.settings, collection, dim)
        self._open.append(store)
        return store

    def reopen(self, store: VectorStore, dim: int | None = None) -> VectorStore:
        store.close()
        return self(store.name, dim)

    def close_all(self) -> None:
        for store in self._open:
            store.close()


@pytest.fixture(params=STORE_KINDS)
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    factory = StoreFactory(request.param, tmp_path)
    yield factory
    factory.close_all()


def unit_vectors(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def make_records(vectors: np.ndarray, tag: str = "v1") -> list[Record]:
    return [
        Record(
            id=str(uuid.UUID(int=i + 1)),
            vector=v,
            payload={"uri": f"/img/{i}.jpg", "fingerprint": f"{tag}-{i}", "metadata": {"i": i, "tag": "a"}},
        )
        for i, v in enumerate(vectors)
    ]


def brute_force_top_k(vectors: np.ndarray, query: np.ndarray, k: int) -> list[int]:
    return list(np.argsort(-(vectors @ query), kind="stable")[:k])


# --- writing and reading records ---------------------------------------------------------


def test_upsert_then_retrieve_round_trips_vectors_and_payloads(store_factory: StoreFactory) -> None:
    store = store_factory()
    records = make_records(unit_vectors(5))
    store.upsert(records)

    got = store.retrieve([r.id for r in records], with_vectors=True)

    assert [g.id for g in got] == [r.id for r in records]
    for g, r in zip(got, records, strict=True):
        assert g.payload == r.payload
        assert g.vector is not None and g.vector.shape == (DIM,)
        np.testing.assert_allclose(g.vector, r.vector, atol=1e-5)
    assert all(g.vector is None for g in store.retrieve([r.id for r in records]))


def test_reupsert_of_same_id_replaces_it(store_factory: StoreFactory) -> None:
    store = store_factory()
    store.upsert(make_records(unit_vectors(10, seed=1), tag="old"))
    replacement = make_records(unit_vectors(10, seed=2), tag="new")[:3]

    store.upsert(replacement)

    assert store.count() == 10
    got = store.retrieve([r.id for r in replacement], with_vectors=True)
    assert [g.payload["fingerprint"] for g in got] == ["new-0", "new-1", "new-2"]
    for g, r in zip(got, replacement, strict=True):
        np.testing.assert_allclose(g.vector, r.vector, atol=1e-5)


def test_delete_removes_records_and_ignores_unknown_ids(store_factory: StoreFactory) -> None:
    store = store_factory()
    records = make_records(unit_vectors(10))
    store.upsert(records)

    store.delete([records[0].id, records[5].id, str(uuid.uuid4())])

    assert store.count() == 8
    assert store.retrieve([records[0].id, records[5].id]) == []
    assert records[0].id not in {h.id for h in store.search(records[0].vector, 10)}
    store.delete([])
    store.delete([records[0].id])  # already gone
    assert store.count() == 8


def test_retrieve_keeps_asked_order_and_skips_missing_ids(store_factory: StoreFactory) -> None:
    store = store_factory()
    records = make_records(unit_vectors(6))
    store.upsert(records)
    missing = str(uuid.uuid4())

    got = store.retrieve([records[4].id, missing, records[1].id, records[3].id])

    assert [g.id for g in got] == [records[4].id, records[1].id, records[3].id]
    assert store.retrieve([]) == []


def test_scan_yields_every_record_once_with_payload_only(
    store_factory: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = store_factory()
    # A tiny page size makes the scan cross many pages, whatever the backend's default.
    monkeypatch.setattr(sys.modules[type(store).__module__], "SCROLL_PAGE", 7, raising=False)
    records = make_records(unit_vectors(50))
    store.upsert(records)

    scanned = list(store.scan())

    assert sorted(r.id for r in scanned) == sorted(r.id for r in records)
    assert all(r.vector is None for r in scanned)
    by_id = {r.id: r.payload for r in records}
    assert all(r.payload == by_id[r.id] for r in scanned)


def test_count_follows_writes(store_factory: StoreFactory) -> None:
    store = store_factory()
    assert store.count() == 0
    records = make_records(unit_vectors(20))
    store.upsert(records)
    assert store.count() == 20
    store.delete([r.id for r in records[:5]])
    assert store.count() == 15


def test_bad_records_are_refused_with_store_error(store_factory: StoreFactory) -> None:
    store = store_factory()
    with pytest.raises(StoreError, match="dims"):
        store.upsert([Record(id=str(uuid.uuid4()), vector=np.ones(DIM + 1, dtype=np.float32))])
    with pytest.raises(StoreError, match="no vector"):
        store.upsert([Record(id=str(uuid.uuid4()), vector=None)])
    with pytest.raises(StoreError, match="UUID"):
        store.upsert([Record(id="not-a-uuid", vector=unit_vectors(1)[0])])
    assert store.count() == 0


# --- search ------------------------------------------------------------------------------


def test_search_returns_best_first_with_exact_self_match_near_one(store_factory: StoreFactory) -> None:
    store = store_factory()
    records = make_records(unit_vectors(100))
    store.upsert(records)

    hits = store.search(records[42].vector, k=10)

    assert len(hits) == 10
    assert hits[0].id == records[42].id
    assert hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert hits[0].payload == records[42].payload
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)
    assert len(store.search(records[0].vector, k=500)) == 100


def test_search_agrees_exactly_with_brute_force_on_a_small_collection(store_factory: StoreFactory) -> None:
    vectors = unit_vectors(500, seed=3)
    store = store_factory()
    store.upsert(make_records(vectors))
    queries = unit_vectors(20, seed=4)

    for query in queries:
        hits = store.search(query, k=10)
        expected = brute_force_top_k(vectors, query, 10)
        assert {h.id for h in hits} == {str(uuid.UUID(int=i + 1)) for i in expected}
        np.testing.assert_allclose([h.score for h in hits], vectors[expected] @ query, atol=1e-4)


def test_search_on_an_empty_collection_finds_nothing(store_factory: StoreFactory) -> None:
    assert store_factory().search(unit_vectors(1)[0], k=5) == []


# --- collection info and persistence -----------------------------------------------------


def test_info_round_trips_replaces_and_survives_reopen(store_factory: StoreFactory) -> None:
    store = store_factory()
    assert store.read_info() == {}
    store.write_info({"model": {"name": "ViT-B-32", "dim": DIM}, "failed": [{"uri": "/x", "reason": "r"}]})
    info = {"model": {"name": "ViT-B-32", "dim": DIM}, "failed": []}

    store.write_info(info)  # replaces, never merges

    assert store.read_info() == info
    assert store_factory.reopen(store).read_info() == info


def test_data_survives_close_and_reopen(store_factory: StoreFactory) -> None:
    store = store_factory()
    records = make_records(unit_vectors(30))
    store.upsert(records)
    store.delete([records[0].id])
    store.flush()

    reopened = store_factory.reopen(store)

    assert reopened.dim == DIM
    assert reopened.count() == 29
    got = reopened.retrieve([records[7].id], with_vectors=True)[0]
    assert got.payload == records[7].payload
    np.testing.assert_allclose(got.vector, records[7].vector, atol=1e-5)
    assert reopened.search(records[7].vector, k=1)[0].id == records[7].id


_KILLED_WRITER = """
import json, os, signal, sys, uuid
import numpy as np
from indexer.settings import Settings
from indexer.stores import Record, open_store
store = open_store(Settings(**json.loads(sys.argv[1])), "photos", 8)
ids = [str(uuid.UUID(int=i + 1)) for i in range(8)]
store.upsert([Record(id=i, vector=v, payload={"i": n}) for n, (i, v) in enumerate(zip(ids, np.eye(8)))])
store.delete([str(uuid.UUID(int=1))])
store.write_info({"model": "m"})
store.flush()
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_flushed_writes_survive_sigkill(store_factory: StoreFactory) -> None:
    settings = store_factory.settings.model_dump(mode="json", include={"home", "store", "qdrant_path"})
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", _KILLED_WRITER, json.dumps(settings)], cwd=REPO, env=env)
    assert done.returncode == -signal.SIGKILL

    store = store_factory(dim=None)

    assert store.dim == 8
    assert store.count() == 7
    assert store.read_info() == {"model": "m"}
    assert store.search(np.eye(8, dtype=np.float32)[3], k=1)[0].payload == {"i": 3}


# --- opening, listing and dropping collections -------------------------------------------


def test_opening_a_missing_collection_without_dim_raises_collection_not_found(
    store_factory: StoreFactory,
) -> None:
    with pytest.raises(CollectionNotFound, match=r"'nowhere'.*clipsearch index"):
        store_factory("nowhere", dim=None)
    assert list_collections(store_factory.settings) == []


def test_reopening_with_another_dim_raises_store_error(store_factory: StoreFactory) -> None:
    store_factory("photos", dim=DIM).close()
    with pytest.raises(StoreError, match=str(DIM)):
        store_factory("photos", dim=DIM * 2)
    assert store_factory("photos", dim=DIM).dim == DIM


def test_invalid_collection_names_are_refused(store_factory: StoreFactory) -> None:
    for name in ["", "../escape", "a/b", " space"]:
        with pytest.raises(StoreError, match="invalid collection name"):
            store_factory(name)


def test_list_collections_lists_created_ones_only(store_factory: StoreFactory) -> None:
    settings = store_factory.settings
    assert list_collections(settings) == []
    store_factory("cats").close()
    store = store_factory("dogs")
    store.write_info({"model": "m"})  # info must not show up as a collection of its own

    assert sorted(list_collections(settings)) == ["cats", "dogs"]


def test_drop_collection_removes_it_and_its_data(store_factory: StoreFactory) -> None:
    settings = store_factory.settings
    store = store_factory("gone")
    store.upsert(make_records(unit_vectors(5)))
    store.write_info({"model": "m"})
    store.close()
    store_factory("kept").close()

    drop_collection(settings, "gone")

    assert list_collections(settings) == ["kept"]
    with pytest.raises(CollectionNotFound):
        store_factory("gone", dim=None)
    recreated = store_factory("gone")
    assert recreated.count() == 0 and recreated.read_info() == {}
    recreated.close()
    drop_collection(settings, "gone")
    drop_collection(settings, "gone")  # dropping a missing collection is a no-op


# --- edge specifics ----------------------------------------------------------------------


def _edge_factory(tmp_path: Path) -> StoreFactory:
    return StoreFactory("edge", tmp_path)


def test_edge_collection_is_locked_while_open(tmp_path: Path) -> None:
    factory = _edge_factory(tmp_path)
    factory("photos")
    try:
        with pytest.raises(StoreError, match="already open elsewhere"):
            factory("photos")
        with pytest.raises(StoreError, match="already open elsewhere"):
            drop_collection(factory.settings, "photos")
    finally:
        factory.close_all()
    assert factory("photos", dim=None).count() == 0
    factory.close_all()


def test_edge_large_collection_gets_hnsw_with_high_recall(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from indexer.stores import edge

    # Lower the indexing threshold so a small collection takes the large-collection path.
    monkeypatch.setattr(edge, "INDEXING_THRESHOLD_KB", 64)
    factory = _edge_factory(tmp_path)
    vectors = unit_vectors(3000, seed=5)
    store = factory()
    store.upsert(make_records(vectors))
    store = factory.reopen(store)  # close() after writes builds the index
    assert store.shard.info().indexed_vectors_count > 0  # type: ignore[attr-defined]

    # Random queries, far from any stored point, are the hard case for HNSW: a low ef gets ~0.75 here.
    recall = []
    for query in unit_vectors(50, seed=6):
        expected = {str(uuid.UUID(int=i + 1)) for i in brute_force_top_k(vectors, query, 10)}
        recall.append(len(expected & {h.id for h in store.search(query, k=10)}) / 10)
    assert np.mean(recall) >= 0.98
    factory.close_all()
