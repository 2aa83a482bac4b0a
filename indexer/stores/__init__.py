"""Vector stores behind one interface (`VectorStore` in base.py), chosen by `settings.store`.

Each backend is a module with five functions, imported only when used (so the edge default
does not need qdrant-client, nor faiss):

    existing_dim(settings, name) -> int | None     # None: no such collection
    create(settings, name, dim) -> VectorStore
    load(settings, name, dim) -> VectorStore
    list_collections(settings) -> list[str]
    drop(settings, name) -> None                   # missing collections are ignored

Adding a backend is one entry in `_BACKENDS`.
"""

from __future__ import annotations

import importlib
import re
import uuid
from types import ModuleType

import numpy as np

from indexer.settings import Settings
from indexer.stores.base import CollectionBusy, CollectionNotFound, Hit, Record, StoreError, VectorStore

__all__ = [
    "CollectionBusy",
    "CollectionNotFound",
    "Hit",
    "Record",
    "StoreError",
    "VectorStore",
    "drop_collection",
    "list_collections",
    "open_store",
]

_BACKENDS: dict[str, str | None] = {
    "edge": "indexer.stores.edge",
    "qdrant": "indexer.stores.qdrant",
    "faiss": "indexer.stores.faiss_store",
}

# Names become directory names and Qdrant collection names: keep them to a safe alphabet.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def open_store(settings: Settings, collection: str, dim: int | None = None) -> VectorStore:
    """Open a collection; with `dim`, create it when missing (and check its size when not)."""
    backend = _backend(settings)
    _check_name(collection)
    existing = backend.existing_dim(settings, collection)
    if existing is None:
        if dim is None:
            raise CollectionNotFound(
                f"collection {collection!r} does not exist in the {settings.store} store; "
                f"run `clipsearch index SOURCE --collection {collection}` first"
            )
        return backend.create(settings, collection, dim)
    if dim is not None and dim != existing:
        raise StoreError(
            f"collection {collection!r} holds {existing}-dim vectors, not {dim}: it was indexed with "
            f"another model; use another collection name or drop this one"
        )
    return backend.load(settings, collection, existing)


def list_collections(settings: Settings) -> list[str]:
    return _backend(settings).list_collections(settings)


def drop_collection(settings: Settings, name: str) -> None:
    """Delete a collection and everything in it; a missing one is ignored."""
    _check_name(name)
    _backend(settings).drop(settings, name)


def _backend(settings: Settings) -> ModuleType:
    if settings.store not in _BACKENDS:
        raise StoreError(f"unknown store {settings.store!r}; choose one of {', '.join(_BACKENDS)}")
    module = _BACKENDS[settings.store]
    if module is None:
        raise StoreError(f"{settings.store} store not available yet")
    return importlib.import_module(module)


def _check_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise StoreError(
            f"invalid collection name {name!r}: use letters, digits, '_', '.', '-' (128 at most), "
            f"starting with a letter or digit"
        )


# Helpers shared by the backends.


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
