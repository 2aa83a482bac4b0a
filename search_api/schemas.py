"""Every request and response body of the HTTP API, named and described for the OpenAPI document."""

from __future__ import annotations

from typing import Any

from fastapi import UploadFile
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from indexer.classify import parse_labels
from indexer.filters import Filter

# Long enough for any real query; bounds what one request can put into the text-embedding cache
# (the tokenizer truncates at 77 tokens anyway).
MAX_QUERY_CHARS = 1000
# Each label costs one text-encoder pass per prompt template, so a request can't ask for thousands.
MAX_LABELS = 256


class ErrorResponse(BaseModel):
    """Every error the API returns."""

    detail: str = Field(description="What went wrong, fit to show a person.")

    model_config = ConfigDict(json_schema_extra={"examples": [{"detail": "no indexed image with id 'x'"}]})


class HealthResponse(BaseModel):
    """The service is up (it says nothing about collections or models)."""

    status: str = Field("ok", description="Always `ok`.")


COLLECTION_FIELD = Field(
    None,
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


class SearchOptions(BaseModel):
    """What every search takes besides its query."""

    collection: str | None = COLLECTION_FIELD
    k: int = Field(10, ge=1, description="Number of results; at most the server's `max_k` (default 1000).")
    offset: int = Field(0, ge=0, le=100_000, description="Skip this many of the best results (paging).")
    filter: Filter | None = Field(None, description=FILTER_DESCRIPTION)
    vector: str | None = VECTOR_FIELD


class SearchRequest(SearchOptions):
    """A text query, or the id of an indexed image to find similar ones: exactly one of the two."""

    text: str | None = Field(
        None, max_length=MAX_QUERY_CHARS, description="Natural-language description of the images wanted."
    )
    image_id: str | None = Field(
        None, description="Id of an indexed image (from an earlier result): find images like it."
    )

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"text": "a dog on a beach", "k": 10}],
            # What the validator below enforces, said in the schema so clients (and fuzzers) know it.
            "oneOf": [
                {"required": ["text"], "properties": {"text": {"type": "string", "pattern": r"\S"}}},
                {"required": ["image_id"]},
            ],
            "not": {"required": ["text", "image_id"]},
        },
    )

    @model_validator(mode="after")
    def _one_query(self) -> SearchRequest:  # also said in the schema (oneOf above)
        if self.text is not None:
            self.text = self.text.strip()
            if not self.text:
                raise ValueError("text must not be empty")
        if (self.text is None) == (self.image_id is None):
            raise ValueError("give exactly one of text and image_id")
        return self


IMAGE_FILE_SCHEMA = {"type": "string", "format": "binary", "minLength": 1}


class ImageSearchForm(BaseModel):
    """Multipart form: an example image, and how many results (the other options as in /v1/search;
    `filter` as a JSON string)."""

    file: UploadFile = Field(
        description="An image file (JPEG, PNG, WebP, GIF, BMP, TIFF...), not empty.",
        json_schema_extra=IMAGE_FILE_SCHEMA,
    )
    collection: str | None = COLLECTION_FIELD
    k: int = Field(10, ge=1, description="Number of results; at most the server's `max_k` (default 1000).")
    offset: int = Field(0, ge=0, le=100_000, description="Skip this many of the best results (paging).")
    filter: str | None = Field(None, description="A filter as a JSON string; see /v1/search.")
    vector: str | None = VECTOR_FIELD


class ClassifyForm(BaseModel):
    """Multipart form: an image, and the class names to score it against."""

    file: UploadFile = Field(
        description="An image file (JPEG, PNG, WebP, GIF, BMP, TIFF...), not empty.",
        json_schema_extra=IMAGE_FILE_SCHEMA,
    )
    labels: str = Field(
        min_length=1,
        pattern=r"[^,\s]",
        description='Comma-separated class names, e.g. "cat,dog,car": at least one that is not blank.',
    )
    collection: str | None = Field(
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


class ReadinessResponse(BaseModel):
    """Whether the server can answer searches now."""

    status: str = Field(description="`ready`, or `not ready`.")
    reason: str | None = Field(None, description="Why not, when not ready.")


class SearchResult(BaseModel):
    """One hit."""

    id: str = Field(description="Stable id of the indexed image; use it with /v1/images/{id} or image_id.")
    uri: str = Field(description="Absolute path (or URL) the image was indexed from.")
    score: float = Field(description="Cosine similarity to the query; higher is better.")
    metadata: dict[str, Any] = Field(
        default_factory=dict, description="The item's metadata fields (width, height; catalog columns)."
    )


class SearchTimings(BaseModel):
    """Where the time of a query went, in milliseconds."""

    decode_ms: float = Field(0.0, description="Decoding an uploaded image.")
    encode_ms: float = Field(description="Embedding the query (text encoder, cache, or image encoder).")
    search_ms: float = Field(description="Nearest-neighbour search in the vector store.")
    fetch_ms: float = Field(description="Reading stored records (the query image's vector for image_id).")


class SearchResponse(BaseModel):
    """Results, best first."""

    results: list[SearchResult]
    took_ms: float = Field(description="Time the server spent on the request, decoding an upload included.")
    timings: SearchTimings


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
        None, description="The re-embedding running in this server, if any: state, embedded, failed, error."
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
    failed: list[FailedFile]


class VectorsResponse(BaseModel):
    vectors: list[VectorInfo]


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
