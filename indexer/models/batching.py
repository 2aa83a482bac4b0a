"""Dynamic batching of query encoding: queries that arrive together share one encoder call.

A server answering many users encodes one text (or one image) per query, and an encoder does far more
per second in batches (ViT-B-32's ONNX text tower on 2 busy cores: 47 texts/s one at a time, 143/s
in batches of 8). `BatchingEncoder` wraps a query encoder; its callers (server threads, or threads
of a program using the library) queue their texts, and separately their images, and one caller at a
time leads: it runs the items queued at that moment as one encoder call, then hands over to the next
caller still waiting. So:

- a caller that finds the tower idle and nobody queued runs at once: no wait when alone;
- while a batch runs, arrivals queue, and the next leader takes up to `max_batch` items of them;
- a leader waits up to `max_wait_s` for more items only while the tower is busy with concurrent
  callers (one arrived while another was queued or encoding, in the last `CONCURRENT_WINDOW_S`),
  and stops waiting as soon as its batch is full;
- a call with more items than `max_batch` (classify's labels x prompts) runs as a batch of its own;
- `max_batch` 1 turns batching off: every call is its own encoder call, one at a time per tower.

Results are the encoder's rows for the caller's items, in order: the same vectors as one call each
(float32 sums in another order: equal to ~1e-6).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from indexer.settings import Settings

# How long after the last sign of concurrent callers a leader still waits for company.
CONCURRENT_WINDOW_S = 0.5


@dataclass(frozen=True)
class QueryBatching:
    """How query encodings are batched (settings query_batch and query_batch_wait_ms)."""

    max_batch: int = 16
    max_wait_s: float = 0.003

    @classmethod
    def from_settings(cls, settings: Settings) -> QueryBatching:
        return cls(settings.query_batch, settings.query_batch_wait_ms / 1000)

    @property
    def enabled(self) -> bool:
        return self.max_batch > 1


class _Request:
    __slots__ = ("items", "vectors", "error", "done")

    def __init__(self, items: list[Any]) -> None:
        self.items = items
        self.vectors: np.ndarray | None = None
        self.error: BaseException | None = None
        self.done = False


@dataclass
class CoalescerStats:
    """What a coalescer did: encoder calls, items encoded, the largest batch, leaders that waited."""

    calls: int = 0
    items: int = 0
    largest: int = 0
    waits: int = 0


class Coalescer:
    """One tower's queue: `encode(items)` from any thread; one encoder call at a time (see the module)."""

    def __init__(self, run: Callable[[list[Any]], np.ndarray], batching: QueryBatching) -> None:
        self._run = run
        self._batching = batching
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)  # a leader waiting for company
        self._handed_over = threading.Condition(self._lock)  # callers waiting for a result or their turn
        self._queue: deque[_Request] = deque()
        self._leading = False
        self._concurrent_until = 0.0
        self.stats = CoalescerStats()

    def encode(self, items: Sequence[Any]) -> np.ndarray:
        request = _Request(list(items))
        if not request.items:
            return self._run([])
        with self._lock:
            if self._leading or self._queue:
                self._concurrent_until = time.monotonic() + CONCURRENT_WINDOW_S
            self._queue.append(request)
            self._arrived.notify()
            while not request.done:
                if self._leading:
                    self._handed_over.wait()
                    continue
                self._leading = True
                batch = self._collect()
                self._lock.release()
                try:
                    self._execute(batch)
                finally:
                    self._lock.acquire()
                    self._leading = False
                    self._handed_over.notify_all()
        if request.error is not None:
            raise request.error
        assert request.vectors is not None
        return request.vectors

    def queued(self) -> int:
        """Calls waiting for their turn or their batch."""
        with self._lock:
            return len(self._queue)

    def _queued_items(self) -> int:
        return sum(len(r.items) for r in self._queue)

    def _collect(self) -> list[_Request]:
        """The next batch, from the front of the queue (lock held)."""
        limit = self._batching.max_batch
        if limit > 1 and self._batching.max_wait_s > 0 and time.monotonic() < self._concurrent_until:
            deadline = time.monotonic() + self._batching.max_wait_s
            if self._queued_items() < limit:
                self.stats.waits += 1
            while self._queued_items() < limit:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._arrived.wait(remaining)
        batch = [self._queue.popleft()]  # the first runs even when larger than a batch
        taken = len(batch[0].items)
        while self._queue and taken + len(self._queue[0].items) <= limit:
            taken += len(self._queue[0].items)
            batch.append(self._queue.popleft())
        return batch

    def _execute(self, batch: list[_Request]) -> None:
        """Encode the batch's items in one call and give each request its rows (lock not held)."""
        items = [item for request in batch for item in request.items]
        try:
            vectors = self._run(items)
        except BaseException as exc:  # every caller of the batch gets the encoder's error
            for request in batch:
                request.error, request.done = exc, True
            return
        finally:
            self.stats.calls += 1
            self.stats.items += len(items)
            self.stats.largest = max(self.stats.largest, len(items))
        start = 0
        for request in batch:
            request.vectors = vectors[start:start + len(request.items)]
            start += len(request.items)
            request.done = True


class BatchingEncoder:
    """A QueryEncoder whose encode_texts and encode_images calls from several threads are batched
    together (texts with texts, images with images); everything else is the wrapped encoder's."""

    def __init__(self, encoder: Any, batching: QueryBatching) -> None:
        self.encoder = encoder
        self.batching = batching
        self.identity = encoder.identity
        self.logit_scale = encoder.logit_scale
        self.pixel_transform = encoder.pixel_transform
        self.texts = Coalescer(encoder.encode_texts, batching)
        self.images = Coalescer(encoder.encode_images, batching)

    @property
    def draft_size(self) -> int:
        return int(self.encoder.draft_size)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        return self.texts.encode(texts)

    def encode_images(self, images: list[Any]) -> np.ndarray:
        return self.images.encode(images)

    def __getattr__(self, name: str) -> Any:  # the wrapped encoder's other attributes (dim, meta, ...)
        return getattr(self.encoder, name)
