"""Re-embedding a collection inside the server (`POST /v1/collections/{c}/vectors`).

An embedded collection is held by the server, so `clipsearch reembed` cannot open it; the server runs
the same `indexer.ingest.reembed` code in a background thread instead, on the engine's store through
`LockedStore`: searches keep being answered on the active vector between its batches. One job per
(collection, vector); a finished or failed one can be started again (it resumes).

A job ends `ready` only when no item lacks the vector (what the watcher and the write API add meanwhile
included: they embed it too, and the job scans again before it is done), `incomplete` when items
whose files cannot be read are left without it, `stopped` when the server stops during it, `failed`
on an error. A vector left building by a server that was stopped or killed is resumed when the next
server starts (`resume`): its job says `resumed`, or `interrupted` when its model cannot be loaded.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from indexer.errors import ClipsearchError, Conflict
from indexer.ingest.reembed import ReembedReport, add_vector, default_vector_name, fill_vector
from indexer.models.loading import load_model
from search_api.engines import Engines, LockedStore, Stopped
from search_api.engines import collection as collection_of

log = logging.getLogger(__name__)
# How long a job waits, once only items it could not read lack the vector, for the watcher to drop or
# re-embed them (files deleted or rewritten during the job), before it ends `incomplete`.
SETTLE_S = 30.0


@dataclass
class Job:
    collection: str
    vector: str
    state: str = "starting"  # starting, running, ready, incomplete, stopped, failed, interrupted
    resumed: bool = False  # started by the server for a vector left building (resume)
    error: str | None = None
    report: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        wanted = ("embedded", "failed", "remaining", "seconds")
        progress = {k: v for k, v in self.report.items() if k in wanted}
        return {**progress, "state": self.state, "error": self.error, "resumed": self.resumed}


class VectorJobs:
    def __init__(self, engines: Engines) -> None:
        self.engines = engines
        self._jobs: dict[tuple[str, str], Job] = {}
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.stopping = threading.Event()

    def start(
        self, collection: str, model: str, pretrained: str, name: str | None, resumed: bool = False
    ) -> Job:
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
            job = self._jobs[(collection, name)] = Job(collection, name, resumed=resumed)
        self.engines.models.add(clip)  # queries on the new vector reuse it

        def on_batch(report: ReembedReport) -> None:
            job.state, job.report = "running", report.summary()

        def run() -> None:
            try:
                report = fill_vector(
                    settings, store, clip, name, progress=False, stop=self.stopping, on_batch=on_batch,
                    settle_s=SETTLE_S,
                )
                job.report = report.summary()
                if self.stopping.is_set() and report.state != "ready":
                    job.state = "stopped"
                elif report.state == "ready":
                    job.state = "ready"
                else:
                    job.state = "incomplete"
                    job.error = (
                        f"{report.remaining} items could not be read and lack the vector: re-index their "
                        f"folders (or remove them), then start this job again; /status lists failed files"
                    )
                log.info("re-embedding %s:%s ended %s: %s", collection, name, job.state, job.report)
            except Stopped:
                job.state = "stopped"
            except Exception as exc:  # reported on GET .../vectors; the server keeps serving
                job.state, job.error = "failed", f"{type(exc).__name__}: {exc}"
                log.exception("re-embedding %s:%s failed", collection, name)

        thread = threading.Thread(target=run, name=f"reembed-{collection}-{name}", daemon=True)
        self._threads.append(thread)
        thread.start()
        return job

    def resume(self, collection: str) -> None:
        """At server start: a job for each vector of `collection` left building (by a stopped or killed
        server, or `clipsearch reembed`), so none stays half-embedded; `interrupted` when its model
        cannot be loaded (then start it again: POST /v1/collections/{c}/vectors)."""
        try:
            vectors = collection_of(self.engines, collection).vectors()
        except ClipsearchError:  # not there yet, or held elsewhere: nothing to resume here
            return
        for spec in vectors:
            if spec.state != "building":
                continue
            try:
                self.start(collection, spec.model["model"], spec.model["pretrained"], spec.name, resumed=True)
                log.info("re-embedding %s:%s resumed", collection, spec.name)
            except Exception as exc:  # the server starts anyway; the job says why
                with self._lock:
                    self._jobs[(collection, spec.name)] = Job(
                        collection, spec.name, state="interrupted", resumed=True,
                        error=f"left building and not resumed: {exc}; start it again (POST .../vectors)",
                    )
                log.warning("re-embedding %s:%s not resumed: %s", collection, spec.name, exc)

    def jobs(self, collection: str) -> dict[str, Job]:
        with self._lock:
            return {name: job for (c, name), job in self._jobs.items() if c == collection}

    def stop(self, timeout: float | None = None) -> None:
        self.stopping.set()
        for thread in self._threads:
            thread.join(timeout)
