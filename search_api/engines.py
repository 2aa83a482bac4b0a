"""The server's collections: one SearchEngine per collection, opened at start for the default one
and on first use for the others, all sharing one ModelCache (collections that record the same model
share one copy, and their concurrent queries one batching encoder: settings query_batch*).

Routes run in a thread pool, so every engine call goes through `Engines.call`, which holds that
collection's lock; the engine itself lets go of it while it encodes a query, and while it searches a
store that may be searched concurrently (indexer.search.engine), so that queries in flight meet in
the encoder's batches. Writers inside the server (`serve --watch`, re-embedding through the API) see
the engine's open store through `LockedStore`, whose every call takes the lock for that call only, so
searches interleave with their batches.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any, TypeVar

import numpy as np

from indexer.collection import Collection
from indexer.errors import CollectionBusy, CollectionNotFound, StoreError
from indexer.limits import PixelBudget
from indexer.locking import remove_server_address, write_server_address
from indexer.models.loading import ClipModel, ModelCache
from indexer.schema import CollectionSchema
from indexer.search.engine import SearchEngine, collection_status
from indexer.settings import Settings
from indexer.stores import Record, check_collection_name, list_collections, open_store
from indexer.stores.filters import Filter

T = TypeVar("T")
log = logging.getLogger(__name__)


class FifoLock:
    """A lock that admits waiting threads in arrival order.

    threading.Lock is not fair: a thread arriving while the lock changes hands can take it ahead of one
    that has waited for seconds. With more requests in flight than the engine answers per second, some
    then wait several times longer than the rest: in two runs of 50 clients with ViT-B-32 on 2 cores,
    medians of 9 and 14 s but maxima of 38 and 57 s, near a client's timeout. Handing the lock to the
    oldest waiter bounds each wait by the calls queued ahead of it (maxima 21 and 27 s in such runs)."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._waiters: deque[threading.Lock] = deque()
        self._held = False

    def __enter__(self) -> FifoLock:
        with self._mutex:
            if not self._held:
                self._held = True
                return self
            waiter = threading.Lock()
            waiter.acquire()
            self._waiters.append(waiter)
        waiter.acquire()  # released by __exit__, which hands the lock over without letting it go
        return self

    def __exit__(self, *exc_info: object) -> None:
        with self._mutex:
            if self._waiters:
                self._waiters.popleft().release()
            else:
                self._held = False


class _Slot:
    def __init__(self) -> None:
        self.lock = FifoLock()
        self.engine: SearchEngine | None = None
        # Calls in progress, the lock held or not: a query lets go of the lock while it encodes, and
        # closing waits for it to finish rather than closing the store under it.
        self.calls = 0
        self.calls_lock = threading.Lock()


