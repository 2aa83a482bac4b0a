"""The embedded default store: one Qdrant Edge shard per collection, in the data directory.

Layout: `collection_dir(name)/shard/` is the Edge shard (its own WAL, segments and
`edge_config.json`); `collection_dir(name)/info.json` holds the collection's info document
(schema and the rest, `StoredInfo`). Each schema vector is a named vector of the shard, stored
under its storage key (a version-1 collection's vector is the unnamed one, "").

Edge facts this module relies on (qdrant-edge-py 0.9):
- Point ids may be UUID strings; they come back as `uuid.UUID`.
- Every update goes to the WAL first, so data survives SIGKILL (even before flush()).
- The shard takes an exclusive lock on its WAL: a second open, from this or another process,
  fails until the first is closed.
- There is no background optimizer: new points sit in plain segments searched by brute force
  (exact) until `optimize()` builds HNSW for segments above the indexing threshold.
- Every payload update (set or overwrite, indexed field or not) moves the point out of its indexed,
  immutable segment into an appendable one, vector included (qdrant's segment holder,
  `apply_points_with_conditional_move`): a label run over every point leaves every point unindexed,
  and building HNSW for them again cost 467 s of a 523 s label run over 100k points. So writes that
  change payloads only (labels, reviews, metadata edits) do not make flush() or close() rebuild the
  index: the moved points are searched exactly, by brute force, until the next write of vectors
  rebuilds it, or a server (`optimize_in_background`) does, while it answers. The shard's own count
  of indexed vectors does not see such moves (it counts the moved points' old, deleted copies), so
  the store keeps the number of points moved since the index was built in `MOVED_FILE`.
- The shard's files are memory-mapped and preallocated sparse (32 MB WAL segments, vector chunks,
  payload pages): a write that touches a page the full disk cannot back kills the process with SIGBUS
  instead of raising, so every write first checks for `min_free_disk_mb` of free space (DiskFull), and
  a collection keeps a small reserve file that a load on a full disk releases (loading writes a few
  small files), so reads go on while the disk is full.
- Loading copies the int8 vectors, id tracker and HNSW links into memory through page faults on
  mmaps, and closing drops the files from the page cache (posix_fadvise DONTNEED): every open
  reads them from disk again, and fault-driven reads run ~10x slower than sequential ones, so
  `_open_shard` reads them first (`_warm_page_cache`).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import json
import logging
import os
import shutil
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import qdrant_edge as qe

from indexer.durable import (
    MB,
    disk_errors,
    fsync_dir,
    is_disk_full,
    keep_reserve,
    release_reserve,
    require_free_space,
    write_atomic,
)
from indexer.errors import CollectionBusy, DiskFull, StoreError
from indexer.limits import usable_cpus
from indexer.locking import process_alive
from indexer.schema import CollectionSchema, FieldType, VectorSpec, payload_path
from indexer.settings import Settings
from indexer.stores.base import Hit, StoredInfo
from indexer.stores.filters import Filter
from indexer.stores.keyword import RRF_K, SPARSE_KEY, text_fields
from indexer.stores.qdrant_common import (
    HNSW_EF_CONSTRUCT,
    HNSW_M,
    INT8_QUANTILE,
    SCROLL_PAGE,
    Diverse,
    Fused,
    Nearest,
    QdrantFamilyStore,
    QuerySpec,
    Recommend,
    Sparse,
    Vectors,
    edge_filter,
    edge_index_type,
    require_schema,
    store_errors,
    to_hit,
    using_name,
)

log = logging.getLogger(__name__)

SHARD_DIR = "shard"
INFO_FILE = "info.json"
MOVED_FILE = "moved.json"  # {"points": N}: points payload updates moved out of the index since it was built
CREATE_LOCK = ".create.lock"

# Segments under this size (KB) stay plain, so search on them is exact; ~10k 512-d vectors,
# which brute force scans in about a millisecond.
INDEXING_THRESHOLD_KB = 20_000
# Room for several indexed segments, so each optimize indexes the new points instead of merging
# them into (and re-indexing) everything; the automatic count is 2 on a 2-CPU machine.
SEGMENTS = 8
# flush() builds the index once this many vectors (per named vector) are searched by brute force,
# so a long ingest does not leave a huge unindexed tail; close() builds it whenever vectors were written.
# A server opening a collection with this many unindexed vectors builds the index in a thread.
OPTIMIZE_BACKLOG = 20_000
WRITE_BATCH = 512

BUSY_ADVICE = (
    "stop that process, or use `clipsearch serve --watch FOLDER` / the API, "
    "or CLIPSEARCH_STORE=qdrant for concurrent access"
)


def shard_path(settings: Settings, name: str) -> Path:
    return settings.collection_dir(name) / SHARD_DIR


def _label(name: str) -> str:
    return f"collection {name!r}"


def shard_vectors(path: Path, name: str) -> dict[str, int]:
    """The shard's named vectors (storage key -> size), as its own config records them."""
    config_file = path / "edge_config.json"
    try:
        vectors = json.loads(config_file.read_text())["vectors"]
        return {key: int(params["size"]) for key, params in vectors.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise StoreError(f"{_label(name)}: unreadable shard config {config_file}: {exc}") from exc


def shard_sparse_vectors(path: Path, name: str) -> set[str]:
    """The shard's sparse vectors, as its own config records them."""
    config_file = path / "edge_config.json"
    try:
        return set(json.loads(config_file.read_text()).get("sparse_vectors") or {})
    except (OSError, ValueError, AttributeError) as exc:
        raise StoreError(f"{_label(name)}: unreadable shard config {config_file}: {exc}") from exc


def _config(settings: Settings, vectors: Mapping[str, int]) -> qe.EdgeConfig:
    # None means "keep what the shard has" on load: quantization="none" never strips an existing
    # int8 index (that needs a re-index), and the vectors then stay where they are.
    quantization, vectors_memory = None, None
    if settings.quantization == "int8":
        int8 = qe.ScalarType.Int8
        quantization = qe.ScalarQuantizationConfig(int8, quantile=INT8_QUANTILE, always_ram=True)
        vectors_memory = qe.Memory.Cold  # originals on disk: only rescoring reads them
    return qe.EdgeConfig(
        vectors={
            key: qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine, memory=vectors_memory)
            for key, dim in vectors.items()
        },
        hnsw_config=qe.HnswIndexConfig(
            m=HNSW_M, ef_construct=HNSW_EF_CONSTRUCT, full_scan_threshold=INDEXING_THRESHOLD_KB
        ),
        quantization_config=quantization,
        optimizers=qe.EdgeOptimizersConfig(
            indexing_threshold=INDEXING_THRESHOLD_KB, default_segment_number=SEGMENTS
        ),
        payload_memory=qe.Memory.Cold,
        max_search_threads=search_threads(),
    )


