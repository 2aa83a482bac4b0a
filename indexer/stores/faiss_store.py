"""FAISS store: an in-process FAISS index per collection, with SQLite as the source of truth.

Layout under `collection_dir(name)/faiss/`:
- `config.json`    `{"dim": D, "format": 1}`, written once at creation; its presence makes the collection.
- `points.sqlite`  (WAL mode) `points(iid, uuid, payload)`, `vectors(iid, vector)` as float32 blobs,
                   `meta(key, value)` for the collection info. Every write commits here first.
- `index.faiss`    the FAISS index, rewritten atomically by flush()/close(): a cache of the database.
- `lock`           flock'd while a store is open: one open store per collection, as with edge.

Ids: every stored version of a record gets a fresh int64 `iid` (SQLite AUTOINCREMENT, never
reused), which is its FAISS id. Because an iid never changes meaning, index and database reconcile
by set difference alone: on open, iids in the index but not in the database become tombstones and
iids in the database but not in the index are added. So an index file that is stale or missing
(SIGKILL between flushes) costs time on open, never correctness.

Deletes and replacements put the old iid in a tombstone set that search filters out (fetching
more to make up). flush() then removes tombstones from indexes that can (flat, IVF-PQ without
refine) and rebuilds those that cannot (HNSW, IVF-PQ with refine) once tombstones pass 20%.

Index kinds (`FaissConfig.kind`): `flat` (exact IndexFlatIP), `hnsw` (IndexHNSWFlat), `ivfpq`
(IndexIVFPQ, re-scored exactly by IndexRefineFlat; exact flat until there are enough vectors to
train) and `auto` (flat below 100k vectors, HNSW above). Kind changes happen in flush().
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np

from indexer.durable import fsync_dir, write_atomic
from indexer.settings import Settings
from indexer.stores import canonical_id, checked_vector
from indexer.stores.base import Hit, Record, StoreError

try:
    import fcntl
except ImportError:  # Windows: no flock; a second writer is then not refused
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

STORE_DIR = "faiss"
CONFIG_FILE = "config.json"
DB_FILE = "points.sqlite"
INDEX_FILE = "index.faiss"
LOCK_FILE = "lock"
FORMAT = 1

SCROLL_PAGE = 1024
BUILD_PAGE = 8192  # vectors read from SQLite per step when (re)building an index
SQL_CHUNK = 500  # ids per `IN (...)` query

IndexKind = Literal["auto", "flat", "hnsw", "ivfpq"]
RefineKind = Literal["flat", "sq8", "none"]


@dataclass(frozen=True)
class FaissConfig:
    """Index tuning. The index kind and refine come from Settings; the rest are measured defaults."""

    kind: IndexKind = "auto"
    auto_hnsw_at: int = 100_000  # auto: exact flat search is fast enough below this many vectors
    hnsw_m: int = 32
    hnsw_ef_construction: int = 200
    hnsw_ef_search: int = 128
    ivf_nlist: int | None = None  # None: about sqrt(n), re-trained when n grows 4x
    ivf_nprobe: int | None = None  # None: nlist / 8, within [8, 128]
    pq_m: int | None = None  # None: about dim / 4 bytes per code (at most 64), dividing dim
    refine: RefineKind = "flat"  # exact re-scoring (4*dim bytes/vector), SQ8 (dim bytes) or none
    refine_k_factor: float = 16.0  # candidates re-scored per result; 8 misses ~1% of top-10s
    refine_min_candidates: int = 256  # small k still re-scores this many (PQ ranks coarsely)
    ivfpq_min_train: int = 10_000  # below this, ivfpq stays exact flat (PQ wants 39 * 256 points)
    rebuild_tombstone_ratio: float = 0.2
    use_gpu: bool = True  # only when faiss was built with GPU support and sees a GPU


CONFIG = FaissConfig()


def config_from(settings: Settings) -> FaissConfig:
    return replace(CONFIG, kind=settings.faiss_index, refine=settings.faiss_refine)


def store_path(settings: Settings, name: str) -> Path:
    return settings.collection_dir(name) / STORE_DIR


def existing_dim(settings: Settings, name: str) -> int | None:
    config_file = store_path(settings, name) / CONFIG_FILE
    if not config_file.is_file():
        return None
    try:
        return int(json.loads(config_file.read_text())["dim"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StoreError(f"collection {name!r}: unreadable faiss config {config_file}: {exc}") from exc


_SCHEMA = """
CREATE TABLE IF NOT EXISTS points (
    iid INTEGER PRIMARY KEY AUTOINCREMENT, uuid TEXT NOT NULL UNIQUE, payload TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS vectors (iid INTEGER PRIMARY KEY, vector BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
# Vectors live in their own table so that scans and payload lookups never read them.


def create(settings: Settings, name: str, dim: int, config: FaissConfig | None = None) -> FaissStore:
    """Build the collection in a temporary directory and rename it into place, so a crash
    mid-creation never leaves a half-made collection that looks real."""
    final = store_path(settings, name)
    tmp = final.with_name(f"{STORE_DIR}.creating-{os.getpid()}")
    final.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        db = _connect(tmp / DB_FILE)
        db.executescript(_SCHEMA)
        db.close()
        write_atomic(tmp / CONFIG_FILE, json.dumps({"dim": dim, "format": FORMAT}).encode())
        os.replace(tmp, final)
    except OSError as exc:  # another process created it first, or the disk refused
        shutil.rmtree(tmp, ignore_errors=True)
        if existing_dim(settings, name) is None:
            raise StoreError(f"collection {name!r}: cannot create {final}: {exc}") from exc
    except sqlite3.Error as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise StoreError(f"collection {name!r}: cannot create {final}: {exc}") from exc
    fsync_dir(final.parent)
    return load(settings, name, dim, config)


def load(settings: Settings, name: str, dim: int, config: FaissConfig | None = None) -> FaissStore:
    path = store_path(settings, name)
    lock = _lock(path, name)
    try:
        db = _connect(path / DB_FILE)
    except sqlite3.Error as exc:
        os.close(lock)
        raise StoreError(f"collection {name!r}: cannot open {path / DB_FILE}: {exc}") from exc
    try:
        return FaissStore(name, dim, path, db, lock, config or config_from(settings))
    except BaseException:
        db.close()
        os.close(lock)
        raise


def list_collections(settings: Settings) -> list[str]:
    root = settings.home / "collections"
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / STORE_DIR / CONFIG_FILE).is_file())