class Engines:
    def __init__(self, settings: Settings, model: ClipModel | None = None, url: str | None = None):
        """`model`: a loaded model to share (tests, embedding); it serves collections that record it.
        `url`: where this server answers, left in each embedded collection it holds for the CLI."""
        self.settings = settings
        self.url = url
        # Uploads of every collection share one budget: decoding costs the process's CPU and memory.
        self.pixel_budget = PixelBudget(settings.limits.decode_pixels, settings.limits.decode_wait_s)
        self.default = settings.collection
        self.models = ModelCache.for_settings(settings)
        if model is not None:
            self.models.add(model)
        self._slots: dict[str, _Slot] = {}
        self._slots_lock = threading.Lock()
        self._exclusive = threading.local()  # the collections this thread holds closed (exclusive)

    def _slot(self, collection: str) -> _Slot:
        check_collection_name(collection)
        with self._slots_lock:
            return self._slots.setdefault(collection, _Slot())

    def _open(self, collection: str, slot: _Slot) -> SearchEngine:
        if slot.engine is None:
            try:
                slot.engine = SearchEngine(self.settings, collection, models=self.models, lock=slot.lock)
                # An edge collection whose points bulk payload updates (a label run) left unindexed gets
                # its index built in a thread, while searches answer exactly (indexer.stores.edge).
                optimize_in_background = getattr(slot.engine.store, "optimize_in_background", None)
                if optimize_in_background is not None:
                    optimize_in_background()
                if self.url and self.embedded:
                    write_server_address(self.settings.collection_dir(collection), self.url)
            except CollectionNotFound as exc:
                # Not kept: the next request tries again, so the server picks up a collection indexed later.
                raise CollectionNotFound(
                    f"collection {collection!r} not found: index it first (`clipsearch index SOURCE "
                    f"--collection {collection}`, or `clipsearch serve --watch FOLDER`)"
                ) from exc
        return slot.engine

    def call(self, collection: str | None, fn: Callable[[SearchEngine], T]) -> T:
        """Run fn with the collection's engine (opening it if needed), alone."""
        name = collection or self.default
        slot = self._slot(name)
        with slot.calls_lock:
            slot.calls += 1
        try:
            with slot.lock:
                return fn(self._open(name, slot))
        finally:
            with slot.calls_lock:
                slot.calls -= 1

    def exclusive(self, collections: str | None | Sequence[str], fn: Callable[[], T]) -> T:
        """Run fn with these collections' engines closed (a library run that opens the stores itself:
        restore, copy), once the calls in progress on them have finished; the calls that come meanwhile
        wait, and the next one opens the collection again. Taken in name order, so that two runs never
        wait on each other crosswise; a collection this thread already holds so is not taken again."""
        wanted = [collections] if collections is None or isinstance(collections, str) else list(collections)
        held: set[str] = self._exclusive.__dict__.setdefault("names", set())
        names = sorted({name or self.default for name in wanted} - held)
        with ExitStack() as stack:
            for name in names:
                stack.enter_context(self._closed(name))
            held.update(names)
            try:
                return fn()
            finally:
                held.difference_update(names)

    @contextmanager
    def _closed(self, name: str) -> Iterator[None]:
        slot = self._slot(name)
        while True:
            slot.lock.__enter__()
            if slot.calls == 0:
                break
            slot.lock.__exit__(None, None, None)
            time.sleep(0.01)  # a query between its encoding and its search needs the lock back
        try:
            if slot.engine is not None:
                slot.engine.close()
                slot.engine = None
            yield
        finally:
            slot.lock.__exit__(None, None, None)

    def open_default(self) -> None:
        """At start: open the default collection and warm its model, if it exists (else it is a 404
        and /readyz says why until it is indexed)."""
        try:
            self.call(None, lambda engine: engine)
        except (CollectionNotFound, CollectionBusy) as exc:  # the server still starts; /readyz says why
            log.warning("collection %r is not served yet: %s", self.default, exc)

    @property
    def embedded(self) -> bool:
        """Whether the store's collections can be open in one process only (this one, while it serves)."""
        return not self.settings.store_shared

    def loaded(self, collection: str | None = None) -> SearchEngine | None:
        """The collection's engine if it is open; never opens it (metrics, readiness)."""
        slot = self._slots.get(collection or self.default)
        return slot.engine if slot else None

    def engines(self) -> list[SearchEngine]:
        return [slot.engine for slot in list(self._slots.values()) if slot.engine is not None]

    def readiness(self) -> str | None:
        """None when the default collection is open with its model loaded and warm; else why not."""
        if self.loaded() is None:
            try:
                self.call(None, lambda engine: engine)
            except Exception as exc:  # the reason is the answer
                return str(exc)
        return None

    def collections(self) -> list[dict[str, Any]]:
        """name, count, model (and error) of every collection in the configured store."""
        found = []
        for name in list_collections(self.settings):
            try:
                status = self.status(name, open_engine=False)
            except (StoreError, KeyError, TypeError, ValueError) as exc:  # e.g. open in an index run
                found.append(
                    {
                        "name": name,
                        "count": None,
                        "model": None,
                        "default": name == self.default,
                        "error": str(exc),
                    }
                )
                continue
            found.append(
                {
                    "name": name,
                    "count": status["count"],
                    "model": status["model"],
                    "default": name == self.default,
                }
            )
        return found

    def status(self, collection: str | None, open_engine: bool = True) -> dict[str, Any]:
        """A collection's status; through its engine when open (or asked to open it), else by opening the
        store briefly (an embedded one then must not be open elsewhere)."""
        name = collection or self.default
        slot = self._slot(name)
        with slot.lock:
            if slot.engine is None and not open_engine:
                store = open_store(self.settings, name)
                try:
                    return collection_status(store)
                finally:
                    store.close()
            return self._open(name, slot).status()

    def close(self) -> None:
        """Close every open collection, each once the calls in progress on it have finished."""
        for name, slot in list(self._slots.items()):
            while True:
                with slot.lock:
                    if slot.calls == 0 or slot.engine is None:
                        if slot.engine is not None:
                            slot.engine.close()
                            slot.engine = None
                            remove_server_address(self.settings.collection_dir(name))
                        break
                time.sleep(0.01)  # a query between its encoding and its search needs the lock back


