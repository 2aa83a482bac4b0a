"""Qdrant server (or cluster) store via qdrant-client; `qdrant_path` selects its local mode (tests).

Collection info lives in the collection's own metadata (one key holding a JSON string, so the
server's key-level merge on update still means "replace"). That needs Qdrant server >= 1.16.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from qdrant_client import QdrantClient, models

from indexer.settings import Settings
from indexer.stores import canonical_id, checked_vector
from indexer.stores.base import CollectionBusy, Hit, Record, StoreError

INFO_KEY = "clipsearch_info"
# The same tuning as the edge store (see edge.py): HNSW m / ef_construct here, ef at query time,
# int8 quantization (RAM) with float32 originals on disk and rescoring from Settings.
HNSW_M = 16
HNSW_EF_CONSTRUCT = 256
INT8_QUANTILE = 0.99
WRITE_BATCH = 256  # points per request: keeps REST bodies around a few MB for 512-d vectors
SCROLL_PAGE = 1024

# Local mode allows one client per directory per process, and several stores (plus
# list/drop) may be open at once, so clients are shared and reference-counted.
_clients: dict[tuple[str, ...], list[Any]] = {}  # key -> [client, refcount]
_clients_lock = threading.Lock()


def _client_key(settings: Settings) -> tuple[str, ...]:
    if settings.qdrant_path is not None:
        return ("path", str(settings.qdrant_path.expanduser().resolve()))
    if not settings.qdrant_url:
        raise StoreError("store=qdrant needs CLIPSEARCH_QDRANT_URL (or qdrant_path for local mode)")
    return ("url", settings.qdrant_url, settings.qdrant_api_key or "")


def _acquire(settings: Settings) -> QdrantClient:
    key = _client_key(settings)
    with _clients_lock:
        entry = _clients.get(key)
        if entry is None:
            try:
                if key[0] == "path":
                    client = QdrantClient(path=key[1])
                else:
                    client = QdrantClient(url=settings.qdrant_url, api_key=settings.qdrant_api_key)
            except Exception as exc:
                if "already accessed" in str(exc):  # local mode: the folder is open in another process
                    raise CollectionBusy(f"Qdrant local storage {key[1]} is already open elsewhere") from exc
                raise StoreError(f"cannot connect to Qdrant ({key[1]}): {exc}") from exc
            entry = _clients[key] = [client, 0]
        entry[1] += 1
        return entry[0]


def _release(client: QdrantClient) -> None:
    with _clients_lock:
        for key, entry in list(_clients.items()):
            if entry[0] is client:
                entry[1] -= 1
                if entry[1] == 0:
                    del _clients[key]
                    client.close()
                return


@contextlib.contextmanager
def _client(settings: Settings) -> Iterator[QdrantClient]:
    client = _acquire(settings)
    try:
        yield client
    finally:
        _release(client)


def existing_dim(settings: Settings, name: str) -> int | None:
    with _client(settings) as client, _errors(name, "inspect"):
        if not client.collection_exists(name):
            return None
        vectors = client.get_collection(name).config.params.vectors
        if not isinstance(vectors, models.VectorParams):
            raise StoreError(f"collection {name!r} has named vectors; it was not made by clipsearch")
        return int(vectors.size)


def create(settings: Settings, name: str, dim: int) -> QdrantStore:
    client = _acquire(settings)
    try:
        cluster: dict[str, Any] = {}
        if settings.qdrant_path is None:  # local mode has no shards or replicas
            cluster = {"shard_number": settings.qdrant_shards, "replication_factor": settings.qdrant_replicas}
        with _errors(name, "create"):
            client.create_collection(name, **_collection_config(settings, dim), **cluster)
    except BaseException:
        _release(client)
        raise
    return QdrantStore(name, dim, client, settings)


def _collection_config(settings: Settings, dim: int) -> dict[str, Any]:
    quantized = settings.quantization == "int8"
    quantization = None
    if quantized:
        quantization = models.ScalarQuantization(
            scalar=models.ScalarQuantizationConfig(
                type=models.ScalarType.INT8, quantile=INT8_QUANTILE, always_ram=True
            )
        )
    return {
        "vectors_config": models.VectorParams(size=dim, distance=models.Distance.COSINE, on_disk=quantized),
        "hnsw_config": models.HnswConfigDiff(m=HNSW_M, ef_construct=HNSW_EF_CONSTRUCT),
        "quantization_config": quantization,
        "on_disk_payload": True,
    }


def load(settings: Settings, name: str, dim: int) -> QdrantStore:
    return QdrantStore(name, dim, _acquire(settings), settings)


def list_collections(settings: Settings) -> list[str]:
    with _client(settings) as client, _errors("*", "list"):
        return sorted(c.name for c in client.get_collections().collections)


def drop(settings: Settings, name: str) -> None:
    with _client(settings) as client, _errors(name, "drop"):
        client.delete_collection(name)


class QdrantStore:
    """A VectorStore over one Qdrant collection."""

    def __init__(self, name: str, dim: int, client: QdrantClient, settings: Settings) -> None:
        self.name = name
        self.dim = dim
        self._client: QdrantClient | None = client
        # Local mode always searches exactly and warns about search params, so send none there.
        self._local = settings.qdrant_path is not None
        self._ef = settings.hnsw_ef
        self._quantization = models.QuantizationSearchParams(rescore=True, oversampling=settings.oversampling)

    @property
    def client(self) -> QdrantClient:
        if self._client is None:
            raise StoreError(f"collection {self.name!r} is closed")
        return self._client

    def upsert(self, records: Sequence[Record]) -> None:
        points = [
            models.PointStruct(id=canonical_id(r.id), vector=self._vector(r), payload=r.payload)
            for r in records
        ]
        with _errors(self.name, "upsert"):
            for start in range(0, len(points), WRITE_BATCH):
                # wait=True: acknowledged writes are in the server's WAL, so flush() has nothing to do.
                self.client.upsert(self.name, points[start : start + WRITE_BATCH], wait=True)

    def delete(self, ids: Sequence[str]) -> None:
        keys = [canonical_id(i) for i in ids]
        with _errors(self.name, "delete"):
            for start in range(0, len(keys), WRITE_BATCH):
                selector = models.PointIdsList(points=keys[start : start + WRITE_BATCH])
                self.client.delete(self.name, points_selector=selector, wait=True)

    def search(self, vector: np.ndarray, k: int) -> list[Hit]:
        if k <= 0:
            return []
        query = checked_vector(self.name, self.dim, vector, "query")
        params = None
        if not self._local:  # quantization params are ignored by collections without quantization
            params = models.SearchParams(
                hnsw_ef=max(self._ef, k), exact=False, quantization=self._quantization
            )
        with _errors(self.name, "search"):
            result = self.client.query_points(
                self.name, query=query.tolist(), limit=k, search_params=params, with_payload=True
            )
        return [Hit(id=str(p.id), score=float(p.score), payload=p.payload or {}) for p in result.points]

    def retrieve(self, ids: Sequence[str], with_vectors: bool = False) -> list[Record]:
        keys = [canonical_id(i) for i in ids]
        if not keys:
            return []
        with _errors(self.name, "retrieve"):
            points = self.client.retrieve(self.name, keys, with_payload=True, with_vectors=with_vectors)
        found = {str(p.id): p for p in points}
        return [_record(found[key], with_vectors) for key in keys if key in found]

    def scan(self) -> Iterator[Record]:
        offset: Any = None
        while True:
            with _errors(self.name, "scan"):
                page, offset = self.client.scroll(
                    self.name, limit=SCROLL_PAGE, offset=offset, with_payload=True, with_vectors=False
                )
            for point in page:
                yield _record(point, False)
            if offset is None:
                return

    def count(self) -> int:
        with _errors(self.name, "count"):
            return int(self.client.count(self.name, exact=True).count)

    def read_info(self) -> dict[str, Any]:
        with _errors(self.name, "read info"):
            metadata = self.client.get_collection(self.name).config.metadata or {}
        raw = metadata.get(INFO_KEY)
        return json.loads(raw) if raw else {}

    def write_info(self, info: dict[str, Any]) -> None:
        with _errors(self.name, "write info"):
            self.client.update_collection(self.name, metadata={INFO_KEY: json.dumps(info, sort_keys=True)})

    def flush(self) -> None:
        """Nothing to do: every write above waited for the server (or local mode) to persist it."""

    def close(self) -> None:
        if self._client is not None:
            _release(self._client)
            self._client = None

    def _vector(self, record: Record) -> list[float]:
        return checked_vector(self.name, self.dim, record.vector, f"record {record.id}").tolist()

    def __enter__(self) -> QdrantStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _record(point: Any, with_vector: bool) -> Record:
    vector = np.asarray(point.vector, dtype=np.float32) if with_vector and point.vector is not None else None
    return Record(id=str(point.id), vector=vector, payload=point.payload or {})


@contextlib.contextmanager
def _errors(name: str, action: str) -> Iterator[None]:
    """Connection, HTTP and local-mode errors all become StoreError naming the collection."""
    try:
        yield
    except StoreError:
        raise
    except Exception as exc:
        raise StoreError(f"Qdrant collection {name!r}: {action} failed: {exc}") from exc
