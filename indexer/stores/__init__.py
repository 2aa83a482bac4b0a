"""Vector stores behind one interface (`VectorStore` in base.py), chosen by `settings.store`.

Each backend is a module with five functions, imported only when used (so the edge default
needs neither qdrant-client nor faiss):

    exists(settings, name) -> bool
    create(settings, name, schema) -> VectorStore
    load(settings, name, background=False) -> VectorStore   # background: see open_store
    list_collections(settings) -> list[str]
    drop(settings, name) -> None                   # missing collections are ignored

Adding a backend is one entry in `BACKENDS`.
"""

from __future__ import annotations

import importlib
import re
from types import ModuleType

from indexer.errors import BadInput, CollectionNotFound, StoreError
from indexer.schema import CollectionSchema
from indexer.settings import Settings
from indexer.stores.base import Hit, Record, VectorStore

__all__ = ["BACKENDS", "Hit", "Record", "VectorStore", "drop_collection", "list_collections", "open_store"]

BACKENDS: dict[str, str] = {
    "edge": "indexer.stores.edge",
    "qdrant": "indexer.stores.qdrant",
    "faiss": "indexer.stores.faiss_store",
}

# Names become directory names and Qdrant collection names: keep them to a safe alphabet.
COLLECTION_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
_NAME = re.compile(COLLECTION_NAME_PATTERN)


def open_store(settings: Settings, collection: str, create: CollectionSchema | None = None,
               background: bool = False) -> VectorStore:
    """Open a collection; with `create`, make it with that schema when it does not exist.
    `background`: a backend whose opening reads much (edge) may return at once with its schema and
    finish opening in a thread; the first call that needs the data waits, and raises what opening
    raised. Others open at once."""
    backend = _backend(settings)
    check_collection_name(collection)
    if backend.exists(settings, collection):
        return backend.load(settings, collection, background=background)
    if create is None:
        raise CollectionNotFound(
            f"collection {collection!r} does not exist in the {settings.store} store; "
            f"run `clipsearch index SOURCE --collection {collection}` first"
        )
    return backend.create(settings, collection, create)


def collection_exists(settings: Settings, collection: str) -> bool:
    check_collection_name(collection)
    return bool(_backend(settings).exists(settings, collection))


def list_collections(settings: Settings) -> list[str]:
    return _backend(settings).list_collections(settings)


def drop_collection(settings: Settings, name: str) -> None:
    """Delete a collection and everything in it; a missing one is ignored."""
    check_collection_name(name)
    _backend(settings).drop(settings, name)


def _backend(settings: Settings) -> ModuleType:
    if settings.store not in BACKENDS:
        raise StoreError(f"unknown store {settings.store!r}; choose one of {', '.join(BACKENDS)}")
    return importlib.import_module(BACKENDS[settings.store])


def check_collection_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise BadInput(
            f"invalid collection name {name!r}: use letters, digits, '_', '.', '-' (128 at most), "
            f"starting with a letter or digit"
        )
