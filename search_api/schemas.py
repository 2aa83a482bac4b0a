"""Every request and response body of the HTTP API, named and described for the OpenAPI document."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Path, UploadFile
from pydantic import BaseModel, ConfigDict, Field, StrictBool, TypeAdapter, field_validator, model_validator
from pydantic.json_schema import SkipJsonSchema

from indexer.errors import BadInput
from indexer.limits import load_json
from indexer.models.zero_shot import parse_labels
from indexer.search.options import SearchOptions
from indexer.search.query import Term
from indexer.stores import COLLECTION_NAME_PATTERN
from indexer.stores.filters import Filter

# Long enough for any real query; bounds what one request can put into the text-embedding cache
# (the tokenizer truncates at 77 tokens anyway).
MAX_QUERY_CHARS = 1000
# Each label costs one text-encoder pass per prompt template, so a request can't ask for thousands.
MAX_LABELS = 256
MAX_REQUEST_TEMPLATES = 100  # prompt templates given in a request (imagenet-full has 80); each is a
# text encoding per label

PromptTemplates = (
    Literal["imagenet", "imagenet-full", "cifar10"]
    | Annotated[list[Annotated[str, Field(min_length=2, max_length=500)]],
                Field(min_length=1, max_length=MAX_REQUEST_TEMPLATES)]
)
# Each re-ranked hit is a VLM request (pointwise) or an image in one prompt (listwise): seconds apiece.
MAX_TOP_N = 100
VlmState = Literal["off", "up", "down", "unknown"]


class ErrorResponse(BaseModel):
    """Every error the API returns."""

    detail: str = Field(description="What went wrong, fit to show a person.")

    model_config = ConfigDict(json_schema_extra={"examples": [{"detail": "no indexed image with id 'x'"}]})


class HealthResponse(BaseModel):
    """The service is up (it says nothing about collections or models), and what it last saw of the
    optional VLM stage, which never makes the service itself unhealthy."""

    status: str = Field("ok", description="Always `ok`.")
    vlm: VlmState = Field(
        "off",
        description="The VLM stage (re-ranking, explanations): `off` (no CLIPSEARCH_VLM_URL), `up`, `down`, "
        "or `unknown` (not asked yet). From the last requests to it; no request is made for this answer.",
    )


# What indexer.stores.check_collection_name accepts, said in the schema of every collection parameter.
COLLECTION_PATTERN = COLLECTION_NAME_PATTERN
CollectionPath = Annotated[str, Path(pattern=COLLECTION_PATTERN,
                                     description="Collection name (see GET /v1/collections).")]
COLLECTION_FIELD = Field(
    None,
    pattern=COLLECTION_PATTERN,
    description="Collection to search; default: the server's configured one (see GET /v1/collections).",
)
VECTOR_FIELD = Field(
    None,
    description="Named vector to search (see GET /v1/collections/{c}/vectors); "
    "default: the collection's active vector.",
)
FILTER_DESCRIPTION = (
    "Only items whose declared metadata fields pass this filter, in Qdrant's filter JSON shape: "
    '{"must": [...], "should": [...], "must_not": [...]} of conditions such as '
    '{"key": "price", "range": {"lt": 50}}, {"key": "brand", "match": {"any": ["acme", "zenith"]}}, '
    '{"key": "taken", "range": {"gte": "2019-06-01"}}, '
    '{"key": "where", "geo_radius": {"center": {"lat": 38.7, "lon": -9.1}, "radius": 5000}}, '
    '{"is_empty": {"key": "brand"}}, {"has_id": ["<id>"]}, or a nested filter.'
)


RerankMode = Literal["pointwise", "listwise"]
TOP_N_DESCRIPTION = (
    f"How many of the best hits the VLM re-ranks (and explains), 1-{MAX_TOP_N}; default: the server's "
    "CLIPSEARCH_VLM_TOP_N (20). The search fetches max(k, top_n) hits, re-ranks the first top_n and "
    "answers the first k."
)
MODE_DESCRIPTION = (
    "`pointwise` (each hit scored 0-10 in its own request) or `listwise` (every thumbnail in one "
    "request); default: the server's CLIPSEARCH_VLM_MODE."
)
RERANK_DESCRIPTION = (
    "Re-rank the best hits with the server's vision-language model (docs/vlm.md): `true`, or "
    '`{"top_n": 20, "mode": "pointwise"}`. Never fails the search: when the VLM is off, down, slow or '
    "answers nonsense, the hits keep the search's order and `rerank.status` says so. With `offset`, the "
    "page asked for is re-ranked (the window starts at the offset): with top_n <= k each page is a "
    "re-ordering of the same page without re-ranking, so pages never overlap."
)
EXPLAIN_DESCRIPTION = (
    "Ask the VLM why each of the first top_n answered hits matches (`explanation`; null where it could "
    "not say). Costs one VLM request per hit not cached."
)


SearchMode = Literal["vector", "keyword", "hybrid"]
MAX_QUERY_TERMS = 32
MAX_EXAMPLES = 64
MAX_FACETS = 16
SEARCH_MODE_DESCRIPTION = (
    "`vector` (CLIP similarity), `keyword` (BM25 over the collection's text fields, e.g. catalog titles) or "
    "`hybrid` (both, fused by reciprocal rank fusion: an exact SKU or model number comes first). Default: "
    "`hybrid` when the collection declares text fields and the query has a text, else `vector`."
)
MIN_SCORE_DESCRIPTION = (
    "Only hits scoring at least this, in the mode's own score: cosine (-1 to 1) for vector, BM25 for "
    "keyword, fused reciprocal ranks (at most about 0.034) for hybrid."
)
GROUP_BY_DESCRIPTION = (
    "A declared keyword or integer field (e.g. a catalog's id column, `sku`): at most one hit per value, "
    "the best; k groups."
)
DIVERSITY_DESCRIPTION = (
    "MMR diversity, 0-1 (vector mode, no group_by): 0 is plain nearest order, higher trades similarity to "
    "the query for difference from the hits above."
)
FACETS_DESCRIPTION = (
    "Declared keyword fields to count among the points that pass `filter` (the whole filtered collection, "
    "not just this page): `facets` in the answer."
)


class RerankOptions(BaseModel):
    """How to re-rank with the VLM."""

    top_n: int | None = Field(None, ge=1, le=MAX_TOP_N, description=TOP_N_DESCRIPTION)
    mode: RerankMode | None = Field(None, description=MODE_DESCRIPTION)

    model_config = ConfigDict(extra="forbid")


class SearchOptionsBody(BaseModel):
    """What every search takes besides its query (indexer.search.options.SearchOptions, with the page
    size and the VLM stage)."""

    collection: str | None = COLLECTION_FIELD
    k: int = Field(10, ge=1, description="Number of results; at most the server's `max_k` (default 1000).")
    offset: int = Field(0, ge=0, le=100_000, description="Skip this many of the best results (paging).")
    filter: Filter | None = Field(None, description=FILTER_DESCRIPTION)
    vector: str | None = VECTOR_FIELD
    rerank: StrictBool | RerankOptions = Field(False, description=RERANK_DESCRIPTION)
    explain: StrictBool = Field(False, description=EXPLAIN_DESCRIPTION)
    mode: SearchMode | None = Field(None, description=SEARCH_MODE_DESCRIPTION)
    min_score: float | None = Field(None, allow_inf_nan=False, description=MIN_SCORE_DESCRIPTION)
    group_by: str | None = Field(None, min_length=1, max_length=64, description=GROUP_BY_DESCRIPTION)
    diversity: float | None = Field(None, ge=0.0, le=1.0, description=DIVERSITY_DESCRIPTION)
    facets: list[str] = Field(default_factory=list, max_length=MAX_FACETS, description=FACETS_DESCRIPTION)
    facet_limit: int = Field(10, ge=1, le=1000, description="Values per facet, most frequent first.")

    def to_options(self) -> SearchOptions:
        """This request's SearchOptions: the one value the Collection, the engine and the store take."""
        return SearchOptions(filter=self.filter, vector=self.vector, offset=self.offset, mode=self.mode,
                             min_score=self.min_score, group_by=self.group_by, diversity=self.diversity,
                             facets=tuple(self.facets), facet_limit=self.facet_limit)

    def rerank_options(self) -> RerankOptions | None:
        """The re-rank asked for, or None."""
        if isinstance(self.rerank, RerankOptions):
            return self.rerank
        return RerankOptions() if self.rerank else None


