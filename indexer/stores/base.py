"""The one interface every vector store implements, and the records that cross it.

Vectors are L2-normalised float32, so the score is cosine similarity (higher is better).
Ids are UUID strings: stable per source item (see `indexer.ingest.sources.item_id`).

Vectors are named by the collection schema (`indexer.schema`): records carry a dict of them, and
search, retrieve and scan name the ones they want (None: the schema's active vector). Filters are
store filters (`indexer.stores.filters.Filter`, keys are payload paths), pushed down by every backend.
Fields named by `group_by` and `facet` are declared field names (the store finds their paths).

Search modes (`StoreSearch.mode`): "vector" (cosine, optionally diversified by MMR), "keyword"
(BM25 over the declared text fields, see indexer/stores/keyword.py) and "hybrid" (both fused by
reciprocal rank fusion); `recommend` ranks by "more like these, less like those". Every mode
takes a filter, `min_score`, `offset` and `group_by`, and pages through one stable ranking:
equal scores ordered by id.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from indexer.errors import BadInput, SchemaError, StoreError
from indexer.schema import CollectionSchema, payload_path
from indexer.stores.filters import Filter, HasIdCondition, both, values_at
from indexer.stores.keyword import HYBRID_CANDIDATES, text_fields

# Which vectors to return with a record: none, all, or these names.
WithVectors = bool | Sequence[str]
SearchMode = Literal["vector", "keyword", "hybrid"]
SEARCH_MODES: tuple[str, ...] = ("vector", "keyword", "hybrid")
# A recommend example: the id of a stored point (its vector `using`), or a vector.
Example = str | np.ndarray
GroupValue = str | int
# MMR re-ranks this many nearest candidates (more when a page reaches further).
MMR_CANDIDATES = 100


@dataclass
class Record:
    """One indexed item. `payload` holds `uri`, `path`, `fingerprint` and `metadata`;
    `vectors` maps schema vector names to vectors (a point may lack a vector still being built)."""

    id: str
    vectors: dict[str, np.ndarray] = field(default_factory=dict)
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StoreSearch:
    """What a store search takes besides its query vector and k: the store's part of the one
    `indexer.search.options.SearchOptions` a search carries from the edge (the engine resolves the
    filter against the schema and picks the mode and words). `using`: the named vector (None: the active
    one); the rest as `VectorStore.search` says. `recommend` takes the same value (vector mode, no MMR)."""

    using: str | None = None
    filter: Filter | None = None
    offset: int = 0
    mode: SearchMode = "vector"
    text: str | None = None
    min_score: float | None = None
    group_by: str | None = None
    diversity: float | None = None

    @classmethod
    def of(cls, options: StoreSearch | None, fields: Mapping[str, Any]) -> StoreSearch:
        """`options`, with `fields` (keyword shorthand: `store.search(v, 10, using="wide")`) replacing
        its own; an unknown name is a TypeError, as for any call."""
        from dataclasses import replace

        return replace(options or cls(), **fields) if fields else options or cls()


@dataclass
class Hit:
    """A search result. `group`: with `group_by`, the value of the group this hit is the best of."""

    id: str
    score: float
    payload: dict[str, Any]
    group: GroupValue | None = None


class VectorStore(Protocol):
    """A collection of points (id, named vectors, payload); one open instance per collection.

    The schema is stored with the collection. A collection written by an older release opens with
    its schema migrated in memory; the store writes the current format at its first write
    (upsert, update_vectors, set_payloads, delete, set_schema or write_info)."""

    name: str
    # Whether searches may run from several threads at once, and beside writes, without the callers
    # serialising them (indexer.search.engine); each store says why where it sets it.
    concurrent_reads: bool

    @property
    def schema(self) -> CollectionSchema:
        """The collection's schema as stored (after in-memory migration)."""

    def set_schema(self, schema: CollectionSchema) -> None:
        """Store a changed schema, durably: creates storage for new vectors, removes the storage of
        dropped ones, and indexes newly declared fields natively."""

    def upsert(self, records: Sequence[Record]) -> None:
        """Insert or replace whole points (vectors and payload); a vector a record lacks is absent after."""

    def update_vectors(self, name: str, vectors: Mapping[str, np.ndarray]) -> None:
        """Set one named vector of existing points (id -> vector), keeping their other vectors and
        payload; ids that do not exist are ignored."""

    def set_payloads(self, payloads: Mapping[str, dict[str, Any]]) -> None:
        """Replace the payload of existing points (id -> payload), keeping their vectors; unknown ids
        are ignored."""

    def delete(self, ids: Sequence[str]) -> None:
        """Remove points; unknown ids are ignored."""

    def search(
        self, vector: np.ndarray | None, k: int, options: StoreSearch | None = None, **fields: Any
    ) -> list[Hit]:
        """The k best points among those that pass `options.filter`, best first, after skipping the
        `offset` best. Ties keep a stable order (by id), so pages never repeat or skip a point.

        `options` (StoreSearch; `fields`: the same as keywords, e.g. `using="wide"`):
        mode "vector": cosine similarity to `vector` on vector `using` (None: the active one).
        mode "keyword": BM25 of `text` over the declared text fields (`vector` may be None); points
            sharing no term with `text` are not found.
        mode "hybrid": both rankings (each cut at max(HYBRID_CANDIDATES, offset + k)) fused by
            reciprocal rank fusion, 1 / (60 + position) summed; the score is the fused score.
        min_score: only hits scoring at least this (in the mode's own score).
        group_by: a declared keyword or integer field: at most one hit per value of it (the best;
            points without a value are left out), k groups; `Hit.group` holds the value.
        diversity: (vector mode, no group_by) MMR over the max(MMR_CANDIDATES, offset + k)
            nearest: each next hit maximises (1 - diversity) * similarity to the query
            - diversity * max similarity to the hits before it; 0 is plain nearest order. Hits
            keep their similarity to the query as score, in MMR order."""

    def recommend(
        self, positive: Sequence[Example] = (), negative: Sequence[Example] = (), k: int = 10,
        options: StoreSearch | None = None, **fields: Any,
    ) -> list[Hit]:
        """More like `positive`, less like `negative` (ids of stored points, or vectors), on vector
        `using`: Qdrant's recommend query with the sum_scores strategy, score = sum of cosine
        similarities to the positives minus the sum to the negatives. Points given by id are left
        out of the results. Paging, min_score and group_by as in `search`; mode is vector, without
        diversity (else BadInput)."""

    def facet(self, field: str, *, filter: Filter | None = None, limit: int = 10) -> list[tuple[str, int]]:
        """Exact counts of the values of a declared keyword field among the points that pass
        `filter`: (value, number of points holding it; a point with an array counts once per
        distinct value), most frequent first, equal counts by value, at most `limit`. "Facets
        under the current query" means under the filter that query uses."""

    def retrieve(self, ids: Sequence[str], with_vectors: WithVectors = False) -> list[Record]:
        """Records for the ids that exist, in the order asked; missing ids are left out."""

    def scan(self, filter: Filter | None = None, with_vectors: WithVectors = False) -> Iterator[Record]:
        """Every record that passes `filter`; order unspecified."""

    def count(self, filter: Filter | None = None) -> int:
        """Exact number of points that pass `filter` (all without one)."""

    def read_info(self) -> dict[str, Any]:
        """Collection-level information other than the schema (failures, ...); {} when never written."""

    def write_info(self, info: dict[str, Any]) -> None:
        """Replace the collection-level information, durably (the schema is kept)."""

    def flush(self) -> None:
        """Make everything written so far durable."""

    def close(self) -> None: ...