def drop(settings: Settings, name: str) -> None:
    path = store_path(settings, name)
    if existing_dim(settings, name) is None:
        return
    lock = _lock(path, name)  # refuses a collection open elsewhere instead of tearing it down
    try:
        # Rename first: a crash mid-delete then leaves no half-deleted collection behind.
        doomed = path.with_name(f"{STORE_DIR}.dropping-{os.getpid()}")
        os.replace(path, doomed)
        shutil.rmtree(doomed)
    finally:
        os.close(lock)
    with contextlib.suppress(OSError):  # other stores may keep files for this name there
        settings.collection_dir(name).rmdir()


class FaissStore:
    """A VectorStore over one FAISS index plus its SQLite database; thread-safe (one lock)."""

    def __init__(
        self, name: str, dim: int, path: Path, db: sqlite3.Connection, lock_fd: int, config: FaissConfig
    ) -> None:
        self.name = name
        self.dim = dim
        self.config = config
        self._dir = path
        self._db: sqlite3.Connection | None = db
        self._lock_fd = lock_fd
        self._mutex = threading.RLock()
        self._tombstones: set[int] = set()
        self._dirty = False  # the in-memory index differs from index.faiss
        self._gpu_index: Any = None  # search copy on the GPU, dropped on every change
        self._gpu_failed = False
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'points'").fetchone()
        self._next_iid = (int(row[0]) if row else 0) + 1
        self._index: Any = self._open_index()

    # --- VectorStore ---------------------------------------------------------------------

    def upsert(self, records: Sequence[Record]) -> None:
        latest: dict[str, Record] = {}  # last one wins when a batch repeats an id
        for record in records:
            latest[canonical_id(record.id)] = record
        if not latest:
            return
        keys = list(latest)
        vectors = _normalised(
            np.stack(
                [checked_vector(self.name, self.dim, r.vector, f"record {r.id}") for r in latest.values()]
            )
        )
        payloads = [self._payload_json(r) for r in latest.values()]
        with self._mutex, self._errors("upsert"):
            db = self.db
            iids = np.arange(self._next_iid, self._next_iid + len(keys), dtype=np.int64)
            with db:
                replaced = [iid for iid, _ in self._iids_for_uuids(keys)]
                self._delete_iids(replaced)
                db.executemany(
                    "INSERT INTO points (iid, uuid, payload) VALUES (?, ?, ?)",
                    zip(iids.tolist(), keys, payloads, strict=True),
                )
                db.executemany(
                    "INSERT INTO vectors (iid, vector) VALUES (?, ?)",
                    ((int(i), v.tobytes()) for i, v in zip(iids, vectors, strict=True)),
                )
            self._next_iid += len(keys)
            # Committed first: if the process dies now, the next open adds these to the index.
            self._tombstones.update(replaced)
            self._index.add_with_ids(vectors, iids)
            self._changed()

    def delete(self, ids: Sequence[str]) -> None:
        keys = [canonical_id(i) for i in ids]
        if not keys:
            return
        with self._mutex, self._errors("delete"):
            with self.db:
                gone = [iid for iid, _ in self._iids_for_uuids(keys)]
                self._delete_iids(gone)
            self._tombstones.update(gone)
            if gone:
                self._changed()

    def search(self, vector: np.ndarray, k: int) -> list[Hit]:
        if k <= 0:
            return []
        query = _normalised(checked_vector(self.name, self.dim, vector, "query")[None, :])
        with self._mutex, self._errors("search"):
            found = self._nearest(query, k)
            rows = {
                iid: (uuid, payload)
                for iid, uuid, payload in self._select_in(
                    "SELECT iid, uuid, payload FROM points WHERE iid IN ({})", [iid for iid, _ in found]
                )
            }
        return [
            Hit(id=rows[iid][0], score=score, payload=json.loads(rows[iid][1]))
            for iid, score in found
            if iid in rows
        ]

    def retrieve(self, ids: Sequence[str], with_vectors: bool = False) -> list[Record]:
        keys = [canonical_id(i) for i in ids]
        if not keys:
            return []
        if with_vectors:
            sql = (
                "SELECT p.uuid, p.payload, v.vector FROM points p JOIN vectors v ON v.iid = p.iid"
                " WHERE p.uuid IN ({})"
            )
        else:
            sql = "SELECT uuid, payload, NULL FROM points WHERE uuid IN ({})"
        with self._mutex, self._errors("retrieve"):
            found = {uuid: (payload, blob) for uuid, payload, blob in self._select_in(sql, keys)}
        return [
            Record(id=key, vector=self._vector(found[key][1]), payload=json.loads(found[key][0]))
            for key in keys
            if key in found
        ]

    def scan(self) -> Iterator[Record]:
        # Pages by iid, each its own query, so writes between pages cannot upset a cursor.
        last = 0
        while True:
            with self._mutex, self._errors("scan"):
                page = self.db.execute(
                    "SELECT iid, uuid, payload FROM points WHERE iid > ? ORDER BY iid LIMIT ?",
                    (last, SCROLL_PAGE),
                ).fetchall()
            for _, uuid, payload in page:
                yield Record(id=uuid, vector=None, payload=json.loads(payload))
            if len(page) < SCROLL_PAGE:
                return
            last = page[-1][0]

    def count(self) -> int:
        with self._mutex:
            _ = self.db  # raises when closed
            # The index holds every live iid plus the tombstones, and nothing else.
            return int(self._index.ntotal) - len(self._tombstones)

    def read_info(self) -> dict[str, Any]:
        with self._mutex, self._errors("read info"):
            row = self.db.execute("SELECT value FROM meta WHERE key = 'info'").fetchone()
        return json.loads(row[0]) if row else {}

    def write_info(self, info: dict[str, Any]) -> None:
        text = json.dumps(info, sort_keys=True)
        with self._mutex, self._errors("write info"):
            with self.db:
                self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('info', ?)", (text,))
            # synchronous=NORMAL only syncs the WAL at checkpoints; info is rare and must last.
            self.db.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def flush(self) -> None:
        with self._mutex, self._errors("flush"):
            self._maintain()
            if self._dirty:
                _write_index(self._index, self._dir / INDEX_FILE)
                self._dirty = False
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # syncs the WAL, then the database

    def close(self) -> None:
        with self._mutex:
            if self._db is None:
                return
            try:
                self.flush()
            finally:
                self._db.close()
                self._db = None
                os.close(self._lock_fd)  # releases the flock
                self._index = self._gpu_index = None

    def __enter__(self) -> FaissStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- introspection (tests, status) ---------------------------------------------------

    @property
    def index_kind(self) -> str:
        """The kind of index in use now: flat, hnsw or ivfpq."""
        with self._mutex:
            return _signature(self._index)[0]

    def stats(self) -> dict[str, Any]:
        with self._mutex:
            return {
                "kind": _signature(self._index)[0],
                "indexed": int(self._index.ntotal),
                "tombstones": len(self._tombstones),
                "gpu": self._gpu_index is not None,
            }

    # --- the index -----------------------------------------------------------------------

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError(f"collection {self.name!r} is closed")
        return self._db

    def _open_index(self) -> Any:
        """The saved index brought up to date with the database, or a fresh build."""
        live = np.fromiter(
            (row[0] for row in self.db.execute("SELECT iid FROM points ORDER BY iid")), dtype=np.int64
        )
        index = _read_index(self._dir / INDEX_FILE, self.dim, self.name)
        target = self._target(len(live), None if index is None else _signature(index))
        if index is None or _signature(index) != target:
            self._dirty = True
            return self._build(target, len(live))
        held = faiss.vector_to_array(index.id_map).astype(np.int64)
        stale = np.setdiff1d(held, live, assume_unique=True)
        missing = np.setdiff1d(live, held, assume_unique=True)
        if len(stale) or len(missing):
            log.info(
                "collection %r: index file was behind the database; %d stale, %d missing vectors",
                self.name, len(stale), len(missing),
            )  # fmt: skip
            self._dirty = True
        self._tombstones = set(stale.tolist())
        for start in range(0, len(missing), BUILD_PAGE):
            chunk = missing[start : start + BUILD_PAGE]
            index.add_with_ids(self._vectors_for(chunk), chunk)
        self._tune(index)
        return index

    def _maintain(self) -> None:
        """Kind changes, tombstone removal and rebuilds: the slow work, done in flush()."""
        current = _signature(self._index)
        live = int(self._index.ntotal) - len(self._tombstones)
        target = self._target(live, current)
        if target != current or self._needs_retrain(live):
            self._index = self._build(target, live)
        elif self._tombstones:
            if _can_remove(self._index):
                self._index.remove_ids(np.fromiter(self._tombstones, dtype=np.int64))
                self._tombstones.clear()
                self._changed()
            elif len(self._tombstones) > self.config.rebuild_tombstone_ratio * self._index.ntotal:
                self._index = self._build(target, live, reuse=self._index)

    def _target(self, n: int, current: tuple[str, Any] | None) -> tuple[str, Any]:
        """The signature (kind, build parameter) the index should have for n live vectors;
        with hysteresis, so a collection near a threshold does not flip back and forth."""
        cfg = self.config
        kind = cfg.kind
        now = current[0] if current else None
        if kind == "auto":
            kind = "hnsw" if n >= (cfg.auto_hnsw_at // 2 if now == "hnsw" else cfg.auto_hnsw_at) else "flat"
        elif kind == "ivfpq":
            floor = cfg.ivfpq_min_train // 2 if now == "ivfpq" else cfg.ivfpq_min_train
            kind = "ivfpq" if n >= floor else "flat"
        return (kind, {"flat": None, "hnsw": cfg.hnsw_m, "ivfpq": cfg.refine}[kind])

    def _needs_retrain(self, n: int) -> bool:
        # IVF centroids trained on a small collection fit a grown one badly: re-train at 4x.
        if self.config.ivf_nlist is not None or _signature(self._index)[0] != "ivfpq":
            return False
        return self._nlist_for(n) >= 2 * faiss.extract_index_ivf(self._index).nlist

    def _nlist_for(self, n: int) -> int:
        nlist = self.config.ivf_nlist or _auto_nlist(n)
        return max(1, min(nlist, n // 39))  # k-means wants ~39 training points per centroid

    def _build(self, signature: tuple[str, Any], n: int, reuse: Any = None) -> Any:
        """An index of the given kind over every vector in the database. With `reuse`, that
        index is emptied and refilled in place: peak memory stays 1x, and IVF keeps its training."""
        kind, _ = signature
        cfg = self.config
        log.info("collection %r: building a %s index over %d vectors", self.name, kind, n)
        if reuse is not None:
            index = reuse
            index.reset()
        else:
            if kind == "flat":
                inner = faiss.IndexFlatIP(self.dim)
            elif kind == "hnsw":
                inner = faiss.IndexHNSWFlat(self.dim, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
                inner.hnsw.efConstruction = cfg.hnsw_ef_construction
            else:
                inner = self._trained_ivfpq(n)
            index = faiss.IndexIDMap2(inner)
        for iids, vectors in self._vector_pages():
            index.add_with_ids(vectors, iids)
        self._tune(index)
        self._tombstones.clear()
        self._changed()
        return index

    def _trained_ivfpq(self, n: int) -> Any:
        cfg, d = self.config, self.dim
        pq_m = cfg.pq_m or _auto_pq_m(d)
        if d % pq_m:
            raise StoreError(f"collection {self.name!r}: pq_m={pq_m} must divide the vector size {d}")
        iids = np.fromiter((row[0] for row in self.db.execute("SELECT iid FROM vectors")), dtype=np.int64)
        nlist = self._nlist_for(len(iids))
        sample_size = min(len(iids), max(64 * nlist, 40 * 256))
        sample = np.sort(np.random.default_rng(0).choice(iids, size=sample_size, replace=False))
        quantizer = faiss.IndexFlatIP(d)
        ivf = faiss.IndexIVFPQ(quantizer, d, nlist, pq_m, 8, faiss.METRIC_INNER_PRODUCT)
        ivf.cp.spherical = True  # unit vectors: centroids on the sphere fit inner product
        if cfg.refine == "flat":
            index = faiss.IndexRefineFlat(ivf)
        elif cfg.refine == "sq8":
            refine = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
            index = faiss.IndexRefine(ivf, refine)
        else:
            index = ivf
        index.train(self._vectors_for(sample))
        return index

    def _tune(self, index: Any) -> None:
        """Search-time parameters: not all are saved in the index file, so set on every open."""
        cfg = self.config
        inner = faiss.downcast_index(index.index)
        if isinstance(inner, faiss.IndexHNSW):
            inner.hnsw.efSearch = cfg.hnsw_ef_search
        if _signature(index)[0] == "ivfpq":
            ivf = faiss.extract_index_ivf(index)
            ivf.nprobe = cfg.ivf_nprobe or min(128, max(8, ivf.nlist // 8))

    def _nearest(self, query: np.ndarray, k: int) -> list[tuple[int, float]]:
        """(iid, score) of the k best live vectors; over-fetches past tombstones."""
        total = int(self._index.ntotal)
        live = total - len(self._tombstones)
        if live <= 0:
            return []
        want = min(k, live)
        fetch = want if not self._tombstones else min(total, math.ceil(want * total / live) + 16)
        searcher = self._searcher()
        refine = _signature(self._index) in {("ivfpq", "flat"), ("ivfpq", "sq8")}
        while True:
            params = None
            if refine:  # k_factor per search, so that a small k still gets enough candidates
                k_factor = max(self.config.refine_k_factor, self.config.refine_min_candidates / fetch)
                params = faiss.IndexRefineSearchParameters(k_factor=k_factor)
            with _one_omp_thread():
                scores, labels = searcher.search(query, fetch, params=params)
            found = [
                (int(iid), float(score))
                for iid, score in zip(labels[0], scores[0], strict=True)
                if iid >= 0 and int(iid) not in self._tombstones
            ]
            # -1 labels mean the index has nothing more to give (IVF: probed lists exhausted).
            if len(found) >= want or fetch >= total or (labels[0] < 0).any():
                return found[:k]
            fetch = min(total, fetch * 2)

    def _searcher(self) -> Any:
        """A GPU copy of flat and IVF indexes when faiss has a GPU; the CPU index otherwise.
        The CPU index stays the one that is written to and saved. Untested here (no GPU)."""
        if not self.config.use_gpu or self._gpu_failed or _signature(self._index)[0] == "hnsw":
            return self._index
        if self._gpu_index is None:
            if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0:
                self._gpu_failed = True  # faiss-cpu, or no visible GPU: never ask again
                return self._index
            try:
                self._gpu_index = faiss.index_cpu_to_gpu(_gpu_resources(), 0, self._index)
            except Exception as exc:  # e.g. a PQ size the GPU kernels do not support
                log.warning("collection %r: searching on CPU, GPU copy failed: %s", self.name, exc)
                self._gpu_failed = True
                return self._index
        return self._gpu_index

    def _changed(self) -> None:
        self._dirty = True
        self._gpu_index = None  # re-copied on the next search

    # --- the database --------------------------------------------------------------------

    def _select_in(self, sql: str, values: Sequence[Any]) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = []
        for start in range(0, len(values), SQL_CHUNK):
            chunk = list(values[start : start + SQL_CHUNK])
            rows += self.db.execute(sql.format(",".join("?" * len(chunk))), chunk).fetchall()
        return rows

    def _iids_for_uuids(self, keys: Sequence[str]) -> list[tuple[int, str]]:
        return [
            (int(i), u) for i, u in self._select_in("SELECT iid, uuid FROM points WHERE uuid IN ({})", keys)
        ]

    def _delete_iids(self, iids: Sequence[int]) -> None:
        for start in range(0, len(iids), SQL_CHUNK):
            chunk = list(iids[start : start + SQL_CHUNK])
            marks = ",".join("?" * len(chunk))
            self.db.execute(f"DELETE FROM points WHERE iid IN ({marks})", chunk)
            self.db.execute(f"DELETE FROM vectors WHERE iid IN ({marks})", chunk)

    def _vectors_for(self, iids: np.ndarray) -> np.ndarray:
        """Vectors for existing iids, in the order given."""
        rows = dict(self._select_in("SELECT iid, vector FROM vectors WHERE iid IN ({})", iids.tolist()))
        return self._matrix([rows[int(i)] for i in iids])

    def _vector_pages(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        last = 0
        while True:
            rows = self.db.execute(
                "SELECT iid, vector FROM vectors WHERE iid > ? ORDER BY iid LIMIT ?", (last, BUILD_PAGE)
            ).fetchall()
            if not rows:
                return
            yield np.array([r[0] for r in rows], dtype=np.int64), self._matrix([r[1] for r in rows])
            last = rows[-1][0]

    def _matrix(self, blobs: Sequence[bytes]) -> np.ndarray:
        return np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(blobs), self.dim).astype(np.float32)

    def _vector(self, blob: bytes | None) -> np.ndarray | None:
        return None if blob is None else np.frombuffer(blob, dtype="<f4").astype(np.float32)

    def _payload_json(self, record: Record) -> str:
        try:
            return json.dumps(record.payload)
        except (TypeError, ValueError) as exc:
            raise StoreError(f"collection {self.name!r}: payload of {record.id} is not JSON: {exc}") from exc

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """sqlite3 and faiss raise their own errors; callers get StoreError naming the collection."""
        try:
            yield
        except StoreError:
            raise
        except (sqlite3.Error, RuntimeError, OSError) as exc:
            raise StoreError(f"collection {self.name!r}: {action} failed: {exc}") from exc


# --- helpers ---------------------------------------------------------------------------------


def _signature(index: Any) -> tuple[str, Any]:
    """(kind, build parameter) of an IndexIDMap2-wrapped index: what decides a rebuild."""
    inner = faiss.downcast_index(index.index)
    if isinstance(inner, faiss.IndexHNSW):
        return ("hnsw", inner.hnsw.nb_neighbors(1))  # level-0 holds 2*M links, upper levels M
    if isinstance(inner, faiss.IndexRefineFlat):
        return ("ivfpq", "flat")
    if isinstance(inner, faiss.IndexRefine):
        return ("ivfpq", "sq8")
    if isinstance(inner, faiss.IndexIVF):
        return ("ivfpq", "none")
    return ("flat", None)


def _can_remove(index: Any) -> bool:
    # HNSW graphs and IndexRefine have no remove_ids in FAISS; flat and plain IVF do.
    return _signature(index) in {("flat", None), ("ivfpq", "none")}


def _auto_nlist(n: int) -> int:
    """About sqrt(n) inverted lists, as a power of two in [16, 65536]."""
    return int(min(65536, max(16, 2 ** round(math.log2(max(1.0, math.sqrt(n)))))))


def _auto_pq_m(dim: int) -> int:
    m = max(1, min(64, dim // 4))
    while dim % m:
        m -= 1
    return m


def _normalised(vectors: np.ndarray) -> np.ndarray:
    # Scores are cosine similarities, as with Qdrant's Cosine distance; zero vectors stay zero.
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.ascontiguousarray(vectors / np.where(norms > 0, norms, 1), dtype=np.float32)


@contextlib.contextmanager
def _one_omp_thread() -> Iterator[None]:
    """FAISS parallelises over queries, so one query gains nothing from OpenMP; but IndexIDMap's
    parallel label translation costs milliseconds when the cores are busy (torch encoding in the
    same process, other searches). The setting is per calling thread, so this is thread-safe."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


_gpu_res: Any = None


def _gpu_resources() -> Any:
    global _gpu_res
    if _gpu_res is None:
        _gpu_res = faiss.StandardGpuResources()  # one per process: it reserves GPU scratch memory
    return _gpu_res


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, check_same_thread=False)  # FaissStore serialises access itself
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")  # survives SIGKILL; flush() checkpoints for power loss
    return db


def _lock(path: Path, name: str) -> int:
    fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreError(
                f"collection {name!r} is already open elsewhere (an index run or the API server); "
                f"stop it first or use store=qdrant for concurrent access"
            ) from None
    return fd


def _read_index(path: Path, dim: int, name: str) -> Any:
    """The saved index, or None when there is none usable (then it is rebuilt from SQLite)."""
    if not path.is_file():
        return None
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as exc:
        log.warning("collection %r: rebuilding unreadable index %s: %s", name, path, exc)
        return None
    if not isinstance(index, faiss.IndexIDMap2) or index.d != dim:
        log.warning("collection %r: rebuilding index %s of an unexpected shape", name, path)
        return None
    return index


def _write_index(index: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    faiss.write_index(index, str(tmp))
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
