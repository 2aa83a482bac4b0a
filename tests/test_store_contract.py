"""The VectorStore contract (indexer/stores/base.py): every store kind must pass every test here.

Search answers are held to exact brute force in numpy (the collections are small, so every backend
searches exactly), and filters to `indexer.stores.filters.matches`, the reference meaning of a store
filter: for every condition kind on every backend, filtered search equals brute force over the
subset `matches` keeps, and count(filter) equals the Python count. To add a store kind, add it to
STORE_KINDS (and, if it needs settings, to `settings_for`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from indexer.errors import (
    BadInput,
    ClipsearchError,
    CollectionBusy,
    CollectionNotFound,
    SchemaError,
    StoreError,
    VectorNotFound,
)
from indexer.schema import CollectionSchema, ModelIdentity, VectorSpec
from indexer.settings import Settings
from indexer.stores import VectorStore, drop_collection, list_collections, open_store
from indexer.stores.base import Record
from indexer.stores.filters import FieldCondition, Filter, MatchValue, matches

STORE_KINDS = ["edge", "qdrant", "faiss"]
DIM, LARGE_DIM, EXTRA_DIM = 8, 12, 6
REPO = Path(__file__).resolve().parents[1]
SMALL = ModelIdentity("tiny", "", "tiny", "", DIM)
LARGE = ModelIdentity("tiny-l", "", "tiny-l", "", LARGE_DIM)
EXTRA = ModelIdentity("tiny-x", "", "tiny-x", "", EXTRA_DIM)
FIELDS: dict[str, Any] = {"brand": "keyword", "stock": "integer", "new": "bool", "price": "float",
                          "when": "datetime", "where": "geo"}
SCHEMA = CollectionSchema.new(SMALL, fields=FIELDS).with_vector(VectorSpec("large", LARGE))
PLAIN = CollectionSchema.new(SMALL)


def settings_for(kind: str, root: Path) -> Settings:
    return Settings(home=root / "home", store=kind, qdrant={"path": root / "qdrant"})


class StoreFactory:
    """Opens stores of one kind in a temporary directory; closes whatever is left open."""

    def __init__(self, kind: str, root: Path) -> None:
        self.kind = kind
        self.settings = settings_for(kind, root)
        self._open: list[VectorStore] = []

    def __call__(self, collection: str = "photos", create: CollectionSchema | None = PLAIN) -> VectorStore:
        store = open_store(self.settings, collection, create=create)
        self._open.append(store)
        return store

    def reopen(self, store: VectorStore) -> VectorStore:
        store.close()
        return self(store.name, create=None)

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


def point_id(i: int) -> str:
    return str(uuid.UUID(int=i + 1))


def make_records(vectors: np.ndarray, tag: str = "v1") -> list[Record]:
    return [
        Record(
            id=point_id(i),
            vectors={"default": v},
            payload={"uri": f"/img/{i}.jpg", "path": f"{i}.jpg", "fingerprint": f"{tag}-{i}",
                     "metadata": {"width": i, "height": 2 * i}},
        )
        for i, v in enumerate(vectors)
    ]


def brute_force(vectors: np.ndarray, ids: list[str], query: np.ndarray, k: int) -> list[tuple[str, float]]:
    """The k best (id, score) by exact inner product on unit vectors, ties by the listed order."""
    if not ids:
        return []
    scores = vectors @ query
    order = np.argsort(-scores, kind="stable")[:k]
    return [(ids[i], float(scores[i])) for i in order]


def resolve(query_filter: dict[str, Any], schema: CollectionSchema) -> Filter:
    """The store filter for a query filter, as the engine makes it."""
    parsed = Filter.parse(query_filter)
    assert parsed is not None
    return parsed.resolve(schema)


def assert_same_hits(hits: list[Any], expected: list[tuple[str, float]], what: str = "") -> None:
    assert [h.id for h in hits] == [e[0] for e in expected], what
    np.testing.assert_allclose([h.score for h in hits], [e[1] for e in expected], atol=1e-5, err_msg=what)


# --- writing and reading records ---------------------------------------------------------------


def test_upsert_then_retrieve_round_trips_vectors_and_payloads(store_factory: StoreFactory) -> None:
    store = store_factory()
    records = make_records(unit_vectors(5))
    store.upsert(records)

    got = store.retrieve([r.id for r in records], with_vectors=True)

    assert [g.id for g in got] == [r.id for r in records]
    for g, r in zip(got, records, strict=True):
        assert g.payload == r.payload
        assert list(g.vectors) == ["default"] and g.vectors["default"].shape == (DIM,)
        np.testing.assert_allclose(g.vectors["default"], r.vectors["default"], atol=1e-5)
    assert all(g.vectors == {} for g in store.retrieve([r.id for r in records]))


def test_reupsert_of_same_id_replaces_it(store_factory: StoreFactory) -> None:
    store = store_factory()
    store.upsert(make_records(unit_vectors(10, seed=1), tag="old"))
    replacement = make_records(unit_vectors(10, seed=2), tag="new")[:3]

    store.upsert(replacement)

    assert store.count() == 10
    got = store.retrieve([r.id for r in replacement], with_vectors=True)
    assert [g.payload["fingerprint"] for g in got] == ["new-0", "new-1", "new-2"]
    for g, r in zip(got, replacement, strict=True):
        np.testing.assert_allclose(g.vectors["default"], r.vectors["default"], atol=1e-5)


def test_set_payloads_replaces_payloads_and_keeps_vectors(store_factory: StoreFactory) -> None:
    store = store_factory()
    records = make_records(unit_vectors(4))
    store.upsert(records)
    new_payload = {"uri": "/moved.jpg", "path": "moved.jpg", "fingerprint": "f", "metadata": {"width": 7}}

    store.set_payloads({records[1].id: new_payload, point_id(99): new_payload})

    got = store.retrieve([records[1].id, records[2].id], with_vectors=True)
    assert got[0].payload == new_payload and got[1].payload == records[2].payload
    np.testing.assert_allclose(got[0].vectors["default"], records[1].vectors["default"], atol=1e-5)
    assert store.count() == 4  # the unknown id was ignored, not created


def test_delete_removes_records_and_ignores_unknown_ids(store_factory: StoreFactory) -> None:
    store = store_factory()
    records = make_records(unit_vectors(10))
    store.upsert(records)

    store.delete([records[0].id, records[5].id, str(uuid.uuid4())])

    assert store.count() == 8
    assert store.retrieve([records[0].id, records[5].id]) == []
    assert records[0].id not in {h.id for h in store.search(records[0].vectors["default"], 10)}
    store.delete([])
    store.delete([records[0].id])  # already gone
    assert store.count() == 8


def test_retrieve_keeps_asked_order_and_skips_missing_ids(store_factory: StoreFactory) -> None:
    store = store_factory()
    records = make_records(unit_vectors(6))
    store.upsert(records)
    missing = str(uuid.uuid4())

    got = store.retrieve([records[4].id, missing, records[1].id.upper(), records[3].id])

    assert [g.id for g in got] == [records[4].id, records[1].id, records[3].id]
    assert store.retrieve([]) == []


def test_scan_yields_every_record_once(store_factory: StoreFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    store = store_factory()
    # A tiny page size makes the scan cross many pages, whatever the backend's default.
    monkeypatch.setattr(sys.modules[type(store).__module__], "SCROLL_PAGE", 7, raising=False)
    records = make_records(unit_vectors(50))
    store.upsert(records)

    scanned = list(store.scan())
    with_vectors = {r.id: r for r in store.scan(with_vectors=True)}

    assert sorted(r.id for r in scanned) == sorted(r.id for r in records)
    assert all(r.vectors == {} for r in scanned)
    by_id = {r.id: r for r in records}
    assert all(r.payload == by_id[r.id].payload for r in scanned)
    assert sorted(with_vectors) == sorted(by_id)
    for key, record in with_vectors.items():
        np.testing.assert_allclose(record.vectors["default"], by_id[key].vectors["default"], atol=1e-5)


def test_count_follows_writes(store_factory: StoreFactory) -> None:
    store = store_factory()
    assert store.count() == 0
    records = make_records(unit_vectors(20))
    store.upsert(records)
    assert store.count() == 20
    store.delete([r.id for r in records[:5]])
    assert store.count() == 15


def test_bad_records_are_refused_with_a_clear_error(store_factory: StoreFactory) -> None:
    store = store_factory()
    with pytest.raises(StoreError, match="dims"):
        store.upsert([Record(id=str(uuid.uuid4()), vectors={"default": np.ones(DIM + 1, dtype=np.float32)})])
    with pytest.raises(StoreError, match="UUID"):
        store.upsert([Record(id="not-a-uuid", vectors={"default": unit_vectors(1)[0]})])
    with pytest.raises((StoreError, VectorNotFound), match="nope"):
        store.upsert([Record(id=str(uuid.uuid4()), vectors={"nope": unit_vectors(1)[0]})])
    with pytest.raises(StoreError, match="dims"):
        store.search(np.ones(DIM - 1, dtype=np.float32), k=3)
    assert store.count() == 0


# --- search ------------------------------------------------------------------------------------


def test_search_returns_best_first_with_exact_self_match_near_one(store_factory: StoreFactory) -> None:
    store = store_factory()
    records = make_records(unit_vectors(100))
    store.upsert(records)

    hits = store.search(records[42].vectors["default"], k=10)

    assert len(hits) == 10
    assert hits[0].id == records[42].id
    assert hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert hits[0].payload == records[42].payload
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)
    assert len(store.search(records[0].vectors["default"], k=500)) == 100
    assert store.search(records[0].vectors["default"], k=0) == []


def test_search_agrees_exactly_with_brute_force(store_factory: StoreFactory) -> None:
    vectors = unit_vectors(300, seed=3)
    store = store_factory()
    store.upsert(make_records(vectors))
    ids = [point_id(i) for i in range(300)]

    for query in unit_vectors(10, seed=4):
        assert_same_hits(store.search(query, k=10), brute_force(vectors, ids, query, 10))


def test_search_on_an_empty_collection_finds_nothing(store_factory: StoreFactory) -> None:
    assert store_factory().search(unit_vectors(1)[0], k=5) == []


def test_offset_pages_never_repeat_and_concatenate_to_one_big_query(store_factory: StoreFactory) -> None:
    vectors = unit_vectors(120, seed=8)
    store = store_factory("paged", create=CollectionSchema.new(SMALL, fields={"width": "integer"}))
    store.upsert(make_records(vectors))
    query = unit_vectors(1, seed=9)[0]
    even = resolve({"must": [{"key": "width", "range": {"lt": 80}}]}, store.schema)

    for store_filter, total in ((None, 120), (even, 80)):
        whole = store.search(query, k=total + 10, filter=store_filter)
        assert len(whole) == total
        pages = [store.search(query, k=7, filter=store_filter, offset=start)
                 for start in range(0, total + 7, 7)]
        flat = [h.id for page in pages for h in page]
        assert len(flat) == len(set(flat)) == total
        assert flat == [h.id for h in whole]
        assert all(len(page) == 7 for page in pages[: total // 7])
    assert store.search(query, k=5, offset=500) == []


# --- filters: every condition kind on every backend equals brute force over `matches` --------------


BRANDS = ["acme", "bolt", "core", "dune"]
LISBON = (38.7223, -9.1393)
N_FILTERED = 240


def _value(rng: np.random.Generator, field: str) -> Any:
    if field == "brand":
        return BRANDS[int(rng.integers(len(BRANDS)))]
    if field == "stock":
        return int(rng.integers(0, 10))
    if field == "new":
        return bool(rng.integers(2))
    if field == "price":
        return round(float(rng.uniform(0, 100)), 2)
    if field == "when":
        moment = datetime(2024, 1, 1, tzinfo=timezone.utc) + timedelta(minutes=int(rng.integers(0, 525_600)))
        zone = timezone(timedelta(hours=int(rng.integers(-5, 6))))  # the same instant in several zones
        return moment.astimezone(zone).isoformat()
    lat, lon = LISBON
    return {"lat": round(lat + float(rng.uniform(-0.5, 0.5)), 5),
            "lon": round(lon + float(rng.uniform(-0.5, 0.5)), 5)}


def random_metadata(rng: np.random.Generator) -> dict[str, Any]:
    """Each field: missing, null, [], a value, or an array of 1-3 values."""
    metadata: dict[str, Any] = {}
    for field in FIELDS:
        draw = rng.uniform()
        if draw < 0.12:
            continue
        if draw < 0.19:
            metadata[field] = None
        elif draw < 0.26:
            metadata[field] = []
        elif draw < 0.45:
            metadata[field] = [_value(rng, field) for _ in range(int(rng.integers(1, 4)))]
        else:
            metadata[field] = _value(rng, field)
    return metadata


def filtered_data() -> tuple[list[dict[str, Any]], np.ndarray]:
    """Seeded payloads of the filter collection, and which points have the "large" vector."""
    rng = np.random.default_rng(11)
    has_large = rng.uniform(size=N_FILTERED) < 0.8
    payloads = [{"uri": f"/img/{i}.jpg", "path": f"{i}.jpg", "fingerprint": str(i),
                 "metadata": random_metadata(rng)} for i in range(N_FILTERED)]
    return payloads, has_large


def vector_names(has_large: bool) -> frozenset[str]:
    return frozenset({"default", "large"} if has_large else {"default"})


class Filtered:
    """One collection per backend with two named vectors (some points lack "large") and random payloads."""

    def __init__(self, kind: str, root: Path) -> None:
        self.ids = [point_id(i) for i in range(N_FILTERED)]
        self.small = unit_vectors(N_FILTERED, DIM, seed=12)
        self.large = unit_vectors(N_FILTERED, LARGE_DIM, seed=13)
        self.payloads, self.has_large = filtered_data()
        records = []
        for i in range(N_FILTERED):
            vectors = {"default": self.small[i]}
            if self.has_large[i]:
                vectors["large"] = self.large[i]
            records.append(Record(self.ids[i], vectors, self.payloads[i]))
        self.factory = StoreFactory(kind, root)
        store = self.factory("filtered", create=SCHEMA)
        store.upsert(records[:150])
        store.upsert(records[150:])
        self.store = self.factory.reopen(store)  # answers as read back from disk

    def kept(self, store_filter: Filter | None) -> list[int]:
        return [i for i in range(N_FILTERED)
                if matches(store_filter, self.ids[i], self.payloads[i], vector_names(self.has_large[i]))]


@pytest.fixture(scope="module", params=STORE_KINDS)
def filtered(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Filtered]:
    collection = Filtered(request.param, tmp_path_factory.mktemp(request.param))
    yield collection
    collection.factory.close_all()


def _some_ids() -> list[str]:
    return [point_id(i).upper() for i in (0, 3, 17, 42, 99, 150, 151, 239)] + [str(uuid.UUID(int=10_000))]


def _field(key: str, **condition: Any) -> dict[str, Any]:
    return {"key": key, **condition}


CENTER = {"lat": LISBON[0], "lon": LISBON[1]}
# Query filters (field names), resolved against the schema in the test, as the engine does.
CONDITIONS: dict[str, dict[str, Any]] = {
    "keyword value": {"must": [_field("brand", match={"value": "acme"})]},
    "keyword any": {"must": [_field("brand", match={"any": ["bolt", "dune"]})]},
    "keyword except": {"must": [_field("brand", match={"except": ["acme", "bolt"]})]},
    "integer value": {"must": [_field("stock", match={"value": 3})]},
    "integer value as text": {"must": [_field("stock", match={"value": "7"})]},
    "integer any": {"must": [_field("stock", match={"any": [0, 1, 9]})]},
    "integer except": {"must": [_field("stock", match={"except": [0, 1, 2, 3, 4]})]},
    "bool true": {"must": [_field("new", match={"value": True})]},
    "bool false as text": {"must": [_field("new", match={"value": "false"})]},
    "integer gt": {"must": [_field("stock", range={"gt": 6})]},
    "integer gte": {"must": [_field("stock", range={"gte": 6})]},
    "integer lt": {"must": [_field("stock", range={"lt": 2})]},
    "integer lte fractional": {"must": [_field("stock", range={"lte": 2.5})]},
    "integer between": {"must": [_field("stock", range={"gt": 2, "lte": 5})]},
    "float gt": {"must": [_field("price", range={"gt": 70.5})]},
    "float gte": {"must": [_field("price", range={"gte": 50})]},
    "float lt": {"must": [_field("price", range={"lt": 20.25})]},
    "float lte between": {"must": [_field("price", range={"gte": 10, "lte": 30})]},
    "datetime gt": {"must": [_field("when", range={"gt": "2024-10-01T00:00:00Z"})]},
    "datetime gte other zone": {"must": [_field("when", range={"gte": "2024-06-01T02:00:00+02:00"})]},
    "datetime lt date": {"must": [_field("when", range={"lt": "2024-03-15"})]},
    "datetime lte between": {"must": [_field("when", range={"gte": "2024-04-01",
                                                            "lte": "2024-08-01T12:30:00Z"})]},
    "geo radius": {"must": [_field("where", geo_radius={"center": CENTER, "radius": 25_000})]},
    "geo radius small": {"must": [_field("where", geo_radius={"center": {"lat": 38.9, "lon": -9.0},
                                                              "radius": 12_000})]},
    "is_empty keyword": {"must": [{"is_empty": {"key": "brand"}}]},
    "is_empty geo": {"must": [{"is_empty": {"key": "where"}}]},
    "not is_empty datetime": {"must_not": [{"is_empty": {"key": "when"}}]},
    "has_id": {"must": [{"has_id": _some_ids()}]},
    "not has_id": {"must_not": [{"has_id": _some_ids()}]},
    "has_vector": {"must": [{"has_vector": "large"}]},
    "not has_vector": {"must_not": [{"has_vector": "large"}]},
    "should": {"should": [_field("brand", match={"value": "acme"}), _field("stock", range={"lt": 2}),
                          {"is_empty": {"key": "price"}}]},
    "must_not": {"must_not": [_field("brand", match={"any": ["acme", "core"]}),
                              _field("new", match={"value": True})]},
    "must and should": {"must": [_field("price", range={"gte": 20})],
                        "should": [_field("new", match={"value": False}),
                                   _field("stock", match={"value": 5})]},
    "nested": {
        "must": [
            {"should": [_field("brand", match={"value": "bolt"}),
                        {"must": [_field("stock", range={"gte": 5}), _field("new", match={"value": True})]}]},
            {"must_not": [{"is_empty": {"key": "when"}}, _field("price", range={"gt": 90})]},
        ],
    },
    "nested must_not of should": {"must_not": [{"should": [_field("brand", match={"value": "acme"}),
                                                           {"is_empty": {"key": "stock"}}]}]},
    "matches nothing": {"must": [_field("brand", match={"value": "zzz"})]},
}


def test_the_filter_cases_keep_neither_everything_nor_nothing() -> None:
    """The random payloads exercise each condition: a case that kept all or none would test little."""
    payloads, has_large = filtered_data()
    shapes = {"missing": 0, "null": 0, "[]": 0, "array": 0, "value": 0}
    for payload in payloads:
        for field in FIELDS:
            value = payload["metadata"].get(field, KeyError)
            shape = ("missing" if value is KeyError else "null" if value is None else "[]" if value == []
                     else "array" if isinstance(value, list) else "value")
            shapes[shape] += 1
    assert min(shapes.values()) >= 80, shapes
    for name, query in CONDITIONS.items():
        store_filter = resolve(query, SCHEMA)
        kept = sum(matches(store_filter, point_id(i), payloads[i], vector_names(has_large[i]))
                   for i in range(N_FILTERED))
        if name == "matches nothing":
            assert kept == 0
        else:
            assert 5 <= kept <= N_FILTERED - 5, (name, kept)


@pytest.mark.parametrize("case", list(CONDITIONS))
def test_filtered_search_and_count_equal_brute_force_over_the_matching_points(
    filtered: Filtered, case: str
) -> None:
    store = filtered.store
    store_filter = resolve(CONDITIONS[case], store.schema)
    kept = filtered.kept(store_filter)
    ids = [filtered.ids[i] for i in kept]

    assert store.count(store_filter) == len(kept), case
    assert sorted(r.id for r in store.scan(store_filter)) == sorted(ids), case
    for query in unit_vectors(2, DIM, seed=20):
        assert_same_hits(store.search(query, k=10, filter=store_filter),
                         brute_force(filtered.small[kept], ids, query, 10), case)
    everything = store.search(unit_vectors(1, DIM, seed=21)[0], k=N_FILTERED + 5, filter=store_filter)
    assert sorted(h.id for h in everything) == sorted(ids), case
    with_large = [i for i in kept if filtered.has_large[i]]
    query = unit_vectors(1, LARGE_DIM, seed=22)[0]
    assert_same_hits(store.search(query, k=10, using="large", filter=store_filter),
                     brute_force(filtered.large[with_large], [filtered.ids[i] for i in with_large],
                                 query, 10),
                     f"{case} using large")


def test_filtered_hits_carry_their_payloads(filtered: Filtered) -> None:
    store_filter = resolve(CONDITIONS["keyword any"], filtered.store.schema)
    for hit in filtered.store.search(unit_vectors(1, seed=23)[0], k=20, filter=store_filter):
        assert hit.payload == filtered.payloads[filtered.ids.index(hit.id)]


def test_count_without_filter_and_with_an_empty_one(filtered: Filtered) -> None:
    assert filtered.store.count() == filtered.store.count(Filter()) == N_FILTERED


# --- named vectors and schema changes ---------------------------------------------------------------


def _two_vector_records(n: int, seed: int) -> tuple[list[Record], np.ndarray, np.ndarray]:
    small, large = unit_vectors(n, DIM, seed=seed), unit_vectors(n, LARGE_DIM, seed=seed + 1)
    records = [Record(point_id(i), {"default": small[i], "large": large[i]},
                      {"uri": f"/{i}.jpg", "path": f"{i}.jpg", "fingerprint": str(i),
                       "metadata": {"brand": "a"}})
               for i in range(n)]
    return records, small, large


def test_named_vectors_of_different_sizes_are_kept_and_searched_apart(store_factory: StoreFactory) -> None:
    store = store_factory(create=SCHEMA)
    records, small, large = _two_vector_records(40, seed=30)
    store.upsert(records)
    ids = [r.id for r in records]

    both = store.retrieve(ids[:3], with_vectors=True)
    assert all(sorted(r.vectors) == ["default", "large"] for r in both)
    np.testing.assert_allclose(both[1].vectors["large"], large[1], atol=1e-5)
    only = store.retrieve(ids[:3], with_vectors=["large"])
    assert all(list(r.vectors) == ["large"] for r in only)
    query_small, query_large = unit_vectors(1, DIM, seed=31)[0], unit_vectors(1, LARGE_DIM, seed=32)[0]
    assert_same_hits(store.search(query_small, k=5), brute_force(small, ids, query_small, 5))
    assert_same_hits(store.search(query_small, k=5, using="default"), brute_force(small, ids, query_small, 5))
    assert_same_hits(store.search(query_large, k=5, using="large"), brute_force(large, ids, query_large, 5))
    with pytest.raises(StoreError, match="dims"):
        store.search(query_small, k=5, using="large")
    with pytest.raises(VectorNotFound, match="'nope'"):
        store.search(query_small, k=5, using="nope")
    with pytest.raises(VectorNotFound):
        store.retrieve(ids[:1], with_vectors=["nope"])


def test_a_record_without_a_vector_lacks_it(store_factory: StoreFactory) -> None:
    store = store_factory(create=SCHEMA)
    records, _, large = _two_vector_records(6, seed=33)
    records[2] = Record(records[2].id, {"default": records[2].vectors["default"]}, records[2].payload)
    store.upsert(records)

    assert sorted(store.retrieve([records[2].id], with_vectors=True)[0].vectors) == ["default"]
    assert records[2].id not in {h.id for h in store.search(large[2], k=10, using="large")}
    assert store.count(Filter.parse({"must": [{"has_vector": "large"}]})) == 5


def test_update_vectors_sets_one_vector_and_keeps_the_rest(store_factory: StoreFactory) -> None:
    store = store_factory(create=SCHEMA)
    records, small, _ = _two_vector_records(10, seed=34)
    records[4] = Record(records[4].id, {"default": small[4]}, records[4].payload)  # no "large" yet
    store.upsert(records)
    fresh = unit_vectors(2, LARGE_DIM, seed=99)

    store.update_vectors("large", {records[3].id: fresh[0], records[4].id: fresh[1], point_id(500): fresh[0]})

    got = {r.id: r for r in store.retrieve([records[3].id, records[4].id], with_vectors=True)}
    np.testing.assert_allclose(got[records[3].id].vectors["large"], fresh[0], atol=1e-5)
    np.testing.assert_allclose(got[records[4].id].vectors["large"], fresh[1], atol=1e-5)
    np.testing.assert_allclose(got[records[4].id].vectors["default"], small[4], atol=1e-5)
    assert got[records[3].id].payload == records[3].payload
    assert store.count() == 10 and store.search(fresh[1], k=1, using="large")[0].id == records[4].id
    assert store.count(Filter.parse({"must": [{"has_vector": "large"}]})) == 10
    with pytest.raises(StoreError, match="dims"):
        store.update_vectors("default", {records[0].id: fresh[0]})
    with pytest.raises(VectorNotFound):
        store.update_vectors("nope", {records[0].id: small[0]})
    reopened = store_factory.reopen(store)
    np.testing.assert_allclose(reopened.retrieve([records[4].id], with_vectors=["large"])[0].vectors["large"],
                               fresh[1], atol=1e-5)


def test_set_schema_adds_a_vector_that_can_then_be_filled_and_searched(store_factory: StoreFactory) -> None:
    store = store_factory(create=SCHEMA)
    records, small, _ = _two_vector_records(20, seed=36)
    store.upsert(records)
    grown = store.schema.with_vector(VectorSpec("extra", EXTRA, state="building"))

    store.set_schema(grown)

    assert store.schema == grown
    assert store.search(unit_vectors(1, EXTRA_DIM)[0], k=5, using="extra") == []  # nothing embedded yet
    extra = unit_vectors(20, EXTRA_DIM, seed=37)
    store.update_vectors("extra", {r.id: extra[i] for i, r in enumerate(records)})
    ready = grown.with_vector_state("extra", "ready").with_active("extra")
    store.set_schema(ready)
    store = store_factory.reopen(store)
    assert store.schema == ready
    ids = [r.id for r in records]
    query = unit_vectors(1, EXTRA_DIM, seed=38)[0]
    assert_same_hits(store.search(query, k=5), brute_force(extra, ids, query, 5))  # active: extra
    assert_same_hits(store.search(small[0], k=3, using="default"), brute_force(small, ids, small[0], 3))
    assert sorted(store.retrieve(ids[:1], with_vectors=True)[0].vectors) == ["default", "extra", "large"]


def test_set_schema_drops_a_vector_and_its_data(store_factory: StoreFactory) -> None:
    store = store_factory(create=SCHEMA)
    records, small, _ = _two_vector_records(15, seed=39)
    store.upsert(records)
    smaller = store.schema.without_vector("large")

    store.set_schema(smaller)

    for reopen in (False, True):
        current = store_factory.reopen(store) if reopen else store
        assert current.schema == smaller
        assert list(current.retrieve([records[0].id], with_vectors=True)[0].vectors) == ["default"]
        with pytest.raises(VectorNotFound):
            current.search(unit_vectors(1, LARGE_DIM)[0], k=3, using="large")
        assert current.search(small[5], k=1)[0].id == records[5].id
        assert current.count() == 15


def test_a_declared_field_filters_points_written_before_the_declaration(store_factory: StoreFactory) -> None:
    store = store_factory(create=PLAIN)
    vectors = unit_vectors(30, seed=40)
    records = make_records(vectors)
    for i, record in enumerate(records):
        record.payload["metadata"]["colour"] = ["red", "green", "blue"][i % 3]
    store.upsert(records)
    query_filter = Filter(must=[FieldCondition(key="colour", match=MatchValue(value="green"))])
    with pytest.raises(ClipsearchError, match="'colour' is not declared"):
        query_filter.resolve(store.schema)

    store.set_schema(store.schema.with_fields({"colour": "keyword"}))

    green = [i for i in range(30) if i % 3 == 1]
    ids = [point_id(i) for i in green]
    for reopen in (False, True):
        current = store_factory.reopen(store) if reopen else store
        assert current.schema.fields == {"colour": "keyword"}
        store_filter = query_filter.resolve(current.schema)
        assert current.count(store_filter) == 10
        assert_same_hits(current.search(vectors[0], k=4, filter=store_filter),
                         brute_force(vectors[green], ids, vectors[0], 4))


# --- collection info and persistence -----------------------------------------------------------


def test_a_new_collection_stores_its_schema(store_factory: StoreFactory) -> None:
    store = store_factory(create=SCHEMA)
    assert store.schema == SCHEMA and store.name == "photos"
    reopened = store_factory.reopen(store)
    assert reopened.schema == SCHEMA
    reopened.close()
    # An existing collection opens as it is, whatever schema `create` offers.
    assert store_factory("photos", create=PLAIN).schema == SCHEMA


def test_info_round_trips_replaces_keeps_the_schema_and_survives_reopen(store_factory: StoreFactory) -> None:
    store = store_factory(create=SCHEMA)
    assert store.read_info() == {}
    store.write_info({"failed": {"/x": {"reason": "r"}}, "note": 1})
    info = {"failed": {}}

    store.write_info(info)  # replaces, never merges

    assert store.read_info() == info and store.schema == SCHEMA
    reopened = store_factory.reopen(store)
    assert reopened.read_info() == info and reopened.schema == SCHEMA


def test_data_survives_close_and_reopen(store_factory: StoreFactory) -> None:
    store = store_factory()
    records = make_records(unit_vectors(30))
    store.upsert(records)
    store.delete([records[0].id])
    store.flush()

    reopened = store_factory.reopen(store)

    assert reopened.schema == PLAIN
    assert reopened.count() == 29
    got = reopened.retrieve([records[7].id], with_vectors=True)[0]
    assert got.payload == records[7].payload
    np.testing.assert_allclose(got.vectors["default"], records[7].vectors["default"], atol=1e-5)
    assert reopened.search(records[7].vectors["default"], k=1)[0].id == records[7].id


_KILLED_WRITER = """
import json, os, signal, sys, uuid
import numpy as np
from indexer.schema import CollectionSchema, ModelIdentity
from indexer.settings import Settings
from indexer.stores import open_store
from indexer.stores.base import Record
schema = CollectionSchema.new(ModelIdentity("tiny", "", "tiny", "", 8), fields={"i": "integer"})
store = open_store(Settings(**json.loads(sys.argv[1])), "photos", create=schema)
ids = [str(uuid.UUID(int=i + 1)) for i in range(8)]
store.upsert([Record(i, {"default": v}, {"uri": str(n), "metadata": {"i": n}})
              for n, (i, v) in enumerate(zip(ids, np.eye(8)))])
