"""Uploaded images: the exact size check, and decoding.

The whole request body was already bounded by `limits.BodyLimitMiddleware`, with room for multipart
framing; this checks the file itself against max_upload_bytes.
"""

from __future__ import annotations

from fastapi import HTTPException, UploadFile

from search_api.limits import too_large_message


def read_upload(file: UploadFile, limit: int) -> bytes:
    if file.size is not None and file.size > limit:
        raise HTTPException(413, too_large_message(limit))
    file.file.seek(0)
    data = file.file.read(limit + 1)  # never more than the limit in memory, whatever size claims
    if len(data) > limit:
        raise HTTPException(413, too_large_message(limit))
    return data
