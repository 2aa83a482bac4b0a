"""FAISS-specific behaviour: index kinds, recall, tombstones, recovery of stale index files, filters
pushed down through SQLite (both search paths), named vectors, schema changes, and the migration
of collections written by the previous release.

The VectorStore contract itself is tests/test_store_contract.py (with "faiss" among its kinds).
Each index kind is built once per module into a template home; tests work on copies of it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

faiss = pytest.importorskip("faiss")

from indexer.errors import CollectionBusy, SchemaError, StoreError  # noqa: E402
from indexer.schema import CollectionSchema, ModelIdentity, VectorSpec  # noqa: E402
from indexer.settings import Settings  # noqa: E402
from indexer.stores import faiss_store  # noqa: E402
from indexer.stores.base import Record  # noqa: E402
from indexer.stores.faiss_store import FaissConfig, FaissStore  # noqa: E402
from indexer.stores.faiss_store.index import VectorIndex  # noqa: E402
from indexer.stores.faiss_store.vid_map import VidMap  # noqa: E402
from indexer.stores.filters import Filter, matches  # noqa: E402

DIM = 64
REPO = Path(__file__).resolve().parents[1]
KINDS = ["flat", "hnsw", "ivfpq"]
CONFIGS = {
    "flat": FaissConfig(kind="flat"),
    "hnsw": FaissConfig(kind="hnsw"),
    # pq_m=8 (8 bytes per code) keeps PQ training to a few seconds on two cores.
    "ivfpq": FaissConfig(kind="ivfpq", pq_m=8),
}


def identity(dim: int = DIM, name: str = "tiny") -> ModelIdentity:
    return ModelIdentity(model=name, pretrained="", architecture=name, weights="", dim=dim)


SCHEMA = CollectionSchema.new(identity())


@pytest.fixture(scope="module", autouse=True)
def _one_openmp_thread() -> Iterator[None]:
    # On a small, shared CI machine OpenMP threads spin-wait against other processes and k-means
    # gets several times slower; one thread keeps these tests fast, and HNSW builds deterministic.
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def uid(i: int) -> str:
    return str(uuid.UUID(int=i + 1))


def random_unit(n: int, seed: int, dim: int = DIM) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def clustered_unit(n: int, seed: int, clusters: int = 256) -> np.ndarray:
    """Unit vectors around cluster centres: how image embeddings look, and what IVF is built for."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(1234).standard_normal((clusters, DIM)).astype(np.float32)
    vectors = centres[rng.integers(0, clusters, n)] + 0.35 * rng.standard_normal((n, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def records(vectors: np.ndarray, offset: int = 0, tag: str = "v1") -> list[Record]:
    return [
        Record(
            id=uid(offset + i), vectors={"default": v}, payload={"uri": f"/img/{offset + i}.jpg", "tag": tag}
        )
        for i, v in enumerate(vectors)
    ]


def top_k(vectors: np.ndarray, query: np.ndarray, k: int = 10) -> list[int]:
    return list(np.argsort(-(vectors @ query), kind="stable")[:k])


def recall_at_10(store: FaissStore, vectors: np.ndarray, queries: np.ndarray) -> float:
    found = [
        len({uid(i) for i in top_k(vectors, q)} & {h.id for h in store.search(q, 10)}) / 10 for q in queries
    ]
    return float(np.mean(found))


def new_store(
    tmp_path: Path, config: FaissConfig | None = None, schema: CollectionSchema = SCHEMA
) -> FaissStore:
    return faiss_store.create(Settings(home=tmp_path / "home", store="faiss"), "c", schema, config)


# Sizes: ivfpq needs >= ivfpq_min_train (10k) vectors to be trained at all.
_TEMPLATE_DATA: dict[str, Callable[[], np.ndarray]] = {
    "flat": lambda: random_unit(3000, seed=1),
    "hnsw": lambda: random_unit(5000, seed=2),
    "ivfpq": lambda: clustered_unit(20_000, seed=3),
}


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[Path, np.ndarray]]:
    """kind -> (home holding a flushed, closed collection "c" of that kind, its vectors)."""
    built: dict[str, tuple[Path, np.ndarray]] = {}

    def get(kind: str) -> tuple[Path, np.ndarray]:
        if kind not in built:
            home = tmp_path_factory.mktemp(f"template-{kind}")
            vectors = _TEMPLATE_DATA[kind]()
            store = faiss_store.create(Settings(home=home, store="faiss"), "c", SCHEMA, CONFIGS[kind])
            store.upsert(records(vectors))
            store.close()
            built[kind] = (home, vectors)
        return built[kind]

    return get


class Copy:
    """A private copy of a template collection, opened with its kind's config."""

    def __init__(self, template: tuple[Path, np.ndarray], root: Path, kind: str) -> None:
        home, self.vectors = template
        shutil.copytree(home, root / "home")
        self.settings = Settings(home=root / "home", store="faiss")
        self.kind = kind
        self.dir = faiss_store.store_path(self.settings, "c")
        self.index_file = self.dir / faiss_store.index_file("default")

    def open(self, config: FaissConfig | None = None) -> FaissStore:
        return faiss_store.load(self.settings, "c", config or CONFIGS[self.kind])


@pytest.fixture(params=KINDS)
def copy(request: pytest.FixtureRequest, templates: Callable, tmp_path: Path) -> Copy:
    return Copy(templates(request.param), tmp_path, request.param)


def no_rebuilds(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the index was rebuilt")

    monkeypatch.setattr(VectorIndex, "_build", refuse)


# --- search quality ----------------------------------------------------------------------


def test_each_kind_returns_the_exact_top_10_for_self_matches(copy: Copy) -> None:
    store = copy.open()
    assert store.index_kind == copy.kind  # ivfpq really is trained IVF-PQ here, not the flat stage

    for i in range(0, len(copy.vectors), len(copy.vectors) // 20):
        hits = store.search(copy.vectors[i], k=10)
        expected = top_k(copy.vectors, copy.vectors[i])
        assert hits[0].id == uid(i) and hits[0].score == pytest.approx(1.0, abs=1e-4)
        assert {h.id for h in hits} == {uid(j) for j in expected}
        # Scores are exact cosines for every kind (IVF-PQ's are re-scored by the refine index).
        np.testing.assert_allclose(
            [h.score for h in hits], copy.vectors[expected] @ copy.vectors[i], atol=1e-4
        )
    store.close()


def test_hnsw_recall_at_10_against_brute_force(templates: Callable, tmp_path: Path) -> None:
    copy = Copy(templates("hnsw"), tmp_path, "hnsw")
    store = copy.open()
    # Random queries, far from every stored vector, are the hard case for a graph index.
    assert recall_at_10(store, copy.vectors, random_unit(100, seed=7)) >= 0.95
    store.close()


def test_hnsw_ef_search_follows_settings_hnsw_ef(
    templates: Callable, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = Copy(templates("hnsw"), tmp_path, "hnsw")
    monkeypatch.setenv("CLIPSEARCH_HNSW_EF", "12")
    monkeypatch.setenv("CLIPSEARCH_FAISS_INDEX", "hnsw")
    settings = Settings(home=copy.settings.home, store="faiss")
    low = faiss_store.load(settings, "c")  # config from the settings, as open_store does
    inner = faiss.downcast_index(low._indexes["default"].faiss_index.index)
    assert low.stats()["ef_search"] == 12 and inner.hnsw.efSearch == 12
    queries = random_unit(100, seed=7)
    low_recall = recall_at_10(low, copy.vectors, queries)
    low.close()

    high = faiss_store.load(settings.with_flags(hnsw_ef=400), "c")
    high_recall = recall_at_10(high, copy.vectors, queries)
    high.close()
    # The setting really reaches the searches: a narrow search misses neighbours a wide one finds.
    assert low_recall < 0.9 < high_recall


def test_ivfpq_with_refine_recall_at_10_against_brute_force(templates: Callable, tmp_path: Path) -> None:
    copy = Copy(templates("ivfpq"), tmp_path, "ivfpq")
    store = copy.open()
    assert store.index_kind == "ivfpq"
    queries = clustered_unit(100, seed=8)  # new points, not stored ones
    assert recall_at_10(store, copy.vectors, queries) >= 0.9
    store.close()


# --- deletes, replacements, tombstones ---------------------------------------------------


def test_deletes_and_replacements_are_honoured_by_search(copy: Copy) -> None:
    store = copy.open()
    n = len(copy.vectors)
    deleted = list(range(0, 200, 10))
    replaced = list(range(5, 200, 10))
    new_vectors = random_unit(len(replaced), seed=99)

    store.delete([uid(i) for i in deleted])
    store.upsert(
        [
            Record(id=uid(i), vectors={"default": v}, payload={"new": True})
            for i, v in zip(replaced, new_vectors, strict=True)
        ]
    )

    def check(s: FaissStore) -> None:
        assert s.count() == n - len(deleted)
        for i in deleted:
            assert uid(i) not in {h.id for h in s.search(copy.vectors[i], 10)}
        for i, v in zip(replaced, new_vectors, strict=True):
            assert s.search(copy.vectors[i], 1)[0].id != uid(i)  # the old vector is gone...
            best = s.search(v, 1)[0]
            assert best.id == uid(i) and best.payload == {"new": True}  # ...and the new one found
        assert len(s.search(copy.vectors[1], 10)) == 10  # over-fetch makes up for tombstones

    check(store)  # tombstones filtered
    store.flush()  # flat: removed; hnsw, ivfpq+refine: kept as tombstones (under 20%)
    check(store)
    store.close()
    check(reopened := copy.open())
    reopened.close()


@pytest.mark.parametrize("fraction, kept", [(0.05, {"flat": 0, "hnsw": 1, "ivfpq": 1}), (0.3, {})])
def test_flush_removes_or_rebuilds_away_tombstones(copy: Copy, fraction: float, kept: dict[str, int]) -> None:
    store = copy.open()
    n = len(copy.vectors)
    gone = np.random.default_rng(5).choice(n, int(n * fraction), replace=False)
    store.delete([uid(int(i)) for i in gone])
    assert store.stats()["tombstones"] == len(gone)

    store.flush()

    stats = store.stats()
    assert stats["tombstones"] == (len(gone) if kept.get(copy.kind) else 0)
    assert stats["indexed"] - stats["tombstones"] == store.count() == n - len(gone)
    assert stats["kind"] == copy.kind  # a rebuild keeps the kind (and IVF its training)
    survivor = next(i for i in range(n) if i not in set(gone.tolist()))
    assert store.search(copy.vectors[survivor], 1)[0].id == uid(survivor)
    store.close()


# --- persistence and recovery ------------------------------------------------------------


def test_reopen_after_close_keeps_everything_without_rebuilding(
    copy: Copy, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = copy.open()
    store.write_info({"failed": {"/x.jpg": {"reason": "r"}}})
    store.upsert(records(random_unit(3, seed=11), offset=10**6, tag="added"))
    store.delete([uid(3)])
    count = store.count()
    store.close()
    no_rebuilds(monkeypatch)

    store = copy.open()

    assert store.count() == count and store.index_kind == copy.kind
    stats = store.stats()  # hnsw and ivfpq+refine may keep a few tombstones in the saved index
    assert stats["indexed"] - stats["tombstones"] == count
    assert store.read_info() == {"failed": {"/x.jpg": {"reason": "r"}}} and store.schema == SCHEMA
    got = store.retrieve([uid(7), uid(10**6), uid(3)], with_vectors=True)
    assert [r.id for r in got] == [uid(7), uid(10**6)]
    np.testing.assert_allclose(got[0].vectors["default"], copy.vectors[7], atol=1e-6)
    assert got[1].payload["tag"] == "added"
    assert store.search(copy.vectors[7], 1)[0].id == uid(7)
    assert sum(1 for _ in store.scan()) == count
    store.close()


def test_missing_index_file_is_rebuilt_from_the_database(copy: Copy) -> None:
    copy.index_file.unlink()

    store = copy.open()

    assert store.count() == len(copy.vectors) and store.index_kind == copy.kind
    for i in (0, 17, len(copy.vectors) - 1):
        assert store.search(copy.vectors[i], 1)[0].id == uid(i)
    store.close()
    assert copy.index_file.is_file()  # saved again on close


def test_stale_index_file_is_brought_up_to_date_on_open(copy: Copy, monkeypatch: pytest.MonkeyPatch) -> None:
    stale = copy.index_file.read_bytes()
    store = copy.open()
    added = random_unit(30, seed=12)
    store.upsert(records(added, offset=10**6))
    store.delete([uid(i) for i in range(20)])
    store.upsert([Record(id=uid(20), vectors={"default": random_unit(1, seed=13)[0]}, payload={"new": True})])
    count = store.count()
    store.close()
    copy.index_file.write_bytes(stale)  # as if killed after the writes, before any flush
    no_rebuilds(monkeypatch)  # catching up must not mean rebuilding

    store = copy.open()

    assert store.count() == count == len(copy.vectors) + 30 - 20
    assert store.stats()["tombstones"] == 21  # the 20 deleted and the replaced version of 20
    for i in range(20):
        assert uid(i) not in {h.id for h in store.search(copy.vectors[i], 10)}
    assert store.search(copy.vectors[20], 1)[0].id != uid(20)
    assert store.search(random_unit(1, seed=13)[0], 1)[0].payload == {"new": True}
    for i, v in enumerate(added):
        assert store.search(v, 1)[0].id == uid(10**6 + i)
    store.close()


_KILLED_WRITER = """
import os, signal, sys, uuid
import numpy as np
from indexer.schema import CollectionSchema, ModelIdentity
from indexer.settings import Settings
from indexer.stores import Record, open_store
schema = CollectionSchema.new(ModelIdentity("m", "", "m", "", 8))
store = open_store(Settings(home=sys.argv[1], store="faiss"), "c", create=schema)
eye = np.eye(8, dtype=np.float32)
def put(points):
    store.upsert([Record(str(uuid.UUID(int=i + 1)), {"default": eye[i]}, {"i": i}) for i in points])
put(range(4))
store.flush()
put(range(4, 8))
store.delete([str(uuid.UUID(int=1))])
store.update_vectors("default", {str(uuid.UUID(int=2)): eye[0]})  # point 1 now looks like the deleted 0
store.write_info({"failed": {}})
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_writes_after_the_last_flush_survive_sigkill(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    home = tmp_path / "home"
    done = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(home)], cwd=REPO, env=env)
    assert done.returncode == -signal.SIGKILL

    store = faiss_store.load(Settings(home=home, store="faiss"), "c")

    assert store.count() == 7 and store.read_info() == {"failed": {}}
    eye = np.eye(8, dtype=np.float32)
    assert [store.search(eye[i], 1)[0].payload for i in range(2, 8)] == [{"i": i} for i in range(2, 8)]
    # The index file still holds point 1's old vector under its old vid: it must be a tombstone.
    assert store.search(eye[0], 1)[0].payload == {"i": 1}
    assert store.search(eye[1], 1)[0].score < 0.5
    assert uid(0) not in {h.id for h in store.search(eye[0], 8)}
    store.close()


# --- index kind selection ----------------------------------------------------------------


def test_auto_starts_exact_and_switches_to_hnsw_on_flush(tmp_path: Path) -> None:
    vectors = random_unit(600, seed=21)
    store = new_store(tmp_path, FaissConfig(kind="auto", auto_hnsw_at=500))
    store.upsert(records(vectors[:400]))
    store.flush()
    assert store.index_kind == "flat"
    store.upsert(records(vectors[400:], offset=400))
    assert store.index_kind == "flat"  # upserts stay cheap; the switch waits for flush

    store.flush()

    assert store.index_kind == "hnsw" and store.count() == 600
    assert store.search(vectors[450], 1)[0].id == uid(450)
    store.close()


def test_ivfpq_searches_exactly_until_there_are_enough_vectors_to_train(tmp_path: Path) -> None:
    vectors = random_unit(500, seed=22)
    store = new_store(tmp_path, CONFIGS["ivfpq"])
    store.upsert(records(vectors))
    store.flush()

    assert store.index_kind == "flat"
    hits = store.search(vectors[9], 10)
    assert [h.id for h in hits] == [uid(i) for i in top_k(vectors, vectors[9])]
    store.close()


@pytest.mark.parametrize("refine", ["sq8", "none"])
def test_ivfpq_refine_variants(refine: str, tmp_path: Path) -> None:
    # Smaller than the template (training below PQ's ideal 39 * 256 points): fast, still trained.
    config = FaissConfig(kind="ivfpq", pq_m=8, refine=refine, ivfpq_min_train=3000)
    vectors = clustered_unit(4000, seed=41)
    store = new_store(tmp_path, config)
    store.upsert(records(vectors))
    store.flush()
    assert store.stats()["kind"] == "ivfpq"

    store.delete([uid(i) for i in range(40)])
    store.flush()

    # Without refine, FAISS removes from IVF lists at once; IndexRefine keeps tombstones.
    assert store.stats()["tombstones"] == (0 if refine == "none" else 40)
    assert store.count() == 3960
    assert all(uid(i) not in {h.id for h in store.search(vectors[i], 10)} for i in range(40))
    if refine == "sq8":  # 8-bit re-scoring: ranks like exact search, scores within ~1e-2
        assert recall_at_10(store, vectors, clustered_unit(50, seed=42)) >= 0.9
        hit = store.search(vectors[100], 1)[0]
        assert hit.id == uid(100) and hit.score == pytest.approx(1.0, abs=2e-2)
    store.close()


# --- misc --------------------------------------------------------------------------------


def test_a_collection_open_here_cannot_be_opened_or_dropped_again(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", store="faiss")
    store = faiss_store.create(settings, "c", SCHEMA)
    for attempt in (lambda: faiss_store.load(settings, "c"), lambda: faiss_store.drop(settings, "c")):
        with pytest.raises(CollectionBusy, match="already open elsewhere") as caught:
            attempt()
        assert "clipsearch serve --watch FOLDER" in str(caught.value)
        assert "CLIPSEARCH_STORE=qdrant" in str(caught.value)
    store.close()
    store.close()  # closing twice is harmless
    with pytest.raises(StoreError, match="closed"):
        store.count()
    faiss_store.drop(settings, "c")
    assert not settings.collection_dir("c").exists()


def test_unnormalised_vectors_are_stored_and_searched_as_cosine(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    vectors = random_unit(50, seed=23)
    store.upsert(records(vectors * 7.0))
    hit = store.search(vectors[3] * 0.1, 1)[0]
    assert hit.id == uid(3) and hit.score == pytest.approx(1.0, abs=1e-5)
    store.close()


def test_payloads_must_be_json(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    with pytest.raises(StoreError, match="not JSON"):
        store.upsert(
            [Record(id=uid(0), vectors={"default": random_unit(1, seed=1)[0]}, payload={"x": object()})]
        )
    assert store.count() == 0
    store.close()


def test_layout_files_of_a_new_collection(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", store="faiss")
    faiss_store.create(settings, "c", SCHEMA).close()
    directory = faiss_store.store_path(settings, "c")
    assert json.loads((directory / faiss_store.CONFIG_FILE).read_text()) == {"format": 2}
    assert (directory / "index-default.faiss").is_file()
    assert faiss_store.exists(settings, "c") and faiss_store.list_collections(settings) == ["c"]


@pytest.mark.skipif(
    not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0,
    reason="needs faiss-gpu and a GPU",
)
@pytest.mark.parametrize("kind", ["flat", "ivfpq"])
def test_gpu_search_agrees_with_cpu(kind: str, templates: Callable, tmp_path: Path) -> None:
    copy = Copy(templates(kind), tmp_path, kind)
    store = copy.open()
    queries = random_unit(20, seed=31)
    on_gpu = [[h.id for h in store.search(q, 10)] for q in queries]
    assert store.stats()["gpu"]
    store.close()
    cpu = copy.open(dataclasses.replace(CONFIGS[kind], use_gpu=False))
    on_cpu = [[h.id for h in cpu.search(q, 10)] for q in queries]
    cpu.close()
    agree = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(on_gpu, on_cpu, strict=True)])
    assert agree >= (1.0 if kind == "flat" else 0.9)


# --- filters -----------------------------------------------------------------------------

FIELDS: dict[str, Any] = {
    "brand": "keyword",
    "price": "float",
    "stock": "integer",
    "sale": "bool",
    "when": "datetime",
    "where": "geo",
}
FILTER_SCHEMA = CollectionSchema(
    vectors={
        "default": VectorSpec("default", identity(16)),
        "small": VectorSpec("small", identity(8, "small")),
    },
    active="default",
    fields=FIELDS,
)
_MISSING = object()


def random_payload(rng: random.Random, i: int) -> dict[str, Any]:
    """Payloads that exercise the edge cases: arrays, null, [], missing, values of another type."""

    def pick(*choices: Any) -> Any:
        value = rng.choice(choices)
        return value() if callable(value) else value

    brand = lambda: rng.choice(["acme", "zeta", "omni"])  # noqa: E731
    price = lambda: rng.choice([0, 1, 2.5, 10, 10.0, 99.99, -3, 1e9])  # noqa: E731
    when = lambda: rng.choice(  # noqa: E731
        ["2024-01-01T00:00:00Z", "2024-01-01T01:00:00+02:00", "2024-06-15", "2023-12-31T23:59:59.999999Z",
         "2025-03-01T12:00:00Z", "not a date"]
    )  # fmt: skip
    where = lambda: {"lat": rng.uniform(38.6, 38.8), "lon": rng.uniform(-9.3, -9.0)}  # noqa: E731
    metadata = {
        "brand": pick(brand, brand, lambda: [brand(), brand()], None, [], _MISSING, 5, True),
        "price": pick(price, price, lambda: [price(), price()], None, _MISSING, "10", False),
        "stock": pick(0, 1, 7, 42, [1, 7], None, _MISSING, True),
        "sale": pick(True, False, [True, False], None, _MISSING, 1, 0),
        "when": pick(when, when, lambda: [when(), when()], None, _MISSING, 20240101),
        "where": pick(where, where, lambda: [where(), where()], None, _MISSING,
                      {"lat": 95.0, "lon": -9.1}, {"lat": 38.7, "lon": -9.1}),
        "extra": pick("a", "b", _MISSING),  # not declared: filtered by the Python fallback
    }  # fmt: skip
    return {"uri": f"/img/{i}.jpg", "metadata": {k: v for k, v in metadata.items() if v is not _MISSING}}


LISBON = {"lat": 38.7, "lon": -9.1}
FILTERS: list[dict[str, Any]] = [
    {"must": [{"key": "metadata.brand", "match": {"value": "acme"}}]},
    {"must": [{"key": "metadata.brand", "match": {"any": ["acme", "zeta"]}}]},
    {"must": [{"key": "metadata.brand", "match": {"except": ["acme"]}}]},
    {"must": [{"key": "metadata.brand", "match": {"value": 5}}]},
    {"must": [{"key": "metadata.stock", "match": {"value": 7}}]},
    {"must": [{"key": "metadata.stock", "match": {"any": [1, 42, True]}}]},
    {"must": [{"key": "metadata.stock", "match": {"except": [1, 7]}}]},
    {"must": [{"key": "metadata.sale", "match": {"value": True}}]},
    {"must": [{"key": "metadata.sale", "match": {"value": 1}}]},
    {"must": [{"key": "metadata.sale", "match": {"except": [False]}}]},
    {"must": [{"key": "metadata.price", "range": {"gte": 1, "lt": 10}}]},
    {"must": [{"key": "metadata.price", "range": {"gt": 10}}]},
    {"must": [{"key": "metadata.price", "range": {"lte": "10"}}]},
    {"must": [{"key": "metadata.when", "range": {"gte": "2024-01-01T00:00:00Z", "lt": "2024-07-01T00:00Z"}}]},
    {"must": [{"key": "metadata.when", "range": {"lte": "2023-12-31T23:00:00Z"}}]},
    {"must": [{"key": "metadata.when", "range": {"gt": 20240000}}]},
    {"must": [{"key": "metadata.where", "geo_radius": {"center": LISBON, "radius": 8000}}]},
    {"must": [{"key": "metadata.where", "geo_radius": {"center": LISBON, "radius": 1}}]},
    {"must": [{"key": "metadata.where", "geo_radius": {"center": {"lat": 89.9, "lon": 0}, "radius": 7e6}}]},
    {"must": [{"is_empty": {"key": "metadata.brand"}}]},
    {"must_not": [{"is_empty": {"key": "metadata.where"}}]},
    {"must": [{"has_vector": "small"}]},
    {"must": [{"has_vector": "nonesuch"}]},
    {"must": [{"has_id": [uid(1), uid(5), uid(999)]}]},
    {"must": [{"key": "metadata.extra", "match": {"value": "a"}}]},
    {"must": [{"key": "uri", "match": {"any": ["/img/3.jpg", "/img/4.jpg"]}}]},
    {"should": [{"key": "metadata.brand", "match": {"value": "omni"}},
                {"key": "metadata.sale", "match": {"value": True}}]},
    {"must": [{"key": "metadata.stock", "range": {"gte": 1}}],
     "must_not": [{"key": "metadata.brand", "match": {"value": "zeta"}}]},
    {"must_not": [{"key": "metadata.price", "range": {"gte": 0}}, {"is_empty": {"key": "metadata.when"}}]},
    {"must": [{"should": [{"key": "metadata.brand", "match": {"value": "acme"}},
                          {"must_not": [{"has_vector": "small"}]}]}],
     "should": [{"key": "metadata.stock", "match": {"any": [0, 7]}},
                {"key": "metadata.when", "range": {"gte": "2025-01-01T00:00:00Z"}}]},
]  # fmt: skip


@pytest.fixture(scope="module")
def filtered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FaissStore, dict[str, Any]]]:
    """A flat store of 400 points with random payloads; 'small' vectors on every third point only."""
    home = tmp_path_factory.mktemp("filtered")
    rng = random.Random(7)
    big, small = random_unit(400, seed=51, dim=16), random_unit(400, seed=52, dim=8)
    points = {uid(i): random_payload(rng, i) for i in range(400)}
    has_small = {uid(i) for i in range(0, 400, 3)}
    store = faiss_store.create(
        Settings(home=home, store="faiss"), "c", FILTER_SCHEMA, FaissConfig(kind="flat")
    )
    store.upsert(
        [
            Record(
                id=key,
                vectors={"default": big[i], **({"small": small[i]} if key in has_small else {})},
                payload=p,
            )
            for i, (key, p) in enumerate(points.items())
        ]
    )
    yield store, {"points": points, "big": big, "small": small, "has_small": has_small}
    store.close()


def expected_ids(data: dict[str, Any], store_filter: Filter) -> set[str]:
    def vectors(key: str) -> frozenset[str]:
        return frozenset({"default", "small"} if key in data["has_small"] else {"default"})

    return {key for key, p in data["points"].items() if matches(store_filter, key, p, vectors(key))}


def brute_force(data: dict[str, Any], query: np.ndarray, allowed: set[str]) -> list[str]:
    keys = [uid(i) for i in range(400) if uid(i) in allowed]
    scores = data["big"][[int(uuid.UUID(k)) - 1 for k in keys]] @ query
    return [keys[i] for i in np.argsort(-scores, kind="stable")]


def test_the_filter_cases_neither_keep_everything_nor_nothing(filtered: tuple[FaissStore, dict]) -> None:
    _, data = filtered
    sizes = [len(expected_ids(data, Filter.parse(f))) for f in FILTERS]
    assert sum(0 < s < 400 for s in sizes) >= len(FILTERS) - 3  # has_vector "nonesuch", tiny radius...


# The search paths a filter can take: exact over the filtered vectors, FAISS with an id selector, or
# an unfiltered search read deeper until enough results pass (post-filtering, tried first).
FORCED_PATHS = {
    "exact": {"exact_max": 10**9, "post_filter_max": 0},
    "exact, vectors from SQLite": {"exact_max": 10**9, "post_filter_max": 0, "exact_from_index": False},
    "selector": {"exact_max": 0, "exact_fraction": 0.0, "post_filter_max": 0},
    "post": {"post_filter_max": 10**9, "post_filter_min_share": 0.0},
}


@pytest.mark.parametrize("path", list(FORCED_PATHS))
@pytest.mark.parametrize("case", range(len(FILTERS)))
def test_filtered_search_count_and_scan_equal_brute_force_over_matches(
    filtered: tuple[FaissStore, dict], case: int, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, data = filtered
    store.config = dataclasses.replace(FaissConfig(kind="flat"), **FORCED_PATHS[path])
    store_filter = Filter.parse(FILTERS[case])
    allowed = expected_ids(data, store_filter)
    if path == "post" and len(allowed) >= 200 and "has_vector" not in json.dumps(FILTERS[case]):
        # half the points pass: the first read has enough (has_vector needs the filtered path)
        monkeypatch.setattr(store, "_filtered_vids", lambda *a: pytest.fail("the filtered path ran"))

    assert store.count(store_filter) == len(allowed)
    assert {r.id for r in store.scan(store_filter)} == allowed
    for q in random_unit(3, seed=60 + case, dim=16):
        hits = store.search(q, 10, filter=store_filter)
        assert [h.id for h in hits] == brute_force(data, q, allowed)[:10]
        assert all(h.payload == data["points"][h.id] for h in hits)
        # paging: offset pages concatenate to one longer query
        pages = [h.id for o in (0, 4, 8) for h in store.search(q, 4, filter=store_filter, offset=o)]
        assert pages == brute_force(data, q, allowed)[:12]


@pytest.mark.parametrize("kept", [200, 40, 4])
def test_post_filtering_is_tried_first_and_gives_way_when_few_pass(
    filtered: tuple[FaissStore, dict], kept: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the default tuning: a filter keeping half or a tenth of the points is answered from an
    unfiltered search read deeper, one keeping 1% by the filtered path; either way the exact top 10."""
    store, data = filtered
    store.config = FaissConfig(kind="flat")
    store_filter = Filter.parse({"must": [{"has_id": [uid(i) for i in range(0, 400, 400 // kept)]}]})
    allowed = expected_ids(data, store_filter)
    assert len(allowed) == kept
    filtered_path = []
    monkeypatch.setattr(store, "_filtered_vids", lambda *a: filtered_path.append(1) or real(*a))
    real = type(store)._filtered_vids.__get__(store)
    for q in random_unit(5, seed=kept, dim=16):
        hits = store.search(q, 10, filter=store_filter)
        assert [h.id for h in hits] == brute_force(data, q, allowed)[:10]
    assert (len(filtered_path) > 0) == (kept < 20)


def test_random_filters_agree_with_matches(filtered: tuple[FaissStore, dict]) -> None:
    """Random nestings of the cases above: SQL set algebra against the reference, one by one."""
    store, data = filtered
    store.config = FaissConfig(kind="flat")
    rng = random.Random(11)
    leaves = [c for f in FILTERS for c in f.get("must", []) + f.get("should", []) + f.get("must_not", [])]
    for _ in range(60):

        def node(depth: int) -> dict[str, Any]:
            parts = {}
            for part in rng.sample(["must", "should", "must_not"], rng.randint(1, 3)):
                parts[part] = [node(depth + 1) if depth < 2 and rng.random() < 0.3 else rng.choice(leaves)
                               for _ in range(rng.randint(1, 3))]  # fmt: skip
            return parts

        store_filter = Filter.parse(node(0))
        allowed = expected_ids(data, store_filter)
        assert store.count(store_filter) == len(allowed), store_filter.to_json()
        assert {h.id for h in store.search(data["big"][0], 400, filter=store_filter)} == allowed


def test_resolved_query_filters_with_datetimes_in_other_zones(filtered: tuple[FaissStore, dict]) -> None:
    store, data = filtered
    query = Filter.parse({"must": [{"key": "when", "range": {"gte": "2024-01-01T01:00:00+01:00"}},
                                   {"key": "sale", "match": {"value": "true"}}]})  # fmt: skip
    store_filter = query.resolve(store.schema)
    assert store.count(store_filter) == len(expected_ids(data, store_filter)) > 0


def test_selector_search_on_approximate_indexes_returns_only_passing_points(copy: Copy) -> None:
    store = copy.open(dataclasses.replace(CONFIGS[copy.kind], exact_max=0, exact_fraction=0.0))
    n = len(copy.vectors)
    keep = set(range(0, n, 3))  # a third of the points: the selector path, through the index
    store.set_payloads({uid(i): {"metadata": {"third": i in keep}} for i in range(n)})
    store.set_schema(store.schema.with_fields({"third": "bool"}))
    store_filter = Filter.parse({"must": [{"key": "metadata.third", "match": {"value": True}}]})
    subset = np.array(sorted(keep))
    recalls = []
    for q in (copy.vectors[9], copy.vectors[10], random_unit(1, seed=3)[0]):
        hits = store.search(q, 10, filter=store_filter)
        assert len(hits) == 10 and all(int(uuid.UUID(h.id)) - 1 in keep for h in hits)
        truth = {uid(int(subset[j])) for j in top_k(copy.vectors[subset], q)}
        recalls.append(len(truth & {h.id for h in hits}) / 10)
    assert np.mean(recalls) >= 0.9
    assert store.search(copy.vectors[9], 1, filter=store_filter)[0].id == uid(9)
    store.close()


def test_exact_filtered_search_gathers_vectors_from_flat_and_hnsw_indexes(copy: Copy) -> None:
    """The exact path over a filter's points reads their vectors from the index's memory where the index
    holds them as stored (flat, HNSW), after deletes and replacements; IVF-PQ's approximations never."""
    store = copy.open()
    store.delete([uid(i) for i in range(0, 60, 3)])
    store.upsert([Record(uid(i), {"default": v}, {}) for i, v in zip(range(1, 60, 3), random_unit(20, seed=5),
                                                                  strict=True)])
    store.flush()
    index = store._indexes["default"]
    vids = index.source.live_ids()[::7]
    stored = index.stored_vectors(vids)
    if copy.kind == "ivfpq":
        assert stored is None
    else:
        assert stored is not None and np.array_equal(stored, index.source.vectors_for(vids))
    if copy.kind == "flat":  # ids out of order (an open that caught up with the table): read from SQLite
        moved = int(vids[0])
        vector = index.source.vectors_for(np.array([moved]))
        index.remove([moved])
        index.maintain()
        index.add(np.array([moved], dtype=np.int64), vector)
        assert index.stored_vectors(vids) is None
    store.close()


@pytest.mark.parametrize("path", ["exact", "selector"])
def test_filtered_search_follows_every_kind_of_write(tmp_path: Path, path: str) -> None:
    """The filtered paths find vectors by the points SQL lets through (through an in-memory map kept
    beside the table): after upserts, re-upserts (new row ids), deletes, vector updates, payload
    edits and a schema change, the top 10 still equal brute force over what passes."""
    config = dataclasses.replace(FaissConfig(kind="flat"), **FORCED_PATHS[path])
    store = new_store(tmp_path, config, FILTER_SCHEMA)
    rng = random.Random(5)
    big: dict[str, np.ndarray] = {}
    small: dict[str, np.ndarray] = {}
    tags: dict[str, str] = {}
    keep = Filter.parse({"must": [{"key": "metadata.tag", "match": {"any": ["a", "b"]}}]})
    keep_small = Filter.parse({"must": [{"key": "metadata.tag", "match": {"value": "a"}},
                                        {"has_vector": "small"}]})

    def check(step: str) -> None:
        for q in random_unit(2, seed=len(step) + rng.randint(0, 999), dim=16):
            allowed = [k for k in big if tags[k] in ("a", "b")]
            truth = sorted(allowed, key=lambda k: (-float(big[k] @ q), k))[:10]
            assert [h.id for h in store.search(q, 10, filter=keep)] == truth, step
        q_small = random_unit(1, seed=rng.randint(0, 999), dim=8)[0]
        allowed = [k for k in small if tags[k] == "a"]
        truth = sorted(allowed, key=lambda k: (-float(small[k] @ q_small), k))[:10]
        assert [h.id for h in store.search(q_small, 10, using="small", filter=keep_small)] == truth, step

    def upsert(keys: list[str]) -> None:
        fresh_big = random_unit(len(keys), seed=rng.randint(0, 10**6), dim=16)
        fresh_small = random_unit(len(keys), seed=rng.randint(0, 10**6), dim=8)
        batch = []
        for key, b, sm in zip(keys, fresh_big, fresh_small, strict=True):
            big[key], tags[key] = b, rng.choice("abc")
            vectors = {"default": b}
            small.pop(key, None)
            if rng.random() < 0.5:
                small[key] = vectors["small"] = sm
            batch.append(Record(key, vectors, {"metadata": {"tag": tags[key]}}))
        store.upsert(batch)

    upsert([uid(i) for i in range(300)])
    check("first upsert")
    for round_ in range(16):  # 16 x 300 re-upserted: the map's span passes 4096 slots and it starts over
        upsert(rng.sample(sorted(big), 300))
        check(f"re-upsert {round_}")
    gone = rng.sample(sorted(big), 40)
    store.delete(gone)
    for key in gone:
        big.pop(key), small.pop(key, None), tags.pop(key)
    check("delete")
    changed = rng.sample(sorted(big), 30)
    fresh = random_unit(30, seed=9, dim=8)
    store.update_vectors("small", dict(zip(changed, fresh, strict=True)))
    small.update(zip(changed, fresh, strict=True))
    check("update_vectors")
    edited = rng.sample(sorted(big), 50)
    tags.update({key: rng.choice("abc") for key in edited})
    store.set_payloads({key: {"metadata": {"tag": tags[key]}} for key in edited})
    check("set_payloads")
    upsert([uid(i) for i in range(300, 340)])
    store.set_schema(store.schema.with_fields({"tag": "keyword"}))  # the filter now runs on the fields table
    check("set_schema")
    store.close()


def test_the_vid_map_answers_as_its_table_and_stays_within_a_few_times_its_rows() -> None:
    """Points re-upserted again and again get ever higher row ids, some keep old ones, and some gain a
    vector later: the map follows without reading its table again, and drops the slots of gone rows."""
    table: dict[int, int] = {}  # iid -> vid, as committed
    reads = []

    def read_pairs() -> np.ndarray:
        reads.append(len(table))
        return np.array(sorted(table.items()), dtype=np.int64).reshape(-1, 2)

    vid_map = VidMap(read_pairs)
    next_iid = next_vid = 1
    live: list[int] = []
    rng = np.random.default_rng(3)
    for round_ in range(30):
        replaced = sorted(rng.choice(live, size=min(len(live), 1500), replace=False).tolist()) if live else []
        added_iids = np.arange(next_iid, next_iid + 2000 - len(live) + len(replaced), dtype=np.int64)
        added_vids = np.arange(next_vid, next_vid + len(added_iids), dtype=np.int64)
        next_iid, next_vid = next_iid + len(added_iids) + 3, next_vid + len(added_vids)  # gaps: other vectors
        if round_ % 5 == 4:  # older points without this vector gain one (between the iids held)
            lacking = sorted(set(range(1, next_iid)) - set(table) - set(replaced))[:: 97][:20]
            added_iids = np.concatenate([added_iids, np.array(lacking, dtype=np.int64)])
            added_vids = np.concatenate([added_vids, np.arange(next_vid, next_vid + len(lacking))])
            next_vid += len(lacking)
        for iid in replaced:
            del table[iid]
        table.update(zip(added_iids.tolist(), added_vids.tolist(), strict=True))
        live = sorted(table)
        vid_map.changed(np.array(replaced, dtype=np.int64), added_iids, added_vids)
        asked = np.array([*rng.choice(live, 300).tolist(), *added_iids[-25:].tolist(), 0, next_iid + 10,
                          *replaced[:5]], dtype=np.int64)
        expected = sorted({table[i] for i in asked.tolist() if i in table})
        assert vid_map.vids_of(asked).tolist() == expected, round_
        assert vid_map.nbytes <= 16 * 2 * (2 * len(table) + 1024)  # gone slots <= live ones; growth 2x
    assert len(reads) == 1


def test_equal_scores_page_by_id_without_repeats_or_gaps(tmp_path: Path) -> None:
    store = new_store(tmp_path, FaissConfig(kind="flat"))
    same = random_unit(1, seed=70)[0]
    others = random_unit(30, seed=71)
    store.upsert([Record(id=uid(i), vectors={"default": same}, payload={}) for i in range(40)])
    store.upsert(records(others, offset=100))
    pages = [h.id for o in range(0, 77, 7) for h in store.search(same, 7, offset=o)]
    assert pages[:40] == sorted(uid(i) for i in range(40))  # the tie is ordered by id
    assert len(pages) == len(set(pages)) == 70
    store.close()


# --- named vectors and schema changes ----------------------------------------------------


def test_two_named_vectors_of_different_sizes_have_their_own_indexes(tmp_path: Path) -> None:
    store = new_store(tmp_path, FaissConfig(kind="flat"), FILTER_SCHEMA)
    big, small = random_unit(50, seed=81, dim=16), random_unit(50, seed=82, dim=8)
    store.upsert(
        [Record(id=uid(i), vectors={"default": big[i], "small": small[i]}, payload={}) for i in range(50)]
    )
    store.close()
    directory = faiss_store.store_path(Settings(home=tmp_path / "home", store="faiss"), "c")
    assert {p.name for p in directory.glob("*.faiss")} == {"index-default.faiss", "index-small.faiss"}

    store = faiss_store.load(Settings(home=tmp_path / "home", store="faiss"), "c")
    assert store.search(small[4], 1, using="small")[0].id == uid(4)
    assert store.search(big[4], 1)[0].id == uid(4)
    with pytest.raises(StoreError, match="8 dims, expected 16"):
        store.search(small[4], 1)
    store.close()


def test_update_vectors_changes_one_vector_and_keeps_the_rest(tmp_path: Path) -> None:
    store = new_store(tmp_path, FaissConfig(kind="hnsw"), FILTER_SCHEMA)
    big, small = random_unit(60, seed=83, dim=16), random_unit(60, seed=84, dim=8)
    store.upsert(
        [
            Record(id=uid(i), vectors={"default": big[i], "small": small[i]}, payload={"i": i})
            for i in range(60)
        ]
    )
    store.flush()
    fresh = random_unit(3, seed=85, dim=8)

    store.update_vectors("small", {uid(0): fresh[0], uid(1): fresh[1], uid(999): fresh[2]})

    got = store.retrieve([uid(0)], with_vectors=True)[0]
    np.testing.assert_allclose(got.vectors["small"], fresh[0], atol=1e-6)
    np.testing.assert_allclose(got.vectors["default"], big[0], atol=1e-6)
    assert got.payload == {"i": 0} and store.count() == 60
    assert store.search(fresh[1], 1, using="small")[0].id == uid(1)
    assert uid(0) not in {h.id for h in store.search(small[0], 5, using="small")}  # old vector gone (hnsw)
    assert store.stats("small")["tombstones"] == 2 and store.stats()["tombstones"] == 0
    store.close()


def test_set_schema_adds_and_drops_vectors_with_their_files(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", store="faiss")
    store = new_store(tmp_path, FaissConfig(kind="flat"))
    vectors = random_unit(20, seed=86)
    store.upsert(records(vectors))
    extra = VectorSpec("extra", identity(8, "extra"), state="building")
    store.set_schema(store.schema.with_vector(extra))
    assert store.search(random_unit(1, seed=1, dim=8)[0], 5, using="extra") == []  # nothing embedded yet
    store.update_vectors("extra", {uid(i): v for i, v in enumerate(random_unit(20, seed=87, dim=8))})
    store.set_schema(store.schema.with_vector_state("extra", "ready").with_active("extra"))
    store.close()
    directory = faiss_store.store_path(settings, "c")
    assert (directory / "index-extra.faiss").is_file()

    store = faiss_store.load(settings, "c")
    assert store.schema.active == "extra" and store.count() == 20
    store.set_schema(store.schema.without_vector("default"))
    assert not (directory / "index-default.faiss").exists()
    assert store.retrieve([uid(3)], with_vectors=True)[0].vectors.keys() == {"extra"}
    tables = {r[0] for r in store.db.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "vectors:default" not in tables and "vectors:extra" in tables
    with pytest.raises(SchemaError, match="keeps its model"):
        changed = VectorSpec("extra", identity(8, "another"))
        store.set_schema(CollectionSchema(vectors={"extra": changed}, active="extra"))
    store.close()


def test_declaring_a_field_backfills_it_from_the_payloads(tmp_path: Path) -> None:
    store = new_store(tmp_path, FaissConfig(kind="flat"))
    store.upsert(
        [Record(id=uid(i), vectors={"default": v}, payload={"metadata": {"size": i % 4}})
         for i, v in enumerate(random_unit(40, seed=88))]
    )  # fmt: skip
    store_filter = Filter.parse({"must": [{"key": "metadata.size", "match": {"value": 2}}]})
    assert store.count(store_filter) == 10  # undeclared: answered by the Python fallback
    rows = lambda: store.db.conn.execute("SELECT COUNT(*) FROM fields").fetchone()[0]  # noqa: E731
    assert rows() == 0

    store.set_schema(store.schema.with_fields({"size": "integer"}))

    assert rows() == 40 and store.count(store_filter) == 10
    store.upsert(
        [
            Record(
                id=uid(100), vectors={"default": random_unit(1, seed=9)[0]}, payload={"metadata": {"size": 2}}
            )
        ]
    )
    store.set_payloads({uid(2): {"metadata": {"size": 3}}})
    store.delete([uid(6)])
    assert rows() == 40 and store.count(store_filter) == 9
    store.set_schema(dataclasses.replace(store.schema, fields={}))
    assert rows() == 0 and store.count(store_filter) == 9
    store.close()


# --- the previous release's collections (version 1) ----------------------------------------

# The previous release's faiss_store (git show HEAD~1 before the schema rework), verbatim.
_V1_TABLES = """
CREATE TABLE IF NOT EXISTS points (
    iid INTEGER PRIMARY KEY AUTOINCREMENT, uuid TEXT NOT NULL UNIQUE, payload TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS vectors (iid INTEGER PRIMARY KEY, vector BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def write_version_1(directory: Path, vectors: np.ndarray, deleted: list[int], info: dict[str, Any]) -> None:
    """A version-1 collection as the previous release left it: points 0..n-1 upserted and the
    index saved (flush), then `deleted` removed without a flush (so index.faiss still holds them)."""
    directory.mkdir(parents=True)
    db = sqlite3.connect(directory / "points.sqlite")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(_V1_TABLES)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    iids = np.arange(1, len(vectors) + 1, dtype=np.int64)
    payloads = [{"uri": f"/img/{i}.jpg", "path": f"{i}.jpg", "fingerprint": str(i),
                 "metadata": {"width": 100 + i, "height": 50}} for i in range(len(vectors))]  # fmt: skip
    with db:  # the old upsert: explicit iids from the sequence, one transaction
        db.executemany(
            "INSERT INTO points (iid, uuid, payload) VALUES (?, ?, ?)",
            [(int(n), uid(i), json.dumps(p)) for i, (n, p) in enumerate(zip(iids, payloads, strict=True))],
        )
        db.executemany(
            "INSERT INTO vectors (iid, vector) VALUES (?, ?)",
            [(int(n), v.astype(np.float32).tobytes()) for n, v in zip(iids, unit, strict=True)],
        )
        db.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('info', ?)", (json.dumps(info, sort_keys=True),)
        )
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(vectors.shape[1]))
    index.add_with_ids(unit.astype(np.float32), iids)
    faiss.write_index(index, str(directory / "index.faiss"))
    with db:
        db.executemany("DELETE FROM points WHERE iid = ?", [(i + 1,) for i in deleted])
        db.executemany("DELETE FROM vectors WHERE iid = ?", [(i + 1,) for i in deleted])
    db.close()
    (directory / "config.json").write_text(json.dumps({"dim": vectors.shape[1], "format": 1}))


def test_a_version_1_collection_reads_the_same_and_migrates_at_its_first_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(home=tmp_path / "home", store="faiss")
    directory = faiss_store.store_path(settings, "c")
    vectors = random_unit(50, seed=90, dim=16)
    deleted = [47, 48, 49]  # the highest iids: a new vid must not take them over
    model = identity(16).to_dict()
    write_version_1(directory, vectors, deleted, {"model": model, "failed": {"/bad.jpg": {"reason": "r"}}})
    live = [i for i in range(50) if i not in deleted]
    queries = random_unit(5, seed=91, dim=16)
    wide = Filter.parse({"must": [{"key": "metadata.width", "range": {"gte": 110, "lt": 130}}]})

    def check(store: FaissStore) -> None:
        assert store.count() == 47 and store.count(wide) == 20
        assert store.read_info() == {"failed": {"/bad.jpg": {"reason": "r"}}}
        for q in queries:
            assert [h.id for h in store.search(q, 10)] == [uid(live[j]) for j in top_k(vectors[live], q)]
            allowed = [i for i in live if 110 <= 100 + i < 130]
            assert [h.id for h in store.search(q, 5, filter=wide)] == [
                uid(allowed[j]) for j in top_k(vectors[allowed], q, 5)
            ]
        got = store.retrieve([uid(3)], with_vectors=True)[0]
        np.testing.assert_allclose(got.vectors["default"], vectors[3] / np.linalg.norm(vectors[3]), atol=1e-6)

    store = faiss_store.load(settings, "c")
    assert store.schema.vector().storage_key == "" and store.schema.vector().model.to_dict() == model
    assert store.schema.fields == {"width": "integer", "height": "integer"}
    check(store)
    store.close()
    db = sqlite3.connect(directory / "points.sqlite")  # reading did not migrate anything
    assert db.execute("SELECT name FROM sqlite_master WHERE name IN ('vectors', 'fields')").fetchall() == [
        ("vectors",)
    ]
    db.close()
    assert json.loads((directory / "config.json").read_text())["format"] == 1
    stale_index = (directory / "index.faiss").read_bytes()  # still holds the deleted 47..49

    store = faiss_store.load(settings, "c")
    newcomer = random_unit(1, seed=92, dim=16)[0]
    store.upsert([Record(id=uid(500), vectors={"default": newcomer}, payload={"metadata": {"width": 1}})])
    store.delete([uid(500)])  # back to the same points, now in layout 2
    check(store)
    store.upsert([Record(id=uid(501), vectors={"default": newcomer}, payload={"metadata": {"width": 1}})])
    store.close()

    db = sqlite3.connect(directory / "points.sqlite")
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"points", "meta", "fields", "vectors:"} <= tables and "vectors" not in tables
    assert db.execute('SELECT MIN(vid) FROM "vectors:" WHERE iid > 50').fetchone()[0] > 50
    document = json.loads(db.execute("SELECT value FROM meta WHERE key = 'info'").fetchone()[0])
    db.close()
    assert document["schema"]["version"] == 2 and "model" not in document
    assert document["schema"]["vectors"][0]["key"] == ""
    assert json.loads((directory / "config.json").read_text()) == {"format": 2}
    assert (directory / "index.faiss").is_file() and not list(directory.glob("index-*.faiss"))

    # As if killed before the index was saved: the old file must still be reconciled correctly.
    (directory / "index.faiss").write_bytes(stale_index)
    no_rebuilds(monkeypatch)
    store = faiss_store.load(settings, "c")
    assert store.search(newcomer, 1)[0].id == uid(501)
    store.delete([uid(501)])
    check(store)
    store.close()