def search_threads() -> int:
    """Threads one search may spread the shard's segments over: half the usable CPUs, the rest left to
    the concurrent queries' encoding and HTTP. Qdrant Edge's own default started 8 on a 2-CPU machine,
    and waking them cost more than the parallel segments saved: a search over 100 points took 0.21 ms
    of CPU with 8 and 0.07 ms with 1; at 1M points (2 segments) p50 was 1.78 / 1.69 ms and CPU 1.87 /
    1.37 ms (docs/benchmarks.md, "Store search threads"; p95 moved either way between runs). A shard
    keeps the count it was last given, so every open gives it."""
    return max(1, usable_cpus() // 2)


# --- the five backend functions -------------------------------------------------------------------


def exists(settings: Settings, name: str) -> bool:
    return (shard_path(settings, name) / "edge_config.json").is_file()


def create(settings: Settings, name: str, schema: CollectionSchema) -> EdgeStore:
    """Create the shard (with the schema's vectors and field indexes) in a temporary directory,
    write the info document, then rename the shard into place: a crash mid-creation never leaves
    a half-made collection that looks real. Creations of one collection take turns (a file lock)."""
    directory = settings.collection_dir(name)
    final = directory / SHARD_DIR
    directory.mkdir(parents=True, exist_ok=True)
    with _creation_lock(directory):
        if exists(settings, name):  # another process created it while we waited
            return load(settings, name)
        _remove_abandoned_creations(final)
        tmp = final.with_name(f"{SHARD_DIR}.creating-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        _require_room(settings, directory, f"creating {_label(name)}")
        with _disk_errors(directory, f"creating {_label(name)}", tmp), store_errors(_label(name), "create"):
            shard = qe.EdgeShard.create(str(tmp), _config(settings, _keys(schema)))
            try:
                for field_name, kind in schema.fields.items():
                    shard.update(_field_index(payload_path(field_name), kind))
                if text_fields(schema):
                    shard.update(_sparse_vector())
            finally:
                shard.close()
        _write_document(directory, StoredInfo(schema, {}, legacy=False).document())
        try:
            os.replace(tmp, final)
        except OSError as exc:  # `final` is there but is no shard (exists() said so)
            shutil.rmtree(tmp, ignore_errors=True)
            raise StoreError(f"{_label(name)}: cannot create {final}: {exc}; remove {final}") from exc
        fsync_dir(directory)
        keep_reserve(directory)
    return load(settings, name)


def load(settings: Settings, name: str, background: bool = False) -> EdgeStore:
    """`background`: open the shard in a thread and return at once (the schema is read now); the
    first call that needs the shard waits for it, and raises what opening raised."""
    directory = settings.collection_dir(name)
    remedy = f"remove {directory} and index again"
    stored = require_schema(_read_stored(directory, name), _label(name), remedy)
    if not background:
        return EdgeStore(name, _open_shard(settings, name), directory, settings, stored)
    opener = concurrent.futures.ThreadPoolExecutor(1, "clipsearch-open")
    opening = opener.submit(_open_shard, settings, name)
    opener.shutdown(wait=False)
    return EdgeStore(name, opening, directory, settings, stored)


def _open_shard(settings: Settings, name: str) -> qe.EdgeShard:
    path = shard_path(settings, name)
    _warm_page_cache(path)
    try:
        try:
            # Passing the config applies tuning changes made here since the shard was created.
            return qe.EdgeShard.load(str(path), _config(settings, shard_vectors(path, name)))
        except Exception as exc:
            # Loading writes a few small files: on a full disk, give back the reserve kept for this.
            if not (is_disk_full(exc) and release_reserve(path.parent)):
                raise
        return qe.EdgeShard.load(str(path), _config(settings, shard_vectors(path, name)))
    except StoreError:
        raise
    except Exception as exc:  # qdrant_edge raises bare Exception
        if is_disk_full(exc):
            raise DiskFull(
                f"disk full: collection {name!r} cannot be opened, as opening writes a few small files in "
                f"{path} and no space is left there (nor a reserve). Free some space and run again"
            ) from exc
        if "WouldBlock" in str(exc):
            raise CollectionBusy(
                f"{_label(name)} is open in another process or store (an index run, `clipsearch serve`); "
                f"{BUSY_ADVICE}"
            ) from exc
        raise StoreError(f"{_label(name)}: cannot open shard at {path}: {exc}") from exc


_WARM_READERS = 4
_WARM_RANGE = 64 << 20  # the int8 vectors of 1M points are one 490 MiB file: read it in parallel ranges
_WARM_CHUNK = 8 << 20


def _warm_page_cache(path: Path) -> None:
    """Reads the segment files a load copies or maps whole, in large parallel reads (to open 100k points
    here: 1.25 s -> 0.15 s; 1M: its 570 MiB read at 1.3 GiB/s, 0.5 GiB/s one file per thread). Left
    cold: payload pages and the originals of int8-quantized vectors, which searches read a few points
    at a time. Best effort: files that another process (an index run holding the shard) removes
    meanwhile are skipped, and the load says what is wrong."""
    ranges = []
    for folder, _, names in os.walk(path / "segments"):  # os.walk skips what vanishes under it
        if "payload_storage" in Path(folder).parts:
            continue
        for name in names:
            if name == "matrix.dat" and "quantized.data" in names:
                continue
            file = Path(folder, name)
            with contextlib.suppress(OSError):
                size = file.stat().st_size
                ranges += [(file, at, min(_WARM_RANGE, size - at)) for at in range(0, size, _WARM_RANGE)]
    with concurrent.futures.ThreadPoolExecutor(_WARM_READERS, "clipsearch-warm") as readers:
        list(readers.map(lambda part: _read_range(*part), ranges))


def _read_range(file: Path, start: int, length: int) -> None:
    with contextlib.suppress(OSError):  # a warm-up: a file gone or unreadable is the load's business
        descriptor = os.open(file, os.O_RDONLY)
        try:
            buffer = memoryview(bytearray(min(_WARM_CHUNK, length)))
            done = 0
            while done < length:
                read = os.preadv(descriptor, [buffer[: length - done]], start + done)
                if read <= 0:
                    break
                done += read
        finally:
            os.close(descriptor)


def list_collections(settings: Settings) -> list[str]:
    root = settings.home / "collections"
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / SHARD_DIR / "edge_config.json").is_file())


