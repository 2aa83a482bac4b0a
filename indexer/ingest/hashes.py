"""The hashes the indexer takes of every image, for duplicate search (indexer.curation.duplicates).

- `sha256`: the file's bytes (exact copies).
- `phash`: several 64-bit pHash + dHash pairs, one per view of the image: the image inside any plain
  border, its centre without 5% of each side (what a cropped copy shows), and the untrimmed image.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from indexer.durable import file_sha256
from indexer.schema import FieldType

HASH_FIELDS: dict[str, FieldType] = {"sha256": "keyword", "phash": "keyword"}
HASH_SIDE = 512  # views are hashed from at most this size: 32x32 is all pHash looks at



def _trim_border(gray: np.ndarray) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) inside a plain border: edge rows and columns whose pixels are all
    within a few levels of their median, up to a quarter of each side."""

    def plain(line: np.ndarray) -> bool:
        return float(np.percentile(np.abs(line - np.median(line)), 98)) <= 12

    h, w = gray.shape
    top, bottom, left, right = 0, h, 0, w
    while top < h // 4 and plain(gray[top]):
        top += 1
    while bottom > h - h // 4 and plain(gray[bottom - 1]):
        bottom -= 1
    while left < w // 4 and plain(gray[:, left]):
        left += 1
    while right > w - w // 4 and plain(gray[:, right - 1]):
        right -= 1
    return top, bottom, left, right


def _views(image: Image.Image) -> list[Image.Image]:
    """The image inside any plain border (the whole image when it has none), that view's centre without
    5% of each side, and the untrimmed image. The first is what gets compared to every view of others:
    comparing untrimmed images would let two different photos in the same frame look alike."""
    gray = image.convert("L")
    if max(gray.size) > HASH_SIDE:
        gray = gray.reduce(max(1, max(gray.size) // HASH_SIDE))
    top, bottom, left, right = _trim_border(np.asarray(gray, dtype=np.int16))
    inner = gray.crop((left, top, right, bottom))
    w, h = inner.size
    dx, dy = round(w * 0.05), round(h * 0.05)
    return [inner, inner.crop((dx, dy, w - dx, h - dy)), gray]


def perceptual_hash(image: Image.Image) -> str:
    """The `phash` value of an image: per view, 16 hex digits of pHash then 16 of dHash, '-'-joined."""
    import imagehash  # imported here: decode workers that never hash don't pay for scipy

    parts = []
    for view in _views(image):
        p, d = imagehash.phash(view), imagehash.dhash(view)
        parts.append(f"{p}{d}")
    return "-".join(parts)


def image_hashes(path: str, image: Image.Image) -> dict[str, str]:
    """{"sha256", "phash"} of a file and its decoded image, as the indexer stores them."""
    return {"sha256": file_sha256(path), "phash": perceptual_hash(image)}


def parse_phash(value: str) -> np.ndarray | None:
    """(views, 2) uint64 of a stored `phash` (pHash, dHash per view), or None if it is not one."""
    try:
        parts = value.split("-")
        codes = [(int(part[:16], 16), int(part[16:], 16)) for part in parts if len(part) == 32]
    except (AttributeError, ValueError):
        return None
    return np.array(codes, dtype=np.uint64) if codes and len(codes) == len(parts) else None
