"""The stand-in VLM's eyes for tests over real photos: which indexed photo a thumbnail it was sent shows
(by 8x8 grey levels, which JPEG and resizing leave alone), and replies scripted by photo id."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from tests.vlm_server import Recorded, Reply, score


def signature(image: Image.Image) -> np.ndarray:
    """8x8 grey levels: enough to tell these photos apart, whatever JPEG and resizing did to them."""
    small = ImageOps.exif_transpose(image).convert("L").resize((8, 8), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32).ravel()


class Photos:
    """Which indexed photo a thumbnail shows, by id."""

    def __init__(self, paths_by_id: dict[str, Path]):
        self.ids = list(paths_by_id)
        self.paths = dict(paths_by_id)
        self.signatures = np.stack([signature(Image.open(paths_by_id[i])) for i in self.ids])

    def shown(self, image: Image.Image) -> str:
        distances = np.abs(self.signatures - signature(image)).mean(axis=1)
        best = int(distances.argmin())
        assert distances[best] < 12, f"the VLM was shown no indexed photo (distance {distances[best]:.1f})"
        return self.ids[best]

    def candidate(self, request: Recorded) -> str:
        """The hit a pointwise request is about: its last image (an image query's comes first)."""
        return self.shown(request.images()[-1])


def scores_by_id(photos: Photos, scores: dict[str, Any], default: Reply | None = None,
                 explain: Callable[[str], Reply] | None = None) -> Callable[[Recorded], Reply]:
    """Scores for the hits named (a Reply, or a number), `default` for the others; explanations
    (streamed requests) from `explain`."""

    def respond(request: Recorded) -> Reply:
        shown = photos.candidate(request)
        if request.body.get("stream"):
            return explain(shown) if explain else Reply(f"Explaining {shown}.")
        value = scores.get(shown, default or score(0, "not scripted"))
        return value if isinstance(value, Reply) else score(value, f"reason for {shown}")

    return respond


def indexed_photos(settings: Any, collection: str = "default") -> Photos:
    """The photos of a collection no server holds, by id (from the store's payloads)."""
    from indexer.stores import open_store

    store = open_store(settings, collection)
    try:
        return Photos({record.id: Path(record.payload["path"]) for record in store.scan()})
    finally:
        store.close()