store.delete([ids[0]])
store.write_info({"failed": {"x": {"reason": "y"}}})
store.flush()
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_flushed_writes_survive_sigkill(store_factory: StoreFactory) -> None:
    settings = store_factory.settings.model_dump(mode="json", include={"home", "store", "qdrant"})
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", _KILLED_WRITER, json.dumps(settings)], cwd=REPO, env=env)
    assert done.returncode == -signal.SIGKILL

    store = store_factory(create=None)

    assert store.schema.fields == {"i": "integer"} and store.schema.active_vector.dim == 8
    assert store.count() == 7
    assert store.read_info() == {"failed": {"x": {"reason": "y"}}}
    assert store.search(np.eye(8, dtype=np.float32)[3], k=1)[0].payload == {"uri": "3", "metadata": {"i": 3}}
    assert store.count(Filter.parse({"must": [{"key": "metadata.i", "range": {"gte": 5}}]})) == 3


# --- opening, listing and dropping collections ---------------------------------------------------


def test_opening_a_missing_collection_without_a_schema_raises_collection_not_found(
    store_factory: StoreFactory,
) -> None:
    with pytest.raises(CollectionNotFound, match=r"'nowhere'.*clipsearch index"):
        store_factory("nowhere", create=None)
    assert list_collections(store_factory.settings) == []