# --- helpers every backend uses ---------------------------------------------------------------


def canonical_id(point_id: str) -> str:
    """Ids are UUID strings; one spelling of each lets stores match what they return to what was asked."""
    try:
        return str(uuid.UUID(str(point_id)))
    except ValueError as exc:
        raise StoreError(f"point id {point_id!r} is not a UUID") from exc


def checked_vector(collection: str, dim: int, vector: np.ndarray | None, what: str) -> np.ndarray:
    """`vector` as a flat float32 array of length `dim`, or a StoreError saying what is wrong."""
    if vector is None:
        raise StoreError(f"collection {collection!r}: {what} has no vector")
    array = np.asarray(vector, dtype=np.float32).reshape(-1)
    if array.shape[0] != dim:
        raise StoreError(f"collection {collection!r}: {what} has {array.shape[0]} dims, expected {dim}")
    return array


def wanted_vectors(schema: CollectionSchema, with_vectors: WithVectors) -> list[str]:
    """The schema vector names a retrieve or scan asked for."""
    if with_vectors is True:
        return list(schema.vectors)
    if not with_vectors:
        return []
    return [schema.vector(name).name for name in with_vectors]


@dataclass
class StoredInfo:
    """A collection's stored info document, split: the schema, the rest, and whether it is still in
    the version-1 format (then the first write rewrites it, `document()`)."""

    schema: CollectionSchema | None
    info: dict[str, Any]
    legacy: bool

    @classmethod
    def parse(cls, document: dict[str, Any]) -> StoredInfo:
        schema = CollectionSchema.from_info(document)
        rest = {k: v for k, v in document.items() if k not in ("schema", "model")}
        return cls(schema, rest, legacy=schema is not None and "schema" not in document)

    def document(self) -> dict[str, Any]:
        if self.schema is None:
            return dict(self.info)
        return {**self.info, "schema": self.schema.to_dict()}


