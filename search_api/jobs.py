"""Re-embedding a collection inside the server (`POST /v1/collections/{c}/vectors`).

An embedded collection is held by the server, so `clipsearch reembed` cannot open it; the server runs
the same `indexer.ingest.reembed` code in a background thread instead, on the engine's store through
`LockedStore`: searches keep being answered on the active vector between its batches. One job per
(collection, vector); a finished or failed one can be started again (it resumes).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from indexer.errors import Conflict
from indexer.ingest.reembed import ReembedReport, add_vector, default_vector_name, fill_vector
from indexer.models.loading import load_model
from search_api.engines import Engines, LockedStore, Stopped

log = logging.getLogger(__name__)


@dataclass
class Job:
    collection: str
    vector: str
    state: str = "starting"  # starting, running, done, failed, stopped
    error: str | None = None
    report: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        wanted = ("embedded", "failed", "remaining", "seconds")
        progress = {k: v for k, v in self.report.items() if k in wanted}
        return {**progress, "state": self.state, "error": self.error}


class VectorJobs:
    def __init__(self, engines: Engines) -> None:
        self.engines = engines
        self._jobs: dict[tuple[str, str], Job] = {}
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.stopping = threading.Event()

    def start(self, collection: str, model: str, pretrained: str, name: str | None) -> Job:
        """Load the model (here, so a bad name is this request's 4xx), add the vector and fill it in a
        background thread."""
        settings = self.engines.settings
        clip = load_model(model, pretrained, settings.device)
        name = name or default_vector_name(clip)
        with self._lock:
            running = self._jobs.get((collection, name))
            if running is not None and running.state in ("starting", "running"):
                raise Conflict(f"vector {name!r} of collection {collection!r} is already being embedded")
            store = LockedStore(self.engines, collection, self.stopping)
            add_vector(store, clip, name)
            job = self._jobs[(collection, name)] = Job(collection, name)
        self.engines.models.add(clip)  # queries on the new vector reuse it

        def on_batch(report: ReembedReport) -> None:
            job.state, job.report = "running", report.summary()

        def run() -> None:
            try:
                report = fill_vector(
                    settings, store, clip, name, progress=False, stop=self.stopping, on_batch=on_batch
                )
                job.report = report.summary()
                job.state = "stopped" if self.stopping.is_set() else "done"
                log.info("re-embedding %s:%s finished: %s", collection, name, job.report)
            except Stopped:
                job.state = "stopped"
            except Exception as exc:  # reported on GET .../vectors; the server keeps serving
                job.state, job.error = "failed", f"{type(exc).__name__}: {exc}"
                log.exception("re-embedding %s:%s failed", collection, name)

        thread = threading.Thread(target=run, name=f"reembed-{collection}-{name}", daemon=True)
        self._threads.append(thread)
        thread.start()
        return job

    def jobs(self, collection: str) -> dict[str, Job]:
        with self._lock:
            return {name: job for (c, name), job in self._jobs.items() if c == collection}

    def stop(self, timeout: float | None = None) -> None:
        self.stopping.set()
        for thread in self._threads:
            thread.join(timeout)
