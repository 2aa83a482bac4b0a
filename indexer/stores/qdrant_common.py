"""What the two Qdrant backends share: the store logic above the engine calls, filter conversion,
result paging and record conversion, and the tuning both apply.

`edge.py` (embedded Qdrant Edge) and `qdrant.py` (a Qdrant server via qdrant-client) subclass
`QdrantFamilyStore` and supply only the engine calls (`_put_points`, `_query`, ...). Everything
the protocol promises beyond those (schema names -> storage keys, checks, the version-1 migration
at the first write, stable offset paging, schema changes, the BM25 sparse vector kept in step
with the payloads) is written once, here. Queries reach the engines as the small neutral specs
below (`Nearest`, `Fused`, `Recommend`, `Diverse`), which each engine spells in its own objects.

qdrant-client is imported only by its converter, so the default edge store never loads it.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import qdrant_edge as qe

from indexer.errors import ClipsearchError, SchemaError, StoreError
from indexer.schema import CollectionSchema, FieldType, VectorSpec, payload_path
from indexer.stores.base import (
    Hit,
    PlannedSearch,
    Record,
    SearchPlan,
    StoredInfo,
    WithVectors,
    at_least,
    canonical_id,
    checked_vector,
    facet_order,
    facet_path,
    grouped_page,
    ranked_page,
    wanted_vectors,
)
from indexer.stores.filters import (
    FieldCondition,
    Filter,
    HasIdCondition,
    HasVectorCondition,
    IsEmptyCondition,
    MatchAny,
    MatchExcept,
    MatchValue,
)
from indexer.stores.keyword import (
    KEYWORD_CUT,
    RRF_WEIGHTS,
    SPARSE_KEY,
    document,
    sparse_document,
    sparse_query,
    text_fields,
)

# Tuning both backends apply (see docs/benchmarks.md). 256, not 128: on 1M clustered 512-d vectors
# (scripts/bench_query.py) 128 left parts of the graph unreachable (recall@10 0.96 at ef 256);
# 256 gives 0.9998. ef at query time, quantization and oversampling come from Settings.
HNSW_M = 16
HNSW_EF_CONSTRUCT = 256
# With quantization=int8, int8 copies in RAM are searched and the top k * oversampling rescored
# with the float32 originals on disk. The quantile is the value range int8 keeps; rarer values clip.
INT8_QUANTILE = 0.99
SCROLL_PAGE = 1024
# A filter whose points (by the payload index's estimate, ~15 us on edge) times their dimensions are at
# most this is searched exactly over just those points: 20,000 512-d vectors, ~9 ms. Qdrant's planner
# does so only under a per-segment size (full_scan_threshold), and HNSW with a filter that keeps few
# points loses recall: edge, 1M points, 1% kept, recall@10 0.977 at hnsw_ef 256 (0.952 at 128), against
# 1.0 exactly in 4.5 ms p50 (docs/benchmarks.md, "Filtered search").
EXACT_SCAN_MAX = 20_000 * 512

T = TypeVar("T")


def batches(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@contextlib.contextmanager
def store_errors(label: str, action: str) -> Iterator[None]:
    """Engine errors (qdrant_edge raises bare Exception; qdrant-client HTTP, connection and
    local-mode errors) become StoreError naming the collection; our own errors (DiskFull, ...) pass."""
    try:
        yield
    except ClipsearchError:
        raise
    except Exception as exc:
        raise StoreError(f"{label}: {action} failed: {exc}") from exc


def using_name(key: str) -> str | None:
    """The engines' name for a storage key in queries: None for a version-1 collection's unnamed vector."""
    return key or None


# --- results ---------------------------------------------------------------------------------------


def to_hit(point: Any) -> Hit:
    return Hit(id=str(point.id), score=float(point.score), payload=point.payload or {})


# --- queries, as both engines get them ----------------------------------------------------------

Sparse = tuple[list[int], list[float]]  # (indices, values)


@dataclass(frozen=True)
class Nearest:
    """Nearest by the vector at storage key `key` (a dense list, or a sparse vector for SPARSE_KEY);
    in a Fused query, cut at `threshold`."""

    vector: list[float] | Sparse
    key: str
    threshold: float | None = None


@dataclass(frozen=True)
class Fused:
    """Weighted reciprocal rank fusion (k=RRF_K) of the rankings, each cut at `candidates` hits."""

    parts: list[Nearest]
    weights: list[float]
    candidates: int


@dataclass(frozen=True)
class Recommend:
    """Recommend query, sum_scores strategy, over unit example vectors."""

    positive: list[list[float]]
    negative: list[list[float]]
    key: str


@dataclass(frozen=True)
class Diverse:
    """MMR over the `candidates` nearest: lambda_ weighs relevance, 1 - lambda_ diversity."""

    vector: list[float]
    key: str
    lambda_: float
    candidates: int


QuerySpec = Nearest | Fused | Recommend | Diverse


def to_record(point: Any, names_by_key: Mapping[str, str]) -> Record:
    """A Record from an engine point, its vectors named by schema name. Engines return a bare list
    when the only vector asked for is the unnamed one (version-1 collections), a dict otherwise."""
    raw = point.vector
    if raw is None:
        raw = {}
    elif not isinstance(raw, dict):
        raw = {"": raw}
    vectors = {names_by_key[k]: np.asarray(v, dtype=np.float32) for k, v in raw.items() if k in names_by_key}
    return Record(id=str(point.id), vectors=vectors, payload=point.payload or {})


# --- filters ---------------------------------------------------------------------------------------


class _Vocabulary(ABC):
    """One engine's constructors for the parts of a filter."""

    @abstractmethod
    def filter(self, must: list[Any], should: list[Any], must_not: list[Any]) -> Any: ...
    @abstractmethod
    def match(self, key: str, match: MatchValue | MatchAny | MatchExcept) -> Any: ...
    @abstractmethod
    def range(self, key: str, bounds: dict[str, Any], datetimes: bool) -> Any: ...
    @abstractmethod
    def geo_radius(self, key: str, lat: float, lon: float, radius: float) -> Any: ...
    @abstractmethod
    def is_empty(self, key: str) -> Any: ...
    @abstractmethod
    def has_id(self, ids: list[str]) -> Any: ...
    @abstractmethod
    def has_vector(self, key: str) -> Any: ...


