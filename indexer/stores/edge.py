"""The embedded default store: one Qdrant Edge shard per collection, in the data directory.

Layout: `collection_dir(name)/shard/` is the Edge shard (its own WAL, segments and
`edge_config.json`); `collection_dir(name)/info.json` holds the collection info.

Edge facts this module relies on (qdrant-edge-py 0.9):
- Point ids may be UUID strings; they come back as `uuid.UUID`.
- Every update goes to the WAL first, so data survives SIGKILL (even before flush()).
- The shard takes an exclusive lock on its WAL: a second open, from this or another process,
  fails until the first is closed.
- There is no background optimizer: new points sit in plain segments searched by brute force
  (exact) until `optimize()` builds HNSW for segments above the indexing threshold.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import qdrant_edge as qe

from indexer.durable import fsync_dir, write_atomic
from indexer.settings import Settings
from indexer.stores import canonical_id, checked_vector
from indexer.stores.base import CollectionBusy, Hit, Record, StoreError

SHARD_DIR = "shard"
INFO_FILE = "info.json"

# Segments under this size (KB) stay plain, so search on them is exact; ~10k 512-d vectors,
# which brute force scans in about a millisecond.
INDEXING_THRESHOLD_KB = 20_000
# Room for several indexed segments, so each optimize indexes the new points instead of merging
# them into (and re-indexing) everything; the automatic count is 2 on a 2-CPU machine.
SEGMENTS = 8
HNSW_M = 16
# 256, not 128: on 1M clustered 512-d vectors (scripts/bench_query.py) 128 left parts of the graph
# unreachable (recall@10 0.96 at ef 256, 0.987 even at ef 1024); 256 gives 0.9998 at ef 256. Its 1M
# index build took 5 min on 2 idle CPUs (128: 9.5 min, but on busy ones: not like for like).
HNSW_EF_CONSTRUCT = 256
# ef at query time and quantization come from Settings (hnsw_ef, quantization, oversampling).
# With quantization=int8 (the default) optimised segments keep int8 copies of the vectors in RAM
# (1/4 the size), which HNSW search walks; the top `k * oversampling` are then rescored with the
# float32 originals, which stay on disk (mmap, paged in on demand), so scores are exact and the
# RAM per vector is ~0.6 KB instead of ~2 KB at 512-d. Payloads stay on disk as well.
# INT8_QUANTILE: the value range kept by int8 scaling; the rare values beyond it are clipped.
INT8_QUANTILE = 0.99
# flush() builds the index once this many points are searched by brute force, so a long
# ingest does not leave a huge unindexed tail; close() builds it whenever anything changed.
OPTIMIZE_BACKLOG = 20_000
WRITE_BATCH = 512
SCROLL_PAGE = 1024


def shard_path(settings: Settings, name: str) -> Path:
    return settings.collection_dir(name) / SHARD_DIR


def existing_dim(settings: Settings, name: str) -> int | None:
    """The vector size of an existing collection, or None when there is none."""
    config_file = shard_path(settings, name) / "edge_config.json"
    if not config_file.is_file():
        return None
    try:
        return int(json.loads(config_file.read_text())["vectors"][""]["size"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StoreError(f"collection {name!r}: unreadable shard config {config_file}: {exc}") from exc


def _config(dim: int, settings: Settings) -> qe.EdgeConfig:
    # None means "keep what the shard has" on load: quantization="none" never strips an existing
    # int8 index (that needs a re-index), and the vectors then stay where they are.
    quantization, vectors_memory = None, None
    if settings.quantization == "int8":
        int8 = qe.ScalarType.Int8
        quantization = qe.ScalarQuantizationConfig(int8, quantile=INT8_QUANTILE, always_ram=True)
        vectors_memory = qe.Memory.Cold  # originals on disk: only rescoring reads them
    return qe.EdgeConfig(
        vectors=qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine, memory=vectors_memory),
        hnsw_config=qe.HnswIndexConfig(
            m=HNSW_M, ef_construct=HNSW_EF_CONSTRUCT, full_scan_threshold=INDEXING_THRESHOLD_KB
        ),
        quantization_config=quantization,
        optimizers=qe.EdgeOptimizersConfig(
            indexing_threshold=INDEXING_THRESHOLD_KB, default_segment_number=SEGMENTS
        ),
        payload_memory=qe.Memory.Cold,
    )


def _search_params(settings: Settings, k: int) -> qe.SearchParams:
    # Quantization params are ignored by segments without quantized vectors (plain ones, or "none").
    return qe.SearchParams(
        hnsw_ef=max(settings.hnsw_ef, k),
        quantization=qe.QuantizationSearchParams(rescore=True, oversampling=settings.oversampling),
    )


def create(settings: Settings, name: str, dim: int) -> EdgeStore:
    """Create the shard in a temporary directory and rename it into place, so a crash
    mid-creation never leaves a half-made collection that looks real."""
    final = shard_path(settings, name)
    tmp = final.with_name(f"{SHARD_DIR}.creating-{os.getpid()}")
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_creations(final)
    shutil.rmtree(tmp, ignore_errors=True)
    with _errors(name, "create"):
        qe.EdgeShard.create(str(tmp), _config(dim, settings)).close()
    try:
        os.replace(tmp, final)
    except OSError as exc:  # another process created it first
        shutil.rmtree(tmp, ignore_errors=True)
        if existing_dim(settings, name) is None:
            raise StoreError(f"collection {name!r}: cannot create {final}: {exc}") from exc
    fsync_dir(final.parent)
    return load(settings, name, dim)


def _remove_abandoned_creations(final: Path) -> None:
    """Delete the temporary shards of creations whose process died (killed mid-create)."""
    for leftover in final.parent.glob(f"{SHARD_DIR}.creating-*"):
        pid = leftover.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def load(settings: Settings, name: str, dim: int) -> EdgeStore:
    path = shard_path(settings, name)
    try:
        # Passing the config applies tuning changes made here since the shard was created.
        shard = qe.EdgeShard.load(str(path), _config(dim, settings))
    except Exception as exc:  # qdrant_edge raises bare Exception
        if "WouldBlock" in str(exc):
            raise CollectionBusy(
                f"collection {name!r} is already open elsewhere (an index run, the API server, or "
                f"another store in this process); close that first, or use store=qdrant for concurrent access"
            ) from exc
        raise StoreError(f"collection {name!r}: cannot open shard at {path}: {exc}") from exc
    return EdgeStore(name, dim, shard, settings.collection_dir(name), settings)


def list_collections(settings: Settings) -> list[str]:
    root = settings.home / "collections"
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / SHARD_DIR / "edge_config.json").is_file())


def drop(settings: Settings, name: str) -> None:
    dim = existing_dim(settings, name)
    if dim is None:
        return
    # Opening takes the shard's lock, so a collection in use elsewhere is refused, not torn down.
    load(settings, name, dim).close(optimize=False)
    # Only what this store owns: another store kind may keep a collection of the same name here.
    directory = settings.collection_dir(name)
    shutil.rmtree(directory / SHARD_DIR)
    (directory / INFO_FILE).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        directory.rmdir()


class EdgeStore:
    """A VectorStore over one open Edge shard."""

    def __init__(
        self, name: str, dim: int, shard: qe.EdgeShard, directory: Path, settings: Settings | None = None
    ) -> None:
        self.name = name
        self.dim = dim
        self._settings = settings or Settings()
        self._shard: qe.EdgeShard | None = shard
        self._dir = directory
        self._dirty = False

    @property
    def shard(self) -> qe.EdgeShard:
        if self._shard is None:
            raise StoreError(f"collection {self.name!r} is closed")
        return self._shard

    def upsert(self, records: Sequence[Record]) -> None:
        points = [qe.Point(canonical_id(r.id), self._vector(r), r.payload) for r in records]
        with _errors(self.name, "upsert"):
            for start in range(0, len(points), WRITE_BATCH):
                self.shard.update(qe.UpdateOperation.upsert_points(points[start : start + WRITE_BATCH]))
        self._dirty = self._dirty or bool(points)

    def delete(self, ids: Sequence[str]) -> None:
        keys = [canonical_id(i) for i in ids]
        with _errors(self.name, "delete"):
            for start in range(0, len(keys), WRITE_BATCH):
                self.shard.update(qe.UpdateOperation.delete_points(keys[start : start + WRITE_BATCH]))
        self._dirty = self._dirty or bool(keys)

    def search(self, vector: np.ndarray, k: int) -> list[Hit]:
        if k <= 0:
            return []
        query = checked_vector(self.name, self.dim, vector, "query")
        request = qe.QueryRequest(
            limit=k,
            query=qe.Query.Nearest(query.tolist()),
            with_payload=True,
            params=_search_params(self._settings, k),
        )
        with _errors(self.name, "search"):
            points = self.shard.query(request)
        return [Hit(id=str(p.id), score=float(p.score), payload=p.payload or {}) for p in points]

    def retrieve(self, ids: Sequence[str], with_vectors: bool = False) -> list[Record]:
        keys = [canonical_id(i) for i in ids]
        if not keys:
            return []
        with _errors(self.name, "retrieve"):
            found = {str(p.id): p for p in self.shard.retrieve(keys, True, with_vectors)}
        return [_record(found[key], with_vectors) for key in keys if key in found]

    def scan(self) -> Iterator[Record]:
        offset: Any = None
        while True:
            request = qe.ScrollRequest(offset=offset, limit=SCROLL_PAGE, with_payload=True, with_vector=False)
            with _errors(self.name, "scan"):
                page, offset = self.shard.scroll(request)
            for point in page:
                yield _record(point, False)
            if offset is None:
                return

    def count(self) -> int:
        with _errors(self.name, "count"):
            return int(self.shard.count(qe.CountRequest(exact=True)))

    def read_info(self) -> dict[str, Any]:
        path = self._dir / INFO_FILE
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise StoreError(f"collection {self.name!r}: unreadable {path}: {exc}") from exc

    def write_info(self, info: dict[str, Any]) -> None:
        write_atomic(self._dir / INFO_FILE, json.dumps(info, indent=2, sort_keys=True).encode())

    def flush(self) -> None:
        with _errors(self.name, "flush"):
            self.shard.flush()
            shard_info = self.shard.info()
            if shard_info.points_count - shard_info.indexed_vectors_count >= OPTIMIZE_BACKLOG:
                self.optimize()

    def optimize(self) -> None:
        """Build HNSW for large segments and vacuum deletions; blocking."""
        with _errors(self.name, "optimize"):
            self.shard.optimize()
            self.shard.flush()

    def close(self, optimize: bool = True) -> None:
        """Release the shard (and its lock); after writes, first build the index."""
        if self._shard is None:
            return
        try:
            if optimize and self._dirty:
                self.optimize()
            with _errors(self.name, "flush"):
                self._shard.flush()
        finally:
            self._shard.close()
            self._shard = None

    def _vector(self, record: Record) -> list[float]:
        return checked_vector(self.name, self.dim, record.vector, f"record {record.id}").tolist()

    def __enter__(self) -> EdgeStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _record(point: Any, with_vector: bool) -> Record:
    vector = np.asarray(point.vector, dtype=np.float32) if with_vector and point.vector is not None else None
    return Record(id=str(point.id), vector=vector, payload=point.payload or {})


@contextlib.contextmanager
def _errors(name: str, action: str) -> Iterator[None]:
    """qdrant_edge raises bare Exception; callers get StoreError naming the collection."""
    try:
        yield
    except StoreError:
        raise
    except Exception as exc:
        raise StoreError(f"collection {name!r}: {action} failed: {exc}") from exc
