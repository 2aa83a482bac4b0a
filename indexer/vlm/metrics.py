"""Plain counters and histograms of the VLM stage, for the API's /metrics to read at scrape time.

No prometheus import here (the library stays free of the server's choices): `snapshot()` gives
cumulative histogram buckets in the shape prometheus_client's HistogramMetricFamily takes.
"""

from __future__ import annotations

import bisect
import threading
from collections import Counter
from typing import Any

# A VLM request takes from tens of ms (a cached prefix on a GPU) to tens of seconds (CPU inference).
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0)


class Histogram:
    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS):
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last one: above every bucket (+Inf)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """[(upper bound, observations <= it)], ending with ("+Inf", count)."""
        bounds = [*(f"{b:g}" for b in self.buckets), "+Inf"]
        total, out = 0, []
        for bound, n in zip(bounds, self.counts, strict=True):
            total += n
            out.append((bound, total))
        return out


class VlmMetrics:
    """requests by operation (score, order, explain); errors by kind (connect, timeout, http_429,
    http_4xx, http_5xx, unparseable, image, deadline); cache hits and misses by what (score, order,
    explain); tokens by kind (prompt, completion); re-rank outcomes by status; request and re-rank
    latency in seconds."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.cache_hits: Counter[str] = Counter()
        self.cache_misses: Counter[str] = Counter()
        self.tokens: Counter[str] = Counter()
        self.reranks: Counter[str] = Counter()
        self.request_seconds = Histogram()
        self.rerank_seconds = Histogram()

    def count(self, counter: str, label: str, n: int = 1) -> None:
        with self._lock:
            getattr(self, counter)[label] += n

    def observe(self, histogram: str, seconds: float) -> None:
        with self._lock:
            getattr(self, histogram).observe(seconds)

    def snapshot(self) -> dict[str, Any]:
        """A consistent copy: {"requests": {op: n}, ..., "request_seconds": {"buckets", "sum", "count"}}."""
        with self._lock:
            counters = {name: dict(getattr(self, name)) for name in
                        ("requests", "errors", "cache_hits", "cache_misses", "tokens", "reranks")}
            histograms = {
                name: {"buckets": h.cumulative(), "sum": h.sum, "count": h.count}
                for name, h in (("request_seconds", self.request_seconds),
                                ("rerank_seconds", self.rerank_seconds))
            }
        return {**counters, **histograms}