def _convert(store_filter: Filter | None, schema: CollectionSchema, words: _Vocabulary) -> Any | None:
    """The one walk over a store filter; `words` builds each part in the engine's objects."""
    if store_filter is None or store_filter.is_empty():
        return None

    def condition(c: Any) -> Any:
        if isinstance(c, Filter):
            return walk(c)
        if isinstance(c, HasIdCondition):
            return words.has_id(c.has_id)
        if isinstance(c, HasVectorCondition):
            return words.has_vector(schema.vector(c.has_vector).storage_key)
        if isinstance(c, IsEmptyCondition):
            return words.is_empty(c.is_empty.key)
        assert isinstance(c, FieldCondition)
        if c.match is not None:
            return words.match(c.key, c.match)
        if c.range is not None:
            bounds = c.range.bounds()  # store filters hold datetimes as RFC 3339 strings, numbers as floats
            return words.range(c.key, bounds, any(isinstance(v, str) for v in bounds.values()))
        assert c.geo_radius is not None
        centre = c.geo_radius.center
        return words.geo_radius(c.key, centre.lat, centre.lon, c.geo_radius.radius)

    def walk(f: Filter) -> Any:
        return words.filter([condition(c) for c in f.must], [condition(c) for c in f.should],
                            [condition(c) for c in f.must_not])

    return walk(store_filter)