WEIGHT_FIELD = Field(
    1.0,
    allow_inf_nan=False,
    json_schema_extra={"not": {"const": 0}},
    description="How much the term counts; negative: away from it. Not 0.",
)


class QueryTerm(BaseModel):
    """One term of a query algebra: a text or an indexed item, with a weight. The query vector is the
    normalised sum of weight * unit embedding of each term."""

    text: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_QUERY_CHARS,
        pattern=r"\S",
        description="A description of what to find (or, weight < 0, to avoid).",
    )
    image_id: str | None = Field(None, min_length=1, description="Id of an indexed item.")
    weight: float = WEIGHT_FIELD

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "oneOf": [
                {"required": ["text"], "properties": {"text": {"type": "string"}}},
                {"required": ["image_id"], "properties": {"image_id": {"type": "string"}}},
            ],
            "examples": [{"text": "long sleeves", "weight": -0.5}],
        },
    )

    @model_validator(mode="after")
    def _one_kind(self) -> QueryTerm:  # also said in the schema (oneOf above)
        if (self.text is None) == (self.image_id is None):
            raise ValueError("a query term is exactly one of text and image_id")
        if self.weight == 0:
            raise ValueError("a query term's weight must not be 0")
        return self


# A term of positive weight (the weight defaults to 1): a query needs one (what check_terms enforces).
POSITIVE_TERM = {"anyOf": [{"not": {"required": ["weight"]}},
                           {"required": ["weight"], "properties": {"weight": {"exclusiveMinimum": 0}}}]}