# --- the search features every backend shares --------------------------------------------------


@dataclass(frozen=True)
class SearchPlan:
    """A checked search request; every backend refuses the same bad requests with the same errors."""

    mode: SearchMode
    k: int
    offset: int
    min_score: float | None
    group_path: str | None  # payload path of the group_by field
    lambda_: float | None  # MMR relevance weight, 1 - diversity; None: no MMR
    text_fields: list[str]

    @property
    def want(self) -> int:
        return self.offset + self.k

    @property
    def candidates(self) -> int:
        """How far each ranking a hybrid search fuses reaches."""
        return max(HYBRID_CANDIDATES, self.want)

    @property
    def mmr_candidates(self) -> int:
        return max(MMR_CANDIDATES, self.want)


def plan_search(
    schema: CollectionSchema,
    *,
    k: int,
    offset: int,
    mode: str = "vector",
    vector: np.ndarray | None = None,
    text: str | None = None,
    min_score: float | None = None,
    group_by: str | None = None,
    diversity: float | None = None,
) -> SearchPlan:
    if offset < 0:
        raise BadInput(f"search offset must be 0 or more, not {offset}")
    if mode not in SEARCH_MODES:
        raise BadInput(f"unknown search mode {mode!r}; use one of {', '.join(SEARCH_MODES)}")
    if mode in ("vector", "hybrid") and vector is None:
        raise BadInput(f"{mode} search needs a query vector")
    fields = text_fields(schema)
    if mode in ("keyword", "hybrid"):
        if text is None:
            raise BadInput(f"{mode} search needs a query text")
        if not fields:
            raise SchemaError(
                f"{mode} search needs declared text fields and this collection has none; search with "
                f"mode vector, or index a catalog with --text-columns"
            )
    if min_score is not None and not math.isfinite(min_score):
        raise BadInput(f"min_score must be a finite number, not {min_score}")
    lambda_ = None
    if diversity is not None:
        if not 0.0 <= diversity <= 1.0:
            raise BadInput(f"diversity must be between 0 and 1, not {diversity}")
        if mode != "vector" or group_by is not None:
            raise BadInput("diversity (MMR) applies to vector search without group_by")
        lambda_ = 1.0 - diversity
    group_path = None
    if group_by is not None:
        kind = schema.field_type(group_by)
        if kind not in ("keyword", "integer"):
            raise SchemaError(f"group_by needs a keyword or integer field; {group_by!r} is {kind}")
        group_path = payload_path(group_by)
    return SearchPlan(mode, k, offset, min_score, group_path, lambda_, fields)  # type: ignore[arg-type]


