"""The write API for catalogs that change all day: put, patch and delete single items.

    PUT    /v1/collections/{c}/items/{id}   the whole item: an image (multipart upload, or JSON with an
                                            image_url), metadata and text; created or replaced
    PATCH  /v1/collections/{c}/items/{id}   metadata and text only: the payload changes, nothing is embedded
    DELETE /v1/collections/{c}/items/{id}

`id` is the client's item id (a SKU, a database key). Its point id is the id itself when it is a UUID
(an id from search results addresses that very point), else uuid5 of it (`client_point_id`), the
same on every server; the client id is kept in the item's metadata as `item_id`, so results show it.
A PUT whose image has the same bytes as the stored one keeps the stored vectors (`embedded: false`).
New metadata fields are declared with the type their values have (bool, integer, float, datetime for
ISO dates, geo for {"lat", "lon"}, else keyword); a value that does not fit a declared field's type
is a 400. Every write runs through the collection's engine (`Engines.call`): inside `serve` on an
embedded collection, and on a Qdrant server alike. Uploaded images are kept under
`<home>/items/<collection>/` (by content), so that /v1/images and the VLM can read them.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import tempfile
from pathlib import Path as FilePath
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Request
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from indexer.durable import disk_errors
from indexer.errors import BadInput, ItemNotFound
from indexer.ingest.catalog import convert
from indexer.schema import FieldType, check_name
from indexer.search.engine import SearchEngine, client_point_id
from indexer.settings import Settings
from indexer.stores import Record
from indexer.stores.filters import parse_datetime
from search_api.deps import EnginesDep, SettingsDep
from search_api.engines import Engines
from search_api.schemas import ErrorResponse
from search_api.uploads import read_upload

router = APIRouter(prefix="/v1", tags=["items"])

ITEM_ID = "item_id"  # the client's id, in every written item's metadata
TEXT_FIELD = "text"  # where a plain-string `text` goes
_DERIVED = ("width", "height", ITEM_ID)  # written by the server, never by the client
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}([T ].*)?")
MAX_ID_CHARS = 256

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
        metadata = _json_object(form.get("metadata"), "metadata")
        text = _text_field(form.get("text"))
        return await run_in_threadpool(_put, engines, settings, collection, id, data, None, metadata, text)
    if kind == "application/json":
        try:
            body = ItemBody.model_validate_json(await request.body())
        except ValidationError as exc:
            raise HTTPException(422, _first(exc)) from None
        return await run_in_threadpool(
            _put, engines, settings, collection, id, None, body.image_url, body.metadata, body.text
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
    point = client_point_id(id)

    def patch(engine: SearchEngine) -> ItemWritten:
        found = engine.store.retrieve([point])
        if not found:
            raise ItemNotFound(id)
        payload = dict(found[0].payload)
        texts = _texts(body.text)
        changes = {**body.metadata, **texts}
        _refuse_derived(changes)
        metadata = {k: v for k, v in {**payload.get("metadata", {}), **changes}.items() if v is not None}
        payload["metadata"] = _typed(engine, metadata, set(texts))
        engine.store.set_payloads({point: payload})
        engine.store.flush()
        return ItemWritten(id=id, point_id=point, action="updated", embedded=False)

    return engines.call(collection, patch)


@router.delete(
    "/collections/{collection}/items/{id}",
    response_model=ItemWritten,
    responses=_ERRORS,
    operation_id="delete_item",
    summary="Remove an item",
)
def delete_item(collection: CollectionName, id: ClientId, engines: EnginesDep) -> ItemWritten:
    point = client_point_id(id)

    def delete(engine: SearchEngine) -> ItemWritten:
        if not engine.store.retrieve([point]):
            raise ItemNotFound(id)
        engine.store.delete([point])
        engine.store.flush()
        return ItemWritten(id=id, point_id=point, action="deleted", embedded=False)

    return engines.call(collection, delete)


# --- PUT ------------------------------------------------------------------------------------------


def _put(
    engines: Engines, settings: Settings, collection: str, client_id: str, data: bytes | None,
    image_url: str | None, metadata: dict[str, Any], text: Texts | None,
) -> ItemWritten:
    point = client_point_id(client_id)
    texts = _texts(text)
    values = {**metadata, **texts}
    _refuse_derived(values)
    image = _image(settings, collection, data, image_url) if data is not None or image_url else None

    def put(engine: SearchEngine) -> ItemWritten:
        store = engine.store
        found = store.retrieve([point], with_vectors=True)
        old = found[0] if found else None
        if image is None and old is None:
            raise BadInput(f"item {client_id!r} is new: send its image (multipart `file`, or `image_url`)")
        if image is None:
            assert old is not None
            uri, path, fingerprint = old.payload.get("uri", ""), old.payload.get("path", ""), \
                old.payload.get("fingerprint", "")
            size = {k: old.payload.get("metadata", {})[k] for k in ("width", "height")
                    if k in old.payload.get("metadata", {})}
        else:
            uri, path, fingerprint, size = image
        typed = _typed(engine, {k: v for k, v in values.items() if v is not None}, set(texts))
        payload = {"uri": uri, "path": path, "fingerprint": fingerprint, "source": "api",
                   "metadata": {**typed, **size, ITEM_ID: client_id}}
        action = "replaced" if old is not None else "created"
        same = old is not None and old.payload.get("fingerprint") == fingerprint and \
            set(engine.schema.vectors) <= set(old.vectors)
        if same:
            store.set_payloads({point: payload})
            store.flush()
            return ItemWritten(id=client_id, point_id=point, action=action, embedded=False)
        vectors = {}
        for spec in engine.schema.vectors.values():
            model = engine.models.query(spec.model)
            vectors[spec.name] = model.encode_images([engine.decode(FilePath(path), model)])[0]
        store.upsert([Record(point, vectors, payload)])
        store.flush()
        return ItemWritten(id=client_id, point_id=point, action=action, embedded=True)

    return engines.call(collection, put)


def _image(settings: Settings, collection: str, data: bytes | None, url: str | None
           ) -> tuple[str, str, str, dict[str, int]]:
    """(uri, local path, fingerprint, width/height) of the item's image: an upload kept by content
    under the home, or a URL fetched into the fetch cache. Not an image: 400."""
    if data is None:
        assert url is not None
        from indexer.ingest.fetch import Fetcher

        with Fetcher(settings) as fetcher:
            got = fetcher.fetch(url)
        if not got.ok:
            raise BadInput(f"image_url {url}: {got.reason}")
        return url, str(got.path), f"sha256:{got.sha256}", _size(FilePath(str(got.path)).read_bytes())
    size = _size(data)
    digest = hashlib.sha256(data).hexdigest()
    folder = settings.home / "items" / collection
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{digest}{_suffix(data)}"
    if not path.exists():
        with disk_errors(folder, f"keeping an upload of collection {collection!r}"):
            handle, temporary = tempfile.mkstemp(dir=folder, prefix=".upload-")
            try:
                with os.fdopen(handle, "wb") as file:
                    file.write(data)
                os.replace(temporary, path)
            except BaseException:  # a full disk: no partial upload stays behind
                FilePath(temporary).unlink(missing_ok=True)
                raise
    return str(path), str(path), f"sha256:{digest}", size


def _size(data: bytes) -> dict[str, int]:
    from indexer.ingest.decode import image_size

    try:
        width, height = image_size(data)
    except Exception as exc:  # PIL raises several kinds for what is not an image
        raise BadInput(f"the item's image is not an image file we can read: {exc}") from None
    return {"width": width, "height": height}


def _suffix(data: bytes) -> str:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return "." + (image.format or "img").lower().replace("jpeg", "jpg")
    except Exception:
        return ".img"


# --- metadata --------------------------------------------------------------------------------------


def _typed(engine: SearchEngine, metadata: dict[str, Any], texts: set[str]) -> dict[str, Any]:
    """Values converted to their declared field's type; new fields declared with the type inferred
    (`texts`: names given as text, declared as text fields). BadInput (400) for a bad name or a value
    that does not fit its declared type."""
    schema = engine.store.schema
    new: dict[str, FieldType] = {}
    typed: dict[str, Any] = {}
    for name, value in metadata.items():
        check_name(name, "metadata field")
        kind = schema.fields.get(name) or ("text" if name in texts else infer_type(value))
        try:
            converted = convert(value, kind, name)
        except ValueError as exc:
            declared = "declared" if name in schema.fields else "inferred"
            raise BadInput(f"metadata {name!r} is a {kind} field ({declared}): {exc}") from None
        if converted is None:
            continue
        if name not in schema.fields:
            new[name] = kind
        typed[name] = converted
    if new:
        engine.store.set_schema(schema.with_fields(new))
    return typed


def infer_type(value: Any) -> FieldType:
    """The type of a new field from a JSON value (a list: from its first element)."""
    if isinstance(value, list):
        first = next((v for v in value if v is not None), None)
        return infer_type(first) if first is not None else "keyword"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "integer" if -(2**63) <= value < 2**63 else "float"
    if isinstance(value, float):
        return "float" if math.isfinite(value) else "keyword"
    if isinstance(value, dict) and set(value) == {"lat", "lon"}:
        return "geo"
    if isinstance(value, str) and _DATE.fullmatch(value.strip()) and parse_datetime(value) is not None:
        return "datetime"
    return "keyword"


def _texts(text: Texts | None) -> dict[str, Any]:
    if text is None:
        return {}
    if isinstance(text, str):
        return {TEXT_FIELD: text}
    return dict(text)


def _refuse_derived(values: dict[str, Any]) -> None:
    derived = [name for name in values if name in _DERIVED]
    if derived:
        raise BadInput(f"metadata {', '.join(derived)}: set by the server (the image's size, the item id)")


def _json_object(value: Any, name: str) -> dict[str, Any]:
    if value is None or value == "":
        return {}
    try:
        parsed = json.loads(str(value))
    except ValueError as exc:
        raise HTTPException(400, f"{name} is not valid JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise HTTPException(400, f"{name} must be a JSON object, not {type(parsed).__name__}")
    return parsed


def _text_field(value: Any) -> Texts | None:
    """The form's `text`: a JSON object {field: text}, or plain words."""
    if value is None or value == "":
        return None
    text = str(value)
    if text.lstrip().startswith("{"):
        parsed = _json_object(text, "text")
        if not all(isinstance(v, str) for v in parsed.values()):
            raise HTTPException(400, "text: every value of the object must be a string")
        return parsed
    return text


def _first(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(p) for p in error.get("loc", ()))
    return f"{where}: {error.get('msg', 'invalid')}" if where else str(error.get("msg", "invalid"))