_QUERY_KINDS = ("text", "image_id", "query", "positive")
_GIVEN = {"not": {"type": "null"}}
# No two kinds of query together (a null one is not given): with oneOf below, exactly one.
_AT_MOST_ONE_KIND = [
    {"not": {"required": [a, b], "properties": {a: _GIVEN, b: _GIVEN}}}
    for i, a in enumerate(_QUERY_KINDS)
    for b in _QUERY_KINDS[i + 1 :]
]


class SearchRequest(SearchOptionsBody):
    """What to search by: exactly one of `text`, `image_id`, `query` (a weighted sum of texts and
    indexed items) and `positive` (more like these indexed items; with `negative`, less like those)."""

    text: str | None = Field(
        None, max_length=MAX_QUERY_CHARS, description="Natural-language description of the images wanted."
    )
    image_id: str | None = Field(
        None, description="Id of an indexed image (from an earlier result): find images like it."
    )
    query: list[QueryTerm] | None = Field(
        None,
        min_length=1,
        max_length=MAX_QUERY_TERMS,
        json_schema_extra={"contains": POSITIVE_TERM},
        description='Query algebra: [{"text": "red dress"}, {"image_id": "<id>", "weight": 0.5}, '
        '{"text": "long sleeves", "weight": -1}], at least one term of positive weight. In keyword and '
        "hybrid mode the words are the texts of positive weight.",
    )
    positive: list[str] | None = Field(
        None,
        min_length=1,
        max_length=MAX_EXAMPLES,
        description="Ids of indexed items: find more like these (the recommend query: the sum of "
        "similarities to these minus the sum to `negative`); they are left out of the results. Vector "
        "mode only.",
    )
    negative: list[str] | None = Field(
        None,
        min_length=1,
        max_length=MAX_EXAMPLES,
        description="With `positive`: ids of indexed items to find less like.",
    )

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"text": "a dog on a beach", "k": 10},
                {
                    "text": "red dress",
                    "filter": {"must": [{"key": "price", "range": {"lt": 50}}]},
                    "group_by": "sku",
                    "facets": ["brand"],
                },
            ],
            # What the validator below enforces, said in the schema so clients (and fuzzers) know it.
            "allOf": _AT_MOST_ONE_KIND,
            "oneOf": [
                {"required": ["text"], "properties": {"text": {"type": "string", "pattern": r"\S"}}},
                {"required": ["image_id"], "properties": {"image_id": {"type": "string"}}},
                {"required": ["query"], "properties": {"query": {"type": "array"}}},
                {
                    "required": ["positive"],
                    "properties": {
                        "positive": {"type": "array"},
                        "mode": {"enum": ["vector", None]},
                        "diversity": {"type": "null"},
                    },
                },
            ],
            # negative only with a positive list (a null negative is no negative)
            "if": {"required": ["negative"], "properties": {"negative": {"type": "array"}}},
            "then": {"required": ["positive"], "properties": {"positive": {"type": "array"}}},
        },
    )

    @model_validator(mode="after")
    def _one_query(self) -> SearchRequest:  # also said in the schema (oneOf above)
        if self.text is not None:
            self.text = self.text.strip()
            if not self.text:
                raise ValueError("text must not be empty")
        given = [name for name in _QUERY_KINDS if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of text, image_id, query and positive")
        if self.query is not None and not any(term.weight > 0 for term in self.query):
            raise ValueError("a query needs a term of positive weight")  # the schema's `contains`
        if self.negative is not None and self.positive is None:
            raise ValueError("negative goes with positive (more like these, less like those)")
        if self.positive is not None and (self.mode not in (None, "vector") or self.diversity is not None):
            raise ValueError(
                "positive/negative (recommend) ranks by vector: no mode other than vector, no diversity"
            )
        return self

    def terms(self) -> list[Term]:
        """The query as terms (a text, an indexed item, or the weighted terms); [] for `positive`."""
        if self.text is not None:
            return [Term(text=self.text)]
        if self.image_id is not None:
            return [Term(image_id=self.image_id)]
        return [Term(text=t.text, image_id=t.image_id, weight=t.weight) for t in self.query or []]


class BrowseRequest(BaseModel):
    """No query: the items that pass `filter`, ordered by `sort` (or by id), a page at a time."""

    collection: str | None = COLLECTION_FIELD
    k: int = Field(10, ge=1, description="Number of results; at most the server's `max_k` (default 1000).")
    offset: int = Field(0, ge=0, le=100_000, description="Skip this many (paging).")
    filter: Filter | None = Field(None, description=FILTER_DESCRIPTION)
    sort: str | None = Field(
        None, min_length=1, max_length=70, pattern=r"^[-+]?[A-Za-z][A-Za-z0-9_.-]{0,63}(:(asc|desc))?$",
        description="A declared keyword, integer, float, bool or datetime field: `price` (rising), `-price` "
        "or `price:desc` (falling); items without a value come last. Default: by id.",
    )
    facets: list[str] = Field(default_factory=list, max_length=MAX_FACETS, description=FACETS_DESCRIPTION)
    facet_limit: int = Field(10, ge=1, le=1000, description="Values per facet, most frequent first.")

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"filter": {"must": [{"key": "brand", "match": {"value": "acme"}}]}, "sort": "price", "k": 20}]})

    def to_options(self) -> SearchOptions:
        return SearchOptions(filter=self.filter, offset=self.offset, facets=tuple(self.facets),
                             facet_limit=self.facet_limit)


