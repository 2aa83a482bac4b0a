"""The one interface every vector store implements, and the records that cross it.

Vectors are L2-normalised float32, so the score is cosine similarity (higher is better).
Ids are UUID strings: stable per source item (see `indexer.sources.item_id`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


class StoreError(RuntimeError):
    """A store could not be opened or used; the message says why and what to do."""


class CollectionNotFound(StoreError):
    pass


class CollectionBusy(StoreError):
    """An embedded collection is open in another process: only one process at a time may open it."""


@dataclass
class Record:
    """One indexed item. `payload` holds `uri`, `fingerprint` and `metadata`."""

    id: str
    vector: np.ndarray | None
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass
class Hit:
    id: str
    score: float
    payload: dict[str, Any]


class VectorStore(Protocol):
    """A collection of vectors with payloads; one open instance per collection."""

    name: str
    dim: int

    def upsert(self, records: Sequence[Record]) -> None:
        """Insert or replace records (vectors required)."""

    def delete(self, ids: Sequence[str]) -> None:
        """Remove records; unknown ids are ignored."""

    def search(self, vector: np.ndarray, k: int) -> list[Hit]:
        """The k nearest records by cosine similarity, best first."""

    def retrieve(self, ids: Sequence[str], with_vectors: bool = False) -> list[Record]:
        """Records for the ids that exist, in the order asked; missing ids are left out."""

    def scan(self) -> Iterator[Record]:
        """Every record, payload only (vector None); order unspecified."""

    def count(self) -> int: ...

    def read_info(self) -> dict[str, Any]:
        """Collection-level information (model identity, failures); {} when never written."""

    def write_info(self, info: dict[str, Any]) -> None:
        """Replace the collection-level information, durably."""

    def flush(self) -> None:
        """Make everything written so far durable."""

    def close(self) -> None: ...
