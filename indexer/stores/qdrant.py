"""Qdrant server (or cluster) store via qdrant-client; `settings.qdrant.path` selects its local mode (tests).

Each schema vector is a named vector of the collection, stored under its storage key (a
version-1 collection has one unnamed vector, ""). The info document (schema and the rest,
`StoredInfo`) lives in the collection's own metadata, as one key holding a JSON string, so the
server's key-level merge on update still means "replace". That needs Qdrant server >= 1.16.
"""

from __future__ import annotations

import contextlib
import json
import threading
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from qdrant_client import QdrantClient, models

import indexer.stores.qdrant_common as common
from indexer.errors import CollectionBusy, StoreError
from indexer.schema import CollectionSchema, FieldType, VectorSpec, payload_path
from indexer.settings import Settings
from indexer.stores.base import Hit, StoredInfo
from indexer.stores.filters import Filter
from indexer.stores.keyword import RRF_K, SPARSE_KEY, text_fields

INFO_KEY = "clipsearch_info"
WRITE_BATCH = 256  # points per request: keeps REST bodies around a few MB for 512-d vectors

# Local mode allows one client per directory per process, and several stores (plus
# list/drop) may be open at once, so clients are shared and reference-counted.
_clients: dict[tuple[str, ...], list[Any]] = {}  # key -> [client, refcount]
_clients_lock = threading.Lock()


def _label(name: str) -> str:
    return f"Qdrant collection {name!r}"


def _client_key(settings: Settings) -> tuple[str, ...]:
    if settings.qdrant.path is not None:
        return ("path", str(settings.qdrant.path.expanduser().resolve()))
    if not settings.qdrant.url:
        raise StoreError(
            "CLIPSEARCH_STORE=qdrant needs CLIPSEARCH_QDRANT_URL (or CLIPSEARCH_QDRANT_PATH for local mode)"
        )
    return ("url", settings.qdrant.url, settings.qdrant.api_key or "")


def _acquire(settings: Settings) -> QdrantClient:
    key = _client_key(settings)
    with _clients_lock:
        entry = _clients.get(key)
        if entry is None:
            try:
                if key[0] == "path":
                    client = QdrantClient(path=key[1])
                else:
                    client = QdrantClient(url=settings.qdrant.url, api_key=settings.qdrant.api_key)
            except Exception as exc:
                if "already accessed" in str(exc):  # local mode: the folder is open in another process
                    raise CollectionBusy(
                        f"Qdrant local storage {key[1]} is already open in another process; stop that "
                        f"process, or run a Qdrant server and set CLIPSEARCH_QDRANT_URL for concurrent access"
                    ) from exc
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


def _vector_params(settings: Settings, dim: int) -> models.VectorParams:
    # With int8, the float32 originals stay on disk: only rescoring reads them.
    on_disk = settings.quantization == "int8"
    return models.VectorParams(size=dim, distance=models.Distance.COSINE, on_disk=on_disk)


# BM25 sparse vectors (computed client-side by qdrant_edge.Bm25, as in the edge store); IDF: the
# server weighs each term by its rarity among the documents.
_SPARSE = models.SparseVectorParams(modifier=models.Modifier.IDF)


def _rrf(query: common.Fused) -> models.RrfQuery:
    return models.RrfQuery(rrf=models.Rrf(k=RRF_K, weights=query.weights))


def _engine_vector(vector: Any) -> Any:
    return models.SparseVector(indices=vector[0], values=vector[1]) if isinstance(vector, tuple) else vector