IMAGE_FILE_SCHEMA = {"type": "string", "format": "binary", "minLength": 1}


class ImageSearchForm(BaseModel):
    """Multipart form: an example image, and how many results (the other options as in /v1/search;
    `filter` as a JSON string)."""

    model_config = ConfigDict(extra="forbid")  # an unknown field is a mistake to report, as in JSON

    file: UploadFile = Field(
        description="An image file (JPEG, PNG, WebP, GIF, BMP, TIFF...), not empty.",
        json_schema_extra=IMAGE_FILE_SCHEMA,
    )
    collection: Annotated[str, Field(pattern=COLLECTION_PATTERN)] | SkipJsonSchema[None] = Field(
        None, description=COLLECTION_FIELD.description
    )
    k: int = Field(10, ge=1, description="Number of results; at most the server's `max_k` (default 1000).")
    offset: int = Field(0, ge=0, le=100_000, description="Skip this many of the best results (paging).")
    filter: str | SkipJsonSchema[None] = Field(None, description="A filter as a JSON string; see /v1/search.")
    vector: str | SkipJsonSchema[None] = VECTOR_FIELD
    rerank: bool = Field(False, description="Re-rank the best hits with the VLM; see /v1/search.")
    # Form fields cannot be null (multipart sends text): optional ones are left out, not documented null.
    top_n: Annotated[int, Field(ge=1, le=MAX_TOP_N)] | SkipJsonSchema[None] = Field(
        None, description=TOP_N_DESCRIPTION
    )
    mode: RerankMode | SkipJsonSchema[None] = Field(None, description=MODE_DESCRIPTION)
    explain: bool = Field(False, description=EXPLAIN_DESCRIPTION)
    # The search options of /v1/search; `mode` above is the re-rank's, so the search mode is search_mode.
    search_mode: SearchMode | SkipJsonSchema[None] = Field(
        None,
        description="The search mode (`mode` in /v1/search): vector, or keyword/hybrid with `text`. "
        "Default: hybrid when `text` is given and the collection declares text fields, else vector.",
    )
    text: Annotated[str, Field(max_length=MAX_QUERY_CHARS, pattern=r"\S")] | SkipJsonSchema[None] = Field(
        None,
        description="Words for the keyword ranking of a hybrid search (the image is the vector query).",
    )
    query: str | SkipJsonSchema[None] = Field(
        None,
        description='More query terms as a JSON list, as `query` in /v1/search (e.g. [{"text": '
        '"red", "weight": 0.5}]), summed with the image (weight `weight`).',
    )
    weight: float = Field(1.0, allow_inf_nan=False, description="The uploaded image's weight in `query`.")
    min_score: Annotated[float, Field(allow_inf_nan=False)] | SkipJsonSchema[None] = Field(
        None, description=MIN_SCORE_DESCRIPTION
    )
    group_by: Annotated[str, Field(min_length=1, max_length=64)] | SkipJsonSchema[None] = Field(
        None, description=GROUP_BY_DESCRIPTION
    )
    diversity: Annotated[float, Field(ge=0.0, le=1.0)] | SkipJsonSchema[None] = Field(
        None, description=DIVERSITY_DESCRIPTION
    )
    facets: str | SkipJsonSchema[None] = Field(
        None, description="Comma-separated keyword fields to count; see /v1/search."
    )
    facet_limit: int = Field(10, ge=1, le=1000, description="Values per facet, most frequent first.")

    def rerank_options(self) -> RerankOptions | None:
        return RerankOptions(top_n=self.top_n, mode=self.mode) if self.rerank else None

    def facet_list(self) -> list[str]:
        return [name.strip() for name in (self.facets or "").split(",") if name.strip()][:MAX_FACETS]

    def to_options(self, max_depth: int) -> SearchOptions:
        """The form's SearchOptions; `filter` parsed from its JSON text (at most `max_depth` deep)."""
        query_filter = load_json(self.filter, "filter", max_depth) if self.filter else None
        return SearchOptions(filter=query_filter, vector=self.vector, offset=self.offset,
                             mode=self.search_mode, text=self.text, min_score=self.min_score,
                             group_by=self.group_by, diversity=self.diversity,
                             facets=tuple(self.facet_list()), facet_limit=self.facet_limit)

    def terms(self, image: bytes, max_depth: int) -> list[Term]:
        """The uploaded image (weight `weight`) and the `query` field's terms, checked as /v1/search
        checks its `query` (a JSON list of {"text"|"image_id", "weight"})."""
        extra: list[QueryTerm] = []
        if self.query:
            raw = load_json(self.query, "query", max_depth)
            try:
                extra = TypeAdapter(list[QueryTerm]).validate_python(raw)
            except ValueError as exc:
                raise BadInput(f"query is not a JSON list of terms ({{\"text\"|\"image_id\", \"weight\"}}): "
                               f"{' '.join(str(exc).split())[:300]}") from exc
        return [Term(image=image, weight=self.weight),
                *(Term(text=t.text, image_id=t.image_id, weight=t.weight) for t in extra)]


