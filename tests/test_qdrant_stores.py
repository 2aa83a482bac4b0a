"""What is specific to the two Qdrant backends (embedded Qdrant Edge, and qdrant-client's local
mode standing in for a server): native filter push-down agreeing with the reference meaning
(`indexer.stores.filters.matches`), named vectors in the engine, schema changes reaching the engine,
stable offset paging over tied scores, and opening collections written by the previous release.
The cross-backend contract lives in test_store_contract.py."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import qdrant_edge as qe

from indexer.durable import RESERVE_FILE
from indexer.errors import CollectionBusy, SchemaError
from indexer.schema import CollectionSchema, ModelIdentity, VectorSpec
from indexer.settings import Settings
from indexer.stores import edge, open_store
from indexer.stores import qdrant as server
from indexer.stores.base import Record
from indexer.stores.filters import Filter, format_datetime, matches
from indexer.stores.qdrant_common import ranked_page

KINDS = ["edge", "qdrant"]
FIELDS = {
    "brand": "keyword", "count": "integer", "price": "float", "sale": "bool",
    "taken": "datetime", "where": "geo", "tags": "keyword", "title": "text",
}


def identity(dim: int, name: str = "tiny") -> ModelIdentity:
    return ModelIdentity(model=name, pretrained="", architecture=name, weights="", dim=dim)


SCHEMA = CollectionSchema(
    vectors={"clip": VectorSpec("clip", identity(8)), "small": VectorSpec("small", identity(5, "small"))},
    active="clip",
    fields=dict(FIELDS),
)


def settings_for(kind: str, root: Path, **extra: Any) -> Settings:
    return Settings(home=root / "home", store=kind, qdrant={"path": root / "qdrant"}, **extra)


def unit(n: int, dim: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def pid(i: int) -> str:
    return str(uuid.UUID(int=i + 1))


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def opened() -> Iterator[list[Any]]:
    """Stores a test opens, closed after it."""
    stores: list[Any] = []
    yield stores
    for store in stores:
        store.close()


def new_store(kind: str, root: Path, opened: list[Any], **extra: Any) -> Any:
    store = open_store(settings_for(kind, root, **extra), "photos", create=SCHEMA)
    opened.append(store)
    return store


def reopen(store: Any, kind: str, root: Path, opened: list[Any]) -> Any:
    store.close()
    again = open_store(settings_for(kind, root), store.name)
    opened.append(again)
    return again


# --- random payloads: every type, arrays, and missing / null / [] ---------------------------------


def random_payload(rng: np.random.Generator, i: int) -> dict[str, Any]:
    start = datetime(2020, 1, 1, tzinfo=timezone.utc)
    makers = {
        "brand": lambda: str(rng.choice(["acme", "zen", "opt", "qq"])),
        "count": lambda: int(rng.integers(0, 10)),
        "price": lambda: round(float(rng.uniform(0, 100)), 2),
        "sale": lambda: bool(rng.integers(0, 2)),
        "taken": lambda: format_datetime(start + timedelta(hours=int(rng.integers(0, 5 * 365 * 24)))),
        # Rounded as GPS coordinates are: Qdrant Edge may change the last bit of a full-precision one.
        "where": lambda: {"lat": round(rng.uniform(38, 39), 6), "lon": round(rng.uniform(-10, -9), 6)},
        "tags": lambda: str(rng.choice(["red", "blue", "green", "gold"])),
        # Whole-value matches on a text-indexed field: "red" is not "red shoe".
        "title": lambda: str(rng.choice(["red shoe", "red", "blue shoe", "shoe red"])),
    }
    metadata: dict[str, Any] = {}
    for field, make in makers.items():
        shape = rng.integers(0, 10)
        if shape == 0:
            continue  # missing
        if shape == 1:
            metadata[field] = None
        elif shape == 2:
            metadata[field] = []
        elif shape <= 4 or field == "tags":
            metadata[field] = [make() for _ in range(int(rng.integers(1, 4)))]
        else:
            metadata[field] = make()
    return {"uri": f"/img/{i}.jpg", "path": f"{i}.jpg", "fingerprint": str(i), "metadata": metadata}


QUERY_FILTERS: list[dict[str, Any]] = [
    {"must": [{"key": "brand", "match": {"value": "acme"}}]},
    {"must": [{"key": "brand", "match": {"any": ["zen", "qq"]}}]},
    {"must": [{"key": "brand", "match": {"except": ["acme", "zen"]}}]},
    {"must": [{"key": "tags", "match": {"any": ["gold"]}}]},
    {"must": [{"key": "tags", "match": {"except": ["red"]}}]},
    {"must": [{"key": "title", "match": {"value": "red"}}]},
    {"must": [{"key": "title", "match": {"any": ["red", "blue shoe"]}}]},
    {"must": [{"key": "count", "match": {"value": 3}}]},
    {"must": [{"key": "count", "match": {"any": [1, 2, 7]}}]},
    {"must": [{"key": "count", "match": {"except": [0, 1, 2, 3, 4]}}]},
    {"must": [{"key": "count", "range": {"gte": 2, "lt": 6}}]},
    {"must": [{"key": "price", "range": {"gt": 20.5, "lte": 70}}]},
    {"must": [{"key": "price", "range": {"lt": 10}}]},
    {"must": [{"key": "sale", "match": {"value": True}}]},
    {"must": [{"key": "sale", "match": {"value": False}}]},
    {"must": [{"key": "taken", "range": {"gte": "2022-01-01", "lt": "2023-06-30T12:00:00+02:00"}}]},
    {"must": [{"key": "where", "geo_radius": {"center": {"lat": 38.5, "lon": -9.5}, "radius": 30000}}]},
    *[{"must": [{"is_empty": {"key": field}}]} for field in FIELDS],
    *[{"must_not": [{"is_empty": {"key": field}}]} for field in FIELDS],
    {"must": [{"has_vector": "small"}]},
    {"must_not": [{"has_vector": "small"}]},
    {"must": [{"has_id": [pid(i) for i in range(0, 120, 7)]}]},
    {"should": [{"key": "brand", "match": {"value": "acme"}}, {"key": "sale", "match": {"value": True}}]},
    {
        "must": [{"key": "count", "range": {"gte": 1}}],
        "must_not": [{"key": "brand", "match": {"value": "zen"}}],
        "should": [{"must": [{"key": "price", "range": {"gte": 50}}, {"has_vector": "small"}]},
                   {"must_not": [{"is_empty": {"key": "where"}}]}],
    },
]


def populate(store: Any) -> tuple[Any, dict[str, dict], dict[str, dict]]:
    """120 points with random payloads; every point has `clip`, every other one `small`."""
    rng = np.random.default_rng(7)
    clip, small = unit(120, 8, 1), unit(120, 5, 2)
    payloads, vectors = {}, {}
    records = []
    for i in range(120):
        payloads[pid(i)] = random_payload(rng, i)
        vectors[pid(i)] = {"clip": clip[i], **({"small": small[i]} if i % 2 == 0 else {})}
        records.append(Record(pid(i), dict(vectors[pid(i)]), payloads[pid(i)]))
    store.upsert(records)
    return store, payloads, vectors


@pytest.fixture
def populated(kind: str, tmp_path: Path, opened: list[Any]) -> tuple[Any, dict[str, dict], dict[str, dict]]:
    return populate(new_store(kind, tmp_path, opened))


@pytest.fixture(scope="module", params=KINDS)
def populated_once(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """`populated`, shared by the tests that only read."""
    settings = settings_for(request.param, tmp_path_factory.mktemp("shared"))
    store = open_store(settings, "photos", create=SCHEMA)
    yield populate(store)
    store.close()


def brute_force(query: np.ndarray, using: str, vectors: dict[str, dict], passing: set[str]) -> list[str]:
    scored = [(-float(v[using] @ query), i) for i, v in vectors.items() if i in passing and using in v]
    return [i for _, i in sorted(scored)]


@pytest.mark.parametrize("query_filter", QUERY_FILTERS, ids=lambda f: json.dumps(f)[:60])
def test_filtered_search_count_and_scan_agree_with_the_reference(populated_once, query_filter) -> None:
    store, payloads, vectors = populated_once
    store_filter = Filter.parse(query_filter).resolve(store.schema)
    passing = {i for i, p in payloads.items() if matches(store_filter, i, p, frozenset(vectors[i]))}
    assert store.count(store_filter) == len(passing)
    assert {r.id for r in store.scan(store_filter)} == passing
    query = unit(1, 8, 99)[0]
    hits = store.search(query, k=200, filter=store_filter)
    assert [h.id for h in hits] == brute_force(query, "clip", vectors, passing)
    small_query = unit(1, 5, 98)[0]
    hits = store.search(small_query, k=200, using="small", filter=store_filter)
    assert [h.id for h in hits] == brute_force(small_query, "small", vectors, passing)


def test_every_filter_kind_passes_some_points_and_not_others(populated_once) -> None:
    """The random payloads exercise every condition: none is vacuous."""
    store, payloads, vectors = populated_once
    for query_filter in QUERY_FILTERS:
        store_filter = Filter.parse(query_filter).resolve(store.schema)
        passing = sum(matches(store_filter, i, p, frozenset(vectors[i])) for i, p in payloads.items())
        assert 0 < passing < len(payloads), query_filter


# --- named vectors ---------------------------------------------------------------------------------


def test_each_named_vector_is_searched_on_its_own(populated_once) -> None:
    store, _, vectors = populated_once
    everyone = set(vectors)
    for using, dim in (("clip", 8), ("small", 5)):
        query = unit(1, dim, 5)[0]
        hits = store.search(query, k=10, using=using)
        assert [h.id for h in hits] == brute_force(query, using, vectors, everyone)[:10]
        expected = [float(vectors[h.id][using] @ query) for h in hits]
        np.testing.assert_allclose([h.score for h in hits], expected, atol=1e-5)
    assert [h.id for h in store.search(unit(1, 8, 5)[0], k=3)] == [
        h.id for h in store.search(unit(1, 8, 5)[0], k=3, using="clip")
    ]


def test_update_vectors_keeps_the_other_vector_and_the_payload(populated) -> None:
    store, payloads, vectors = populated
    has_small = Filter.parse({"must": [{"has_vector": "small"}]})
    assert store.count(has_small) == 60
    odd = [pid(i) for i in range(1, 11, 2)]
    fresh = unit(len(odd), 5, 11)
    store.update_vectors("small", {**dict(zip(odd, fresh, strict=True)), str(uuid.uuid4()): fresh[0]})
    assert store.count(has_small) == 65  # the unknown id was ignored
    for record, vector in zip(store.retrieve(odd, with_vectors=True), fresh, strict=True):
        assert set(record.vectors) == {"clip", "small"}
        np.testing.assert_allclose(record.vectors["small"], vector, atol=1e-6)
        np.testing.assert_allclose(record.vectors["clip"], vectors[record.id]["clip"], atol=1e-6)
        assert record.payload == payloads[record.id]
    assert store.search(fresh[2], k=1, using="small")[0].id == odd[2]


def test_retrieve_returns_the_vectors_asked_for_by_schema_name(populated_once) -> None:
    store, _, _ = populated_once
    ids = [pid(0), pid(1)]
    assert [set(r.vectors) for r in store.retrieve(ids)] == [set(), set()]
    assert [set(r.vectors) for r in store.retrieve(ids, with_vectors=True)] == [{"clip", "small"}, {"clip"}]
    assert [set(r.vectors) for r in store.retrieve(ids, with_vectors=["small"])] == [{"small"}, set()]
    assert [r.id for r in store.retrieve([pid(5), str(uuid.uuid4()), pid(2)])] == [pid(5), pid(2)]


def test_set_payloads_overwrites_the_payload_and_keeps_the_vectors(populated) -> None:
    store, _, vectors = populated
    store.set_payloads({pid(0): {"uri": "/new.jpg", "metadata": {"brand": "new"}}, str(uuid.uuid4()): {}})
    (record,) = store.retrieve([pid(0)], with_vectors=True)
    assert record.payload == {"uri": "/new.jpg", "metadata": {"brand": "new"}}
    np.testing.assert_allclose(record.vectors["small"], vectors[pid(0)]["small"], atol=1e-6)
    brand_new = Filter.parse({"must": [{"key": "brand", "match": {"value": "new"}}]})
    assert store.count(brand_new.resolve(store.schema)) == 1


# --- schema changes reach the engine ---------------------------------------------------------------


def engine_vectors(store: Any) -> dict[str, int]:
    if isinstance(store, edge.EdgeStore):
        return edge.shard_vectors(edge.shard_path(store._settings, store.name), store.name)
    vectors = store.client.get_collection(store.name).config.params.vectors
    return {key: params.size for key, params in vectors.items()}


def test_set_schema_adds_and_drops_vectors_and_indexes_new_fields(kind, tmp_path, opened, populated) -> None:
    store, _, vectors = populated
    changed = store.schema.with_vector(VectorSpec("tiny", identity(3, "other")))
    store.set_schema(changed.with_fields({"color": "keyword"}))
    assert engine_vectors(store) == {"clip": 8, "small": 5, "tiny": 3}
    store.update_vectors("tiny", {pid(4): np.array([0.0, 1.0, 0.0])})
    assert [h.id for h in store.search(np.array([0.0, 1.0, 0.0]), k=5, using="tiny")] == [pid(4)]
    if kind == "edge":
        schema = store.shard.info().payload_schema
        assert {f"metadata.{f}" for f in [*FIELDS, "color"]} <= set(schema)
        assert schema["metadata.color"].data_type == qe.PayloadSchemaType.Keyword
        assert schema["metadata.taken"].data_type == qe.PayloadSchemaType.Datetime
    # qdrant-client's local mode keeps no payload indexes (get_collection().payload_schema is {}).

    store.set_schema(store.schema.without_vector("small"))
    assert engine_vectors(store) == {"clip": 8, "tiny": 3}
    assert set(store.retrieve([pid(4)], with_vectors=True)[0].vectors) == {"clip", "tiny"}

    store = reopen(store, kind, tmp_path, opened)
    assert list(store.schema.vectors) == ["clip", "tiny"]
    assert store.schema.fields["color"] == "keyword"
    query = unit(1, 8, 3)[0]
    assert [h.id for h in store.search(query, k=5)] == brute_force(query, "clip", vectors, set(vectors))[:5]


def test_set_schema_refuses_resizing_a_vector_or_retyping_a_field(populated) -> None:
    store, _, _ = populated
    resized = CollectionSchema({**store.schema.vectors, "small": VectorSpec("small", identity(6))}, "clip",
                               store.schema.fields)
    with pytest.raises(SchemaError, match="small"):
        store.set_schema(resized)
    retyped = CollectionSchema(store.schema.vectors, "clip", {**store.schema.fields, "count": "float"})
    with pytest.raises(SchemaError, match="count"):
        store.set_schema(retyped)


def test_set_schema_clears_storage_left_by_an_interrupted_change(kind, tmp_path, opened) -> None:
    """Storage the saved schema does not name (a crash between creating it and saving) is removed,
    so a vector added again under that name starts empty and with its new size."""
    store = new_store(kind, tmp_path, opened)
    store.upsert([Record(pid(0), {"clip": unit(1, 8, 0)[0]}, {})])
    store._add_vector(VectorSpec("late", identity(4)))  # the first step of a change that then crashed
    assert "late" in engine_vectors(store)
    store.set_schema(store.schema.with_vector(VectorSpec("late", identity(7))))
    assert engine_vectors(store)["late"] == 7
    store.update_vectors("late", {pid(0): unit(1, 7, 1)[0]})
    assert set(store.retrieve([pid(0)], with_vectors=True)[0].vectors) == {"clip", "late"}


# --- offset paging ---------------------------------------------------------------------------------


def test_offset_pages_are_slices_of_one_ranking_even_over_tied_scores(kind, tmp_path, opened) -> None:
    store = new_store(kind, tmp_path, opened)
    vectors = unit(40, 8, 3)
    vectors[10:30] = vectors[10]  # 20 duplicates: 20 equal scores, across page boundaries
    store.upsert([Record(pid(i), {"clip": v}, {"metadata": {"count": i % 3}}) for i, v in enumerate(vectors)])
    for store_filter in (None, Filter.parse({"must": [{"key": "count", "match": {"any": [0, 1]}}]})):
        if store_filter is not None:
            store_filter = store_filter.resolve(store.schema)
        for query in (vectors[10], unit(1, 8, 4)[0]):
            whole = [h.id for h in store.search(query, k=100, filter=store_filter)]
            pages = [
                [h.id for h in store.search(query, k=7, offset=offset, filter=store_filter)]
                for offset in range(0, 49, 7)
            ]
            assert not set(pages[0]) & set(pages[1])
            assert sum(pages, []) == whole
            assert len(whole) == (40 if store_filter is None else sum(1 for i in range(40) if i % 3 != 2))


def test_ranked_page_completes_the_tie_group_at_the_page_end() -> None:
    """An engine that returns ties in another order at each limit still gives consistent pages."""
    from indexer.stores.base import Hit

    scores = [0.9] + [0.5] * 9 + [0.1]
    ids = [f"{i:02d}" for i in range(len(scores))]
    asked: list[int] = []

    def fetch(limit: int) -> list[Hit]:
        asked.append(limit)
        flip = -1 if limit % 2 else 1  # ties in another order at each limit
        order = sorted(range(len(ids)), key=lambda i: (-scores[i], flip * int(ids[i])))
        return [Hit(ids[i], scores[i], {}) for i in order[:limit]]

    pages = [[h.id for h in ranked_page(fetch, 3, offset)] for offset in (0, 3, 6, 9)]
    assert sum(pages, []) == ids
    assert max(asked) > 4  # the tie group made it fetch beyond offset + k + 1


# --- the previous release's collections ------------------------------------------------------------

V1_MODEL = identity(8, "legacy")


def legacy_points(n: int = 30) -> tuple[np.ndarray, list[dict[str, Any]]]:
    payloads = [
        {"uri": f"/photos/{i}.jpg", "path": f"{i}.jpg", "fingerprint": f"f{i}",
         "metadata": {"width": 100 + i, "height": 50 + i % 4}}
        for i in range(n)
    ]
    return unit(n, 8, 21), payloads


def write_v1_edge(settings: Settings, name: str) -> None:
    """A collection exactly as the previous release wrote it (`git show HEAD~1:indexer/stores/edge.py`)."""
    vectors, payloads = legacy_points()
    config = qe.EdgeConfig(
        vectors=qe.EdgeVectorParams(size=8, distance=qe.Distance.Cosine, memory=qe.Memory.Cold),
        hnsw_config=qe.HnswIndexConfig(m=16, ef_construct=256, full_scan_threshold=20_000),
        quantization_config=qe.ScalarQuantizationConfig(qe.ScalarType.Int8, quantile=0.99, always_ram=True),
        optimizers=qe.EdgeOptimizersConfig(indexing_threshold=20_000, default_segment_number=8),
        payload_memory=qe.Memory.Cold,
    )
    directory = settings.collection_dir(name)
    shard = qe.EdgeShard.create(str(directory / "shard"), config)
    points = [qe.Point(pid(i), v.tolist(), p) for i, (v, p) in enumerate(zip(vectors, payloads, strict=True))]
    shard.update(qe.UpdateOperation.upsert_points(points))
    shard.optimize()
    shard.close()
    info = {"model": V1_MODEL.to_dict(), "failed": {"/photos/bad.jpg": "cannot decode"}}
    (directory / "info.json").write_text(json.dumps(info, indent=2, sort_keys=True))


def write_v1_server(settings: Settings, name: str) -> None:
    """A collection as the previous release's qdrant.py wrote it: unnamed vector, info in metadata."""
    from qdrant_client import QdrantClient, models

    vectors, payloads = legacy_points()
    client = QdrantClient(path=str(settings.qdrant.path))
    client.create_collection(
        name,
        vectors_config=models.VectorParams(size=8, distance=models.Distance.COSINE, on_disk=True),
        hnsw_config=models.HnswConfigDiff(m=16, ef_construct=256),
        quantization_config=models.ScalarQuantization(
            scalar=models.ScalarQuantizationConfig(
                type=models.ScalarType.INT8, quantile=0.99, always_ram=True
            )
        ),
        on_disk_payload=True,
    )
    client.upsert(name, [models.PointStruct(id=pid(i), vector=v.tolist(), payload=p)
                         for i, (v, p) in enumerate(zip(vectors, payloads, strict=True))])
    info = {"model": V1_MODEL.to_dict(), "failed": {"/photos/bad.jpg": "cannot decode"}}
    client.update_collection(name, metadata={"clipsearch_info": json.dumps(info, sort_keys=True)})
    client.close()


