"""The one interface every vector store implements, and the records that cross it.

Vectors are L2-normalised float32, so the score is cosine similarity (higher is better).
Ids are UUID strings: stable per source item (see `indexer.sources.item_id`).

Vectors are named by the collection schema (`indexer.schema`): records carry a dict of them, and
search, retrieve and scan name the ones they want (None: the schema's active vector). Filters are
store filters (`indexer.filters.Filter`, keys are payload paths), pushed down by every backend.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from indexer.errors import StoreError
from indexer.filters import Filter
from indexer.schema import CollectionSchema

# Which vectors to return with a record: none, all, or these names.
WithVectors = bool | Sequence[str]


@dataclass
class Record:
    """One indexed item. `payload` holds `uri`, `path`, `fingerprint` and `metadata`;
    `vectors` maps schema vector names to vectors (a point may lack a vector still being built)."""

    id: str
    vectors: dict[str, np.ndarray] = field(default_factory=dict)
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass
class Hit:
    id: str
    score: float
    payload: dict[str, Any]


class VectorStore(Protocol):
    """A collection of points (id, named vectors, payload); one open instance per collection.

    The schema is stored with the collection. A collection written by an older release opens with
    its schema migrated in memory; the store writes the current format at its first write
    (upsert, update_vectors, set_payloads, delete, set_schema or write_info)."""

    name: str

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
        self,
        vector: np.ndarray,
        k: int,
        *,
        using: str | None = None,
        filter: Filter | None = None,
        offset: int = 0,
    ) -> list[Hit]:
        """The k nearest points by cosine similarity on vector `using` (None: the active one) among
        those that pass `filter`, best first, after skipping the `offset` best. Ties keep a stable order."""

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
