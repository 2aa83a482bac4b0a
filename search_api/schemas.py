"""Every request and response body of the HTTP API, named and described for the OpenAPI document."""

from __future__ import annotations

from typing import Any

from fastapi import UploadFile
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from indexer.classify import parse_labels

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


class SearchRequest(BaseModel):
    """A text query, or the id of an indexed image to find similar ones: exactly one of the two."""

    text: str | None = Field(
        None, max_length=MAX_QUERY_CHARS, description="Natural-language description of the images wanted."
    )
    image_id: str | None = Field(
        None, description="Id of an indexed image (from an earlier result): find images like it."
    )
    k: int = Field(10, ge=1, description="Number of results; at most the server's `max_k` (default 1000).")

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"text": "a dog on a beach", "k": 10}]},
    )

    @model_validator(mode="after")
    def _one_query(self) -> SearchRequest:
        if self.text is not None:
            self.text = self.text.strip()
            if not self.text:
                raise ValueError("text must not be empty")
        if (self.text is None) == (self.image_id is None):
            raise ValueError("give exactly one of text and image_id")
        return self


class ImageSearchForm(BaseModel):
    """Multipart form: an example image, and how many results."""

    file: UploadFile = Field(description="An image file (JPEG, PNG, WebP, GIF, BMP, TIFF...).")
    k: int = Field(10, ge=1, description="Number of results; at most the server's `max_k` (default 1000).")


class ClassifyForm(BaseModel):
    """Multipart form: an image, and the class names to score it against."""

    file: UploadFile = Field(description="An image file (JPEG, PNG, WebP, GIF, BMP, TIFF...).")
    labels: str = Field(description='Comma-separated class names, e.g. "cat,dog,car".')

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


class SearchResult(BaseModel):
    """One hit."""

    id: str = Field(description="Stable id of the indexed image; use it with /v1/images/{id} or image_id.")
    uri: str = Field(description="Absolute path (or URL) the image was indexed from.")
    score: float = Field(description="Cosine similarity to the query; higher is better.")
    metadata: dict[str, Any] = Field(
        default_factory=dict, description="What the indexer stored (width, height)."
    )


class SearchTimings(BaseModel):
    """Where the time of a query went, in milliseconds."""

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


class CollectionInfo(BaseModel):
    """A collection in the configured store."""

    name: str
    count: int | None = Field(description="Number of indexed images; null if the collection can't be read.")
    model: ModelInfo | None = Field(description="null if no model is recorded or it can't be read.")
    error: str | None = Field(None, description="Why count and model are missing, if they are.")


class CollectionsResponse(BaseModel):
    """Every collection in the configured store, by name."""

    collections: list[CollectionInfo]
