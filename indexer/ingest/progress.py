"""How an index run reports its progress: tqdm bars on stderr, a callback with `IndexProgress`, or both.

One `IndexTracker` spans a whole run (every folder and catalog of one `index`), so the counts a callback
sees only grow, and its last call carries the run's report: `stage == "done"`, `embedded` and `failed`
equal to the IndexReport's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Union

from tqdm import tqdm

Stage = Literal["embedding", "done"]


@dataclass(frozen=True)
class IndexProgress:
    """Where an index run stands.

    stage: "embedding" while the new and changed images of `source` are embedded; "done" once, last,
      when the run has ended (then `embedded` and `failed` are the run's report's).
    source: the folders or the catalog being embedded ("" when done).
    done: images embedded or failed so far in this run, over every source; never goes down.
    total: images this run embeds (new or changed), as far as known: it grows when a later source of
      the run (the next catalog) has been read. done <= total.
    embedded: images embedded so far. failed: images that could not be read or decoded so far; when
      done, the report's failed count (files, or catalog rows, that failed).
    """

    stage: Stage
    source: str
    done: int
    total: int
    embedded: int
    failed: int


ProgressCallback = Callable[[IndexProgress], None]
# What an index function's `progress` takes: True for tqdm bars, a callback, or a tracker already made
# for a larger run (index_paths passes its own to each source's sync).
Progress = Union[bool, ProgressCallback, "IndexTracker"]


class IndexTracker:
    """The progress of one index run: a tqdm bar per source (when `bar`) and the callback."""

    def __init__(self, bar: bool = False, callback: ProgressCallback | None = None) -> None:
        self.bar, self.callback = bar, callback
        self.source = ""
        self.done = self.total = self.embedded = self.failed = 0
        self._bar: Any = None

    @classmethod
    def of(cls, progress: Progress | None) -> IndexTracker:
        """The tracker `progress` asks for: itself, tqdm bars (True), a callback, or silence."""
        if isinstance(progress, IndexTracker):
            return progress
        if callable(progress):
            return cls(callback=progress)
        return cls(bar=bool(progress))

    def begin(self, source: str, images: int, label: str) -> None:
        """A source's images to embed are known (`label`: the bar's description)."""
        self._close_bar()
        self.source = source
        self.total += images
        if self.bar:
            self._bar = tqdm(total=images, unit="img", desc=label, smoothing=0.1)
        self._call("embedding")

    def advance(self, embedded: int, failed: int) -> None:
        """A batch is through: `embedded` images embedded and `failed` not readable."""
        self.embedded += embedded
        self.failed += failed
        self.done += embedded + failed
        if self._bar is not None:
            self._bar.update(embedded + failed)
        self._call("embedding")

    def finish(self, report: Any) -> None:
        """The run has ended: the last call, with the report's counts."""
        self._close_bar()
        self.source = ""
        self.embedded, self.failed = int(report.embedded), int(report.failed)
        self._call("done")

    def _call(self, stage: Stage) -> None:
        if self.callback is not None:
            self.callback(IndexProgress(stage, self.source, self.done, self.total, self.embedded,
                                        self.failed))

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
