"""Restore and copy through a server: the routes that make a whole collection. Both are writes (the
server's CLIPSEARCH_API_KEY; a read key gets 403) and run with the collections they touch closed in the
server (Engines.exclusive): requests to them wait meanwhile, and open them again afterwards.

A restore takes the snapshot archive as the raw request body, up to CLIPSEARCH_API_MAX_RESTORE_BYTES
(BodyLimitMiddleware answers 413 past it), kept in the server's home until it is loaded.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path as FilePath
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool

from search_api.deps import EnginesDep, SettingsDep
from search_api.engines import collection as collection_of
from search_api.schemas import CollectionPath, CopyRequest, ErrorResponse, TransferResponse

router = APIRouter(prefix="/v1/collections/{collection}", tags=["collections"])
# The requests whose body is an archive (their own size limit: search_api.limits.BodyLimitMiddleware).
ARCHIVE_PATHS = re.compile(r"/v1/collections/[^/]+/restore/?")
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 404, 409, 413, 422, 503)
}


@router.post("/restore", response_model=TransferResponse, responses=_ERRORS, operation_id="restore",
             openapi_extra={"requestBody": {"required": True, "description": "A snapshot archive (.tar or "
                            ".tar.gz, as POST .../snapshot or `clipsearch snapshot` wrote it).", "content": {
                                "application/octet-stream": {"schema": {"type": "string",
                                                                        "format": "binary"}}}}},
             summary="Make the collection from an uploaded snapshot archive (replacing it with replace=true)")
async def restore(
    collection: CollectionPath, request: Request, engines: EnginesDep, settings: SettingsDep,
    replace: Annotated[bool, Query(description="Replace the collection if it exists.")] = False,
) -> TransferResponse:
    folder = FilePath(tempfile.mkdtemp(prefix="restore-", dir=settings.home))
    try:
        archive = folder / "snapshot.tar"
        with open(archive, "wb") as file:
            async for chunk in request.stream():  # counted against the limit as it arrives
                await run_in_threadpool(file.write, chunk)
        done = await run_in_threadpool(collection_of(engines, collection).restore, archive, replace=replace)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return _answer(done)


@router.post("/copy", response_model=TransferResponse, responses=_ERRORS, operation_id="copy",
             summary="Copy the collection under another name and/or into another store kind")
def copy(collection: CollectionPath, body: CopyRequest, engines: EnginesDep, settings: SettingsDep
         ) -> TransferResponse:
    held = [collection, body.to_collection or collection] if body.to_store in (None, settings.store) \
        else [collection]  # the target too, where this server may hold it

    def run() -> Any:
        return collection_of(engines, collection).copy(body.to_collection, to_store=body.to_store,
                                                       replace=body.replace)

    return _answer(engines.exclusive(held, run))


def _answer(done: Any) -> TransferResponse:
    return TransferResponse(**{k: v for k, v in asdict(done).items() if k in TransferResponse.model_fields})