def _collection_config(settings: Settings, schema: CollectionSchema) -> dict[str, Any]:
    quantization = None
    if settings.quantization == "int8":
        quantization = models.ScalarQuantization(
            scalar=models.ScalarQuantizationConfig(
                type=models.ScalarType.INT8, quantile=common.INT8_QUANTILE, always_ram=True
            )
        )
    config: dict[str, Any] = {
        "vectors_config": {s.storage_key: _vector_params(settings, s.dim) for s in schema.vectors.values()},
        "sparse_vectors_config": {SPARSE_KEY: _SPARSE} if text_fields(schema) else None,
        "hnsw_config": models.HnswConfigDiff(m=common.HNSW_M, ef_construct=common.HNSW_EF_CONSTRUCT),
        "quantization_config": quantization,
        "on_disk_payload": True,
        "metadata": {INFO_KEY: json.dumps(StoredInfo(schema, {}, legacy=False).document(), sort_keys=True)},
    }
    if settings.qdrant.path is None:  # local mode has no shards or replicas
        config.update(shard_number=settings.qdrant.shards, replication_factor=settings.qdrant.replicas)
    return config


# --- the five backend functions -------------------------------------------------------------------


def exists(settings: Settings, name: str) -> bool:
    with _client(settings) as client, common.store_errors(_label(name), "inspect"):
        return bool(client.collection_exists(name))


def create(settings: Settings, name: str, schema: CollectionSchema) -> QdrantStore:
    """Create the collection with its vectors and info document in one request, then its field
    indexes; when another process created it first, open that one."""
    client = _acquire(settings)
    try:
        try:
            with common.store_errors(_label(name), "create"):
                client.create_collection(name, **_collection_config(settings, schema))
        except StoreError:
            with common.store_errors(_label(name), "create"):
                created_elsewhere = client.collection_exists(name)
            if not created_elsewhere:
                raise
            return _open(settings, name, client)
        store = QdrantStore(name, client, settings, StoredInfo(schema, {}, legacy=False))
        with common.store_errors(_label(name), "create"):
            for field_name, kind in schema.fields.items():
                store._index_field(payload_path(field_name), kind)
        return store
    except BaseException:
        _release(client)
        raise


def load(settings: Settings, name: str, background: bool = False) -> QdrantStore:
    """`background` is ignored: opening reads only the collection's info from the server."""
    client = _acquire(settings)
    try:
        return _open(settings, name, client)
    except BaseException:
        _release(client)
        raise


def _open(settings: Settings, name: str, client: QdrantClient) -> QdrantStore:
    with common.store_errors(_label(name), "open"):
        stored = _read_stored(client, name)
    remedy = f"delete the Qdrant collection {name!r} and index again"
    return QdrantStore(name, client, settings, common.require_schema(stored, _label(name), remedy))


def list_collections(settings: Settings) -> list[str]:
    with _client(settings) as client, common.store_errors("Qdrant", "list collections"):
        return sorted(c.name for c in client.get_collections().collections)


def drop(settings: Settings, name: str) -> None:
    with _client(settings) as client, common.store_errors(_label(name), "drop"):
        client.delete_collection(name)


def _read_stored(client: QdrantClient, name: str) -> StoredInfo:
    metadata = client.get_collection(name).config.metadata or {}
    raw = metadata.get(INFO_KEY)
    return StoredInfo.parse(json.loads(raw) if raw else {})


# --- the store ------------------------------------------------------------------------------------