class ClassifyForm(BaseModel):
    """Multipart form: an image, and the class names to score it against."""

    model_config = ConfigDict(extra="forbid")  # an unknown field is a mistake to report, as in JSON

    file: UploadFile = Field(
        description="An image file (JPEG, PNG, WebP, GIF, BMP, TIFF...), not empty.",
        json_schema_extra=IMAGE_FILE_SCHEMA,
    )
    labels: str = Field(
        min_length=1,
        pattern=r"[^,\s]",
        description='Comma-separated class names, e.g. "cat,dog,car": at least one that is not blank.',
    )
    collection: Annotated[str, Field(pattern=COLLECTION_PATTERN)] | SkipJsonSchema[None] = Field(
        None, description="Use this collection's model; default: the server's configured collection."
    )

    @field_validator("labels")
    @classmethod
    def _some_labels(cls, value: str) -> str:
        count = len(parse_labels(value))
        if not count:
            raise ValueError('give at least one non-empty label, comma-separated ("cat,dog,car")')
        if count > MAX_LABELS:
            raise ValueError(f"at most {MAX_LABELS} labels per request, got {count}")
        return value

    @property
    def label_list(self) -> list[str]:
        return parse_labels(self.labels)


class WatchState(BaseModel):
    """`serve --watch`: the folders' sync, as /readyz and the collection's status report it."""

    state: str = Field(description="`syncing` until the first full sync of the folders completes, then "
                       "`watching`.")
    folders: list[str]
    done: int = Field(description="Files of the first sync embedded (or failed) so far.")
    total: int | None = Field(
        description="Files the first sync has to embed; null while it walks the folders."
    )
    syncs: int = Field(description="Syncs completed.")
    last_sync_at: float | None = Field(description="Unix time the last sync completed.")
    last_error: str | None = Field(description="Why the last sync failed, if it did.")