def facet_path(schema: CollectionSchema, field_name: str, limit: int) -> str:
    """The payload path of a facet field, refusing fields that are not declared keyword fields."""
    kind = schema.field_type(field_name)
    if kind != "keyword":
        raise SchemaError(f"facets count keyword fields; {field_name!r} is {kind}")
    if limit < 0:
        raise BadInput(f"facet limit must be 0 or more, not {limit}")
    return payload_path(field_name)


def facet_order(counts: Mapping[str, int], limit: int) -> list[tuple[str, int]]:
    """Most frequent first, equal counts by value (as Qdrant orders them). Values counted 0 are left
    out: Edge still lists a value whose last point was deleted, with count 0."""
    return sorted(((v, n) for v, n in counts.items() if n > 0), key=lambda item: (-item[1], item[0]))[:limit]


def at_least(hits: list[Hit], min_score: float | None) -> list[Hit]:
    return hits if min_score is None else [h for h in hits if h.score >= min_score]


def ranked_page(fetch: Callable[[int], list[Hit]], k: int, offset: int) -> list[Hit]:
    """Hits `offset` to `offset + k` of the ranking by score, equal scores ordered by id.

    `fetch(limit)` gives the `limit` best hits (fewer when there are no more), in any order among
    equal scores. An engine orders equal scores as its segments happen to, so each page could
    pick different members of a tie group that straddles its edge (a page repeating or skipping a
    point). Fetching until the group at the page's end is whole, then ordering ties by id, makes
    every page a slice of one ranking. Ties are rare, except among duplicate images, where the
    fetch doubles."""
    if k <= 0:
        return []
    want = offset + k
    limit = want + 1
    while True:
        hits = sorted(fetch(limit), key=lambda h: (-h.score, h.id))
        if len(hits) < limit or hits[-1].score < hits[want - 1].score:
            return hits[offset:want]
        limit *= 2


def group_values(payload: dict[str, Any], path: str) -> list[GroupValue]:
    """The group values of a point: the distinct keyword or integer values at `path` (an array
    puts the point in several groups, as in Qdrant)."""
    found = [v for v in values_at(payload, path) if isinstance(v, (str, int)) and not isinstance(v, bool)]
    return list(dict.fromkeys(found))


def grouped_page(
    fetch: Callable[[int], list[Hit]], path: str, k: int, offset: int, first_limit: int | None = None
) -> list[Hit]:
    """Groups `offset` to `offset + k` of a ranking: the best hit of each value of the field at
    `path`, groups ordered by their best hit (score, then id), the value in `Hit.group`.

    `fetch(limit)` gives the `limit` best hits of the ranking. It is asked for more (doubling)
    until the hits reach strictly below the last wanted group's best score, so that no group
    outside them could rank among the wanted ones, or until the ranking is exhausted."""
    if k <= 0:
        return []
    want = offset + k
    limit = first_limit or max(4 * want, 32)  # catalogs hold a few images per product
    while True:
        hits = sorted(fetch(limit), key=lambda h: (-h.score, h.id))
        best: dict[GroupValue, Hit] = {}
        for hit in hits:
            for value in group_values(hit.payload, path):
                if value not in best:
                    best[value] = Hit(hit.id, hit.score, hit.payload, group=value)
        groups = list(best.values())  # in ranking order: each group enters at its best hit
        if len(hits) < limit or (len(groups) >= want and hits[-1].score < groups[want - 1].score):
            return groups[offset:want]
        limit *= 2


def exclude_ids(store_filter: Filter | None, ids: Sequence[str]) -> Filter | None:
    """`store_filter`, also keeping out the points with these ids."""
    if not ids:
        return store_filter
    return both(store_filter, Filter(must_not=[HasIdCondition(has_id=list(ids))]))