def drop(settings: Settings, name: str) -> None:
    if not exists(settings, name):
        return
    directory = settings.collection_dir(name)
    # Opening takes the shard's lock, so a collection in use elsewhere is refused, not torn down.
    _open_shard(settings, name).close()
    # Only what this store owns: another store kind may keep a collection of the same name here.
    shutil.rmtree(directory / SHARD_DIR)
    (directory / INFO_FILE).unlink(missing_ok=True)
    (directory / CREATE_LOCK).unlink(missing_ok=True)
    (directory / MOVED_FILE).unlink(missing_ok=True)
    release_reserve(directory)
    with contextlib.suppress(OSError):
        directory.rmdir()


# --- creation and the info document -------------------------------------------------------------


@contextlib.contextmanager
def _creation_lock(directory: Path) -> Iterator[None]:
    fd = os.open(directory / CREATE_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released by the kernel if this process dies
        yield
    finally:
        os.close(fd)


def _remove_abandoned_creations(final: Path) -> None:
    """Delete the temporary shards of creations whose process died (killed mid-create)."""
    for leftover in final.parent.glob(f"{SHARD_DIR}.creating-*"):
        pid = leftover.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)


def _field_index(path: str, kind: FieldType) -> qe.UpdateOperation:
    return qe.UpdateOperation.create_field_index(path, edge_index_type(kind))