class ReadinessResponse(BaseModel):
    """Whether the server can answer searches now."""

    status: str = Field(description="`ready`; `syncing` (503) while `serve --watch` runs its first sync; "
                        "or `not ready` (503).")
    reason: str | None = Field(None, description="Why not, when not ready.")
    watch: WatchState | None = Field(None, description="With `serve --watch`: the folders' sync.")


class HitRerank(BaseModel):
    """One hit's part in a re-rank."""

    status: Literal["ok", "failed", "skipped"] = Field(
        description="`ok`: judged by the VLM; `failed`: not judged, kept its place (`error` says why); "
        "`skipped`: past top_n, kept its order after the re-ranked hits."
    )
    error: str | None = Field(
        None,
        description="Why not judged: connect, timeout, deadline, http_429, http_4xx, http_5xx, protocol, "
        "unparseable, unranked, image, off.",
    )
    rank: int | None = Field(None, description="Place in the VLM's order, from 1 (listwise).")
    reason: str | None = Field(None, description="The VLM's short reason for its score (pointwise).")
    cached: bool = Field(False, description="Answered from the server's cache of VLM answers.")


class SearchResult(BaseModel):
    """One hit."""

    id: str = Field(description="Stable id of the indexed image; use it with /v1/images/{id} or image_id.")
    uri: str = Field(description="Absolute path (or URL) the image was indexed from.")
    score: float = Field(description="Cosine similarity to the query; higher is better.")
    metadata: dict[str, Any] = Field(
        default_factory=dict, description="The item's metadata fields (width, height; catalog columns)."
    )
    vlm_score: float | None = Field(
        None,
        description="The VLM's relevance score, 0-10 (pointwise re-rank); null when not asked or not judged.",
    )
    explanation: str | None = Field(
        None,
        description="Why the VLM thinks this hit matches (`explain`); null when not asked or not available.",
    )
    rerank: HitRerank | None = Field(
        None, description="What the re-rank did with this hit; null when not asked."
    )


class RerankSummary(BaseModel):
    """How the re-rank went. Whatever happened, the results are all there, in the best order known."""

    status: Literal["ok", "partial", "failed"] = Field(
        description="`ok`: every one of the top_n judged; `partial`: some kept their place; `failed`: none "
        "judged (the search's own order)."
    )
    reason: str | None = Field(None, description="What went wrong, with the setting to check.")
    ms: float = Field(description="Time the re-rank took.")
    mode: RerankMode
    top_n: int


class SearchTimings(BaseModel):
    """Where the time of a query went, in milliseconds."""

    decode_ms: float = Field(0.0, description="Decoding an uploaded image.")
    encode_ms: float = Field(description="Embedding the query (text encoder, cache, or image encoder).")
    search_ms: float = Field(description="Nearest-neighbour search in the vector store.")
    fetch_ms: float = Field(description="Reading stored records (the query image's vector for image_id).")
    rerank_ms: float = Field(0.0, description="Re-ranking with the VLM.")
    explain_ms: float = Field(0.0, description="Explanations from the VLM.")


class FacetCount(BaseModel):
    """A value of a faceted field and how many points that pass the filter hold it."""

    value: str
    count: int


