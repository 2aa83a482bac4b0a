"""Uploaded images: size limits and decoding.

Sizes are enforced twice. The app's body limit (see `body_limit`) refuses a request whose
Content-Length is too big before reading it, and counts bytes as they arrive, so a chunked body
with no Content-Length can't get past it either. It has to allow some multipart overhead on top of
the file, so the file itself is checked exactly here.
"""

from __future__ import annotations

from fastapi import HTTPException, UploadFile
from PIL import Image

from indexer.decode import decode_image
from indexer.settings import Settings

# Room in a request body for the multipart framing and the small form fields next to the file.
MULTIPART_OVERHEAD = 64 * 1024


def body_limit(settings: Settings) -> int:
    return settings.max_upload_bytes + MULTIPART_OVERHEAD


def too_large(limit: int) -> HTTPException:
    return HTTPException(413, f"upload too large: the limit is {limit} bytes")


def read_upload(file: UploadFile, limit: int) -> bytes:
    if file.size is not None and file.size > limit:
        raise too_large(limit)
    file.file.seek(0)
    data = file.file.read(limit + 1)  # never more than the limit in memory, whatever size claims
    if len(data) > limit:
        raise too_large(limit)
    return data


def decode_upload(file: UploadFile, settings: Settings) -> Image.Image:
    """The uploaded image as RGB: 413 if too big; ImageDecodeError (400) if not an image or too big."""
    return decode_image(read_upload(file, settings.max_upload_bytes), max_pixels=settings.max_image_pixels)