def stored_document(store: Any) -> dict[str, Any]:
    if isinstance(store, edge.EdgeStore):
        return json.loads((store._dir / edge.INFO_FILE).read_text())
    return json.loads(store.client.get_collection(store.name).config.metadata[server.INFO_KEY])


def results(store: Any, queries: np.ndarray, **options: Any) -> list[list[tuple[str, float]]]:
    return [[(h.id, round(h.score, 5)) for h in store.search(q, k=8, **options)] for q in queries]


@pytest.fixture
def legacy(kind: str, tmp_path: Path, opened: list[Any]) -> tuple[Any, list]:
    settings = settings_for(kind, tmp_path)
    (write_v1_edge if kind == "edge" else write_v1_server)(settings, "old")
    vectors, _ = legacy_points()
    store = open_store(settings, "old")
    opened.append(store)
    queries = np.concatenate([vectors[:3], unit(3, 8, 50)])
    # What the previous release returned: its search was exact at this size (plain segments).
    expected = [[(pid(int(i)), round(float(vectors[i] @ q), 5)) for i in np.argsort(-(vectors @ q))[:8]]
                for q in queries]
    return store, expected, queries


def test_a_version_1_collection_opens_with_its_schema_migrated_in_memory(legacy) -> None:
    store, expected, queries = legacy
    assert store.schema.version == 2
    assert list(store.schema.vectors) == ["default"]
    assert store.schema.vectors["default"].storage_key == ""
    assert store.schema.vectors["default"].model == V1_MODEL
    assert store.schema.fields == {"width": "integer", "height": "integer"}
    assert results(store, queries) == expected
    assert store.read_info() == {"failed": {"/photos/bad.jpg": "cannot decode"}}
    assert "schema" not in stored_document(store)  # reading writes nothing
    assert set(store.retrieve([pid(3)], with_vectors=True)[0].vectors) == {"default"}
    wide = Filter.parse({"must": [{"key": "width", "range": {"gte": 120}}]}).resolve(store.schema)
    assert store.count(wide) == 10