def _sparse_vector() -> qe.UpdateOperation:
    # IDF: the engine weighs each term by its rarity among the points' documents (BM25's idf).
    return qe.UpdateOperation.create_sparse_vector(SPARSE_KEY, qe.Modifier.Idf)


def _engine_vector(vector: Any) -> Any:
    return qe.SparseVector(*vector) if isinstance(vector, tuple) else vector


def _keys(schema: CollectionSchema) -> dict[str, int]:
    return {spec.storage_key: spec.dim for spec in schema.vectors.values()}


def _read_stored(directory: Path, name: str) -> StoredInfo:
    path = directory / INFO_FILE
    try:
        return StoredInfo.parse(json.loads(path.read_text()))
    except FileNotFoundError:
        return StoredInfo.parse({})
    except (OSError, ValueError) as exc:
        raise StoreError(f"{_label(name)}: unreadable {path}: {exc}") from exc


def _read_moved(directory: Path) -> int:
    try:
        return int(json.loads((directory / MOVED_FILE).read_text())["points"])
    except FileNotFoundError:
        return 0
    except (OSError, ValueError, KeyError, TypeError):  # a count only: unreadable means "maybe many"
        return OPTIMIZE_BACKLOG


def _write_document(directory: Path, document: dict[str, Any]) -> None:
    with disk_errors(directory, f"the info document of collection {directory.name!r}"):
        write_atomic(directory / INFO_FILE, json.dumps(document, indent=2, sort_keys=True).encode())