def test_invalid_collection_names_are_refused(store_factory: StoreFactory) -> None:
    for name in ["", "../escape", "a/b", " space"]:
        with pytest.raises(BadInput, match="invalid collection name"):
            store_factory(name)


def test_list_collections_lists_created_ones_only(store_factory: StoreFactory) -> None:
    settings = store_factory.settings
    assert list_collections(settings) == []
    store_factory("cats").close()
    store = store_factory("dogs")
    store.write_info({"failed": {}})  # info must not show up as a collection of its own

    assert sorted(list_collections(settings)) == ["cats", "dogs"]


def test_drop_collection_removes_it_and_its_data(store_factory: StoreFactory) -> None:
    settings = store_factory.settings
    store = store_factory("gone", create=SCHEMA)
    store.upsert(make_records(unit_vectors(5)))
    store.write_info({"failed": {}})
    store.close()
    store_factory("kept").close()

    drop_collection(settings, "gone")

    assert list_collections(settings) == ["kept"]
    with pytest.raises(CollectionNotFound):
        store_factory("gone", create=None)
    recreated = store_factory("gone")
    assert recreated.count() == 0 and recreated.read_info() == {} and recreated.schema == PLAIN
    recreated.close()
    drop_collection(settings, "gone")
    drop_collection(settings, "gone")  # dropping a missing collection is a no-op