def test_the_first_write_stores_version_2_and_keeps_every_result(kind, tmp_path, opened, legacy) -> None:
    store, expected, queries = legacy
    (record,) = store.retrieve([pid(0)])
    store.set_payloads({pid(0): record.payload})  # a write that changes nothing visible
    document = stored_document(store)
    assert "model" not in document
    assert document["schema"]["version"] == 2
    assert document["schema"]["vectors"][0]["key"] == ""
    assert document["failed"] == {"/photos/bad.jpg": "cannot decode"}
    if kind == "edge":
        schema = store.shard.info().payload_schema
        assert schema["metadata.width"].data_type == qe.PayloadSchemaType.Integer
        assert schema["metadata.height"].data_type == qe.PayloadSchemaType.Integer
    assert results(store, queries) == expected
    store = reopen(store, kind, tmp_path, opened)
    assert store.schema.vectors["default"].storage_key == ""
    assert results(store, queries) == expected
    assert store.read_info() == {"failed": {"/photos/bad.jpg": "cannot decode"}}


def test_a_version_1_collection_takes_a_second_named_vector(kind, tmp_path, opened, legacy) -> None:
    store, expected, queries = legacy
    store.set_schema(store.schema.with_vector(VectorSpec("next", identity(4, "next"))))
    assert engine_vectors(store) == {"": 8, "next": 4}
    fresh = unit(30, 4, 60)
    store.update_vectors("next", {pid(i): v for i, v in enumerate(fresh)})
    assert store.count(Filter.parse({"must": [{"has_vector": "next"}]})) == 30
    assert store.count(Filter.parse({"must": [{"has_vector": "default"}]})) == 30
    store = reopen(store, kind, tmp_path, opened)
    assert results(store, queries) == expected
    assert [h.id for h in store.search(fresh[7], k=1, using="next")] == [pid(7)]
    record = store.retrieve([pid(7)], with_vectors=True)[0]
    assert set(record.vectors) == {"default", "next"}
    store.set_schema(store.schema.with_active("next").without_vector("default"))
    assert engine_vectors(store) == {"next": 4}
    assert [h.id for h in store.search(fresh[9], k=1)] == [pid(9)]


