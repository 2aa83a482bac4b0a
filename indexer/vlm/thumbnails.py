"""Thumbnails the VLM sees: upright (EXIF applied), RGB, longest side bounded, JPEG, as data URLs.

Files go through indexer.ingest.decode.decode_image, so the pixel limit, formats and orientation are the
same as everywhere else; a file that can't be decoded raises ImageDecodeError (the hit then keeps
its place). Small thumbnails keep requests fast and cheap: a VLM tiles big images into many tokens.
"""

from __future__ import annotations

import base64
import io
import os

from PIL import Image

from indexer.errors import ImageDecodeError
from indexer.ingest.decode import DEFAULT_MAX_PIXELS, decode_image

ImageSource = bytes | str | os.PathLike | Image.Image
JPEG_QUALITY = 85


def thumbnail_jpeg(source: ImageSource, max_side: int = 512, max_pixels: int = DEFAULT_MAX_PIXELS) -> bytes:
    """JPEG bytes of `source` with its longest side at most `max_side` (never enlarged)."""
    if isinstance(source, Image.Image):
        image = source.convert("RGB")  # already decoded by the caller, orientation included
    else:
        image = decode_image(source, max_pixels=max_pixels, draft_size=max_side)
    if max(image.size) > max_side:
        image = image.copy()
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    try:
        image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    except (OSError, ValueError) as exc:  # e.g. a zero-sized image
        raise ImageDecodeError(f"cannot make a thumbnail: {exc}") from exc
    return buffer.getvalue()


def data_url(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")
