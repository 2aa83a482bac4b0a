"""One FAISS index per named vector: building, tuning, reconciling with SQLite, and searching.

The index holds vector ids (`vid`s, never reused; see db.py) and is a cache of the vector table:
on open, ids in the file but not in the table become tombstones and ids in the table but not in
the file are added, so a stale or missing file costs time, never correctness. Deletes put ids in
a tombstone set that searches skip; `maintain()` (called by flush) removes them from indexes that
can (flat, IVF-PQ without refine) and rebuilds the others once tombstones pass 20%.

Kinds: `flat` (exact IndexFlatIP), `hnsw` (IndexHNSWFlat), `ivfpq` (IndexIVFPQ re-scored exactly by
IndexRefineFlat; flat until there are enough vectors to train) and `auto` (flat below 100k, HNSW above).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, Protocol

import faiss
import numpy as np

from indexer.durable import fsync_dir
from indexer.errors import StoreError
from indexer.settings import Settings

log = logging.getLogger(__name__)

IndexKind = Literal["auto", "flat", "hnsw", "ivfpq"]
RefineKind = Literal["flat", "sq8", "none"]


@dataclass(frozen=True)
class FaissConfig:
    """Index tuning. Kind, refine and HNSW ef come from Settings; the rest are measured defaults."""

    kind: IndexKind = "auto"
    auto_hnsw_at: int = 100_000  # auto: exact flat search is fast enough below this many vectors
    hnsw_m: int = 32
    hnsw_ef_construction: int = 200
    hnsw_ef_search: int = 256  # settings.hnsw_ef
    ivf_nlist: int | None = None  # None: about sqrt(n), re-trained when n grows 4x
    ivf_nprobe: int | None = None  # None: nlist / 8, within [8, 128]
    pq_m: int | None = None  # None: about dim / 4 bytes per code (at most 64), dividing dim
    refine: RefineKind = "flat"  # exact re-scoring (4*dim bytes/vector), SQ8 (dim bytes) or none
    refine_k_factor: float = 16.0  # candidates re-scored per result; 8 misses ~1% of top-10s
    refine_min_candidates: int = 256  # small k still re-scores this many (PQ ranks coarsely)
    ivfpq_min_train: int = 10_000  # below this, ivfpq stays exact flat (PQ wants 39 * 256 points)
    rebuild_tombstone_ratio: float = 0.2
    # A filter that keeps at most this many vectors, or this share of them, is searched exactly
    # over just those vectors (read from SQLite, ~6 us each) instead of through the index with an
    # id selector (a flat scan of everything; HNSW loses recall when few points pass).
    exact_max: int = 2048
    exact_fraction: float = 0.01
    # A filter that keeps many points is applied after an unfiltered search (search.py, post-filtering):
    # the nearest `post_filter_factor` x k are read and those that pass kept; when fewer than k pass,
    # the next read is as deep as the pass rate seen asks for, up to `post_filter_max` (0: never
    # post-filter), and past that the filtered path above runs. Only filters that keep at least
    # `post_filter_min_share` of the points (or `post_filter_probe` of them: counted in SQL, up to
    # that many) are tried, so a selective one costs no wasted search. At 50% kept over 100k points
    # the id selector path spent most of its time listing the 50k passing ids. 16 x k: at 10% kept one
    # read mostly has enough (8 x k needed a second read about half the time: 1.3-1.7x slower).
    post_filter_factor: float = 16.0
    post_filter_max: int = 1024
    post_filter_min_share: float = 0.02
    post_filter_probe: int = 4096
    # The exact path reads the passing points' vectors from a flat or HNSW index's memory (False: from
    # SQLite, as before; for comparison).
    exact_from_index: bool = True
    use_gpu: bool = True  # only when faiss was built with GPU support and sees a GPU


def config_from(settings: Settings) -> FaissConfig:
    return replace(
        FaissConfig(),
        kind=settings.faiss.index,
        refine=settings.faiss.refine,
        hnsw_ef_search=settings.hnsw_ef,
    )


class VectorSource(Protocol):
    """Where an index gets its vectors: one vector table (db.VectorTable)."""

    dim: int

    def live_ids(self) -> np.ndarray: ...  # every vid, ascending

    def vectors_for(self, ids: np.ndarray) -> np.ndarray: ...  # in the order given

    def pages(self) -> Iterator[tuple[np.ndarray, np.ndarray]]: ...  # (vids, vectors) in vid order


class VectorIndex:
    """The FAISS index of one vector; callers serialise access (the store's lock)."""

    def __init__(self, label: str, path: Path, source: VectorSource, config: FaissConfig) -> None:
        self.label = label  # for messages: collection and vector
        self.path = path
        self.source = source
        self.config = config
        self._tombstones: set[int] = set()
        self._dirty = False  # the in-memory index differs from the file
        self._gpu_index: Any = None  # search copy on the GPU, dropped on every change
        self._gpu_failed = False
        self._ascending_ids: tuple[int, bool] | None = None  # (ntotal, whether id_map ascends) cache
        self._index: Any = self._open()

    # --- state ---------------------------------------------------------------------------

    @property
    def kind(self) -> str:
        return _signature(self._index)[0]

    @property
    def live(self) -> int:
        return int(self._index.ntotal) - len(self._tombstones)

    def stats(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "indexed": int(self._index.ntotal),
            "tombstones": len(self._tombstones),
            "gpu": self._gpu_index is not None,
            "ef_search": self.config.hnsw_ef_search,
        }

    @property
    def faiss_index(self) -> Any:
        return self._index

    def stored_vectors(self, ids: np.ndarray) -> np.ndarray | None:
        """The vectors of `ids` (live vids) as a flat or HNSW index holds them, which are the table's
        (the index is built from it), gathered from the index's memory: ~100x faster than reading them
        from SQLite (10,000 vectors: a few ms against hundreds). None when the index holds approximations
        (IVF-PQ) or its ids are not in ascending order (after an open that caught up with the table)."""
        if not self.config.exact_from_index or self.kind not in ("flat", "hnsw") or not len(ids):
            return None
        inner = faiss.downcast_index(self._index.index)
        storage = inner if isinstance(inner, faiss.IndexFlat) else faiss.downcast_index(inner.storage)
        n, dim = int(storage.ntotal), int(storage.d)
        held = faiss.rev_swig_ptr(self._index.id_map.data(), n)  # views, no copies
        if self._ascending_ids is None or self._ascending_ids[0] != n:
            self._ascending_ids = (n, bool(n < 2 or (np.diff(held) > 0).all()))
        if not self._ascending_ids[1]:
            return None
        at = np.searchsorted(held, ids)
        if (at >= n).any() or not np.array_equal(held[np.minimum(at, n - 1)], ids):
            return None
        return faiss.rev_swig_ptr(storage.get_xb(), n * dim).reshape(n, dim)[at]

    # --- changes -------------------------------------------------------------------------

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids):
            self._index.add_with_ids(vectors, ids)
            self._changed()

    def remove(self, ids: list[int]) -> None:
        if ids:
            self._tombstones.update(ids)
            self._changed()

    def maintain(self) -> None:
        """Kind changes, tombstone removal and rebuilds: the slow work, done in flush()."""
        current = _signature(self._index)
        target = self._target(self.live, current)
        if target != current or self._needs_retrain(self.live):
            self._index = self._build(target, self.live)
        elif self._tombstones:
            if _can_remove(self._index):
                self._index.remove_ids(np.fromiter(self._tombstones, dtype=np.int64))
                self._tombstones.clear()
                self._changed()
            elif len(self._tombstones) > self.config.rebuild_tombstone_ratio * self._index.ntotal:
                self._index = self._build(target, self.live, reuse=self._index)

    def save(self) -> None:
        if self._dirty:
            _write_index(self._index, self.path)
            self._dirty = False

    def release(self) -> None:
        self._index = self._gpu_index = None

    # --- search --------------------------------------------------------------------------

    def nearest(self, query: np.ndarray, want: int) -> list[tuple[int, float]]:
        """(vid, score) of at least the `want` best live vectors (all of them if fewer), best first,
        plus every vector tied with the last of those: callers order ties, so they need them all."""
        total = int(self._index.ntotal)
        if self.live <= 0 or want <= 0:
            return []
        goal = min(want, self.live)
        # One more than asked shows whether the last result's tie group goes on.
        fetch = min(total, goal + 1 if not self._tombstones else math.ceil(goal * total / self.live) + 16)
        searcher = self._searcher()
        while True:
            params = self._params(fetch)
            with one_omp_thread():
                scores, labels = searcher.search(query, fetch, params=params)
            found = [
                (int(i), float(s))
                for i, s in zip(labels[0], scores[0], strict=True)
                if i >= 0 and int(i) not in self._tombstones
            ]
            # -1 labels mean the index has nothing more to give (IVF: probed lists exhausted).
            if fetch >= total or (labels[0] < 0).any() or _complete(found, goal):
                return found
            fetch = min(total, fetch * 2)

    def nearest_among(self, query: np.ndarray, want: int, ids: np.ndarray) -> list[tuple[int, float]]:
        """Like `nearest`, over the vectors `ids` (live vids) only, through a FAISS id selector."""
        if want <= 0 or not len(ids):
            return []
        goal = min(want, len(ids))
        # The selector sees the inner index's positions: IDSelectorTranslated maps them to vids.
        # IndexIDMap2 leaves a selector that is already translated alone; IndexRefine ignores a
        # top-level one (tested), so for refine it goes to the base index's parameters.
        batch = faiss.IDSelectorBatch(np.ascontiguousarray(ids, dtype=np.int64))
        selector = faiss.IDSelectorTranslated(self._index.id_map, batch)
        fetch = min(len(ids), goal + 1)
        while True:
            params = self._params(fetch, selector)
            with one_omp_thread():
                scores, labels = self._index.search(query, fetch, params=params)
            found = [(int(i), float(s)) for i, s in zip(labels[0], scores[0], strict=True) if i >= 0]
            if fetch >= len(ids) or (labels[0] < 0).any() or _complete(found, goal):
                return found
            fetch = min(len(ids), fetch * 2)

    def _params(self, fetch: int, selector: Any = None) -> Any:
        """Search parameters; without a selector only what the index does not hold itself, so the
        same parameters suit a GPU copy (which keeps the CPU index's nprobe)."""
        kind, refine = _signature(self._index)
        cfg = self.config
        if kind == "hnsw":
            return faiss.SearchParametersHNSW(sel=selector, efSearch=max(cfg.hnsw_ef_search, fetch))
        if kind == "flat":
            return None if selector is None else faiss.SearchParameters(sel=selector)
        base = None
        if selector is not None:
            base = faiss.SearchParametersIVF(sel=selector, nprobe=faiss.extract_index_ivf(self._index).nprobe)
        if refine == "none":
            return base
        # k_factor per search, so that a small k still gets enough candidates
        k_factor = max(cfg.refine_k_factor, cfg.refine_min_candidates / fetch)
        if base is None:
            return faiss.IndexRefineSearchParameters(k_factor=k_factor)
        return faiss.IndexRefineSearchParameters(k_factor=k_factor, base_index_params=base)

    def _searcher(self) -> Any:
        """A GPU copy of flat and IVF indexes when faiss has a GPU; the CPU index otherwise. The CPU
        index stays the one written to and saved; filtered searches always use it."""
        if not self.config.use_gpu or self._gpu_failed or self.kind == "hnsw":
            return self._index
        if self._gpu_index is None:
            if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0:
                self._gpu_failed = True  # faiss-cpu, or no visible GPU: never ask again
                return self._index
            try:
                self._gpu_index = faiss.index_cpu_to_gpu(_gpu_resources(), 0, self._index)
            except Exception as exc:  # e.g. a PQ size the GPU kernels do not support
                log.warning("%s: searching on CPU, GPU copy failed: %s", self.label, exc)
                self._gpu_failed = True
                return self._index
        return self._gpu_index

    def _changed(self) -> None:
        self._ascending_ids = None
        self._dirty = True
        self._gpu_index = None  # re-copied on the next search

    # --- building ------------------------------------------------------------------------

    def _open(self) -> Any:
        """The saved index brought up to date with the vector table, or a fresh build."""
        live = self.source.live_ids()
        index = _read_index(self.path, self.source.dim, self.label)
        target = self._target(len(live), None if index is None else _signature(index))
        if index is None or _signature(index) != target:
            self._dirty = True
            return self._build(target, len(live))
        held = faiss.vector_to_array(index.id_map).astype(np.int64)
        stale = np.setdiff1d(held, live, assume_unique=True)
        missing = np.setdiff1d(live, held, assume_unique=True)
        if len(stale) or len(missing):
            log.info("%s: index file was behind the database; %d stale, %d missing vectors",
                     self.label, len(stale), len(missing))  # fmt: skip
            self._dirty = True
        self._tombstones = set(stale.tolist())
        for start in range(0, len(missing), BUILD_PAGE):
            chunk = missing[start : start + BUILD_PAGE]
            index.add_with_ids(self.source.vectors_for(chunk), chunk)
        self._tune(index)
        return index

    def _target(self, n: int, current: tuple[str, Any] | None) -> tuple[str, Any]:
        """The signature (kind, build parameter) the index should have for n live vectors;
        with hysteresis, so a collection near a threshold does not flip back and forth."""
        cfg = self.config
        kind: str = cfg.kind
        now = current[0] if current else None
        if kind == "auto":
            kind = "hnsw" if n >= (cfg.auto_hnsw_at // 2 if now == "hnsw" else cfg.auto_hnsw_at) else "flat"
        elif kind == "ivfpq":
            floor = cfg.ivfpq_min_train // 2 if now == "ivfpq" else cfg.ivfpq_min_train
            kind = "ivfpq" if n >= floor else "flat"
        return (kind, {"flat": None, "hnsw": cfg.hnsw_m, "ivfpq": cfg.refine}[kind])

    def _needs_retrain(self, n: int) -> bool:
        # IVF centroids trained on a small collection fit a grown one badly: re-train at 4x.
        if self.config.ivf_nlist is not None or self.kind != "ivfpq":
            return False
        return self._nlist_for(n) >= 2 * faiss.extract_index_ivf(self._index).nlist

    def _nlist_for(self, n: int) -> int:
        nlist = self.config.ivf_nlist or _auto_nlist(n)
        return max(1, min(nlist, n // 39))  # k-means wants ~39 training points per centroid

    def _build(self, signature: tuple[str, Any], n: int, reuse: Any = None) -> Any:
        """An index of the given kind over every vector in the table. With `reuse`, that index is
        emptied and refilled in place: peak memory stays 1x, and IVF keeps its training."""
        kind, _ = signature
        cfg, dim = self.config, self.source.dim
        log.info("%s: building a %s index over %d vectors", self.label, kind, n)
        if reuse is not None:
            index = reuse
            index.reset()
        else:
            if kind == "flat":
                inner = faiss.IndexFlatIP(dim)
            elif kind == "hnsw":
                inner = faiss.IndexHNSWFlat(dim, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
                inner.hnsw.efConstruction = cfg.hnsw_ef_construction
            else:
                inner = self._trained_ivfpq()
            index = faiss.IndexIDMap2(inner)
        for ids, vectors in self.source.pages():
            index.add_with_ids(vectors, ids)
        self._tune(index)
        self._tombstones.clear()
        self._changed()
        return index

    def _trained_ivfpq(self) -> Any:
        cfg, d = self.config, self.source.dim
        pq_m = cfg.pq_m or _auto_pq_m(d)
        if d % pq_m:
            raise StoreError(f"{self.label}: pq_m={pq_m} must divide the vector size {d}")
        ids = self.source.live_ids()
        nlist = self._nlist_for(len(ids))
        sample_size = min(len(ids), max(64 * nlist, 40 * 256))
        sample = np.sort(np.random.default_rng(0).choice(ids, size=sample_size, replace=False))
        ivf = faiss.IndexIVFPQ(faiss.IndexFlatIP(d), d, nlist, pq_m, 8, faiss.METRIC_INNER_PRODUCT)
        ivf.cp.spherical = True  # unit vectors: centroids on the sphere fit inner product
        if cfg.refine == "flat":
            index = faiss.IndexRefineFlat(ivf)
        elif cfg.refine == "sq8":
            refine = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
            index = faiss.IndexRefine(ivf, refine)
        else:
            index = ivf
        index.train(self.source.vectors_for(sample))
        return index

    def _tune(self, index: Any) -> None:
        """Search-time parameters: not all are saved in the index file, so set on every open."""
        inner = faiss.downcast_index(index.index)
        if isinstance(inner, faiss.IndexHNSW):
            inner.hnsw.efSearch = self.config.hnsw_ef_search
        if _signature(index)[0] == "ivfpq":
            ivf = faiss.extract_index_ivf(index)
            ivf.nprobe = self.config.ivf_nprobe or min(128, max(8, ivf.nlist // 8))


BUILD_PAGE = 8192  # vectors added per step when catching up with the table


def exact_nearest(
    ids: np.ndarray, vectors: np.ndarray, query: np.ndarray, want: int
) -> list[tuple[int, float]]:
    """Brute force over the given vectors: the `want` best and every vector tied with the last."""
    if want <= 0 or not len(ids):
        return []
    # Not `@`: OpenBLAS spreads a matrix-vector product over its threads, which on a busy machine
    # cost ~20 ms for 1,000 x 512 against ~0.05 ms in einsum's own loop (one thread, SIMD).
    scores = np.einsum("ij,j->i", vectors, query.reshape(-1))
    order = np.argsort(-scores, kind="stable")
    cutoff = scores[order[min(want, len(order)) - 1]]
    kept = order[scores[order] >= cutoff]
    return list(zip(ids[kept].tolist(), scores[kept].tolist(), strict=True))


def _complete(found: list[tuple[int, float]], goal: int) -> bool:
    """Whether `found` (best first) has `goal` results and the last result's tie group ends inside it."""
    return len(found) > goal and found[goal - 1][1] > found[-1][1]


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


def normalised(vectors: np.ndarray) -> np.ndarray:
    # Scores are cosine similarities, as with Qdrant's Cosine distance; zero vectors stay zero.
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.ascontiguousarray(vectors / np.where(norms > 0, norms, 1), dtype=np.float32)


@contextlib.contextmanager
def one_omp_thread() -> Iterator[None]:
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


def _read_index(path: Path, dim: int, label: str) -> Any:
    """The saved index, or None when there is none usable (then it is rebuilt from SQLite)."""
    if not path.is_file():
        return None
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as exc:
        log.warning("%s: rebuilding unreadable index %s: %s", label, path, exc)
        return None
    if not isinstance(index, faiss.IndexIDMap2) or index.d != dim:
        log.warning("%s: rebuilding index %s of an unexpected shape", label, path)
        return None
    return index


def _write_index(index: Any, path: Path) -> None:
    """Atomically: a crash leaves the old file or the new one, and either is a valid cache."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    faiss.write_index(index, str(tmp))
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