# --- edge robustness ---------------------------------------------------------------------------------


def test_edge_collection_open_twice_is_busy_with_advice(tmp_path: Path, opened) -> None:
    new_store("edge", tmp_path, opened)
    with pytest.raises(CollectionBusy, match="CLIPSEARCH_STORE=qdrant") as caught:
        open_store(settings_for("edge", tmp_path), "photos")
    assert "clipsearch serve --watch FOLDER" in str(caught.value)


def test_edge_create_removes_abandoned_creations(tmp_path: Path, opened) -> None:
    settings = settings_for("edge", tmp_path)
    leftover = edge.shard_path(settings, "photos").with_name("shard.creating-999999999")
    (leftover / "segments").mkdir(parents=True)
    new_store("edge", tmp_path, opened)
    assert not leftover.exists()
    assert sorted(p.name for p in settings.collection_dir("photos").iterdir()) == [
        ".create.lock", RESERVE_FILE, "info.json", "shard"
    ]


def test_changes_to_unknown_points_alone_are_ignored(kind, tmp_path, opened) -> None:
    store = new_store(kind, tmp_path, opened)
    store.update_vectors("small", {str(uuid.uuid4()): unit(1, 5, 0)[0]})
    store.set_payloads({str(uuid.uuid4()): {"uri": "/x.jpg"}})
    store.delete([str(uuid.uuid4())])
    assert store.count() == 0