def recommend_examples(
    store: VectorStore, positive: Sequence[Example], negative: Sequence[Example], using: str | None
) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    """Unit vectors of the positive and negative examples, and the ids among them (to leave out
    of the results). Examples by id are read from the store: ItemNotFound-style BadInput when one
    is missing or lacks the vector."""
    spec = store.schema.vector(using)
    if not positive and not negative:
        raise BadInput("recommend needs at least one positive or negative example")
    ids = [canonical_id(e) for e in [*positive, *negative] if isinstance(e, str)]
    found = {r.id: r for r in store.retrieve(ids, with_vectors=[spec.name])} if ids else {}

    def vectors(examples: Sequence[Example], what: str) -> list[np.ndarray]:
        out = []
        for example in examples:
            if isinstance(example, str):
                record = found.get(canonical_id(example))
                if record is None or spec.name not in record.vectors:
                    raise BadInput(f"{what} example {example} is not in collection {store.name!r} "
                                   f"(or has no vector {spec.name!r})")
                raw = record.vectors[spec.name]
            else:
                raw = checked_vector(store.name, spec.dim, example, f"{what} example")
            norm = float(np.linalg.norm(raw))
            if not norm > 0:
                raise BadInput(f"a {what} example vector is zero")
            out.append(np.asarray(raw, dtype=np.float32) / norm)
        return out

    pos, neg = vectors(positive, "positive"), vectors(negative, "negative")
    direction = np.sum(pos, axis=0) - (np.sum(neg, axis=0) if neg else 0)
    if not float(np.linalg.norm(direction)) > 1e-6:
        raise BadInput("the positive and negative examples cancel out: nothing to rank by")
    return pos, neg, list(dict.fromkeys(ids))


class PlannedSearch:
    """The protocol's `search`, written once for every backend: the request is checked and planned
    (`plan_search`), the query vector checked against the vector's size, and the backend runs the
    plan (`_run_search`, given the checked vector, or None in keyword mode)."""

    name: str
    schema: CollectionSchema

    def search(
        self, vector: np.ndarray | None, k: int, options: StoreSearch | None = None, **fields: Any
    ) -> list[Hit]:
        options = StoreSearch.of(options, fields)
        plan = plan_search(self.schema, k=k, offset=options.offset, mode=options.mode, vector=vector,
                           text=options.text, min_score=options.min_score, group_by=options.group_by,
                           diversity=options.diversity)
        spec = self.schema.vector(options.using)
        query = None if plan.mode == "keyword" else checked_vector(self.name, spec.dim, vector, "query")
        if k <= 0:
            return []
        return self._run_search(plan, spec, query, options.text or "", options.filter)

    def _run_search(
        self, plan: SearchPlan, spec: Any, query: np.ndarray | None, text: str, filter: Filter | None
    ) -> list[Hit]:
        raise NotImplementedError

    def recommend(
        self, positive: Sequence[Example] = (), negative: Sequence[Example] = (), k: int = 10,
        options: StoreSearch | None = None, **fields: Any,
    ) -> list[Hit]:
        options = StoreSearch.of(options, fields)
        if options.mode != "vector" or options.diversity is not None:
            raise BadInput("recommend ranks by vector: no keyword or hybrid mode, no diversity")
        spec = self.schema.vector(options.using)
        pos, neg, ids = recommend_examples(self, positive, negative, options.using)  # type: ignore[arg-type]
        plan = plan_search(self.schema, k=k, offset=options.offset, vector=(pos or neg)[0],
                           min_score=options.min_score, group_by=options.group_by)
        if k <= 0:
            return []
        return self._run_recommend(plan, spec, pos, neg, exclude_ids(options.filter, ids))

    def _run_recommend(
        self, plan: SearchPlan, spec: Any, pos: list[np.ndarray], neg: list[np.ndarray], filter: Filter | None
    ) -> list[Hit]:
        raise NotImplementedError

