"""Single items written by their client's id (a SKU, a database key): put, patch and delete.

The write API (`PUT|PATCH|DELETE /v1/collections/{c}/items/{id}`) and `Collection.put_item` /
`patch_item` / `delete_item` both run these on the collection's open store.

An item's point id is the client id itself when it is a UUID (an id from results addresses that very
point), else uuid5 of it (`client_point_id`), the same on every server; the client id is kept in the
item's metadata as `item_id`, so results show it. A put whose image has the same bytes as the stored one
keeps the stored vectors (`embedded: false`). New metadata fields are declared with the type their
values have (`infer_type`); a value that does not fit a declared field's type is BadInput. Uploaded
images are kept under `<home>/items/<collection>/` (by content), so that /v1/images and the VLM can
read them.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import re
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from indexer.durable import disk_errors
from indexer.errors import BadInput, ItemNotFound
from indexer.ingest.bounds import check_item_write, indexable_fields
from indexer.ingest.catalog import convert
from indexer.limits import check_item_id
from indexer.schema import FieldType, VectorSpec, check_name
from indexer.settings import LimitsSettings, Settings
from indexer.stores import Record, VectorStore
from indexer.stores.base import canonical_id
from indexer.stores.filters import parse_datetime

ITEM_ID = "item_id"  # the client's id, in every written item's metadata
TEXT_FIELD = "text"  # where a plain-string `text` goes
DERIVED = ("width", "height", ITEM_ID)  # written by the library, never by the client
MAX_ID_CHARS = 256
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}([T ].*)?")
# Point ids of items written by their client's id: uuid5 in this namespace.
_CLIENT_NAMESPACE = uuid.UUID("5d1c0a7e-8f4b-4c55-9a3e-2b6f1e0c9d42")

Texts = str | dict[str, str]
# (vector spec, image file) -> the image's embedding on that vector
Embed = Callable[[VectorSpec, Path], np.ndarray]


def parse_item_id(value: str) -> str | None:
    """The canonical form of an item id, or None if it cannot be one (a path, say)."""
    try:
        return canonical_id(value)
    except Exception:
        return None


def client_point_id(item_id: str) -> str:
    """The point id of a client's item id: the id itself when it is a UUID (an id from results), else
    uuid5 of it, so that every server maps a SKU to the same point."""
    return parse_item_id(item_id) or str(uuid.uuid5(_CLIENT_NAMESPACE, check_item_id(item_id)))


@dataclass
class ItemWrite:
    """What a write did."""

    id: str  # the client's item id
    point_id: str  # the item's id in results
    action: str  # created | replaced | updated | deleted
    embedded: bool  # whether the image was embedded (False: stored vectors kept)
    unindexed: list[str] = field(default_factory=list)  # new fields kept unindexed (the collection's cap)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "point_id": self.point_id, "action": self.action, "embedded": self.embedded,
                "unindexed": list(self.unindexed)}


@dataclass
class StoredImage:
    """An item's image as the store records it."""

    uri: str
    path: str
    fingerprint: str
    size: dict[str, int]
    data: bytes | None = None  # an upload's bytes, kept at `path` only when the write is stored


def check_client_id(client_id: str) -> None:
    if not client_id or len(client_id) > MAX_ID_CHARS or re.search(r"[\x00-\x1f\x7f/]", client_id):
        raise BadInput(f"item id {client_id[:80]!r}: 1 to {MAX_ID_CHARS} characters, no '/' or control "
                       "characters")


def store_image(settings: Settings, collection: str, data: bytes | None, url: str | None) -> StoredImage:
    """The item's image: an upload, to be kept by content under the home when the write is stored
    (`put_item`; nothing is written here), or a URL fetched into the fetch cache (with the catalog
    fetcher's protections). Not an image: BadInput."""
    if data is None:
        if url is None:
            raise BadInput("an item's image is its bytes or an image_url")
        from indexer.ingest.fetch import Fetcher

        with Fetcher(settings) as fetcher:
            got = fetcher.fetch(url)
        if not got.ok:
            raise BadInput(f"image_url {url}: {got.reason}")
        size = _size(Path(str(got.path)).read_bytes())
        return StoredImage(url, str(got.path), f"sha256:{got.sha256}", size)
    size = _size(data)
    digest = hashlib.sha256(data).hexdigest()
    path = settings.home / "items" / collection / f"{digest}{_suffix(data)}"
    return StoredImage(str(path), str(path), f"sha256:{digest}", size, data)


@contextmanager
def _kept_upload(image: StoredImage | None) -> Iterator[None]:
    """An upload kept at its path (by content) while the write runs; removed again, with the folder
    made for it, when the write fails: a refused write leaves no file behind."""
    if image is None or image.data is None:
        yield
        return
    path = Path(image.path)
    folder = path.parent
    made_folder = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    made_file = not path.exists()
    if made_file:
        with disk_errors(folder, "keeping an upload"):
            handle, temporary = tempfile.mkstemp(dir=folder, prefix=".upload-")
            try:
                with os.fdopen(handle, "wb") as file:
                    file.write(image.data)
                os.replace(temporary, path)
            except BaseException:  # a full disk: no partial upload stays behind
                Path(temporary).unlink(missing_ok=True)
                if made_folder:
                    with suppress(OSError):
                        folder.rmdir()
                raise
    try:
        yield
    except BaseException:
        if made_file:
            path.unlink(missing_ok=True)
        if made_folder:
            with suppress(OSError):  # another write may have kept a file there meanwhile
                folder.rmdir()
        raise


