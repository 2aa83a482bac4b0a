"""Going through a running server: an embedded collection that `clipsearch serve` holds cannot be
opened by another process, so the CLI asks that server instead (its address is in the collection's
directory, `indexer.locking.server_address`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from indexer.errors import CollectionBusy, CollectionLocked, Unavailable, error_for_status
from indexer.locking import server_address
from indexer.settings import Settings

T = TypeVar("T")
TIMEOUT_S = 60.0
WORK_TIMEOUT_S = 600.0  # a label run or a duplicate search over a large collection, through the server


def serving_url(settings: Settings, collection: str) -> str | None:
    """The URL of the live server that holds `collection` (an embedded store), or None."""
    if settings.store_shared:
        return None  # a Qdrant server is shared: every process opens it directly
    return server_address(settings.collection_dir(collection))


def call(settings: Settings, url: str, method: str, path: str, **kwargs: Any) -> Any:
    """One request to the server; its errors become ours, of the kind its status says."""
    import httpx  # here: a tenth of a second that a search without a server does not need

    headers = {"X-API-Key": settings.api.key} if settings.api.key else {}
    try:
        response = httpx.request(method, url.rstrip("/") + path, headers=headers, timeout=TIMEOUT_S, **kwargs)
    except httpx.HTTPError as exc:
        raise Unavailable(f"the server at {url} holds this collection but does not answer: {exc}") from exc
    if response.is_success:
        return response.json()
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        detail = response.text
    raise error_for_status(response.status_code, f"{detail} (from the server at {url})")


def local_or_through_server(
    settings: Settings, collection: str, local: Callable[[], T], through: Callable[[str], T]
) -> T:
    """Run `local`; when a live server holds the collection (before, or as `local` finds it busy),
    `through(url)` instead."""
    url = serving_url(settings, collection)
    if url is not None:
        return through(url)
    try:
        return local()
    except (CollectionBusy, CollectionLocked):
        url = serving_url(settings, collection)
        if url is None:
            raise
        return through(url)


def through_client(settings: Settings, collection: str, fn: Callable[[Any], T]) -> Callable[[str], T]:
    """`through` for local_or_through_server: fn with the collection of the server at the URL, through
    the Python API's client (clipsearch.client.RemoteCollection)."""
    from clipsearch.client import RemoteCollection

    def through(url: str) -> T:
        with RemoteCollection(url, collection, key=settings.api.key, timeout=WORK_TIMEOUT_S) as remote:
            return fn(remote)

    return through


def on_collection(settings: Settings, collection: str, fn: Callable[[Any], T], *,
                  progress: bool = False) -> T:
    """fn with the collection (indexer.collection.CollectionAPI): the local one (`progress`: its tqdm
    bars on stderr), or, when a live server holds it, the server's through the client. The same fn
    either way: every command that reads or changes a collection is one call of this."""
    from indexer.collection import Collection

    def local() -> T:
        with Collection(settings, collection, progress=progress) as opened:
            return fn(opened)

    return local_or_through_server(settings, collection, local, through_client(settings, collection, fn))


def is_remote(collection: Any) -> bool:
    """Whether a collection fn was given is a server's (for what only the server's answer lacks)."""
    from indexer.collection import Collection

    return not isinstance(collection, Collection)
