"""clipsearch: semantic image search over your own collections, with open_clip models.

    import clipsearch
    photos = clipsearch.open("photos")              # a local collection (created by its first index)
    photos.index(["~/Pictures"])
    photos.search("a dog on a beach", k=5, where="width > 1000")
    remote = clipsearch.connect("http://127.0.0.1:8000", key=None)   # the same interface over HTTP

docs/python.md has the whole interface (indexer.collection.CollectionAPI). The package is also the
command line (`clipsearch --help`; clipsearch.cli): the top layer, above search_api, ui and indexer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from clipsearch.client import RemoteCollection
    from indexer.collection import Collection, CollectionAPI

__all__ = ["open", "connect", "restore", "copy", "Collection", "CollectionAPI", "RemoteCollection"]


def open(name: str | None = None, *, progress: bool = False, **settings: Any) -> Collection:  # noqa: A001
    """The local collection `name` (default: the `collection` setting). `settings`: keyword overrides
    of indexer.settings.Settings (home=, store=, model=, pretrained=, device=, ...; a section as a
    dict, qdrant={"url": ...}), over the CLIPSEARCH_* variables and the defaults. `progress`: tqdm bars
    on stderr for the long runs (label, duplicates, clusters, reembed, snapshot)."""
    from indexer.collection import Collection

    return Collection.open(name, _settings(settings), progress=progress)


def connect(url: str, key: str | None = None, collection: str | None = None) -> RemoteCollection:
    """The collection `collection` (default: the server's) of the clipsearch server at `url`, with the
    same methods and results as `open`; `key`: an API key when the server asks for one."""
    from clipsearch.client import RemoteCollection

    return RemoteCollection(url, collection, key=key)


def restore(archive: str, name: str | None = None, *, replace: bool = False, **settings: Any) -> Any:
    """A local collection from a snapshot archive (`Collection.snapshot`)."""
    from indexer.collection import restore as restore_archive

    return restore_archive(archive, name, replace=replace, settings=_settings(settings))


def copy(name: str, to_name: str | None = None, *, to_store: str | None = None, replace: bool = False,
         **settings: Any) -> Any:
    """A copy of a local collection under another name and/or in another store kind."""
    from indexer.collection import copy as copy_collection

    return copy_collection(name, to_name, to_store=to_store, replace=replace, settings=_settings(settings))


def _settings(overrides: dict[str, Any]) -> Any:
    from indexer.errors import BadInput
    from indexer.settings import Settings

    unknown = sorted(set(overrides) - set(Settings.model_fields))
    if unknown:
        raise BadInput(f"unknown settings: {', '.join(unknown)} (see the settings table in the README)")
    return Settings().with_flags(**overrides)


def __getattr__(name: str) -> Any:  # the classes, imported when first asked for
    if name in ("Collection", "CollectionAPI"):
        import indexer.collection

        return getattr(indexer.collection, name)
    if name == "RemoteCollection":
        from clipsearch.client import RemoteCollection

        return RemoteCollection
    raise AttributeError(name)