class Stopped(Exception):
    """Raised into a writer running inside the server when the server shuts down."""


class LockedStore:
    """A collection's open store as a writer inside the server sees it: every call runs alone under
    the collection's lock, and raises Stopped once the server is stopping."""

    def __init__(self, engines: Engines, collection: str, stopping: threading.Event) -> None:
        self._engines, self._collection, self._stopping = engines, collection, stopping
        self.name = collection

    def _call(self, fn: Callable[[SearchEngine], T]) -> T:
        if self._stopping.is_set():
            raise Stopped
        return self._engines.call(self._collection, fn)

    @property
    def schema(self) -> CollectionSchema:
        return self._call(lambda engine: engine.store.schema)

    def set_schema(self, schema: CollectionSchema) -> None:
        self._call(lambda engine: engine.store.set_schema(schema))

    def upsert(self, records: Sequence[Record]) -> None:
        self._call(lambda engine: engine.store.upsert(records))

    def update_vectors(self, name: str, vectors: Mapping[str, np.ndarray]) -> None:
        self._call(lambda engine: engine.store.update_vectors(name, vectors))

    def set_payloads(self, payloads: Mapping[str, dict[str, Any]]) -> None:
        self._call(lambda engine: engine.store.set_payloads(payloads))

    def delete(self, ids: Sequence[str]) -> None:
        self._call(lambda engine: engine.store.delete(ids))

    def retrieve(self, ids: Sequence[str], with_vectors: Any = False) -> list[Record]:
        return self._call(lambda engine: engine.store.retrieve(ids, with_vectors))

    def scan(self, filter: Filter | None = None, with_vectors: Any = False) -> Iterator[Record]:
        return iter(self._call(lambda engine: list(engine.store.scan(filter, with_vectors))))

    def count(self, filter: Filter | None = None) -> int:
        return self._call(lambda engine: engine.store.count(filter))

    def read_info(self) -> dict[str, Any]:
        return self._call(lambda engine: engine.store.read_info())

    def write_info(self, info: dict[str, Any]) -> None:
        self._call(lambda engine: engine.store.write_info(info))

    def flush(self) -> None:
        self._call(lambda engine: engine.store.flush())

    def close(self) -> None:
        """The engine owns the store: it stays open."""


class ServerAccess:
    """How a Collection in the server reaches its engine: through `Engines.call`, so it takes turns with
    every other request and the server's writers on the one open store; a library run that opens the
    store itself (restore, copy) through `Engines.exclusive`, with the engine closed meanwhile."""

    def __init__(self, engines: Engines, name: str) -> None:
        self._engines, self._name = engines, name

    def call(self, fn: Callable[[SearchEngine], T]) -> T:
        return self._engines.call(self._name, fn)

    def exclusive(self, fn: Callable[[], T], what: str) -> T:
        return self._engines.exclusive(self._name, fn)

    def close(self) -> None:
        """The server owns the engine: it stays open."""


def collection(engines: Engines, name: str | None) -> Collection:
    """The Collection `name` (default: the server's) as the routes call it."""
    chosen = name or engines.default
    return Collection(engines.settings, chosen, access=ServerAccess(engines, chosen))