# --- embedded stores: one process at a time ------------------------------------------------------


@pytest.mark.parametrize("kind", ["edge", "faiss"])
def test_an_embedded_collection_is_held_by_one_store_at_a_time(kind: str, tmp_path: Path) -> None:
    factory = StoreFactory(kind, tmp_path)
    factory("photos")
    try:
        # The same advice from both: how to write while it serves, and which store allows sharing.
        with pytest.raises(CollectionBusy, match=r"'photos' is .*serve --watch.*CLIPSEARCH_STORE=qdrant"):
            factory("photos")
        with pytest.raises(CollectionBusy, match="'photos' is .*open"):
            drop_collection(factory.settings, "photos")
    finally:
        factory.close_all()
    assert factory("photos", create=None).count() == 0
    factory.close_all()


# --- search features of the catalog issue (in detail: test_store_hybrid.py, test_store_facets.py) ---


def test_min_score_and_group_by_agree_with_brute_force(store_factory: StoreFactory) -> None:
    store = store_factory(create=CollectionSchema.new(SMALL, fields={"brand": "keyword"}))
    vectors = unit_vectors(40, seed=8)
    records = make_records(vectors)
    for n, record in enumerate(records):
        record.payload["metadata"]["brand"] = f"b{n % 7}"
    store.upsert(records)
    query = unit_vectors(1, seed=9)[0]
    ranked = brute_force(vectors, [r.id for r in records], query, 40)

    assert_same_hits(store.search(query, 40, min_score=0.1), [e for e in ranked if e[1] >= 0.1])
    firsts: dict[str, tuple[str, float]] = {}
    for point, score in ranked:
        firsts.setdefault(f"b{[r.id for r in records].index(point) % 7}", (point, score))
    grouped = store.search(query, 5, group_by="brand")
    assert [(h.group, h.id) for h in grouped] == [(g, p) for g, (p, _) in list(firsts.items())[:5]]
    assert all(h.group is None for h in store.search(query, 3))


def test_keyword_search_needs_declared_text_fields(store_factory: StoreFactory) -> None:
    store = store_factory()
    store.upsert(make_records(unit_vectors(3)))
    for mode in ("keyword", "hybrid"):
        with pytest.raises(SchemaError):
            store.search(unit_vectors(1)[0], 3, mode=mode, text="anything")