class SearchResponse(BaseModel):
    """Results, best first."""

    results: list[SearchResult]
    facets: dict[str, list[FacetCount]] | None = Field(
        None,
        description="For each field asked in `facets`: its most frequent values among the points that "
        "pass the filter, most frequent first (equal counts by value); null when none were asked.",
    )
    mode: str | None = Field(
        None, description="How the results were ranked: vector, keyword, hybrid, recommend, or browse (no "
        "query: by `sort`; every score 0)."
    )
    took_ms: float = Field(description="Time the server spent on the request, decoding an upload included.")
    timings: SearchTimings
    rerank: RerankSummary | None = Field(None, description="How the re-rank went; null when not asked.")


class LabelScore(BaseModel):
    """One label and its probability."""

    label: str
    score: float = Field(ge=0.0, le=1.0, description="Probability among the labels given; they sum to 1.")


class ClassifyResponse(BaseModel):
    """Zero-shot classification of one image against the labels given, best first."""

    labels: list[LabelScore]


class ModelInfo(BaseModel):
    """The model a collection was built with (and that searches it)."""

    model: str = Field(description="open_clip architecture name or model-config path.")
    pretrained: str = Field(description="Pretrained tag or checkpoint path; empty for random weights.")
    architecture: str
    weights: str = Field(description="The tag, or sha256 of the checkpoint file.")
    dim: int = Field(description="Embedding size.")
    precision: str = Field("fp32", description="fp32, or int8 (the approximate CPU fast path).")


class CollectionInfo(BaseModel):
    """A collection in the configured store."""

    name: str
    count: int | None = Field(description="Number of indexed images; null if the collection can't be read.")
    model: ModelInfo | None = Field(description="The active vector's model; null if it can't be read.")
    default: bool = Field(False, description="Whether requests that name no collection use this one.")
    error: str | None = Field(None, description="Why count and model are missing, if they are.")


class VectorInfo(BaseModel):
    """One named vector of a collection."""

    name: str
    model: ModelInfo
    dim: int
    precision: str
    state: str = Field(description="`ready`, or `building` while a re-embedding fills it.")
    count: int = Field(description="Items that have this vector.")
    active: bool = Field(description="Whether queries use it unless they name another.")
    job: dict[str, Any] | None = Field(
        None, description="The re-embedding in this server, if any: state (starting, running, ready, "
        "incomplete, stopped, failed, interrupted), embedded, failed, remaining, error, resumed."
    )


class FailedFile(BaseModel):
    uri: str
    reason: str


class CollectionStatus(BaseModel):
    """A collection: size, vectors with their progress, declared fields, and the files that failed."""

    collection: str
    count: int
    model: ModelInfo
    vectors: list[VectorInfo]
    fields: dict[str, str] = Field(description="Declared metadata fields and their types.")
    searchable: list[str] = Field(
        default_factory=list, description="Keyword fields whose words are also searched (a catalog's id and "
        "text columns), beside the text fields."
    )
    id_fields: list[str] = Field(
        default_factory=list, description="Fields whose value addresses an item (a catalog's id column), "
        "newest first: /items/{id}, /v1/images/{id} and image_id take such a value."
    )
    failed: list[FailedFile]
    watch: WatchState | None = Field(None, description="When the server keeps this collection in line "
                                     "with folders (`serve --watch`): their sync.")


class VectorsResponse(BaseModel):
    vectors: list[VectorInfo]


class CheckProblem(BaseModel):
    kind: str = Field(description="vectors, missing_vector, payload, count, index or files.")
    severity: Literal["corrupt", "stale"] = Field(description="stale: image files gone, not corruption.")
    message: str
    count: int = Field(description="How many points have it.")
    ids: list[str] = Field(description="The first 20 of their ids.")
    advice: str = Field(description="What to do about it.")


class CheckResponse(BaseModel):
    """`clipsearch check`: a collection's stored data verified (indexer.stores.check)."""

    collection: str
    ok: bool = Field(description="No corruption found.")
    points: int
    vectors: dict[str, int] = Field(description="Vector name -> points that have it.")
    problems: list[CheckProblem]
    line: str = Field(description="The verdict in one sentence, with what to do.")


class NewVectorRequest(BaseModel):
    """Embed the collection with another model into a new named vector, inside the server."""

    model: str = Field(min_length=1, description="open_clip architecture name or model-config JSON path.")
    pretrained: str = Field("", description="open_clip pretrained tag or checkpoint path; empty: random.")
    name: str | None = Field(None, description="Name of the vector; default: from the model and weights.")

    model_config = ConfigDict(extra="forbid")


