"""Bounded work: JSON read with a depth bound, a pixel budget for concurrent image decodes, and the CPUs
this process may use.

The bounds themselves are settings (`Settings.limits`, CLIPSEARCH_LIMITS_*); what each bounds is
checked where the work is asked for (filters in stores.filters, item writes in ingest.bounds),
before any of it is done.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from indexer.errors import BadInput, Unavailable


def json_depth(value: Any) -> int:
    """How deeply a JSON value nests: 0 for a scalar, 1 for a flat list or object. Iterative, so any
    depth is measured without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        current, depth = stack.pop()
        if isinstance(current, dict):
            children = current.values()
        elif isinstance(current, (list, tuple)):
            children = current
        else:
            deepest = max(deepest, depth)
            continue
        deepest = max(deepest, depth + 1)
        stack.extend((child, depth + 1) for child in children)
    return deepest


def check_depth(value: Any, max_depth: int, what: str) -> Any:
    """The value, or BadInput when it nests deeper than max_depth."""
    depth = json_depth(value)
    if depth > max_depth:
        raise BadInput(
            f"{what} nests {depth} levels deep; the limit is {max_depth} (CLIPSEARCH_LIMITS_JSON_DEPTH)"
        )
    return value


def load_json(text: str | bytes, what: str, max_depth: int) -> Any:
    """JSON text (a form field, a flag) parsed with its depth bounded: BadInput naming `what` when it
    is not JSON or nests deeper than max_depth, never a RecursionError."""
    try:
        value = json.loads(text)
    except RecursionError:  # the parser recurses once per level: far past any bound
        raise BadInput(
            f"{what} nests too deeply; the limit is {max_depth} levels (CLIPSEARCH_LIMITS_JSON_DEPTH)"
        ) from None
    except ValueError as exc:
        raise BadInput(f"{what} is not valid JSON: {exc}") from None
    return check_depth(value, max_depth, what)


RETRY_AFTER_MAX_S = 30  # the longest Retry-After a refused decode names


class PixelBudget:
    """Admits image decodes while the pixels being decoded stay within a budget.

    A huge upload costs seconds of CPU and width x height x 3 bytes of memory: without a bound, a
    burst of them runs one after another for as long as they take, everyone behind them waiting. With
    it, a decode past the budget waits up to `wait_s` for room and is then refused (Unavailable: 503,
    with `retry_after_s`: as long again, at least 1 s and at most RETRY_AFTER_MAX_S). One decode alone
    is always admitted, however large (max_image_pixels bounds it).
    """

    def __init__(self, pixels: int, wait_s: float):
        self.pixels, self.wait_s = pixels, wait_s
        self._in_flight = 0
        self._room = threading.Condition()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def retry_after_s(self) -> int:
        """When a refused request may come back: it waited `wait_s` for room in vain, so as long again."""
        return min(max(1, math.ceil(self.wait_s)), RETRY_AFTER_MAX_S)

    @contextmanager
    def admit(self, pixels: int) -> Iterator[None]:
        deadline = time.monotonic() + self.wait_s
        with self._room:
            while self._in_flight and self._in_flight + pixels > self.pixels:
                left = deadline - time.monotonic()
                if left <= 0:
                    retry_after = self.retry_after_s
                    raise Unavailable(
                        f"busy decoding large images ({self._in_flight} pixels in flight, budget "
                        f"{self.pixels}; CLIPSEARCH_LIMITS_DECODE_PIXELS): retry in {retry_after} s",
                        retry_after_s=retry_after,
                    )
                self._room.wait(min(left, 1.0))  # in slices: a shutting-down server is not held for long
            self._in_flight += pixels
        try:
            yield
        finally:
            with self._room:
                self._in_flight -= pixels
                self._room.notify_all()


def check_item_id(item_id: str) -> str:
    """The id, or BadInput when it is not text that UTF-8 can carry (a lone surrogate: bytes that were
    not UTF-8, escaped by the shell's decoding or a JSON \\udcff). An id is used byte-exact or refused,
    never altered, so two different byte strings can never become one item."""
    try:
        item_id.encode("utf-8")
    except UnicodeEncodeError:
        raise BadInput(f"item id {item_id!r} is not valid UTF-8 text; ids are used byte-exact") from None
    return item_id


def usable_cpus() -> int:
    """CPUs this process can actually use: its affinity mask, capped by a cgroup v2 CPU quota
    (`docker run --cpus`), which os.cpu_count() and OpenMP both ignore."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        count = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            count = min(count, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    return max(1, count)