class _EdgeWords(_Vocabulary):
    def filter(self, must: list[Any], should: list[Any], must_not: list[Any]) -> Any:
        return qe.Filter(must=must or None, should=should or None, must_not=must_not or None)

    def match(self, key: str, match: MatchValue | MatchAny | MatchExcept) -> Any:
        if isinstance(match, MatchValue):
            # qdrant-edge-py 0.9 sends a Python bool as the integer 1/0; numpy.bool_ goes as a bool.
            value = np.bool_(match.value) if isinstance(match.value, bool) else match.value
            return qe.FieldCondition(key, match=qe.MatchValue(value))
        if isinstance(match, MatchAny):
            return qe.FieldCondition(key, match=qe.MatchAny(match.any))
        return qe.FieldCondition(key, match=qe.MatchExcept(match.except_))

    def range(self, key: str, bounds: dict[str, Any], datetimes: bool) -> Any:
        return qe.FieldCondition(key, range=(qe.RangeDateTime if datetimes else qe.RangeFloat)(**bounds))

    def geo_radius(self, key: str, lat: float, lon: float, radius: float) -> Any:
        return qe.FieldCondition(key, geo_radius=qe.GeoRadius(qe.GeoPoint(lon, lat), radius))

    def is_empty(self, key: str) -> Any:
        return qe.IsEmptyCondition(key)

    def has_id(self, ids: list[str]) -> Any:
        return qe.HasIdCondition(set(ids))

    def has_vector(self, key: str) -> Any:
        return qe.HasVectorCondition(key)


class _ClientWords(_Vocabulary):
    def __init__(self) -> None:
        from qdrant_client import models

        self.m = models

    def filter(self, must: list[Any], should: list[Any], must_not: list[Any]) -> Any:
        return self.m.Filter(must=must or None, should=should or None, must_not=must_not or None)

    def match(self, key: str, match: MatchValue | MatchAny | MatchExcept) -> Any:
        m = self.m
        if isinstance(match, MatchValue):
            native: Any = m.MatchValue(value=match.value)
        elif isinstance(match, MatchAny):
            native = m.MatchAny(any=match.any)
        else:
            native = m.MatchExcept(**{"except": match.except_})
        return m.FieldCondition(key=key, match=native)

    def range(self, key: str, bounds: dict[str, Any], datetimes: bool) -> Any:
        kind = self.m.DatetimeRange if datetimes else self.m.Range
        return self.m.FieldCondition(key=key, range=kind(**bounds))

    def geo_radius(self, key: str, lat: float, lon: float, radius: float) -> Any:
        centre = self.m.GeoPoint(lat=lat, lon=lon)
        return self.m.FieldCondition(key=key, geo_radius=self.m.GeoRadius(center=centre, radius=radius))

    def is_empty(self, key: str) -> Any:
        return self.m.IsEmptyCondition(is_empty=self.m.PayloadField(key=key))

    def has_id(self, ids: list[str]) -> Any:
        return self.m.HasIdCondition(has_id=list(ids))

    def has_vector(self, key: str) -> Any:
        return self.m.HasVectorCondition(has_vector=key)


def edge_filter(store_filter: Filter | None, schema: CollectionSchema) -> Any | None:
    """A store filter as a qdrant_edge Filter (None: no filter)."""
    return _convert(store_filter, schema, _EdgeWords())


def client_filter(store_filter: Filter | None, schema: CollectionSchema) -> Any | None:
    """A store filter as a qdrant-client models.Filter (None: no filter)."""
    return _convert(store_filter, schema, _ClientWords())


# Declared field type -> payload index type; both engines name their index types alike.
INDEX_TYPES: dict[str, str] = {
    "keyword": "keyword", "integer": "integer", "float": "float", "bool": "bool",
    "datetime": "datetime", "geo": "geo", "text": "text",
}


def edge_index_type(kind: FieldType) -> qe.PayloadSchemaType:
    return getattr(qe.PayloadSchemaType, INDEX_TYPES[kind].capitalize())


def client_index_type(kind: FieldType) -> Any:
    from qdrant_client import models

    return models.PayloadSchemaType(INDEX_TYPES[kind])


# --- the store logic both backends share --------------------------------------------------------------

Vectors = dict[str, Any]  # storage key -> vector: a list of floats, or `Sparse` for SPARSE_KEY