class ItemResponse(BaseModel):
    """An indexed item."""

    id: str
    uri: str
    metadata: dict[str, Any]


class CollectionsResponse(BaseModel):
    """Every collection in the configured store, by name."""

    collections: list[CollectionInfo]


class ExplainRequest(BaseModel):
    """Ask the VLM why an indexed image matches a query."""

    query: str = Field(
        min_length=1, max_length=MAX_QUERY_CHARS, pattern=r"\S", description="The query text, as searched."
    )
    image_id: str = Field(description="Id of an indexed image (from a search result).")
    collection: str | None = COLLECTION_FIELD

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"query": "a dog on a beach", "image_id": "<id>"}]}
    )


class ExplainResponse(BaseModel):
    """The explanation, or why there is none: the VLM's failures are answers, never server errors."""

    explanation: str | None = Field(description="One or two sentences; null when the VLM could not say.")
    status: Literal["ok", "failed"]
    error: str | None = Field(
        None,
        description="Why not: off, connect, timeout, deadline, http_429, http_4xx, http_5xx, protocol, "
        "image.",
    )
    reason: str | None = Field(None, description="What went wrong, with the setting to check.")
    ms: float = Field(description="Time the VLM took.")


class VlmStatus(BaseModel):
    """The VLM stage as this server sees it."""

    enabled: bool = Field(description="Whether CLIPSEARCH_VLM_URL is set.")
    url: str | None = Field(None, description="The endpoint's base URL.")
    model: str | None = Field(None, description="The model name sent (null: not known yet).")
    status: VlmState = Field(description="`off`, `up`, `down`, or `unknown` (not asked yet).")
    error: str | None = Field(None, description="The last failure, when down.")
    checked_at: float | None = Field(None, description="Unix time of the last request that said so.")


class EvalRequest(BaseModel):
    """A labelled dataset, as its images' paths and labels (the client read them from its DATA: an
    ImageFolder tree or a CSV of path,label). The server only matches the paths against its items' indexed
    paths; it reads no file. At most the server's `ids` limit of them (CLIPSEARCH_LIMITS_IDS)."""

    paths: list[Annotated[str, Field(min_length=1, max_length=4096)]] = Field(
        min_length=1, description="Absolute paths of the images, as indexed (links resolved).")
    labels: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        min_length=1, description="The label of each path, in the same order.")
    vectors: list[str] = Field(default_factory=list, max_length=16,
                               description="Named vectors to measure [default: the active one].")
    templates: PromptTemplates | None = Field(
        None, description='A built-in prompt-template set, or the templates, each with "{}" where the '
                          "class name goes [default: the built-in ensemble].")

    model_config = ConfigDict(extra="forbid", strict=True)


FolderFormat = Literal["imagefolder", "fiftyone"]


class FolderExportRequest(BaseModel):
    """Which items, as which folder export (sent as a tar archive of the folder, images copied in)."""

    format: FolderFormat = Field(description="imagefolder (OUT/<label>/<file>) or fiftyone (a "
                                 "FiftyOneImageClassificationDataset folder).")
    filter: dict[str, Any] | None = Field(None, description="A filter, as in /v1/search.")
    run: str | None = Field(None, max_length=200, description="A label run whose labels name the folders "
                            '("@duplicates": the duplicate groups).')

    model_config = ConfigDict(extra="forbid", strict=True)


StoreKind = Literal["edge", "qdrant", "faiss"]


class CopyRequest(BaseModel):
    """Copy the collection, vectors, payloads and schema, under another name and/or into another store
    kind of this server, without re-embedding."""

    to_collection: str | None = Field(None, pattern=COLLECTION_PATTERN,
                                      description="The copy's name [default: the same, in another store].")
    to_store: StoreKind | None = Field(None, description="The copy's store kind [default: the server's].")
    replace: bool = Field(False, description="Replace an existing collection of that name.")

    model_config = ConfigDict(extra="forbid", strict=True)


class TransferResponse(BaseModel):
    """What a restore or copy made."""

    collection: str
    store: str
    points: int
    vectors: dict[str, int] = Field(description="Vector name -> points that have it.")
    source: dict[str, str] = Field(
        default_factory=dict, description="Where it came from: the archived or copied collection and store.")
