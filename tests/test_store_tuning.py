"""The edge store's large-collection tuning (int8 quantization, originals on disk, rescoring, HNSW ef)
keeps search exact where it must be and recall high where it is approximate."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest

from indexer.schema import CollectionSchema, ModelIdentity
from indexer.settings import Settings
from indexer.stores import Record, open_store
from indexer.stores.filters import Filter

DIM = 128
SCHEMA = CollectionSchema.new(
    ModelIdentity(model="tiny", pretrained="", architecture="tiny", weights="", dim=DIM),
    fields={"group": "integer"},
)


def clustered(n: int, seed: int, clusters: int = 40) -> np.ndarray:
    """Unit vectors around a few dozen centres, as image embeddings are; queries come from the same mix."""
    rng = np.random.default_rng(0)  # the same centres for every call
    centres = rng.standard_normal((clusters, DIM))
    points = np.random.default_rng(seed)
    labels = points.integers(0, clusters, n)
    vectors = centres[labels] + 0.7 * points.standard_normal((n, DIM))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def _id(i: int) -> str:
    return str(uuid.UUID(int=i + 1))


@pytest.fixture
def quantized_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from indexer.stores import edge

    # A small indexing threshold, so a few thousand vectors take the large-collection path.
    monkeypatch.setattr(edge, "INDEXING_THRESHOLD_KB", 64)
    settings = Settings(home=tmp_path / "home", store="edge")
    assert settings.quantization == "int8"  # the default under test
    vectors = clustered(4000, seed=1)
    store = open_store(settings, "photos", create=SCHEMA)
    store.upsert([
        Record(_id(i), {"default": v}, {"uri": f"/img/{i}.jpg", "metadata": {"group": i % 10}})
        for i, v in enumerate(vectors)
    ])
    store.close()  # after writes: builds HNSW and the int8 copies
    store = open_store(settings, "photos")
    yield store, vectors, edge.shard_path(settings, "photos")
    store.close()


def test_quantized_collection_is_indexed_with_int8_copies(quantized_store) -> None:
    store, vectors, shard = quantized_store
    config = json.loads((shard / "edge_config.json").read_text())
    assert config["quantization_config"]["scalar"]["type"] == "int8"
    assert config["vectors"]["default"]["memory"] == "cold"  # float32 originals on disk
    built = list(shard.glob("segments/*/vector_storage-default/quantized.data"))
    assert built, "no quantized vectors were built"
    assert store.shard.info().indexed_vectors_count == len(vectors)


def test_quantized_search_finds_the_exact_self_match_first_with_exact_scores(quantized_store) -> None:
    store, vectors, _ = quantized_store
    for i in range(0, len(vectors), 97):
        hits = store.search(vectors[i], k=10)
        assert hits[0].id == _id(i)
        # Rescored with the float32 originals: scores are exact, not int8 approximations.
        assert hits[0].score == pytest.approx(1.0, abs=1e-5)
        expected = [float(vectors[int(uuid.UUID(h.id).int) - 1] @ vectors[i]) for h in hits]
        np.testing.assert_allclose([h.score for h in hits], expected, atol=1e-5)


def test_quantized_search_has_high_recall_against_brute_force(quantized_store) -> None:
    store, vectors, _ = quantized_store
    queries = clustered(100, seed=2)  # held out: not in the collection
    recall = []
    for query in queries:
        exact = {_id(int(i)) for i in np.argsort(-(vectors @ query))[:10]}
        recall.append(len(exact & {h.id for h in store.search(query, k=10)}) / 10)
    assert np.mean(recall) >= 0.98


def test_filtered_search_on_the_index_keeps_recall_and_counts_exactly(quantized_store) -> None:
    """Filters are pushed down into the HNSW search (payload index on the declared field)."""
    store, vectors, _ = quantized_store
    assert "metadata.group" in store.shard.info().payload_schema
    in_group = Filter.parse({"must": [{"key": "group", "match": {"value": 3}}]}).resolve(store.schema)
    assert store.count(in_group) == len(vectors) // 10
    members = np.arange(3, len(vectors), 10)
    recall = []
    for query in clustered(50, seed=3):
        hits = store.search(query, k=10, filter=in_group)
        assert all(int(uuid.UUID(h.id).int - 1) % 10 == 3 for h in hits)
        exact = {_id(int(i)) for i in members[np.argsort(-(vectors[members] @ query))[:10]]}
        recall.append(len(exact & {h.id for h in hits}) / 10)
    assert np.mean(recall) >= 0.95


def test_quantization_none_creates_a_full_precision_collection(tmp_path: Path) -> None:
    from indexer.stores import edge

    settings = Settings(home=tmp_path / "home", store="edge", quantization="none")
    open_store(settings, "photos", create=SCHEMA).close()
    config = json.loads((edge.shard_path(settings, "photos") / "edge_config.json").read_text())
    assert config.get("quantization_config") is None


def test_a_search_spreads_over_half_the_usable_cpus_as_counted_at_each_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from indexer.stores import edge

    settings = Settings(home=tmp_path / "home", store="edge")
    config_file = edge.shard_path(settings, "photos") / "edge_config.json"
    monkeypatch.setattr(edge, "usable_cpus", lambda: 16)
    open_store(settings, "photos", create=SCHEMA).close()
    assert json.loads(config_file.read_text())["max_search_threads"] == 8
    monkeypatch.setattr(edge, "usable_cpus", lambda: 3)  # the collection moved to a smaller machine
    store = open_store(settings, "photos")
    try:
        assert json.loads(config_file.read_text())["max_search_threads"] == 1
        store.upsert([Record(_id(i), {"default": v}, {"uri": f"/img/{i}.jpg", "metadata": {"group": i % 10}})
                      for i, v in enumerate(clustered(50, 1))])
        assert len(store.search(clustered(1, 2)[0], 5)) == 5
    finally:
        store.close()


def test_a_store_opened_in_the_background_answers_as_one_opened_at_once(quantized_store) -> None:
    store, vectors, shard = quantized_store
    settings = store._settings
    queries = clustered(5, seed=4)
    expected = [[(h.id, h.score) for h in store.search(q, k=10)] for q in queries]
    schema = store.schema
    store.close()
    background = open_store(settings, "photos", background=True)
    try:
        assert background.schema == schema
        assert [[(h.id, h.score) for h in background.search(q, k=10)] for q in queries] == expected
    finally:
        background.close()


def test_a_busy_collection_opened_in_the_background_fails_at_first_use(quantized_store) -> None:
    from indexer.errors import CollectionBusy

    store, _, _ = quantized_store  # holds the shard
    background = open_store(store._settings, "photos", background=True)
    with pytest.raises(CollectionBusy):
        background.count()
    with pytest.raises(CollectionBusy):  # every call, not only the first
        background.search(clustered(1, seed=5)[0], k=1)
    background.close()  # nothing was opened: nothing to release, and no error
    assert store.count() == 4000  # the holder is untouched


def test_opening_reads_ahead_the_index_files_and_leaves_payloads_and_originals_cold(
    quantized_store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from indexer.stores import edge

    store, _, shard = quantized_store
    store.close()
    read: list[Path] = []
    monkeypatch.setattr(edge, "_read_range", lambda file, start, length: read.append(file))
    edge._warm_page_cache(shard)
    names = {(file.parent.name, file.name) for file in read}
    assert ("vector_storage-default", "quantized.data") in names  # the int8 vectors searches walk
    assert any(parent.startswith("vector_index") for parent, _ in names)  # the HNSW graph
    assert ("vector_storage-default", "matrix.dat") not in names  # originals: read a few at a time
    assert not any("payload_storage" in file.parts for file in read)