def check_put(client_id: str, metadata: dict[str, Any], text: Texts | None, limits: LimitsSettings) -> None:
    """What a put is checked for before its image is fetched or anything stored: the id (byte-exact),
    the metadata's and text's names, nesting, size and number (`ingest.bounds`), no derived field."""
    check_client_id(client_id)
    values = {**metadata, **_texts(text)}
    check_item_write(client_id, values, limits)
    _refuse_derived(values)


def put_item(
    store: VectorStore, embed: Embed, client_id: str, image: StoredImage | None,
    metadata: dict[str, Any], text: Texts | None, limits: LimitsSettings | None = None,
) -> ItemWrite:
    """Create or replace an item; without `image`, an existing item keeps its image and vectors.
    Everything is checked before anything is stored; an upload is kept only with a stored write."""
    limits = limits or LimitsSettings()
    check_put(client_id, metadata, text, limits)
    point = client_point_id(client_id)
    texts = _texts(text)
    values = {**metadata, **texts}
    found = store.retrieve([point], with_vectors=True)
    old = found[0] if found else None
    if image is None and old is None:
        raise BadInput(f"item {client_id!r} is new: send its image (a file, or an image_url)")
    if image is None:
        assert old is not None
        old_metadata = old.payload.get("metadata", {})
        image = StoredImage(old.payload.get("uri", ""), old.payload.get("path", ""),
                            old.payload.get("fingerprint", ""),
                            {k: old_metadata[k] for k in ("width", "height") if k in old_metadata})
    typed, unindexed = typed_metadata(store, {k: v for k, v in values.items() if v is not None}, set(texts),
                                      limits.indexed_fields)
    payload = {"uri": image.uri, "path": image.path, "fingerprint": image.fingerprint, "source": "api",
               "metadata": {**typed, **image.size, ITEM_ID: client_id}}
    action = "replaced" if old is not None else "created"
    schema = store.schema
    with _kept_upload(image):
        if old is not None and old.payload.get("fingerprint") == image.fingerprint and \
                set(schema.vectors) <= set(old.vectors):
            store.set_payloads({point: payload})
            store.flush()
            return ItemWrite(client_id, point, action, embedded=False, unindexed=unindexed)
        vectors = {spec.name: embed(spec, Path(image.path)) for spec in schema.vectors.values()}
        store.upsert([Record(point, vectors, payload)])
        store.flush()
    return ItemWrite(client_id, point, action, embedded=True, unindexed=unindexed)


def patch_item(store: VectorStore, client_id: str, metadata: dict[str, Any], text: Texts | None,
               limits: LimitsSettings | None = None) -> ItemWrite:
    """Change an item's metadata and text (a None value removes the field); nothing is embedded."""
    limits = limits or LimitsSettings()
    check_put(client_id, metadata, text, limits)
    point = client_point_id(client_id)
    found = store.retrieve([point])
    if not found:
        raise ItemNotFound(client_id)
    payload = dict(found[0].payload)
    texts = _texts(text)
    changes = {**metadata, **texts}
    _refuse_derived(changes)
    merged = {k: v for k, v in {**payload.get("metadata", {}), **changes}.items() if v is not None}
    check_item_write(client_id, {k: v for k, v in merged.items() if k not in DERIVED}, limits)
    payload["metadata"], unindexed = typed_metadata(store, merged, set(texts), limits.indexed_fields)
    store.set_payloads({point: payload})
    store.flush()
    return ItemWrite(client_id, point, "updated", embedded=False, unindexed=unindexed)


def delete_item(store: VectorStore, client_id: str) -> ItemWrite:
    point = client_point_id(client_id)
    if not store.retrieve([point]):
        raise ItemNotFound(client_id)
    store.delete([point])
    store.flush()
    return ItemWrite(client_id, point, "deleted", embedded=False)


def typed_metadata(store: VectorStore, metadata: dict[str, Any], texts: set[str], cap: int
                   ) -> tuple[dict[str, Any], list[str]]:
    """(values converted to their declared field's type, new fields kept unindexed); new fields are
    declared with the type inferred (`texts`: names given as text, declared as text fields) while the
    collection has fewer than `cap` (CLIPSEARCH_LIMITS_INDEXED_FIELDS). BadInput for a bad name or a
    value that does not fit its declared type, before anything is declared."""
    schema = store.schema
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
    to_declare, unindexed = indexable_fields(schema.fields, new, cap)
    if to_declare:
        store.set_schema(schema.with_fields(to_declare))
    return typed, unindexed


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


def _texts(text: Texts | None) -> dict[str, Any]:
    if text is None:
        return {}
    if isinstance(text, str):
        return {TEXT_FIELD: text}
    return dict(text)


def _refuse_derived(values: dict[str, Any]) -> None:
    derived = [name for name in values if name in DERIVED]
    if derived:
        raise BadInput(f"metadata {', '.join(derived)}: set by the server (the image's size, the item id)")
