"""The write API for catalogs that change all day: put, patch and delete single items.

    PUT    /v1/collections/{c}/items/{id}   the whole item: an image (multipart upload, or JSON with an
                                            image_url), metadata and text; created or replaced
    PATCH  /v1/collections/{c}/items/{id}   metadata and text only: the payload changes, nothing is embedded
    DELETE /v1/collections/{c}/items/{id}

`id` is the client's item id (a SKU, a database key). The routes parse and answer; what a write does
(point ids, stored images, field types, keeping vectors of unchanged images) is the library's
(indexer.ingest.items), reached through the server's Collection (`Collection.put_item` and co.), under
the collection's lock like every other call on it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from indexer.ingest.decode import pixel_count
from indexer.ingest.items import MAX_ID_CHARS
from indexer.limits import load_json
from indexer.results import ItemWritten as Written
from search_api.deps import EnginesDep, SettingsDep
from search_api.engines import collection as collection_of
from search_api.schemas import ErrorResponse
from search_api.uploads import read_upload

router = APIRouter(prefix="/v1", tags=["items"])


ClientId = Annotated[
    str, Path(min_length=1, max_length=MAX_ID_CHARS, pattern=r"^[^\x00-\x1f\x7f/]+$",
              description="The client's item id (a SKU, a key), or the UUID id of an indexed item.")
]
CollectionName = Annotated[str, Path(description="Collection name (see GET /v1/collections).")]
Texts = str | dict[str, str]
TEXT_DESCRIPTION = (
    "Words for keyword search: a string (field `text`), or {field: text} for the collection's text fields "
    "(e.g. a catalog's `title`)."
)


class ItemBody(BaseModel):
    """A whole item as JSON: the image by URL (fetched with the catalog fetcher's protections:
    http(s) only, no private or link-local hosts unless allowed, a byte cap, a content check)."""

    image_url: str | None = Field(None, max_length=4096, description="http(s) URL of the image. Without it, "
                                  "an existing item keeps its image; a new one needs one.")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Field -> value; see the route.")
    text: Texts | None = Field(None, description=TEXT_DESCRIPTION)

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"image_url": "https://shop.example/img/123.jpg", "metadata": {"brand": "acme", "price": 49.5},
         "text": {"title": "Acme red dress"}}]})


class ItemPatch(BaseModel):
    """Metadata and text to change; a null value removes the field from the item."""

    metadata: dict[str, Any] = Field(default_factory=dict)
    text: Texts | None = Field(None, description=TEXT_DESCRIPTION)

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"metadata": {"price": 39.0}}]})


class ItemWritten(BaseModel):
    """What a write did."""

    id: str = Field(description="The client's item id, as in the path.")
    point_id: str = Field(description="The item's id in results (`id`), /v1/images/{id} and image_id.")
    action: Literal["created", "replaced", "updated", "deleted"]
    embedded: bool = Field(description="Whether the image was embedded (false: stored vectors kept).")
    unindexed: list[str] = Field(
        default_factory=list,
        description="New metadata fields stored with the item but not indexed (not filterable): the "
        "collection has as many fields as CLIPSEARCH_LIMITS_INDEXED_FIELDS allows.",
    )


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 404, 409, 413, 415, 422, 503)
}
_FORM_SCHEMA = {
    "type": "object",
    "required": ["file"],
    "additionalProperties": False,
    "properties": {
        "file": {"type": "string", "format": "binary", "description": "The image file."},
        "metadata": {"type": "string", "description": "Metadata as a JSON object."},
        "text": {"type": "string", "description": "A text, or a JSON object {field: text}."},
    },
}
_PUT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": _FORM_SCHEMA},
            "application/json": {"schema": ItemBody.model_json_schema()},
        },
    }
}


@router.put(
    "/collections/{collection}/items/{id}",
    response_model=ItemWritten,
    responses=_ERRORS,
    operation_id="put_item",
    summary="Create or replace an item: its image (an upload, or a URL), metadata and text",
    openapi_extra=_PUT_BODY,
)
async def put_item(
    collection: CollectionName, id: ClientId, request: Request, engines: EnginesDep, settings: SettingsDep
) -> ItemWritten:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind in ("multipart/form-data", "application/x-www-form-urlencoded"):  # the latter: no file
        form = await request.form()
        unknown = sorted(set(form.keys()) - set(_FORM_SCHEMA["properties"]))  # type: ignore[arg-type]
        if unknown:
            raise HTTPException(422, f"unknown form fields: {', '.join(unknown)} (file, metadata, text)")
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise HTTPException(422, "file: required, an image file (multipart field `file`)")
        data = read_upload(upload, settings.api.max_upload_bytes)  # type: ignore[arg-type]
        depth = settings.limits.json_depth
        metadata = _json_object(form.get("metadata"), "metadata", depth)
        text = _text_field(form.get("text"), depth)
        return await run_in_threadpool(_put, engines, collection, id, data, None, metadata, text)
    if kind == "application/json":
        try:
            body = ItemBody.model_validate_json(await request.body())
        except ValidationError as exc:
            raise HTTPException(422, _first(exc)) from None
        return await run_in_threadpool(
            _put, engines, collection, id, None, body.image_url, body.metadata, body.text
        )
    raise HTTPException(415, "send the item as multipart/form-data (file, metadata, text) or as JSON "
                             "(image_url, metadata, text)")


@router.patch(
    "/collections/{collection}/items/{id}",
    response_model=ItemWritten,
    responses=_ERRORS,
    operation_id="patch_item",
    summary="Change an item's metadata and text; nothing is embedded",
)
def patch_item(collection: CollectionName, id: ClientId, body: ItemPatch, engines: EnginesDep) -> ItemWritten:
    return _answer(collection_of(engines, collection).patch_item(id, body.metadata, body.text))


@router.delete(
    "/collections/{collection}/items/{id}",
    response_model=ItemWritten,
    responses=_ERRORS,
    operation_id="delete_item",
    summary="Remove an item",
)
def delete_item(collection: CollectionName, id: ClientId, engines: EnginesDep) -> ItemWritten:
    return _answer(collection_of(engines, collection).delete_item(id))


def _put(
    engines: EnginesDep, collection: str, client_id: str, data: bytes | None, image_url: str | None,
    metadata: dict[str, Any], text: Any,
) -> ItemWritten:
    with engines.pixel_budget.admit(pixel_count(data) if data is not None else 0):
        written = collection_of(engines, collection).put_item(client_id, data, image_url=image_url,
                                                              metadata=metadata, text=text)
    return _answer(written)


def _answer(written: Written) -> ItemWritten:
    return ItemWritten(id=written.id, point_id=written.point_id, action=written.action,  # type: ignore[arg-type]
                       embedded=written.embedded, unindexed=written.unindexed)


def _json_object(value: Any, name: str, max_depth: int) -> dict[str, Any]:
    if value is None or value == "":
        return {}
    parsed = load_json(str(value), name, max_depth)
    if not isinstance(parsed, dict):
        raise HTTPException(400, f"{name} must be a JSON object, not {type(parsed).__name__}")
    return parsed


def _text_field(value: Any, max_depth: int) -> Texts | None:
    """The form's `text`: a JSON object {field: text}, or plain words."""
    if value is None or value == "":
        return None
    text = str(value)
    if text.lstrip().startswith("{"):
        parsed = _json_object(text, "text", max_depth)
        if not all(isinstance(v, str) for v in parsed.values()):
            raise HTTPException(400, "text: every value of the object must be a string")
        return parsed
    return text


def _first(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(p) for p in error.get("loc", ()))
    return f"{where}: {error.get('msg', 'invalid')}" if where else str(error.get("msg", "invalid"))
