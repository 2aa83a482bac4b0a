"""Querying a collection: the one object the CLI and the HTTP API both search through.

It opens the collection, loads the model of the vector a query uses (through a shared ModelCache),
decodes query images exactly as the index run decoded files, resolves filters against the
collection's schema, and times every stage. Text embeddings are cached (bounded), since people
repeat and refine the same queries.

Threads: callers that share an engine hold its `lock` for every call (search_api.engines does, per
collection); the engine lets go of it while it decodes and encodes a query, so that concurrent queries
meet in the model's batching encoder (indexer.models.batching) instead of queueing one by one, and
while it searches a store whose `concurrent_reads` says it may be searched from several threads.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from indexer.errors import BadInput, CollectionCorrupt, ItemNotFound
from indexer.ingest.decode import decode_image
from indexer.ingest.items import client_point_id, item_points, parse_item_id  # noqa: F401  (importable here too)
from indexer.models.encoders import QueryEncoder
from indexer.models.loading import ModelCache
from indexer.models.zero_shot import classify_embeddings
from indexer.schema import CollectionSchema, VectorSpec
from indexer.search.options import SearchOptions
from indexer.search.query import Term, check_terms, embed_terms, keyword_text
from indexer.settings import Settings
from indexer.stores import Hit, VectorStore, open_store
from indexer.stores.base import Example
from indexer.stores.check import impossible_cosine
from indexer.stores.filters import Filter
from indexer.stores.keyword import RRF_WEIGHTS, rrf_score, text_fields

ImageInput = bytes | str | Path
STAGES = ("decode", "encode", "search", "fetch")
# How often a server re-reads the schema of a collection that other processes may change (a Qdrant
# server: `clipsearch activate` from another machine). Embedded stores are changed through this process.
SCHEMA_REFRESH_S = 2.0


@dataclass
class Result:
    id: str
    uri: str
    score: float
    metadata: dict[str, Any]

    @classmethod
    def from_hit(cls, hit: Hit) -> Result:
        return cls(hit.id, hit.payload.get("uri", ""), hit.score, hit.payload.get("metadata", {}))


@dataclass
class SearchOutcome:
    results: list[Result]
    timings: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))  # seconds
    # field -> (value, count) of the points that pass the query's filter, for the facets asked for
    facets: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    mode: str = "vector"  # the search mode used (the default depends on the collection and query)


class TextEmbeddingCache:
    """A small LRU of (model, query text) -> embedding; thread-safe, and a miss encodes without holding
    the cache, so that concurrent misses can be batched together."""

    def __init__(self, size: int = 1024):
        self._size = size
        self._entries: OrderedDict[tuple[Any, str], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, model: QueryEncoder, text: str) -> np.ndarray:
        return self.get_many(model, [text])[0]

    def get_many(self, model: QueryEncoder, texts: list[str]) -> np.ndarray:
        """The texts' embeddings, those not cached encoded together in one call."""
        keys = [(model.identity.weights, model.identity.architecture, text) for text in texts]
        found: dict[Any, np.ndarray] = {}
        with self._lock:
            for key in keys:
                if key in self._entries:
                    self._entries.move_to_end(key)
                    found[key] = self._entries[key]
            self.hits += sum(key in found for key in keys)
            missing = list(dict.fromkeys(key for key in keys if key not in found))
            self.misses += len(missing)
        if missing:
            vectors = model.encode_texts([key[2] for key in missing])
            with self._lock:
                for key, vector in zip(missing, vectors, strict=True):
                    found[key] = self._entries[key] = vector
                while len(self._entries) > self._size:
                    self._entries.popitem(last=False)
        return np.stack([found[key] for key in keys])


