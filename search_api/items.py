"""The write API for catalogs that change all day: put, patch and delete single items.

    PUT    /v1/collections/{c}/items/{id}   an image (multipart upload, or JSON with an image_url),
                                            metadata and text; created, or each part sent replaced
    PATCH  /v1/collections/{c}/items/{id}   metadata and text only: the payload changes, nothing is embedded
    DELETE /v1/collections/{c}/items/{id}

`id` is the client's item id (a SKU, a database key). Its point id is the id itself when it is a UUID
(an id from search results addresses that very point), else uuid5 of it (`client_point_id`), the
same on every server; the client id is kept in the item's metadata as `item_id`, so results show it.
An id that is no such point but the value of a catalog's id column addresses that product's points
(`SearchEngine.item_points`). PUT replaces the parts it is sent (image, metadata, text) and keeps
the others.
A PUT whose image has the same bytes as the stored one keeps the stored vectors (`embedded: false`).
New metadata fields are declared with the type their values have (indexer.fieldtypes, the rule
catalogs use); a value that does not fit a declared field's type
is a 400. Every write runs through the collection's engine (`Engines.call`): inside `serve` on an
embedded collection, and on a Qdrant server alike. Uploaded images are kept under
`<home>/items/<collection>/` (by content), so that /v1/images and the VLM can read them.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path as FilePath
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Request
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from indexer.errors import BadInput, ItemNotFound
from indexer.fieldtypes import FieldType, convert, infer_type
from indexer.schema import check_name
from indexer.search.engine import SearchEngine, client_point_id
from indexer.settings import Settings
from indexer.stores import Record
from indexer.stores.keyword import text_fields
from search_api.deps import EnginesDep, SettingsDep
from search_api.engines import Engines
from search_api.schemas import CollectionPath, ErrorResponse
from search_api.uploads import read_upload

router = APIRouter(prefix="/v1", tags=["items"])

ITEM_ID = "item_id"  # the client's id, in every written item's metadata
TEXT_FIELD = "text"  # where a plain-string `text` goes
_DERIVED = ("width", "height", ITEM_ID)  # written by the server, never by the client
MAX_ID_CHARS = 256

ClientId = Annotated[
    str, Path(min_length=1, max_length=MAX_ID_CHARS, pattern=r"^[^\x00-\x1f\x7f/]+$",
              description="The client's item id (a SKU, a key), or the UUID id of an indexed item.")
]
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
    metadata: dict[str, Any] | None = Field(
        None, description="Field -> value, replacing the item's metadata; absent: the stored one is kept."
    )
    text: Texts | None = Field(None, description=TEXT_DESCRIPTION + " Absent: the stored text is kept.")

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
    point_ids: list[str] = Field(default_factory=list, description="Every point written: a catalog product "
                                 "addressed by its id has one per image.")
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
    collection: CollectionPath, id: ClientId, request: Request, engines: EnginesDep, settings: SettingsDep
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
        sent = form.get("metadata")
        metadata = _json_object(sent, "metadata") if sent is not None else None
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
def patch_item(collection: CollectionPath, id: ClientId, body: ItemPatch, engines: EnginesDep) -> ItemWritten:
    def patch(engine: SearchEngine) -> ItemWritten:
        points = engine.item_points(id)
        if not points:
            raise ItemNotFound(id)
        texts = _texts(body.text)
        changes = {**body.metadata, **texts}
        _refuse_derived(changes, engine)
        typed = _typed(engine, {k: v for k, v in changes.items() if v is not None}, set(texts))
        removed = {k for k, v in changes.items() if v is None}
        payloads = {}
        for record in engine.store.retrieve(points):
            payload = dict(record.payload)
            kept = {k: v for k, v in payload.get("metadata", {}).items() if k not in removed}
            payload["metadata"] = {**kept, **typed}
            payloads[record.id] = payload
        engine.store.set_payloads(payloads)
        engine.store.flush()
        return ItemWritten(id=id, point_id=points[0], point_ids=points, action="updated", embedded=False)

    return engines.call(collection, patch)


@router.delete(
    "/collections/{collection}/items/{id}",
    response_model=ItemWritten,
    responses=_ERRORS,
    operation_id="delete_item",
    summary="Remove an item",
)
def delete_item(collection: CollectionPath, id: ClientId, engines: EnginesDep) -> ItemWritten:
    def delete(engine: SearchEngine) -> ItemWritten:
        points = engine.item_points(id)
        if not points:
            raise ItemNotFound(id)
        engine.store.delete(points)
        engine.store.flush()
        return ItemWritten(id=id, point_id=points[0], point_ids=points, action="deleted", embedded=False)

    return engines.call(collection, delete)


# --- PUT ------------------------------------------------------------------------------------------


def _put(
    engines: Engines, settings: Settings, collection: str, client_id: str, data: bytes | None,
    image_url: str | None, metadata: dict[str, Any] | None, text: Texts | None,
) -> ItemWritten:
    """PUT replaces what it is given: the image when one is sent, the metadata when `metadata` is
    sent, the text fields when `text` is sent; what is not sent is kept (a new item needs an image)."""
    texts = _texts(text)
    values = {**(metadata or {}), **texts}
    image = _image(settings, collection, data, image_url) if data is not None or image_url else None

    def put(engine: SearchEngine) -> ItemWritten:
        store = engine.store
        _refuse_derived(values, engine)
        points = engine.item_points(client_id)
        olds = store.retrieve(points, with_vectors=True)
        if image is None and not olds:
            raise BadInput(f"item {client_id!r} is new: send its image (multipart `file`, or `image_url`)")
        if image is not None and len(olds) > 1:
            raise BadInput(f"item {client_id!r} is a product with {len(olds)} images (from its catalog): a "
                           f"PUT sends one; send metadata or text only, or change the catalog's image cells")
        typed = _typed(engine, {k: v for k, v in values.items() if v is not None}, set(texts))
        schema = engine.store.schema
        ids, searchable = set(schema.id_fields), set(text_fields(schema))
        written, embedded = [], False
        for old in olds or [None]:
            point = old.id if old is not None else client_point_id(client_id)
            before = old.payload.get("metadata", {}) if old is not None else {}
            kept = {k: v for k, v in before.items() if k in ids or k in _DERIVED and k != ITEM_ID}
            if metadata is None:  # not sent: kept
                kept.update({k: v for k, v in before.items() if k not in searchable and k not in _DERIVED})
            if text is None:
                kept.update({k: v for k, v in before.items() if k in searchable and k not in ids})
            if image is None:
                assert old is not None
                source = {k: old.payload.get(k, "") for k in ("uri", "path", "fingerprint")}
            else:
                uri, path, fingerprint, size = image
                source = {"uri": uri, "path": path, "fingerprint": fingerprint}
                kept.update(size)
            own_id = {} if ids & set(before) else {ITEM_ID: client_id}  # a product keeps its id field
            extra = {k: v for k, v in (old.payload if old is not None else {"source": "api"}).items()
                     if k not in ("uri", "path", "fingerprint", "metadata")}
            payload = {**source, **extra, "metadata": {**kept, **typed, **own_id}}
            same = old is not None and old.payload.get("fingerprint") == source["fingerprint"] and \
                set(engine.schema.vectors) <= set(old.vectors)
            if same:
                store.set_payloads({point: payload})
            else:
                vectors = {}
                for spec in engine.schema.vectors.values():
                    model = engine.models.query(spec.model)
                    picture = engine.decode(FilePath(source["path"]), model)
                    vectors[spec.name] = model.encode_images([picture])[0]
                store.upsert([Record(point, vectors, payload)])
                embedded = True
            written.append(point)
        store.flush()
        action = "replaced" if olds else "created"
        return ItemWritten(id=client_id, point_id=written[0], point_ids=written, action=action,
                           embedded=embedded)

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
        handle, temporary = tempfile.mkstemp(dir=folder, prefix=".upload-")
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
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


def _texts(text: Texts | None) -> dict[str, Any]:
    if text is None:
        return {}
    if isinstance(text, str):
        return {TEXT_FIELD: text}
    return dict(text)


def _refuse_derived(values: dict[str, Any], engine: SearchEngine) -> None:
    derived = [name for name in values if name in _DERIVED]
    if derived:
        raise BadInput(f"metadata {', '.join(derived)}: set by the server (the image's size, the item id)")
    ids = [name for name in values if name in engine.store.schema.id_fields]
    if ids:
        raise BadInput(f"metadata {', '.join(ids)}: the item's id (its catalog's id column) cannot change")


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