class QdrantFamilyStore(PlannedSearch, ABC):
    """The VectorStore protocol over a Qdrant engine; subclasses implement the `_` engine calls,
    which take storage keys and native filters and need not wrap errors."""

    write_batch = 256
    native_groups = False  # whether `_query_groups` is there; otherwise grouped_page groups in Python

    def __init__(self, name: str, label: str, stored: StoredInfo) -> None:
        self.name = name
        self._label = label  # how error messages name the collection
        self._stored = stored
        self._keyword_ready = False  # known to have the BM25 sparse vector, filled

    # --- engine calls -----------------------------------------------------------------------

    @abstractmethod
    def _put_points(self, points: Sequence[tuple[str, Vectors, dict[str, Any]]]) -> None: ...
    @abstractmethod
    def _put_vectors(self, key: str, vectors: Mapping[str, list[float]]) -> None: ...
    @abstractmethod
    def _put_payloads(self, payloads: Mapping[str, dict[str, Any]]) -> None: ...
    @abstractmethod
    def _delete_points(self, ids: Sequence[str]) -> None: ...
    @abstractmethod
    def _existing(self, ids: Sequence[str]) -> set[str]: ...
    def _exact(self, key: str, native: Any) -> bool:
        """Whether to search the vector with storage key `key` exactly: under a filter `native` (None:
        none) that keeps few enough points, by the engine's estimate (EXACT_SCAN_MAX)."""
        if native is None:
            return False
        dim = next(v.dim for v in self.schema.vectors.values() if v.storage_key == key)
        return self._estimated_count(native) * dim <= EXACT_SCAN_MAX

    @abstractmethod
    def _query(self, query: QuerySpec, limit: int, native: Any, threshold: float | None) -> list[Hit]:
        """The `limit` best hits of a query among the points that pass `native` scoring at least
        `threshold`."""
    @abstractmethod
    def _facet(self, path: str, limit: int, native: Any) -> list[tuple[str, int]]: ...
    @abstractmethod
    def _has_sparse(self) -> bool: ...
    @abstractmethod
    def _add_sparse(self) -> None: ...
    @abstractmethod
    def _drop_sparse(self) -> None: ...
    @abstractmethod
    def _put_sparse(self, vectors: Mapping[str, Sparse | None]) -> None:
        """Set (or, for None, remove) the BM25 sparse vector of existing points."""

    def _query_groups(
        self, query: QuerySpec, path: str, limit: int, native: Any, threshold: float | None
    ) -> list[Hit]:
        """The best hit of each of the `limit` best groups, natively (when `native_groups`)."""
        raise NotImplementedError

    @abstractmethod
    def _fetch(self, ids: Sequence[str], keys: list[str]) -> list[Any]: ...
    @abstractmethod
    def _scroll(self, offset: Any, native: Any, keys: list[str]) -> tuple[list[Any], Any]: ...
    @abstractmethod
    def _count(self, native: Any) -> int: ...
    @abstractmethod
    def _estimated_count(self, native: Any) -> int:
        """The engine's estimate of how many points pass `native` (from its payload indexes)."""
    @abstractmethod
    def _native_filter(self, store_filter: Filter | None) -> Any: ...
    @abstractmethod
    def _load_stored(self) -> StoredInfo: ...
    @abstractmethod
    def _save_document(self, document: dict[str, Any]) -> None: ...
    @abstractmethod
    def _vector_keys(self) -> set[str]: ...
    @abstractmethod
    def _add_vector(self, spec: VectorSpec) -> None: ...
    @abstractmethod
    def _drop_vector(self, key: str) -> None: ...
    @abstractmethod
    def _index_field(self, path: str, kind: FieldType) -> None: ...

    # --- the protocol ----------------------------------------------------------------------

    @property
    def schema(self) -> CollectionSchema:
        assert self._stored.schema is not None  # the backends' load() refuses collections without one
        return self._stored.schema

    def set_schema(self, schema: CollectionSchema) -> None:
        with self._errors("read schema"):
            self._stored = self._load_stored()  # the change is made against what is stored now
        old = self.schema
        _check_change(old, schema)
        old_keys = {s.storage_key for s in old.vectors.values()}
        new_keys = {s.storage_key for s in schema.vectors.values()}
        with self._errors("change schema"):
            # Storage no schema names is left by an interrupted change: remove it before reusing a key.
            for key in self._vector_keys() - old_keys:
                self._drop_vector(key)
            for spec in schema.vectors.values():
                if spec.storage_key not in old_keys:
                    self._add_vector(spec)
            indexed = {} if self._stored.legacy else old.fields
            for field_name, kind in schema.fields.items():
                if field_name not in indexed:
                    self._index_field(payload_path(field_name), kind)
            # Saved after creating storage and before removing it: the saved schema never names
            # storage that is not there.
            self._save(StoredInfo(schema, self._stored.info, legacy=False))
            for key in old_keys - new_keys:
                self._drop_vector(key)
            if text_fields(schema) != text_fields(old):  # the documents changed: rebuild them
                self._keyword_ready = False
                if text_fields(schema):
                    self._ensure_keyword(rebuild=True)
                elif self._has_sparse():
                    self._drop_sparse()

    def upsert(self, records: Sequence[Record]) -> None:
        fields = text_fields(self.schema)
        points = []
        for r in records:
            vectors = self._storage_vectors(r)
            if fields and (sparse := sparse_document(document(r.payload, fields))) is not None:
                vectors[SPARSE_KEY] = sparse
            points.append((canonical_id(r.id), vectors, r.payload))
        if not points:
            return
        self._migrate()
        with self._errors("upsert"):
            if fields:
                self._ensure_keyword()
            for batch in batches(points, self.write_batch):
                self._put_points(batch)

    def update_vectors(self, name: str, vectors: Mapping[str, np.ndarray]) -> None:
        spec = self.schema.vector(name)
        checked = {
            canonical_id(i): checked_vector(self.name, spec.dim, v, f"point {i} vector {name!r}").tolist()
            for i, v in vectors.items()
        }
        self._put_existing("update vectors", checked, lambda part: self._put_vectors(spec.storage_key, part))

    def set_payloads(self, payloads: Mapping[str, dict[str, Any]]) -> None:
        by_id = {canonical_id(i): dict(p) for i, p in payloads.items()}
        fields = text_fields(self.schema)
        if not fields:
            self._put_existing("set payloads", by_id, self._put_payloads)
            return

        def put(part: dict[str, Any]) -> None:
            self._put_payloads(part)
            self._put_sparse({i: sparse_document(document(p, fields)) for i, p in part.items()})

        with self._errors("set payloads"):
            self._ensure_keyword()
        self._put_existing("set payloads", by_id, put)

    def delete(self, ids: Sequence[str]) -> None:
        keys = [canonical_id(i) for i in ids]
        if not keys:
            return
        self._migrate()
        with self._errors("delete"):
            for batch in batches(keys, self.write_batch):
                self._delete_points(batch)

    def _run_search(
        self, plan: SearchPlan, spec: Any, vector: np.ndarray | None, text: str, filter: Filter | None
    ) -> list[Hit]:
        dense = None if vector is None else vector.tolist()
        native = self._native_filter(filter)
        with self._errors("search"):
            sparse = None
            if plan.mode != "vector":
                self._ensure_keyword()
                sparse = sparse_query(text)
            query: QuerySpec
            if plan.mode == "keyword":
                if sparse is None:  # no terms (empty, or only stop words): nothing matches
                    return []
                query = Nearest(sparse, SPARSE_KEY)
            elif plan.mode == "hybrid":
                assert dense is not None
                query = self._hybrid(Nearest(dense, spec.storage_key), sparse, native, plan)
            elif plan.lambda_ is not None:
                assert dense is not None
                query = Diverse(dense, spec.storage_key, plan.lambda_, plan.mmr_candidates)
            else:
                assert dense is not None
                query = Nearest(dense, spec.storage_key)
            return self._page(query, plan, native)

    def _run_recommend(
        self, plan: SearchPlan, spec: Any, pos: list[np.ndarray], neg: list[np.ndarray], filter: Filter | None
    ) -> list[Hit]:
        native = self._native_filter(filter)
        query = Recommend([v.tolist() for v in pos], [v.tolist() for v in neg], spec.storage_key)
        with self._errors("recommend"):
            return self._page(query, plan, native)

    def facet(self, field: str, *, filter: Filter | None = None, limit: int = 10) -> list[tuple[str, int]]:
        path = facet_path(self.schema, field, limit)
        if limit == 0:
            return []
        native = self._native_filter(filter)
        with self._errors("facet"):
            counts = self._facet(path, limit, native)
        return facet_order(dict(counts), limit)

    def retrieve(self, ids: Sequence[str], with_vectors: WithVectors = False) -> list[Record]:
        keys = [canonical_id(i) for i in ids]
        if not keys:
            return []
        names_by_key = self._names_by_key(with_vectors)
        with self._errors("retrieve"):
            found = {str(p.id): p for p in self._fetch(keys, list(names_by_key))}
        return [to_record(found[key], names_by_key) for key in keys if key in found]

    def scan(self, filter: Filter | None = None, with_vectors: WithVectors = False) -> Iterator[Record]:
        names_by_key = self._names_by_key(with_vectors)
        native = self._native_filter(filter)
        offset: Any = None
        while True:
            with self._errors("scan"):
                page, offset = self._scroll(offset, native, list(names_by_key))
            for point in page:
                yield to_record(point, names_by_key)
            if offset is None:
                return

    def count(self, filter: Filter | None = None) -> int:
        native = self._native_filter(filter)
        with self._errors("count"):
            return int(self._count(native))

    def read_info(self) -> dict[str, Any]:
        # Read again: a server collection may be shared with other processes.
        with self._errors("read info"):
            self._stored = self._load_stored()
        return dict(self._stored.info)

    def write_info(self, info: dict[str, Any]) -> None:
        # "schema" and "model" are the schema's keys in the stored document (version 2 and 1).
        rest = {k: v for k, v in info.items() if k not in ("schema", "model")}
        with self._errors("read info"):
            # Keep the schema as stored now: another process may have changed it since we opened.
            self._stored = self._load_stored()
        self._migrate(StoredInfo(self.schema, rest, legacy=self._stored.legacy))

    def __enter__(self) -> QdrantFamilyStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()  # type: ignore[attr-defined]

    # --- shared steps -----------------------------------------------------------------------

    def _errors(self, action: str) -> contextlib.AbstractContextManager[None]:
        return store_errors(self._label, action)

    def _page(self, query: QuerySpec, plan: SearchPlan, native: Any) -> list[Hit]:
        """Hits offset..offset+k of a query: MMR order as the engine gives it; otherwise by score
        (ties by id), per group with group_by."""
        threshold = plan.min_score

        def fetch(limit: int) -> list[Hit]:
            return self._query(query, limit, native, threshold)

        if isinstance(query, Diverse):  # MMR picks greedily: the first n of n + m are the same n
            return at_least(fetch(plan.want), threshold)[plan.offset : plan.want]
        if plan.group_path is None:
            return ranked_page(fetch, plan.k, plan.offset)
        path = plan.group_path
        if not self.native_groups:
            return grouped_page(fetch, path, plan.k, plan.offset)
        # Native groups come best first, equal best scores in any order: complete the tie at the
        # page's end as for hits.
        return ranked_page(lambda n: self._query_groups(query, path, n, native, threshold) or [],
                           plan.k, plan.offset)

    def _hybrid(self, dense: Nearest, sparse: Sparse | None, native: Any, plan: SearchPlan) -> Fused:
        """The vector ranking fused with the keyword hits scoring at least KEYWORD_CUT of the best."""
        best = self._query(Nearest(sparse, SPARSE_KEY), 1, native, None) if sparse else []
        if not best:  # no terms, or no point has any of them: the vector ranking alone
            return Fused([dense], [RRF_WEIGHTS[0]], plan.candidates)
        keyword = Nearest(sparse, SPARSE_KEY, threshold=KEYWORD_CUT * best[0].score)  # type: ignore[arg-type]
        return Fused([dense, keyword], list(RRF_WEIGHTS), plan.candidates)

    def _ensure_keyword(self, rebuild: bool = False) -> None:
        """The BM25 sparse vector exists and holds every point's document (built from the
        payloads when missing: a collection made before keyword search, or text fields changed)."""
        if self._keyword_ready and not rebuild:
            return
        if self._has_sparse():
            if not rebuild:
                self._keyword_ready = True
                return
        else:
            try:
                self._add_sparse()
            except Exception:
                if not self._has_sparse():  # not made by another process meanwhile
                    raise
        fields = text_fields(self.schema)
        offset: Any = None
        while True:
            page, offset = self._scroll(offset, None, [])
            existing = {str(p.id): p.payload or {} for p in page}
            for batch in batches(list(existing), self.write_batch):
                self._put_sparse({i: sparse_document(document(existing[i], fields)) for i in batch})
            if offset is None:
                break
        self._keyword_ready = True

    def _migrate(self, stored: StoredInfo | None = None) -> None:
        """Before a write: a version-1 collection gets its declared fields indexed and its info
        rewritten as version 2; with `stored`, that document is saved in any case."""
        if not self._stored.legacy and stored is None:
            return
        with self._errors("migrate collection info"):
            if self._stored.legacy:
                for field_name, kind in self.schema.fields.items():
                    self._index_field(payload_path(field_name), kind)
            self._save(stored or self._stored)

    def _save(self, stored: StoredInfo) -> None:
        stored = StoredInfo(stored.schema, stored.info, legacy=False)
        self._save_document(stored.document())
        self._stored = stored

    def _put_existing(
        self, action: str, by_id: dict[str, Any], put: Callable[[dict[str, Any]], None]
    ) -> None:
        """Write per-point changes to the points that exist (the engines refuse unknown ids)."""
        if not by_id:
            return
        self._migrate()
        with self._errors(action):
            for batch in batches(list(by_id), self.write_batch):
                present = self._existing(batch)
                if present:
                    put({i: by_id[i] for i in batch if i in present})

    def _storage_vectors(self, record: Record) -> Vectors:
        out: Vectors = {}
        for name, vector in record.vectors.items():
            spec = self.schema.vector(name)
            what = f"record {record.id} vector {name!r}"
            out[spec.storage_key] = checked_vector(self.name, spec.dim, vector, what).tolist()
        return out

    def _names_by_key(self, with_vectors: WithVectors) -> dict[str, str]:
        return {self.schema.vectors[n].storage_key: n for n in wanted_vectors(self.schema, with_vectors)}


def _check_change(old: CollectionSchema, new: CollectionSchema) -> None:
    """A schema change keeps each kept vector's size and storage, and each field's type."""
    for name, spec in new.vectors.items():
        before = old.vectors.get(name)
        if before is not None and (before.storage_key, before.dim) != (spec.storage_key, spec.dim):
            raise SchemaError(
                f"vector {name!r} cannot change its size or storage; add a vector under another name "
                f"(`clipsearch reembed --vector NAME`)"
            )
    keys = [spec.storage_key for spec in new.vectors.values()]
    if len(set(keys)) != len(keys):
        raise SchemaError(f"two vectors share a storage key: {sorted(keys)}")
    for field_name, kind in new.fields.items():
        if field_name in old.fields and old.fields[field_name] != kind:
            raise SchemaError(f"field {field_name!r} is declared as {old.fields[field_name]}, not {kind}")


def require_schema(stored: StoredInfo, label: str, remedy: str) -> StoredInfo:
    """A collection's stored info, refusing one whose schema was never written."""
    if stored.schema is None:
        raise StoreError(
            f"{label} has no clipsearch schema (its creation was interrupted, or clipsearch did not "
            f"make it); {remedy}"
        )
    return stored
