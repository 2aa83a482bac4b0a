"""Querying a collection: the one object the CLI and the HTTP API both search through.

It opens the collection, loads the model recorded with it, and keeps both warm. Text
embeddings are cached (bounded), since people repeat and refine the same queries.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from indexer.classify import classify_embeddings
from indexer.models import (
    ClipModel,
    ModelIdentity,
    check_same_model,
    load_recorded_model,
    query_threads,
    set_torch_threads,
)
from indexer.settings import Settings
from indexer.stores import Hit, StoreError, VectorStore, open_store


class ItemNotFound(KeyError):
    pass


@dataclass
class Result:
    id: str
    uri: str
    score: float
    metadata: dict[str, Any]

    @classmethod
    def from_hit(cls, hit: Hit) -> Result:
        return cls(hit.id, hit.payload.get("uri", ""), hit.score, hit.payload.get("metadata", {}))


class TextEmbeddingCache:
    """A small LRU of query text -> embedding."""

    def __init__(self, encode: Any, size: int = 1024):
        self._encode, self._size = encode, size
        self._entries: OrderedDict[str, np.ndarray] = OrderedDict()
        self.hits = self.misses = 0

    def get(self, text: str) -> np.ndarray:
        if text in self._entries:
            self._entries.move_to_end(text)
            self.hits += 1
            return self._entries[text]
        self.misses += 1
        vector = self._encode([text])[0]
        self._entries[text] = vector
        if len(self._entries) > self._size:
            self._entries.popitem(last=False)
        return vector


def parse_item_id(value: str) -> str | None:
    """The canonical form of an item id, or None if it cannot be one (a path, say)."""
    try:
        return str(uuid.UUID(value))
    except (ValueError, AttributeError, TypeError):
        return None


class SearchEngine:
    def __init__(self, settings: Settings, collection: str | None = None, model: ClipModel | None = None):
        self.settings = settings
        self.collection = collection or settings.collection
        self.store: VectorStore = open_store(settings, self.collection)
        try:
            info = self.store.read_info()
            if "model" not in info:
                raise StoreError(
                    f"collection {self.collection!r} has no model recorded; re-run clipsearch index"
                )
            self.identity = ModelIdentity.from_dict(info["model"])
            set_torch_threads(query_threads())  # process-wide: this process answers queries
            if model is not None:  # a model handed in (tests, the API reusing one) must be the recorded one
                check_same_model(self.identity, model.identity, self.collection)
            self.model = model or load_recorded_model(self.identity, settings.device)
            self.warm_up()
        except Exception:
            self.store.close()
            raise
        self.text_cache = TextEmbeddingCache(self.model.encode_texts)

    def warm_up(self) -> None:
        """One throw-away query, so the first real one does not pay the one-time costs of torch's first
        call and of the store's first page-ins (seen here: first encode up to 2x, first search 4x)."""
        vector = self.model.encode_texts(["a photo"])[0]
        self.store.search(vector, 1)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> SearchEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def search_vector(self, vector: np.ndarray, k: int) -> list[Result]:
        return [Result.from_hit(hit) for hit in self.store.search(vector, k)]

    def search_text(self, text: str, k: int = 10) -> list[Result]:
        return self.search_vector(self.text_cache.get(text), k)

    def search_image(self, image: Any, k: int = 10) -> list[Result]:
        return self.search_vector(self.model.encode_images([image])[0], k)

    def search_similar(self, item_id: str, k: int = 10) -> list[Result]:
        """Neighbours of an indexed item, by its stored vector (no re-encoding)."""
        canonical = parse_item_id(item_id)
        records = self.store.retrieve([canonical], with_vectors=True) if canonical else []
        if not records:
            raise ItemNotFound(item_id)
        return self.search_vector(records[0].vector, k)

    def item(self, item_id: str) -> dict[str, Any]:
        """Payload of an indexed item; ItemNotFound for anything else, path-like strings included."""
        canonical = parse_item_id(item_id)
        records = self.store.retrieve([canonical]) if canonical else []
        if not records:
            raise ItemNotFound(item_id)
        return records[0].payload

    def classify_images(self, images: list[Any], labels: list[str]) -> list[list[tuple[str, float]]]:
        return classify_embeddings(self.model, self.model.encode_images(images), labels)

    def status(self) -> dict[str, Any]:
        return collection_status(self.store)


def collection_status(store: VectorStore) -> dict[str, Any]:
    info = store.read_info()
    model = info.get("model")
    failed = [
        {"uri": uri, "reason": entry["reason"]} for uri, entry in sorted(info.get("failed", {}).items())
    ]
    return {
        "collection": store.name,
        "count": store.count(),
        "model": ModelIdentity.from_dict(model).to_dict() if model else None,
        "failed": failed,
    }
