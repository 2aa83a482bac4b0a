"""`clipsearch serve --watch FOLDER`: the server keeps its collection in line with folders while it serves.

An embedded collection (Qdrant Edge, qdrant-client local mode) can be open in one process only, so a
separate `clipsearch index` cannot write while the API searches. Instead the server indexes: a
background thread runs the same ingest as `clipsearch index` (`indexer.pipeline.sync_store`) every
`interval` seconds, on the very store and model the API uses:

- each store call of a sync takes the engine's lock for that call only (EngineHolder.call), so
  searches interleave with the writes instead of waiting for a whole sync; decoding and encoding
  images run outside the lock (inference does not change the model, so it is safe beside searches);
- searches see every batch as soon as it is written, and never a half-written record;
- the server holds the collection's write lock (indexer.locking) for its lifetime, so a
  `clipsearch index` on the same collection is refused at once, naming this server's pid;
- stopping the server interrupts a sync between two batches; what was written stays (as after a
  killed `clipsearch index`), and the next sync carries on from there.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

from starlette.concurrency import run_in_threadpool

from indexer.errors import StoreError
from indexer.locking import collection_lock
from indexer.models import ClipModel, check_same_precision, load_model
from indexer.pipeline import IndexReport, folder_schema, sync_store
from indexer.settings import Settings
from indexer.stores import collection_exists, open_store
from search_api.engines import Engines, LockedStore, Stopped

log = logging.getLogger(__name__)
T = TypeVar("T")
DEFAULT_INTERVAL = 30.0
# What a `clipsearch index` on the served collection is told.
HOLDER = "clipsearch serve --watch"
ADVICE = "it indexes its --watch folders itself: add the folder there (restart it), or stop it"


class FolderWatcher:
    """Re-indexes `folders` into the served collection every `interval` seconds, in a thread."""

    def __init__(
        self,
        engines: Engines,
        folders: Sequence[str | Path],
        interval: float = DEFAULT_INTERVAL,
        model: ClipModel | None = None,
    ) -> None:
        """`model`: the one the app was given, if any (used to create a missing collection)."""
        self.engines = engines
        self._model = model
        self.settings: Settings = engines.settings
        self.folders = [str(Path(folder).absolute()) for folder in folders]
        self.interval = interval
        self.syncs = 0  # completed syncs
        self.last_report: IndexReport | None = None
        self.last_error: str | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock: contextlib.ExitStack | None = None

    def start(self) -> None:
        """Take the collection's write lock, create the collection if needed, open the engine and
        start syncing. Raises (and the server does not start) if an index run holds the collection."""
        name = self.settings.collection
        self._lock = contextlib.ExitStack()
        self._lock.enter_context(collection_lock(self.settings.home, name, HOLDER, ADVICE))
        try:
            self._create_if_missing(name)
            store = LockedStore(self.engines, name, self._stopping)
            vectors = store.schema.vectors.values()
            models = {spec.name: self.engines.models.get(spec.model) for spec in vectors}
            # Queries may use another precision than the collection (fp32 on CUDA for an int8-built one),
            # but what the watcher adds must match what is stored.
            for spec in vectors:
                check_same_precision(spec.model, models[spec.name].identity, name)
        except BaseException:
            self._lock.close()
            raise
        self._thread = threading.Thread(target=self._run, args=(store, models), name="watch", daemon=True)
        self._thread.start()
        log.info("watching %s for collection %r every %gs", ", ".join(self.folders), name, self.interval)

    def _create_if_missing(self, name: str) -> None:
        if not collection_exists(self.settings, name):
            settings = self.settings
            model = self._model or load_model(
                settings.model, settings.pretrained, settings.device, settings.precision
            )
            open_store(settings, name, create=folder_schema(model)).close()
            self.engines.models.add(model)

    def _run(self, store: LockedStore, models: dict[str, ClipModel]) -> None:
        while not self._stopping.is_set():
            started = time.perf_counter()
            try:
                report = sync_store(self.settings, store, models, self.folders, progress=False)
                report.seconds = time.perf_counter() - started
            except Stopped:
                break
            except (StoreError, OSError) as exc:  # a folder unmounted, a disk full: try again later
                self.last_error = str(exc)
                log.error("watch: syncing collection %r failed: %s", store.name, exc)
            except Exception as exc:  # never let the thread die silently while the API keeps serving
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("watch: syncing collection %r failed", store.name)
            else:
                self.syncs += 1
                self.last_report, self.last_error = report, None
                if report.embedded or report.removed or report.failed:
                    log.info("watch: %s", report.summary())
            self._stopping.wait(self.interval)

    def stop(self, timeout: float | None = None) -> None:
        """Interrupt the sync between two batches, wait for the thread, release the lock."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._lock is not None:
            self._lock.close()


@asynccontextmanager
async def watching(
    engines: Engines,
    folders: Sequence[str | Path],
    interval: float = DEFAULT_INTERVAL,
    model: ClipModel | None = None,
) -> AsyncIterator[FolderWatcher | None]:
    """For the app's lifespan: a running FolderWatcher over `folders`, or nothing when there are none."""
    if not folders:
        yield None
        return
    watcher = FolderWatcher(engines, folders, interval, model)
    await run_in_threadpool(watcher.start)
    try:
        yield watcher
    finally:
        await run_in_threadpool(watcher.stop)
