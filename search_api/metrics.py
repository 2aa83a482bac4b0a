"""Prometheus metrics: requests and latency by route, query stage timings, text-embedding cache use,
the syncs of `serve --watch` (set `Metrics.watcher`) and the VLM stage (set `Metrics.vlm`).

Each app gets its own registry, so several apps in one process (tests, embedding) don't collide.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from indexer.vlm import Vlm
from search_api.engines import Engines
from search_api.watch import TRIGGERS, FolderWatcher

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
# Model calls on CPU take tens to hundreds of ms; store searches well under one.
_STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self, engines: Engines):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "clipsearch_http_requests_total",
            "HTTP requests by method, route template and status code.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "clipsearch_http_request_duration_seconds",
            "HTTP request latency by method and route template.",
            ["method", "route"],
            registry=self.registry,
        )
        self.stages = Histogram(
            "clipsearch_query_stage_duration_seconds",
            "Time in each stage of a query: decode (uploads), encode, search, fetch.",
            ["stage"],
            buckets=_STAGE_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_TextCacheCollector(engines))
        self.watcher: FolderWatcher | None = None  # the app's, while it runs with --watch
        self.registry.register(_WatchCollector(self))
        self.vlm: Vlm | None = None  # the app's, while it runs
        self.registry.register(_VlmCollector(self))

    def observe_stages(self, stages: dict[str, float]) -> None:
        for stage, seconds in stages.items():
            self.stages.labels(stage).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _TextCacheCollector:
    """Reads the engines' cache counters at scrape time (zero until an engine is opened)."""

    def __init__(self, engines: Engines):
        self._engines = engines

    def collect(self) -> Iterator[Metric]:
        caches = [engine.text_cache for engine in self._engines.engines()]
        yield CounterMetricFamily(
            "clipsearch_text_cache_hits",
            "Text queries answered from the embedding cache.",
            value=sum(cache.hits for cache in caches),
        )
        yield CounterMetricFamily(
            "clipsearch_text_cache_misses",
            "Text queries that ran the text encoder.",
            value=sum(cache.misses for cache in caches),
        )


class _WatchCollector:
    """The --watch syncs, read from the watcher at scrape time (absent when the server watches nothing)."""

    def __init__(self, metrics: Metrics):
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        watcher = self._metrics.watcher
        if watcher is None:
            return
        syncs = CounterMetricFamily(
            "clipsearch_watch_syncs",
            "Completed syncs of the --watch folders, by what started them: start, events, rescan.",
            labels=["trigger"],
        )
        for trigger in TRIGGERS:
            syncs.add_metric([trigger], watcher.syncs_by_trigger[trigger])
        yield syncs
        yield CounterMetricFamily(
            "clipsearch_watch_sync_errors", "Syncs that failed (logged; the next tries again).",
            value=watcher.errors,
        )
        for name, value, what in (
            ("embedded", watcher.embedded, "Files embedded (new or changed) by the syncs."),
            ("removed", watcher.removed, "Items removed because their file was gone."),
            ("failed", watcher.failed, "Files that failed to index, counted at each sync that tried them."),
        ):
            yield CounterMetricFamily(f"clipsearch_watch_items_{name}", what, value=value)
        if watcher.last_report is not None and watcher.last_sync_at is not None:
            yield GaugeMetricFamily(
                "clipsearch_watch_last_sync_timestamp_seconds",
                "Unix time the last completed sync ended.",
                value=watcher.last_sync_at,
            )
            yield GaugeMetricFamily(
                "clipsearch_watch_last_sync_duration_seconds",
                "How long the last completed sync took.",
                value=watcher.last_report.seconds,
            )
        yield GaugeMetricFamily(
            "clipsearch_watch_pending_events",
            "Changed paths waiting for the next sync.",
            value=watcher.pending,
        )


# (name, help, label) of the VLM stage's counters, from VlmMetrics.snapshot().
_VLM_COUNTERS = (
    ("requests", "Requests to the VLM endpoint, by operation: score, order, explain.", "op"),
    ("errors", "VLM failures by kind: connect, timeout, deadline, http_429, http_4xx, http_5xx, protocol, "
     "unparseable, image.", "kind"),
    ("cache_hits", "VLM answers served from the cache, by what: score, order, explain.", "what"),
    ("cache_misses", "VLM answers not in the cache, by what: score, order, explain.", "what"),
    ("tokens", "Tokens the VLM endpoint reported using, by kind: prompt, completion.", "kind"),
    ("reranks", "Re-ranks by outcome: ok, partial, failed.", "status"),
)


class _VlmCollector:
    """The VLM stage's counters and latencies, read at scrape time (absent while the app is not running)."""

    def __init__(self, metrics: Metrics):
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        vlm = self._metrics.vlm
        if vlm is None:
            return
        snapshot = vlm.metrics.snapshot()
        yield GaugeMetricFamily("clipsearch_vlm_enabled", "1 when CLIPSEARCH_VLM_URL is set.",
                                value=int(vlm.enabled))
        for name, what, label in _VLM_COUNTERS:
            family = CounterMetricFamily(f"clipsearch_vlm_{name}", what, labels=[label])
            for value, count in sorted(snapshot[name].items()):
                family.add_metric([value], count)
            yield family
        for name, what in (("request_seconds", "Latency of one VLM request (a stream: until its end)."),
                           ("rerank_seconds", "Time a whole re-rank took.")):
            histogram = snapshot[name]
            yield HistogramMetricFamily(
                f"clipsearch_vlm_{name.replace('_seconds', '_duration_seconds')}", what,
                buckets=histogram["buckets"], sum_value=histogram["sum"],
            )


class MetricsMiddleware:
    """Counts and times every HTTP request, labelled by route template (bounded label values)."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # what the client gets if the app raises before answering

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            # The router stores the matched route in the scope; its template keeps ids out of the labels.
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope["method"] if scope["method"] in _METHODS else "OTHER"
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - start)