class SearchEngine:
    def __init__(
        self,
        settings: Settings,
        collection: str | None = None,
        models: ModelCache | None = None,
        store: VectorStore | None = None,
        warm: bool = True,
        lock: AbstractContextManager[Any] | None = None,
    ):
        """`store`: an already open store of the collection (the server's watcher shares it).
        `warm`: run `warm_up` now (a server, for its first query). Without it (a one-shot CLI search) the
        store opens in the background while the query encoder loads, and no throw-away query runs.
        `lock`: the lock that callers sharing this engine across threads hold for every call (see the
        module); the engine releases it (exit) and takes it back (enter) around query encoding."""
        self.settings = settings
        self.collection = collection or settings.collection
        self.lock = lock
        self.models = models or ModelCache.for_settings(settings)
        self.store: VectorStore = store or open_store(settings, self.collection, background=not warm)
        self._schema_read = time.monotonic()
        self.text_cache = TextEmbeddingCache()
        try:
            if warm:
                self.warm_up()
            else:
                self.model_for()
        except Exception:
            self.store.close()
            raise

    # --- the collection -------------------------------------------------------------------

    @property
    def schema(self) -> CollectionSchema:
        """The collection's schema; re-read from a shared server now and then (see SCHEMA_REFRESH_S)."""
        # Only a store shared between processes changes under this one; an embedded store is changed
        # through this process's own open store.
        if self.settings.store_shared and time.monotonic() - self._schema_read > SCHEMA_REFRESH_S:
            self._reopen_if_changed()
        return self.store.schema

    def _reopen_if_changed(self) -> None:
        fresh = open_store(self.settings, self.collection)
        self._schema_read = time.monotonic()
        if fresh.schema == self.store.schema:
            fresh.close()
            return
        old, self.store = self.store, fresh
        old.close()

    def model_for(self, vector: str | None = None) -> tuple[VectorSpec, QueryEncoder]:
        """The vector's spec and its query encoder (ONNX when exported, else torch: ModelCache.query)."""
        spec = self.schema.vector(vector)
        return spec, self.models.query(spec.model)

    def warm_up(self) -> None:
        """Load the active vector's model and run one throw-away query, so the first real one does not
        pay the one-time costs of the encoder's first call and the store's first page-ins."""
        spec, model = self.model_for()
        self.store.search(model.encode_texts(["a photo"])[0], 1, using=spec.name)

    @property
    def identity(self) -> Any:
        return self.schema.active_vector.model

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> SearchEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- queries --------------------------------------------------------------------------

    # Every search takes one SearchOptions (indexer.search.options): the value the edge (the CLI's flags,
    # an HTTP body, a Python call) built; the engine resolves its filter against the schema, picks the
    # mode, and hands the store its part (SearchOptions.for_store).

    def search_text(self, text: str, k: int = 10, options: SearchOptions | None = None) -> SearchOutcome:
        return self.search_query([Term(text=text)], k, options)

    def search_image(self, image: ImageInput, k: int = 10, options: SearchOptions | None = None
                     ) -> SearchOutcome:
        """By an example image (bytes of an upload, or a file path), decoded as the index decoded files."""
        return self.search_query([Term(image=image)], k, options)

    def search_similar(self, item_id: str, k: int = 10, options: SearchOptions | None = None
                       ) -> SearchOutcome:
        """Neighbours of an indexed item, by its stored vector (no re-encoding)."""
        return self.search_query([Term(image_id=item_id)], k, options)

    def search_query(self, terms: list[Term], k: int = 10, options: SearchOptions | None = None
                     ) -> SearchOutcome:
        """By a weighted sum of terms (indexer.search.query): texts, indexed items, images."""
        options = options or SearchOptions()
        clock = dict.fromkeys(STAGES, 0.0)
        check_terms(terms)
        spec = self.schema.vector(options.vector)
        store_filter = self.store_filter(options.filter)
        words = options.text if options.text is not None else keyword_text(terms)
        mode = options.mode or self.default_mode(words)
        if mode == "keyword":
            if any(t.text is None for t in terms):
                raise BadInput("keyword search ranks by words only: query by text, or use another mode")
            query = None
        else:
            query = embed_terms(terms, lambda term: self._embed(term, spec, clock))
        with self._reading():
            hits = self._timed(clock, "search", self.store.search, query, k,
                               options.for_store(spec.name, store_filter, mode, words))
            if mode == "vector" and options.diversity is None:  # a cosine each (hybrid ranks; MMR mixes)
                self._refuse_impossible_scores(hits)
            counted = self._timed(clock, "search", self._facets, options.facets, store_filter,
                                  options.facet_limit)
        return SearchOutcome([Result.from_hit(hit) for hit in hits], clock, counted, mode)

    def recommend(self, positive: list[Example], negative: list[Example] | tuple[()] = (), k: int = 10,
                  options: SearchOptions | None = None) -> SearchOutcome:
        """More like `positive`, less like `negative` (ids of indexed items, or vectors): the store's
        recommend query (sum of similarities to the positives minus to the negatives); the examples
        given by id are left out of the results. It ranks by vector: `options` with another mode, words
        or diversity are refused."""
        options = options or SearchOptions()
        if options.mode not in (None, "vector") or options.text is not None or options.diversity is not None:
            raise BadInput("recommend (more like these) ranks by vector: no keyword or hybrid mode, no "
                           "keywords, no diversity")
        clock = dict.fromkeys(STAGES, 0.0)
        spec = self.schema.vector(options.vector)
        store_filter = self.store_filter(options.filter)
        pos, neg = [self._example(e) for e in positive], [self._example(e) for e in negative]
        asked = [e for e in [*pos, *neg] if isinstance(e, str)]
        found = {r.id for r in self._timed(clock, "fetch", self.store.retrieve, asked)} if asked else set()
        missing = [e for e in [*positive, *negative] if isinstance(e, str) and self._example(e) not in found]
        if missing:
            raise ItemNotFound(missing[0])
        hits = self._timed(clock, "search", self.store.recommend, pos, neg, k,
                           options.for_store(spec.name, store_filter, "vector", None))
        counted = self._timed(clock, "search", self._facets, options.facets, store_filter,
                              options.facet_limit)
        return SearchOutcome([Result.from_hit(hit) for hit in hits], clock, counted, "recommend")

    def _refuse_impossible_scores(self, hits: list[Hit]) -> None:
        """Damaged stored vectors score outside [-1, 1] (random bytes: 1e38): refused, never served."""
        wrong = next((hit for hit in hits if impossible_cosine(hit.score)), None)
        if wrong is not None:
            name = self.collection
            raise CollectionCorrupt(
                f"collection {name!r} is corrupt: a search scored {wrong.score:.3g} for item {wrong.id}, but "
                f"cosine scores lie in [-1, 1], so stored vectors are damaged. Run `clipsearch check "
                f"--collection {name}` for which ones and what to do"
            )

    def browse(self, k: int = 10, options: SearchOptions | None = None, *, sort: str | None = None
               ) -> SearchOutcome:
        """The items that pass `options.filter`, without a query, ordered by a field (`sort`: "price" rising,
        "-price" falling; items without a value last) or, without `sort`, by id; ties by id, so pages
        are slices of one order. Bounded: a filter keeping more than settings.browse_max_items items is
        refused. Scores are 0 (there is no query to score against). Options that rank a query are refused.
        `options.offset`, `facets` and `facet_limit` as in a search."""
        options = options or SearchOptions()
        ranking = options.ranking_options()
        if ranking:
            raise BadInput(f"{', '.join(ranking)} rank a query; a browse (no query) takes a filter, sort, "
                           "offset and facets")
        offset = options.offset
        clock = dict.fromkeys(STAGES, 0.0)
        store_filter = self.store_filter(options.filter)
        name, descending = parse_sort(sort, self.schema) if sort else (None, False)
        total = self._timed(clock, "search", self.store.count, store_filter)
        limit = self.settings.browse_max_items
        if total > limit:
            raise BadInput(f"the filter keeps {total} items and a browse sorts at most {limit} "
                           f"(CLIPSEARCH_BROWSE_MAX_ITEMS): narrow it with more --where conditions")

        def key(record: Any) -> tuple[Any, ...]:
            value = record.payload.get("metadata", {}).get(name) if name else None
            if isinstance(value, list):
                value = (max if descending else min)(value) if value else None
            if value is None or isinstance(value, dict):
                return (1, 0, record.id)
            return (0, _Reversed(value) if descending else value, record.id)

        records = self._timed(clock, "search", lambda: heapq.nsmallest(
            offset + k, self.store.scan(store_filter), key=key))[offset:]
        counted = self._timed(clock, "search", self._facets, options.facets, store_filter,
                              options.facet_limit)
        results = [Result(r.id, r.payload.get("uri", ""), 0.0, r.payload.get("metadata", {}))
                   for r in records]
        return SearchOutcome(results, clock, counted, "browse")

    def default_mode(self, words: str | None) -> str:
        """hybrid when the collection has declared text fields and the query has words, else vector."""
        return "hybrid" if words and text_fields(self.schema) else "vector"

    def _example(self, example: Example) -> Example:
        if not isinstance(example, str):
            return example
        points = self.item_points(example)
        return points[0] if points else client_point_id(example)

    def _embed(self, term: Term, spec: VectorSpec, clock: dict[str, float]) -> np.ndarray:
        """One term's embedding on vector `spec`: encoded, or an indexed item's stored vector."""
        if term.image_id is not None:
            point = next(iter(self.item_points(term.image_id)), client_point_id(term.image_id))
            records = self._timed(clock, "fetch", self.store.retrieve, [point], [spec.name])
            if not records or spec.name not in records[0].vectors:
                raise ItemNotFound(term.image_id)
            return records[0].vectors[spec.name]
        model = self.models.query(spec.model)
        with self._unlocked():
            if term.text is not None:
                return self._timed(clock, "encode", self.text_cache.get, model, term.text)
            assert term.image is not None
            picture = self._timed(clock, "decode", self.decode, term.image, model)
            return self._timed(clock, "encode", model.encode_images, [picture])[0]

    @contextmanager
    def _unlocked(self) -> Iterator[None]:
        """Without the callers' lock (when there is one) for the block: work that touches no shared
        state but thread-safe objects (the encoders, the text cache)."""
        if self.lock is None:
            yield
            return
        self.lock.__exit__(None, None, None)
        try:
            yield
        finally:
            self.lock.__enter__()

    def _reading(self) -> AbstractContextManager[None]:
        """For a store search: without the callers' lock when the store may be searched concurrently."""
        return self._unlocked() if getattr(self.store, "concurrent_reads", False) else nullcontext()

    def _facets(
        self, fields: list[str] | tuple[str, ...], store_filter: Filter | None, limit: int
    ) -> dict[str, list[tuple[str, int]]]:
        wanted = dict.fromkeys(fields)
        return {name: self.store.facet(name, filter=store_filter, limit=limit) for name in wanted}

    def store_filter(self, query_filter: Filter | dict[str, Any] | None) -> Filter | None:
        """A query filter (field names) checked against the schema and turned into a store filter."""
        parsed = Filter.parse(query_filter, self.settings.limits)
        return None if parsed is None or parsed.is_empty() else parsed.resolve(self.schema)

    def decode(self, image: ImageInput, model: QueryEncoder | None = None) -> Any:
        """An image as the index run decoded its files for `model` (the active vector's by default)."""
        model = model or self.model_for()[1]
        source = image if isinstance(image, bytes) else str(image)
        return decode_image(source, max_pixels=self.settings.max_image_pixels, draft_size=model.draft_size)

    def item(self, item_id: str) -> dict[str, Any]:
        """Payload of an indexed item, by its id, the client id it was written with (the write API), or
        its catalog id (the first of the product's images); ItemNotFound for anything else, path-like
        strings included."""
        records = self.store.retrieve(self.item_points(item_id)[:1])
        if not records:
            raise ItemNotFound(item_id)
        return records[0].payload

    def item_points(self, item_id: str) -> list[str]:
        """The points an item id addresses, in id order; [] when none: the point of that id, or of
        that client id (the write API), else every point whose id field holds the value (a catalog's
        id column, `CollectionSchema.id_fields`: every image of the product)."""
        return item_points(self.store, item_id)

    def classify(self, images: list[ImageInput], labels: list[str]) -> list[list[tuple[str, float]]]:
        """Zero-shot labels for each image with the active vector's model."""
        model = self.model_for()[1]
        with self._unlocked():
            pictures = [self.decode(image, model) for image in images]
            # The labels' prompts through the text cache: clients ask for the same labels again and again.
            return classify_embeddings(model, model.encode_images(pictures), labels,
                                       lambda prompts: self.text_cache.get_many(model, prompts))

    def status(self) -> dict[str, Any]:
        return collection_status(self.store)

    @staticmethod
    def _timed(clock: dict[str, float], stage: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        with _stopwatch(clock, stage):
            return fn(*args, **kwargs)


SORTABLE = ("keyword", "integer", "float", "bool", "datetime")


def parse_sort(sort: str, schema: CollectionSchema) -> tuple[str, bool]:
    """(field, descending) from "price", "-price", "price:desc" or "price:asc"; the field must be a
    declared field of a sortable type."""
    text = sort.strip()
    descending = text.startswith("-")
    name, _, direction = text.lstrip("-+").partition(":")
    if direction not in ("", "asc", "desc"):
        raise BadInput(f"sort {sort!r}: write FIELD, -FIELD (falling), FIELD:asc or FIELD:desc")
    descending = descending or direction == "desc"
    kind = schema.field_type(name.strip())
    if kind not in SORTABLE:
        raise BadInput(f"sort {sort!r}: field {name!r} is {kind}; sort by a {', '.join(SORTABLE)} field")
    return name.strip(), descending


class _Reversed:
    """Orders values the other way round (a falling sort inside an ascending heap)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __lt__(self, other: _Reversed) -> bool:
        return bool(other.value < self.value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Reversed) and bool(self.value == other.value)


# The score each mode answers in, for messages about empty answers and --min-score.
SCORE_SCALES = {
    "vector": "cosine similarity, -1 to 1 (a text matching a photo scores about 0.2 to 0.35 with CLIP)",
    "keyword": "BM25, 0 and up, larger for rarer words",
    "hybrid": f"fused reciprocal ranks, at most about {rrf_score(0) + rrf_score(0, RRF_WEIGHTS[1]):.3f} "
              f"(first place in one ranking: about {rrf_score(0):.3f})",
    "recommend": "the sum of cosine similarities to the examples minus the sum to the counter-examples",
    "browse": "none: a browse has no query, every score is 0",
}


def empty_answer_note(mode: str, min_score: float | None, filtered: bool, offset: int = 0) -> str:
    """Why an answer may be empty, in the words of its mode's score scale."""
    parts = [f"no results ({mode} mode; scores are {SCORE_SCALES.get(mode, mode)})"]
    if min_score is not None:
        hint = " (--search-mode vector ranks by cosine)" if mode == "hybrid" else ""
        parts.append(f"--min-score {min_score:g} may keep nothing on this scale{hint}")
    if filtered:
        parts.append("the filter may keep nothing (--where, --near)")
    if offset:
        parts.append(f"--offset {offset} may be past the last result")
    return "; ".join(parts)


@contextmanager
def _stopwatch(clock: dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        clock[stage] += time.perf_counter() - start


def collection_status(store: VectorStore) -> dict[str, Any]:
    """Count, active model, every vector with its progress, and the failed files of a collection."""
    from indexer.stores.filters import HasVectorCondition

    schema = store.schema
    info = store.read_info()
    total = store.count()
    vectors = []
    for spec in schema.vectors.values():
        filled = (
            total
            if spec.state == "ready"
            else store.count(Filter(must=[HasVectorCondition(has_vector=spec.name)]))
        )
        vectors.append(
            {
                "name": spec.name,
                "model": spec.model.to_dict(),
                "dim": spec.dim,
                "precision": spec.precision,
                "state": spec.state,
                "count": filled,
                "active": spec.name == schema.active,
            }
        )
    failed = [
        {"uri": uri, "reason": entry["reason"]} for uri, entry in sorted(info.get("failed", {}).items())
    ]
    return {
        "collection": store.name,
        "count": total,
        "model": schema.active_vector.model.to_dict(),
        "vectors": vectors,
        "fields": dict(schema.fields),
        "searchable": list(schema.searchable),
        "id_fields": list(schema.id_fields),
        "failed": failed,
    }
