"""`clipsearch serve --watch FOLDER`: the server keeps its collection in line with folders while it serves.

An embedded collection (Qdrant Edge, qdrant-client local mode) can be open in one process only, so a
separate `clipsearch index` cannot write while the API searches. Instead the server indexes, on the
very store and models the API uses, in one background thread, one sync at a time:

- at start, a full sync (`indexer.ingest.pipeline.sync_store`: walk the folders, compare with the store);
- on file events (watchfiles: inotify on Linux), once they have been quiet for `quiet` seconds (or
  have kept coming for `max_delay`), a sync of just the changed paths (`indexer.ingest.pipeline.sync_paths`),
  so a new, changed, moved or deleted photo is searchable (or gone) within about a second;
- every `interval` seconds, a full rescan: the safety net for events that were missed (a folder
  with a dot in its name moved away, a network share, an overflowing event queue);
- each sync logs one INFO line with its counts when it changed something (DEBUG otherwise), and
  its counts feed the /metrics of the app (search_api.metrics); the first full sync also logs its
  progress (every PROGRESS_EVERY seconds), and until it completes /readyz answers 503 "syncing" with
  the counts (a load balancer sends no one to a replica that finds only part of the folders; searches
  sent straight to it are answered over what is indexed so far);
- each store call of a sync takes the collection's lock for that call only (LockedStore), so
  searches interleave with the writes and see every batch as soon as it is written;
- the server holds the collection's write lock for its lifetime, so a `clipsearch index` on the same
  collection is refused at once, naming this server's pid;
- stopping the server stops the event watcher and interrupts a sync between two batches (Stopped);
  what was written stays (as after a killed `clipsearch index`), and the next start carries on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Literal

import watchfiles
from starlette.concurrency import run_in_threadpool

from indexer.errors import ClipsearchError
from indexer.ingest.decode import IMAGE_EXTENSIONS
from indexer.ingest.pipeline import IndexReport, folder_schema, sync_paths, sync_store
from indexer.ingest.sources import _JUNK_DIRS, _is_hidden
from indexer.locking import collection_lock
from indexer.models.loading import ClipModel, check_same_precision, load_model
from indexer.schema import VectorSpec
from indexer.settings import Settings
from indexer.stores import collection_exists, open_store
from search_api.engines import Engines, LockedStore, Stopped

log = logging.getLogger(__name__)
Trigger = Literal["start", "events", "rescan", "asked"]
TRIGGERS: tuple[Trigger, ...] = ("start", "events", "rescan")
DEFAULT_INTERVAL = 300.0  # events do the work; the rescan walks everything, so not too often
QUIET = 0.5  # seconds without a new event before syncing: a copy of many files becomes one sync
MAX_DELAY = 3.0  # but never wait longer than this while events keep coming
PROGRESS_EVERY = 10.0  # seconds between two progress lines of the first sync
# What a `clipsearch index` on the served collection is told.
HOLDER = "clipsearch serve --watch"
ADVICE = "it indexes its --watch folders itself: add the folder there (restart it), or stop it"


class FolderWatcher:
    """Keeps the served collection in line with `folders`, in a thread: see the module's docstring."""

    def __init__(
        self,
        engines: Engines,
        folders: Sequence[str | Path],
        interval: float = DEFAULT_INTERVAL,
        model: ClipModel | None = None,
        quiet: float = QUIET,
        max_delay: float = MAX_DELAY,
    ) -> None:
        """`model`: the one the app was given, if any (used to create a missing collection)."""
        self.engines = engines
        self._model = model
        self.settings: Settings = engines.settings
        self.folders = [str(Path(folder).absolute()) for folder in folders]
        self.interval, self.quiet, self.max_delay = interval, quiet, max_delay
        # Read by the metrics at scrape time; written by the sync thread only.
        self.syncs = 0  # completed syncs
        self.syncs_by_trigger: Counter[str] = Counter()
        self.errors = 0  # syncs that failed (logged; the next one tries again)
        self.embedded = self.removed = self.failed = 0  # totals over all syncs
        self.last_sync_at: float | None = None  # Unix time the last completed sync ended
        self.last_report: IndexReport | None = None
        self.last_error: str | None = None
        self.events_error: str | None = None  # why file events stopped, if they did
        # The first sync (the start's, or the rescan that retries it): until it completes, the server
        # answers searches over what is indexed so far, and /readyz says "syncing" with these counts.
        self.first_sync_done = False
        self.progress: dict[str, float | int | None] = {"done": 0, "total": None, "started_at": None}
        self._logged_at = 0.0
        self._pending: set[str] = set()  # changed paths waiting for a sync
        self._asked = self._answered = 0  # syncs asked for by `sync_now`, and the last one done
        self._first_event = self._last_event = 0.0
        self._wake = threading.Condition()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock: contextlib.ExitStack | None = None

    @property
    def pending(self) -> int:
        return len(self._pending)

    def state(self) -> dict[str, object]:
        """What /readyz and the collection's status report: `syncing` until the first full sync of the
        folders completes (with its progress: files embedded so far of those to embed; `total` is None
        while the folders are still being walked), `watching` after it."""
        return {
            "state": "watching" if self.first_sync_done else "syncing",
            "folders": list(self.folders),
            "done": int(self.progress["done"] or 0),
            "total": None if self.progress["total"] is None else int(self.progress["total"]),
            "syncs": self.syncs,
            "last_sync_at": self.last_sync_at,
            "last_error": self.last_error,
        }

    def _on_progress(self, done: int, total: int) -> None:
        """The first sync's progress, kept for /readyz and logged every PROGRESS_EVERY seconds."""
        self.progress.update(done=done, total=total)
        now = time.monotonic()
        if done == 0 or done == total or now - self._logged_at >= PROGRESS_EVERY:
            self._logged_at = now
            share = f" ({100 * done / total:.0f}%)" if total else ""
            log.info("watch: first sync of collection %r: %d of %d files to embed done%s",
                     self.settings.collection, done, total, share)

    def start(self) -> None:
        """Take the collection's write lock, create the collection if needed, open the engine and
        start watching. Raises (and the server does not start) if an index run holds the collection."""
        name = self.settings.collection
        self._lock = contextlib.ExitStack()
        self._lock.enter_context(collection_lock(self.settings.home, name, HOLDER, ADVICE))
        try:
            self._create_if_missing(name)
            store = LockedStore(self.engines, name, self._stopping)
            self._models(store)
        except BaseException:
            self._lock.close()
            raise
        # Events first, so that what changes during the start sync is synced after it.
        self._threads = [
            threading.Thread(target=self._watch_events, name="watch-events", daemon=True),
            threading.Thread(target=self._run, args=(store,), name="watch", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        if log.level == logging.NOTSET:  # a server reports its syncs (uvicorn logs at INFO too)
            log.setLevel(logging.INFO)
        log.info(
            "watching %s for collection %r: file events, and a full rescan every %gs",
            ", ".join(self.folders), name, self.interval,
        )

    def _model_of(self, spec: VectorSpec) -> ClipModel:
        model = self.engines.models.get(spec.model)
        # Queries may use another precision than the collection (fp32 on CUDA for an int8-built one),
        # but what the watcher adds must match what is stored.
        check_same_precision(spec.model, model.identity, self.settings.collection)
        return model

    def _models(self, store: LockedStore) -> dict[str, ClipModel]:
        """The model of every vector the schema has now, a vector being built (re-embedded) included: read
        at each sync, so that what it writes carries every vector (and those added during it: pipeline)."""
        return {spec.name: self._model_of(spec) for spec in store.schema.vectors.values()}

    def _create_if_missing(self, name: str) -> None:
        if not collection_exists(self.settings, name):
            settings = self.settings
            model = self._model or load_model(
                settings.model, settings.pretrained, settings.device, settings.precision
            )
            open_store(settings, name, create=folder_schema(model)).close()
            self.engines.models.add(model)

    # --- file events ------------------------------------------------------------------------------

    def _wanted(self, change: watchfiles.Change, path: str) -> bool:
        """Whether an event can change what a full sync would store: image files, and folders added or
        gone, outside hidden and junk folders (as indexer.ingest.sources walks)."""
        root = next((f for f in self.folders if path.startswith(f.rstrip(os.sep) + os.sep)), None)
        if root is None:
            return False
        if any(_is_hidden(part) or part in _JUNK_DIRS for part in os.path.relpath(path, root).split(os.sep)):
            return False
        extension = os.path.splitext(path)[1]
        if extension.lower() in IMAGE_EXTENSIONS:
            return True
        if change == watchfiles.Change.added:
            return os.path.isdir(path)  # moved in whole: its files bring no events of their own
        # A gone folder drops what was under it, which takes a scan of the store: only names without
        # an extension are taken for folders (a gone notes.txt must not scan a million items).
        return change == watchfiles.Change.deleted and not extension

    def _watch_events(self) -> None:
        try:
            for changes in watchfiles.watch(
                *self.folders,
                watch_filter=self._wanted,
                stop_event=self._stopping,
                raise_interrupt=False,  # signals are the server's (uvicorn) to handle
            ):
                with self._wake:
                    now = time.monotonic()
                    if not self._pending:
                        self._first_event = now
                    self._pending.update(path for _, path in changes)
                    self._last_event = now
                    self._wake.notify()
        except Exception as exc:  # e.g. the inotify watch limit: the rescan still finds everything
            self.events_error = f"{type(exc).__name__}: {exc}"
            log.error(
                "watch: file events unavailable (%s): changes are found by the rescan every %gs",
                self.events_error, self.interval,
            )

    # --- syncing ---------------------------------------------------------------------------------

    def _next(self, rescan_at: float) -> tuple[Trigger, set[str]] | None:
        """Wait for the next sync to do: changed paths once quiet, or the rescan; None when stopping."""
        with self._wake:
            while not self._stopping.is_set():
                now = time.monotonic()
                if self._asked > self._answered:  # someone waits for a full sync (sync_now)
                    self._pending = set()
                    return "asked", set()
                if now >= rescan_at:
                    self._pending = set()  # the rescan walks after this moment: it covers them
                    return "rescan", set()
                due = rescan_at
                if self._pending:
                    due = min(self._last_event + self.quiet, self._first_event + self.max_delay)
                    if now >= due:
                        paths, self._pending = self._pending, set()
                        return "events", paths
                self._wake.wait(due - now)
        return None

    def _run(self, store: LockedStore) -> None:
        if not self._sync("start", store, None):
            return
        rescan_at = time.monotonic() + self.interval
        while (work := self._next(rescan_at)) is not None:
            trigger, paths = work
            asked = self._asked
            synced = self._sync(trigger, store, paths if trigger == "events" else None)
            if trigger == "asked":
                with self._wake:
                    self._answered = asked
                    self._wake.notify_all()
            if not synced:
                return
            if trigger in ("rescan", "asked"):
                rescan_at = time.monotonic() + self.interval

    def _sync(self, trigger: Trigger, store: LockedStore, paths: set[str] | None) -> bool:
        """One sync (all folders, or just `paths`), logged and counted; False once the server stops."""
        started = time.perf_counter()
        try:
            models = self._models(store)
            if paths is None:
                first = not self.first_sync_done
                if first:
                    self.progress.update(done=0, total=None, started_at=time.time())
                    log.info("watch: first sync of collection %r: walking %s", store.name,
                             ", ".join(self.folders))
                report = sync_store(
                    self.settings, store, models, self.folders, progress=False, model_of=self._model_of,
                    on_progress=self._on_progress if first else None,
                )
            else:
                report = sync_paths(
                    self.settings, store, models, sorted(paths), progress=False, model_of=self._model_of
                )
        except Stopped:
            return False
        except Exception as exc:  # never let the thread die while the API keeps serving
            self.errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            # A folder unmounted, a disk full: expected, one line. Anything else: with its traceback.
            expected = isinstance(exc, ClipsearchError | OSError)
            log.error(
                "watch: %s sync of collection %r failed: %s (the next rescan tries again)",
                trigger, store.name, self.last_error, exc_info=not expected,
            )
            return True
        report.seconds = time.perf_counter() - started
        self.syncs += 1
        self.syncs_by_trigger[trigger] += 1
        self.embedded += report.embedded
        self.removed += report.removed
        self.failed += report.failed
        self.last_report, self.last_error, self.last_sync_at = report, None, time.time()
        if paths is None:
            self.first_sync_done = True
        changed = report.embedded or report.removed or report.failed
        log.log(
            logging.INFO if changed else logging.DEBUG,
            "watch sync: collection=%s trigger=%s embedded=%d unchanged=%d removed=%d failed=%d seconds=%.3f",
            store.name, trigger, report.embedded, report.unchanged, report.removed, report.failed,
            report.seconds,
        )
        return True

    def sync_now(self, timeout: float) -> IndexReport:
        """Ask the sync thread for a full sync of the folders and wait for it (`clipsearch index` of a
        watched folder, through this server); its report. Unavailable if it is not done in `timeout`."""
        from indexer.errors import Unavailable

        with self._wake:
            self._asked += 1
            ticket = self._asked
            self._wake.notify_all()
            done = self._wake.wait_for(lambda: self._answered >= ticket or self._stopping.is_set(), timeout)
        if not done or self.last_report is None or self._stopping.is_set():
            raise Unavailable(f"the sync of the watched folders did not finish within {timeout:g} s "
                              f"({self.last_error or 'still running'}); it goes on: see `clipsearch status`")
        return self.last_report

    def stop(self, timeout: float | None = None) -> None:
        """Stop the event watcher, interrupt the sync between two batches, release the lock."""
        self._stopping.set()
        with self._wake:
            self._wake.notify_all()
        for thread in self._threads:
            thread.join(timeout)
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