class QdrantStore(common.QdrantFamilyStore):
    """A VectorStore over one Qdrant collection. Every write waits for the server (or local mode)
    to persist it, so flush() has nothing to do."""

    write_batch = WRITE_BATCH

    def __init__(self, name: str, client: QdrantClient, settings: Settings, stored: StoredInfo) -> None:
        super().__init__(name, _label(name), stored)
        self._client: QdrantClient | None = client
        # Local mode always searches exactly and warns about search params, so send none there.
        self._local = settings.qdrant.path is not None
        # A server's client sends each call over HTTP and the server synchronises them: searches may run
        # from several threads at once. Local mode is qdrant-client's in-process test double, plain Python
        # dicts and arrays with no locks of its own: its callers take turns.
        self.concurrent_reads = not self._local
        self._ef = settings.hnsw_ef
        self._quantization = models.QuantizationSearchParams(rescore=True, oversampling=settings.oversampling)

    @property
    def client(self) -> QdrantClient:
        if self._client is None:
            raise StoreError(f"{self._label} is closed")
        return self._client

    def flush(self) -> None:
        """Nothing to do: every write waited for the server (or local mode) to persist it."""

    def close(self) -> None:
        if self._client is not None:
            _release(self._client)
            self._client = None

    # --- engine calls -----------------------------------------------------------------------

    def _put_points(self, points: Sequence[tuple[str, common.Vectors, dict[str, Any]]]) -> None:
        structs = [
            models.PointStruct(id=i, vector={k: _engine_vector(x) for k, x in v.items()}, payload=p)
            for i, v, p in points
        ]
        self.client.upsert(self.name, structs, wait=True)

    def _put_vectors(self, key: str, vectors: Mapping[str, list[float]]) -> None:
        points = [models.PointVectors(id=i, vector={key: v}) for i, v in vectors.items()]
        self.client.update_vectors(self.name, points, wait=True)

    def _put_payloads(self, payloads: Mapping[str, dict[str, Any]]) -> None:
        operations = [
            models.OverwritePayloadOperation(overwrite_payload=models.SetPayload(payload=p, points=[i]))
            for i, p in payloads.items()
        ]
        self.client.batch_update_points(self.name, operations, wait=True)

    def _delete_points(self, ids: Sequence[str]) -> None:
        self.client.delete(self.name, points_selector=models.PointIdsList(points=list(ids)), wait=True)

    def _existing(self, ids: Sequence[str]) -> set[str]:
        found = self.client.retrieve(self.name, list(ids), with_payload=False, with_vectors=False)
        return {str(p.id) for p in found}

    def _query(self, query: common.QuerySpec, limit: int, native: Any, threshold: float | None) -> list[Hit]:
        if isinstance(query, common.Fused):
            result = self.client.query_points(
                self.name, prefetch=self._prefetches(query, native), query=_rrf(query),
                limit=limit, score_threshold=threshold, with_payload=True,
            )
        else:
            result = self.client.query_points(
                self.name, query=self._scoring(query), using=common.using_name(query.key), limit=limit,
                query_filter=native, search_params=self._params(limit, query.key, native),
                score_threshold=threshold, with_payload=True,
            )
        return [common.to_hit(p) for p in result.points]

    native_groups = True

    def _query_groups(
        self, query: common.QuerySpec, path: str, limit: int, native: Any, threshold: float | None
    ) -> list[Hit]:
        common_args: dict[str, Any] = {"group_by": path, "limit": limit, "group_size": 1,
                                       "score_threshold": threshold, "with_payload": True}
        if isinstance(query, common.Fused):
            result = self.client.query_points_groups(
                self.name, prefetch=self._prefetches(query, native),
                query=_rrf(query), **common_args,
            )
        else:
            result = self.client.query_points_groups(
                self.name, query=self._scoring(query), using=common.using_name(query.key),
                query_filter=native, search_params=self._params(limit, query.key, native), **common_args,
            )
        hits = []
        for group in result.groups:
            best = common.to_hit(group.hits[0])
            hits.append(Hit(best.id, best.score, best.payload, group=group.id))
        return hits

    def _prefetches(self, query: common.Fused, native: Any) -> list[models.Prefetch]:
        return [
            models.Prefetch(
                query=_engine_vector(part.vector), using=common.using_name(part.key), limit=query.candidates,
                filter=native, params=self._params(query.candidates, part.key, native),
                score_threshold=part.threshold,
            )
            for part in query.parts
        ]

    def _scoring(self, query: common.QuerySpec) -> Any:
        if isinstance(query, common.Nearest):
            return _engine_vector(query.vector)
        if isinstance(query, common.Recommend):
            examples = models.RecommendInput(
                positive=query.positive, negative=query.negative, strategy=models.RecommendStrategy.SUM_SCORES
            )
            return models.RecommendQuery(recommend=examples)
        assert isinstance(query, common.Diverse)
        mmr = models.Mmr(diversity=1.0 - query.lambda_, candidates_limit=query.candidates)
        return models.NearestQuery(nearest=query.vector, mmr=mmr)

    def _params(self, limit: int, key: str, native: Any) -> models.SearchParams | None:
        """Search parameters for vector `key` under the filter `native` (None: no filter)."""
        if self._local or key == SPARSE_KEY:  # quantization params are ignored by collections without it
            return None
        return models.SearchParams(hnsw_ef=max(self._ef, limit), exact=self._exact(key, native),
                                   quantization=self._quantization)

    def _facet(self, path: str, limit: int, native: Any) -> list[tuple[str, int]]:
        response = self.client.facet(self.name, path, facet_filter=native, limit=limit, exact=True)
        return [(hit.value, hit.count) for hit in response.hits]  # type: ignore[misc]

    def _has_sparse(self) -> bool:
        return SPARSE_KEY in (self.client.get_collection(self.name).config.params.sparse_vectors or {})

    def _add_sparse(self) -> None:
        config = models.SparseVectorNameConfig(sparse=models.SparseVectorConfig(modifier=models.Modifier.IDF))
        self.client.create_vector_name(self.name, SPARSE_KEY, config)

    def _drop_sparse(self) -> None:
        self.client.delete_vector_name(self.name, SPARSE_KEY)

    def _put_sparse(self, vectors: Mapping[str, common.Sparse | None]) -> None:
        present = [
            models.PointVectors(id=i, vector={SPARSE_KEY: _engine_vector(v)}) for i, v in vectors.items() if v
        ]
        absent = [i for i, v in vectors.items() if v is None]
        if present:
            self.client.update_vectors(self.name, present, wait=True)
        if absent:  # an empty document has no vector, so it neither matches nor counts for IDF
            self.client.delete_vectors(self.name, [SPARSE_KEY], models.PointIdsList(points=absent), wait=True)

    def _fetch(self, ids: Sequence[str], keys: list[str]) -> list[Any]:
        return self.client.retrieve(self.name, list(ids), with_payload=True, with_vectors=keys or False)

    def _scroll(self, offset: Any, native: Any, keys: list[str]) -> tuple[list[Any], Any]:
        return self.client.scroll(
            self.name, scroll_filter=native, limit=common.SCROLL_PAGE, offset=offset,
            with_payload=True, with_vectors=keys or False,
        )

    def _count(self, native: Any) -> int:
        return self.client.count(self.name, count_filter=native, exact=True).count

    def _estimated_count(self, native: Any) -> int:
        return self.client.count(self.name, count_filter=native, exact=False).count

    def _native_filter(self, store_filter: Filter | None) -> Any:
        return common.client_filter(store_filter, self.schema)

    def _load_stored(self) -> StoredInfo:
        stored = _read_stored(self.client, self.name)
        return common.require_schema(stored, self._label, "delete it and index again")

    def _save_document(self, document: dict[str, Any]) -> None:
        self.client.update_collection(self.name, metadata={INFO_KEY: json.dumps(document, sort_keys=True)})

    def _vector_keys(self) -> set[str]:
        vectors = self.client.get_collection(self.name).config.params.vectors
        return set(vectors) if isinstance(vectors, dict) else {""}

    def _add_vector(self, spec: VectorSpec) -> None:
        dense = models.DenseVectorConfig(size=spec.dim, distance=models.Distance.COSINE)
        self.client.create_vector_name(self.name, spec.storage_key, models.DenseVectorNameConfig(dense=dense))

    def _drop_vector(self, key: str) -> None:
        self.client.delete_vector_name(self.name, key)

    def _index_field(self, path: str, kind: FieldType) -> None:
        with warnings.catch_warnings():
            # Local mode accepts the index and warns that it filters by scanning instead.
            if self._local:
                warnings.filterwarnings("ignore", message="Payload indexes have no effect")
            index_type = common.client_index_type(kind)
            self.client.create_payload_index(self.name, path, field_schema=index_type, wait=True)
