"""The API's one SearchEngine: opened on first use, kept warm, used by one thread at a time.

The embedded store and the model are not safe to call from several threads at once, and routes run in
a thread pool, so every engine call goes through `EngineHolder.call`, which holds a lock and also
measures where the time went (encode / search / fetch).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np

from indexer.engine import SearchEngine, collection_status
from indexer.models import ClipModel
from indexer.settings import Settings
from indexer.stores import (
    CollectionNotFound,
    Hit,
    Record,
    StoreError,
    VectorStore,
    list_collections,
    open_store,
)

T = TypeVar("T")
STAGES = ("encode", "search", "fetch")


class _TimedStore:
    """A store that adds the seconds spent in search and retrieve to a shared clock.

    Lets the engine's own methods (search_text, search_similar...) stay the one implementation
    of a query while the API still reports a per-stage breakdown."""

    def __init__(self, store: VectorStore, clock: dict[str, float]):
        self._store, self._clock = store, clock

    def search(self, vector: np.ndarray, k: int) -> list[Hit]:
        start = time.perf_counter()
        try:
            return self._store.search(vector, k)
        finally:
            self._clock["search"] += time.perf_counter() - start

    def retrieve(self, ids: Sequence[str], with_vectors: bool = False) -> list[Record]:
        start = time.perf_counter()
        try:
            return self._store.retrieve(ids, with_vectors)
        finally:
            self._clock["fetch"] += time.perf_counter() - start

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


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


@dataclass
class Timed(Generic[T]):
    value: T
    stages: dict[str, float]  # seconds per stage in STAGES


class EngineHolder:
    def __init__(self, settings: Settings, model: ClipModel | None = None):
        self.settings = settings
        self._model = model
        self._engine: SearchEngine | None = None
        self._clock = dict.fromkeys(STAGES, 0.0)
        # One lock for opening and for every call: a second open of an embedded collection would fail,
        # and the store and model are not thread-safe.
        self._lock = FifoLock()

    @property
    def loaded(self) -> SearchEngine | None:
        """The engine if it is open; never opens it (for metrics)."""
        return self._engine

    def _open(self) -> SearchEngine:
        if self._engine is not None:
            return self._engine
        name = self.settings.collection
        try:
            engine = SearchEngine(self.settings, name, model=self._model)
        except CollectionNotFound as exc:
            # Not cached: the next request tries again, so the server picks up a collection indexed later.
            raise CollectionNotFound(f"collection {name!r} not found: run clipsearch index first") from exc
        engine.store = _TimedStore(engine.store, self._clock)  # type: ignore[assignment]
        self._engine = engine
        return engine

    def call(self, fn: Callable[[SearchEngine], T]) -> Timed[T]:
        """Run fn with the engine (opening it if needed), alone, and time it by stage."""
        with self._lock:
            engine = self._open()
            self._clock.update(dict.fromkeys(STAGES, 0.0))
            start = time.perf_counter()
            value = fn(engine)
            total = time.perf_counter() - start
            stages = dict(self._clock)
        # What is not store time is the model's (or the text cache's): the engine does nothing else.
        stages["encode"] = max(0.0, total - stages["search"] - stages["fetch"])
        return Timed(value, stages)

    def draft_size(self) -> int:
        """The JPEG draft size the collection's images were indexed at; uploads are decoded the same way.
        Read without the lock once the engine is open: it never changes."""
        engine = self._engine or self.call(lambda opened: opened).value
        return engine.model.draft_size

    def collections(self) -> list[dict[str, Any]]:
        """name, count, model (and error) of every collection in the configured store."""
        with self._lock:  # opening the served collection's store must not race the engine opening it
            found = []
            for name in list_collections(self.settings):
                try:
                    if self._engine is not None and name == self._engine.collection:
                        status = self._engine.status()
                    else:
                        store = open_store(self.settings, name)
                        try:
                            status = collection_status(store)
                        finally:
                            store.close()
                except (StoreError, KeyError, TypeError, ValueError) as exc:  # e.g. open in an index run
                    found.append({"name": name, "count": None, "model": None, "error": str(exc)})
                    continue
                found.append({"name": name, "count": status["count"], "model": status["model"]})
            return found

    def close(self) -> None:
        with self._lock:
            if self._engine is not None:
                self._engine.close()
                self._engine = None