def _require_room(settings: Settings, directory: Path, what: str) -> None:
    require_free_space(directory, settings.min_free_disk_mb * MB, what)


@contextlib.contextmanager
def _disk_errors(directory: Path, what: str, partial: Path) -> Iterator[None]:
    """disk_errors, removing `partial` (what was being made) when the disk filled up meanwhile."""
    try:
        with disk_errors(directory, what):
            yield
    except DiskFull:
        shutil.rmtree(partial, ignore_errors=True)
        raise


# --- the store ------------------------------------------------------------------------------------


class EdgeStore(QdrantFamilyStore):
    """A VectorStore over one open Edge shard."""

    write_batch = WRITE_BATCH
    # The shard is Rust behind one handle: its calls take it shared (queries, reads) and synchronise
    # segments with their own locks (as a Qdrant server's threads search while updates land), so
    # searches run from several threads at once, beside writes. What this class keeps in Python (the
    # schema, the dirty flag) is replaced whole, never changed in place.
    concurrent_reads = True

    def __init__(
        self, name: str, shard: qe.EdgeShard | concurrent.futures.Future[qe.EdgeShard], directory: Path,
        settings: Settings, stored: StoredInfo,
    ) -> None:
        """`shard`: the open shard, or the future of one being opened (load's `background`)."""
        super().__init__(name, _label(name), stored)
        self._settings = settings
        self._opening = shard if isinstance(shard, concurrent.futures.Future) else None
        self._shard: qe.EdgeShard | None = None if self._opening else shard
        self._dir = directory
        self._index_stale = False  # vectors or points were written since the index was last built
        self._moved = _read_moved(directory)
        self._moved_saved = self._moved
        self._optimizer: threading.Thread | None = None

    @property
    def shard(self) -> qe.EdgeShard:
        if self._opening is not None:
            self._shard = self._opening.result()  # raises what opening raised, at every call
            self._opening = None
        if self._shard is None:
            raise StoreError(f"{_label(self.name)} is closed")
        return self._shard

    def flush(self) -> None:
        with disk_errors(self._dir, f"flushing {self._label}"), store_errors(self._label, "flush"):
            self.shard.flush()
            if self._index_stale and self.unindexed() >= OPTIMIZE_BACKLOG:
                self.optimize()
            self._save_moved()
        keep_reserve(self._dir)  # given back by a load on a full disk: taken again once there is room

    def unindexed(self) -> int:
        """Points searched by brute force until the index is built: new ones (per the shard) and those
        that payload updates moved (an upper bound: a point updated twice counts twice, up to all)."""
        info = self.shard.info()
        new = info.points_count - info.indexed_vectors_count // max(1, len(self.schema.vectors))
        return min(info.points_count, max(0, new) + self._moved)

    def optimize(self) -> None:
        """Build HNSW for large segments and vacuum deletions; blocking."""
        self._index_stale = False  # before: a write while it runs (a server's) leaves it stale again
        moved = self._moved
        _require_room(self._settings, self._dir, f"building the index of {self._label}")
        with disk_errors(self._dir, f"optimizing {self._label}"), store_errors(self._label, "optimize"):
            self.shard.optimize()
            self.shard.flush()
        self._moved -= moved  # those are indexed now; points moved meanwhile are not
        self._save_moved()

    def _save_moved(self) -> None:
        if self._moved != self._moved_saved:
            write_atomic(self._dir / MOVED_FILE, json.dumps({"points": self._moved}).encode())
            self._moved_saved = self._moved

    def optimize_in_background(self, backlog: int = OPTIMIZE_BACKLOG) -> bool:
        """When at least `backlog` points are unindexed (after bulk payload updates, see the module),
        build the index in a thread; searches keep answering meanwhile (exactly until the shard swaps
        the built segments in). close() waits for it. Whether it started."""
        if self._optimizer is not None or self.unindexed() < backlog:
            return False

        def run() -> None:
            try:
                self.optimize()
            except StoreError as exc:  # the next close (or write) builds it again
                log.warning("%s: building the index in the background failed: %s", self._label, exc)

        self._optimizer = threading.Thread(target=run, name="clipsearch-optimize", daemon=True)
        self._optimizer.start()
        return True

    def close(self, optimize: bool = True) -> None:
        """Release the shard (and its lock); after writes, first build the index."""
        if self._opening is not None:
            try:
                self._shard = self._opening.result()
            except Exception:  # nothing was opened: nothing to release
                return
            finally:
                self._opening = None
        if self._shard is None:
            return
        if self._optimizer is not None:
            self._optimizer.join()
            self._optimizer = None
        try:
            if optimize and self._index_stale:
                with contextlib.suppress(DiskFull):  # the index is built at the next close with room
                    self.optimize()
            with disk_errors(self._dir, f"flushing {self._label}"), store_errors(self._label, "flush"):
                self._shard.flush()
            self._save_moved()
        finally:
            self._shard.close()
            self._shard = None

    # --- engine calls -----------------------------------------------------------------------

    def _update(self, operation: qe.UpdateOperation, index_stale: bool = True) -> None:
        """`index_stale`: the operation writes vectors or points (the next flush or close builds the
        index); False for payload updates and payload indexes (see the module)."""
        # Checked before every write: the engine's mmap'd files kill the process (SIGBUS) on a full disk.
        _require_room(self._settings, self._dir, f"writing {self._label}")
        with disk_errors(self._dir, f"writing {self._label}"):
            self.shard.update(operation)
        self._index_stale = self._index_stale or index_stale

    def _put_points(self, points: Sequence[tuple[str, Vectors, dict[str, Any]]]) -> None:
        self._update(qe.UpdateOperation.upsert_points(
            [qe.Point(i, {k: _engine_vector(x) for k, x in v.items()}, p) for i, v, p in points]
        ))

    def _put_vectors(self, key: str, vectors: Mapping[str, list[float]]) -> None:
        points = [qe.PointVectors(i, {key: v}) for i, v in vectors.items()]
        self._update(qe.UpdateOperation.update_vectors(points))

    def _put_payloads(self, payloads: Mapping[str, dict[str, Any]]) -> None:
        # One operation per point (Edge has none that gives each point its own payload); the free
        # space is checked once for the batch, whose payloads are a few MB at most (write_batch).
        operations = [qe.UpdateOperation.overwrite_payload([i], p) for i, p in payloads.items()]
        _require_room(self._settings, self._dir, f"writing {self._label}")
        with disk_errors(self._dir, f"writing {self._label}"):
            for operation in operations:
                self.shard.update(operation)
                self._moved += 1

    def _delete_points(self, ids: Sequence[str]) -> None:
        self._update(qe.UpdateOperation.delete_points(list(ids)))

    def _existing(self, ids: Sequence[str]) -> set[str]:
        return {str(p.id) for p in self.shard.retrieve(list(ids), False, False)}

    def _query(self, query: QuerySpec, limit: int, native: Any, threshold: float | None) -> list[Hit]:
        if isinstance(query, Fused):
            prefetches = [
                qe.Prefetch(query.candidates, query=self._nearest(part), filter=native,
                            params=self._params(query.candidates, part.key, native),
                            score_threshold=part.threshold)
                for part in query.parts
            ]
            request = qe.QueryRequest(
                limit=limit, prefetches=prefetches, query=qe.Fusion.Rrf(k=RRF_K, weights=query.weights),
                with_payload=True, score_threshold=threshold,
            )
        else:
            request = qe.QueryRequest(
                limit=limit, query=self._scoring(query), filter=native, with_payload=True,
                score_threshold=threshold, params=self._params(limit, getattr(query, "key", ""), native),
            )
        return [to_hit(p) for p in self.shard.query(request)]

    def _nearest(self, query: Nearest) -> Any:
        return qe.Query.Nearest(_engine_vector(query.vector), using=using_name(query.key))

    def _scoring(self, query: QuerySpec) -> Any:
        if isinstance(query, Nearest):
            return self._nearest(query)
        if isinstance(query, Recommend):
            examples = qe.RecommendQuery(query.positive, query.negative)
            return qe.Query.RecommendSumScores(examples, using=using_name(query.key))
        assert isinstance(query, Diverse)
        return qe.Mmr(query.vector, query.lambda_, query.candidates, using=using_name(query.key))

    def _params(self, limit: int, key: str, native: Any) -> qe.SearchParams | None:
        """Search parameters for vector `key` under the filter `native` (None: no filter)."""
        if key == SPARSE_KEY:
            return None
        # Quantization params are ignored by segments without quantized vectors (plain ones, or "none").
        return qe.SearchParams(
            hnsw_ef=max(self._settings.hnsw_ef, limit),
            exact=self._exact(key, native),
            quantization=qe.QuantizationSearchParams(rescore=True, oversampling=self._settings.oversampling),
        )

    def _estimated_count(self, native: Any) -> int:
        return int(self.shard.count(qe.CountRequest(exact=False, filter=native)))

    def _facet(self, path: str, limit: int, native: Any) -> list[tuple[str, int]]:
        response = self.shard.facet(qe.FacetRequest(path, limit=limit, exact=True, filter=native))
        return [(hit.value, hit.count) for hit in response.hits]

    def _has_sparse(self) -> bool:
        return SPARSE_KEY in shard_sparse_vectors(self._dir / SHARD_DIR, self.name)

    def _add_sparse(self) -> None:
        self._update(_sparse_vector())

    def _drop_sparse(self) -> None:
        self._update(qe.UpdateOperation.delete_vector_name(SPARSE_KEY))

    def _put_sparse(self, vectors: Mapping[str, Sparse | None]) -> None:
        present = [qe.PointVectors(i, {SPARSE_KEY: qe.SparseVector(*v)}) for i, v in vectors.items() if v]
        absent = [i for i, v in vectors.items() if v is None]
        if present:
            self._update(qe.UpdateOperation.update_vectors(present))
        if absent:  # an empty document has no vector, so it neither matches nor counts for IDF
            self._update(qe.UpdateOperation.delete_vectors(absent, [SPARSE_KEY]))

    def _fetch(self, ids: Sequence[str], keys: list[str]) -> list[Any]:
        return self.shard.retrieve(list(ids), True, keys or False)

    def _scroll(self, offset: Any, native: Any, keys: list[str]) -> tuple[list[Any], Any]:
        request = qe.ScrollRequest(
            offset=offset, limit=SCROLL_PAGE, filter=native, with_payload=True, with_vector=keys or False
        )
        return self.shard.scroll(request)

    def _count(self, native: Any) -> int:
        return self.shard.count(qe.CountRequest(exact=True, filter=native))

    def _native_filter(self, store_filter: Filter | None) -> Any:
        return edge_filter(store_filter, self.schema)

    def _load_stored(self) -> StoredInfo:
        return require_schema(_read_stored(self._dir, self.name), self._label, f"remove {self._dir}")

    def _save_document(self, document: dict[str, Any]) -> None:
        _write_document(self._dir, document)

    def _vector_keys(self) -> set[str]:
        return set(shard_vectors(self._dir / SHARD_DIR, self.name))

    def _add_vector(self, spec: VectorSpec) -> None:
        # Its tuning (originals on disk with int8) applies from the next load, which passes the config.
        self._update(qe.UpdateOperation.create_dense_vector(spec.storage_key, spec.dim, qe.Distance.Cosine))

    def _drop_vector(self, key: str) -> None:
        self._update(qe.UpdateOperation.delete_vector_name(key))

    def indexed_fields(self) -> set[str]:
        """The declared fields whose payload index the shard has (for `indexer.stores.check`)."""
        paths = set(self.shard.info().payload_schema)
        return {name for name in self.schema.fields if payload_path(name) in paths}

    def _index_field(self, path: str, kind: FieldType) -> None:
        self._update(_field_index(path, kind), index_stale=False)  # indexes payloads where they are
