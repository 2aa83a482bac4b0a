"""FAISS-specific behaviour: index kinds, recall, tombstones, and recovery of a stale index file.

The VectorStore contract itself is tests/test_store_contract.py (with "faiss" among its kinds).
Each index kind is built once per module into a template home; tests work on copies of it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

faiss = pytest.importorskip("faiss")

from indexer.settings import Settings  # noqa: E402
from indexer.stores import faiss_store  # noqa: E402
from indexer.stores.base import Record, StoreError  # noqa: E402
from indexer.stores.faiss_store import FaissConfig, FaissStore  # noqa: E402

DIM = 64
REPO = Path(__file__).resolve().parents[1]
KINDS = ["flat", "hnsw", "ivfpq"]
CONFIGS = {
    "flat": FaissConfig(kind="flat"),
    "hnsw": FaissConfig(kind="hnsw"),
    # pq_m=8 (8 bytes per code) keeps PQ training to a few seconds on two cores.
    "ivfpq": FaissConfig(kind="ivfpq", pq_m=8),
}


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
        Record(id=uid(offset + i), vector=v, payload={"uri": f"/img/{offset + i}.jpg", "tag": tag})
        for i, v in enumerate(vectors)
    ]


def top_k(vectors: np.ndarray, query: np.ndarray, k: int = 10) -> list[int]:
    return list(np.argsort(-(vectors @ query), kind="stable")[:k])


def recall_at_10(store: FaissStore, vectors: np.ndarray, queries: np.ndarray) -> float:
    found = [
        len({uid(i) for i in top_k(vectors, q)} & {h.id for h in store.search(q, 10)}) / 10 for q in queries
    ]
    return float(np.mean(found))


# Sizes: ivfpq needs >= ivfpq_min_train (10k) vectors to be trained at all; 20k as asked for.
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
            store = faiss_store.create(Settings(home=home, store="faiss"), "c", DIM, CONFIGS[kind])
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

    def open(self) -> FaissStore:
        return faiss_store.load(self.settings, "c", DIM, CONFIGS[self.kind])


@pytest.fixture(params=KINDS)
def copy(request: pytest.FixtureRequest, templates: Callable, tmp_path: Path) -> Copy:
    return Copy(templates(request.param), tmp_path, request.param)


def no_rebuilds(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the index was rebuilt")

    monkeypatch.setattr(FaissStore, "_build", refuse)


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
            Record(id=uid(i), vector=v, payload={"new": True})
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
    store.write_info({"model": {"name": "m", "dim": DIM}})
    store.upsert(records(random_unit(3, seed=11), offset=10**6, tag="added"))
    store.delete([uid(3)])
    count = store.count()
    store.close()
    no_rebuilds(monkeypatch)

    store = copy.open()

    assert store.count() == count and store.index_kind == copy.kind
    stats = store.stats()  # hnsw and ivfpq+refine may keep a few tombstones in the saved index
    assert stats["indexed"] - stats["tombstones"] == count
    assert store.read_info() == {"model": {"name": "m", "dim": DIM}}
    got = store.retrieve([uid(7), uid(10**6), uid(3)], with_vectors=True)
    assert [r.id for r in got] == [uid(7), uid(10**6)]
    np.testing.assert_allclose(got[0].vector, copy.vectors[7], atol=1e-6)
    assert got[1].payload["tag"] == "added"
    assert store.search(copy.vectors[7], 1)[0].id == uid(7)
    assert sum(1 for _ in store.scan()) == count
    store.close()


def test_missing_index_file_is_rebuilt_from_the_database(copy: Copy) -> None:
    (copy.dir / faiss_store.INDEX_FILE).unlink()

    store = copy.open()

    assert store.count() == len(copy.vectors) and store.index_kind == copy.kind
    for i in (0, 17, len(copy.vectors) - 1):
        assert store.search(copy.vectors[i], 1)[0].id == uid(i)
    store.close()
    assert (copy.dir / faiss_store.INDEX_FILE).is_file()  # saved again on close


def test_stale_index_file_is_brought_up_to_date_on_open(copy: Copy, monkeypatch: pytest.MonkeyPatch) -> None:
    index_file = copy.dir / faiss_store.INDEX_FILE
    stale = index_file.read_bytes()
    store = copy.open()
    added = random_unit(30, seed=12)
    store.upsert(records(added, offset=10**6))
    store.delete([uid(i) for i in range(20)])
    store.upsert([Record(id=uid(20), vector=random_unit(1, seed=13)[0], payload={"new": True})])
    count = store.count()
    store.close()
    index_file.write_bytes(stale)  # as if killed after the writes, before any flush
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
import json, os, signal, sys, uuid
import numpy as np
from indexer.settings import Settings
from indexer.stores import Record, open_store
store = open_store(Settings(home=sys.argv[1], store="faiss"), "c", 8)
vectors = np.eye(8, dtype=np.float32)
store.upsert([Record(id=str(uuid.UUID(int=i + 1)), vector=vectors[i], payload={"i": i}) for i in range(4)])
store.flush()
store.upsert([Record(id=str(uuid.UUID(int=i + 1)), vector=vectors[i], payload={"i": i}) for i in range(4, 8)])
store.delete([str(uuid.UUID(int=1))])
store.write_info({"model": "m"})
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_writes_after_the_last_flush_survive_sigkill(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    home = tmp_path / "home"
    done = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(home)], cwd=REPO, env=env)
    assert done.returncode == -signal.SIGKILL

    store = faiss_store.load(Settings(home=home, store="faiss"), "c", 8)

    assert store.count() == 7 and store.read_info() == {"model": "m"}
    eye = np.eye(8, dtype=np.float32)
    assert [store.search(eye[i], 1)[0].payload for i in range(1, 8)] == [{"i": i} for i in range(1, 8)]
    assert uid(0) not in {h.id for h in store.search(eye[0], 8)}
    store.close()


# --- index kind selection ----------------------------------------------------------------


def test_auto_starts_exact_and_switches_to_hnsw_on_flush(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", store="faiss")
    vectors = random_unit(600, seed=21)
    store = faiss_store.create(settings, "c", DIM, FaissConfig(kind="auto", auto_hnsw_at=500))
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
    settings = Settings(home=tmp_path / "home", store="faiss")
    vectors = random_unit(500, seed=22)
    store = faiss_store.create(settings, "c", DIM, CONFIGS["ivfpq"])
    store.upsert(records(vectors))
    store.flush()

    assert store.index_kind == "flat"
    hits = store.search(vectors[9], 10)
    assert [h.id for h in hits] == [uid(i) for i in top_k(vectors, vectors[9])]
    store.close()


# --- misc --------------------------------------------------------------------------------


def test_a_collection_open_here_cannot_be_opened_or_dropped_again(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", store="faiss")
    store = faiss_store.create(settings, "c", DIM)
    with pytest.raises(StoreError, match="already open elsewhere"):
        faiss_store.load(settings, "c", DIM)
    with pytest.raises(StoreError, match="already open elsewhere"):
        faiss_store.drop(settings, "c")
    store.close()
    store.close()  # closing twice is harmless
    with pytest.raises(StoreError, match="closed"):
        store.count()
    faiss_store.drop(settings, "c")
    assert not settings.collection_dir("c").exists()


def test_unnormalised_vectors_are_stored_and_searched_as_cosine(tmp_path: Path) -> None:
    store = faiss_store.create(Settings(home=tmp_path / "home", store="faiss"), "c", DIM)
    vectors = random_unit(50, seed=23)
    store.upsert(records(vectors * 7.0))
    hit = store.search(vectors[3] * 0.1, 1)[0]
    assert hit.id == uid(3) and hit.score == pytest.approx(1.0, abs=1e-5)
    store.close()


def test_payloads_must_be_json(tmp_path: Path) -> None:
    store = faiss_store.create(Settings(home=tmp_path / "home", store="faiss"), "c", DIM)
    with pytest.raises(StoreError, match="not JSON"):
        store.upsert([Record(id=uid(0), vector=random_unit(1, seed=1)[0], payload={"x": object()})])
    assert store.count() == 0
    store.close()


def test_config_json_records_the_size(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", store="faiss")
    faiss_store.create(settings, "c", DIM).close()
    config = json.loads((faiss_store.store_path(settings, "c") / faiss_store.CONFIG_FILE).read_text())
    assert config["dim"] == DIM and faiss_store.existing_dim(settings, "c") == DIM
    assert faiss_store.list_collections(settings) == ["c"]


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
    cpu = faiss_store.load(copy.settings, "c", DIM, dataclasses.replace(CONFIGS[kind], use_gpu=False))
    on_cpu = [[h.id for h in cpu.search(q, 10)] for q in queries]
    cpu.close()
    agree = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(on_gpu, on_cpu, strict=True)])
    assert agree >= (1.0 if kind == "flat" else 0.9)


@pytest.mark.parametrize("refine", ["sq8", "none"])
def test_ivfpq_refine_variants(refine: str, tmp_path: Path) -> None:
    # Smaller than the template (training below PQ's ideal 39 * 256 points): fast, still trained.
    config = FaissConfig(kind="ivfpq", pq_m=8, refine=refine, ivfpq_min_train=3000)
    vectors = clustered_unit(4000, seed=41)
    store = faiss_store.create(Settings(home=tmp_path / "home", store="faiss"), "c", DIM, config)
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
