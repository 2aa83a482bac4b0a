"""Single items written by their client's id (a SKU, a database key): put, patch and delete.

The write API (`PUT|PATCH|DELETE /v1/collections/{c}/items/{id}`) and `Collection.put_item` /
`patch_item` / `delete_item` both run these on the collection's open store.

An item's point id is the client id itself when it is a UUID (an id from results addresses that very
point), else uuid5 of it (`client_point_id`), the same on every server; the client id is kept in the
item's metadata as `item_id`, so results show it. A put whose image has the same bytes as the stored one
keeps the stored vectors (`embedded: false`). New metadata fields are declared with the type their
values have (`infer_type`), once the write is stored (a failed write declares nothing); a value that
does not fit a declared field's type is BadInput. Uploaded
images are kept under `<home>/items/<collection>/` (by content), so that /v1/images and the VLM can
read them.
"""

from __future__ import annotations

import hashlib
import io
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
from indexer.fieldtypes import FieldType, convert, infer_type
from indexer.ingest.bounds import check_item_write, indexable_fields
from indexer.limits import check_item_id
from indexer.schema import VectorSpec, check_name
from indexer.settings import LimitsSettings, Settings
from indexer.stores import Record, VectorStore
from indexer.stores.base import canonical_id

ITEM_ID = "item_id"  # the client's id, in every written item's metadata
TEXT_FIELD = "text"  # where a plain-string `text` goes
DERIVED = ("width", "height", ITEM_ID)  # written by the library, never by the client
MAX_ID_CHARS = 256
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
    point_ids: list[str] = field(default_factory=list)  # every point written (a product: one per image)
    unindexed: list[str] = field(default_factory=list)  # new fields kept unindexed (the collection's cap)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "point_id": self.point_id, "point_ids": self.point_ids, "action": self.action,
                "embedded": self.embedded, "unindexed": list(self.unindexed)}


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
    _refuse_derived(values, None)


def item_points(store: VectorStore, item_id: str) -> list[str]:
    """The points an item id addresses, in id order; [] when none: the point of that id, or of that
    client id (the write API), else every point whose id field holds the value (a catalog's id
    column, `CollectionSchema.id_fields`: every image of the product)."""
    from indexer.stores.filters import Filter

    point = client_point_id(item_id)
    if store.retrieve([point]):
        return [point]
    fields = store.schema.id_fields
    if not fields:
        return []
    conditions = [{"key": name, "match": {"value": item_id}} for name in fields]
    by_value = Filter.model_validate({"should": conditions})
    return sorted(record.id for record in store.scan(by_value.resolve(store.schema)))


def put_item(
    store: VectorStore, embed: Embed, client_id: str, image: StoredImage | None,
    metadata: dict[str, Any] | None, text: Texts | None, limits: LimitsSettings | None = None,
) -> ItemWrite:
    """Create an item, or replace the parts of it that are sent: the image, the metadata (every field
    but the text fields and those the server sets) and the text (the collection's text fields: text
    fields, and a catalog's searchable text columns); a part not sent (None) is kept. A catalog
    product's id addresses its points; a new image for a product of several images is refused.
    Everything is checked before anything is stored; an upload is kept only with a stored write."""
    from indexer.stores.keyword import text_fields

    limits = limits or LimitsSettings()
    check_put(client_id, metadata or {}, text, limits)
    texts = _texts(text)
    values = {**(metadata or {}), **texts}
    _refuse_derived(values, store)
    points = item_points(store, client_id)
    olds = store.retrieve(points, with_vectors=True)
    if image is None and not olds:
        raise BadInput(f"item {client_id!r} is new: send its image (a file, or an image_url)")
    if image is not None and len(olds) > 1:
        raise BadInput(f"item {client_id!r} is a product with {len(olds)} images (from its catalog): a PUT "
                       f"sends one; send metadata or text only, or change the catalog's image cells")
    typed, unindexed, to_declare = typed_metadata(
        store, {k: v for k, v in values.items() if v is not None}, set(texts), limits.indexed_fields
    )
    schema = store.schema
    ids, words = set(schema.id_fields), set(text_fields(schema))
    written, embedded = [], False
    with _kept_upload(image):
        for old in olds or [None]:
            point = old.id if old is not None else client_point_id(client_id)
            before = old.payload.get("metadata", {}) if old is not None else {}
            kept = {k: v for k, v in before.items() if k in ids or k in ("width", "height")}
            if metadata is None:  # not sent: kept
                kept.update({k: v for k, v in before.items() if k not in words and k not in DERIVED})
            if text is None:
                kept.update({k: v for k, v in before.items() if k in words and k not in ids})
            if image is None:
                assert old is not None
                source = StoredImage(old.payload.get("uri", ""), old.payload.get("path", ""),
                                     old.payload.get("fingerprint", ""), {})
            else:
                source = image
                kept.update(image.size)
            own_id = {} if ids & set(before) else {ITEM_ID: client_id}  # a catalog product keeps its id field
            extra = {k: v for k, v in (old.payload if old is not None else {"source": "api"}).items()
                     if k not in ("uri", "path", "fingerprint", "metadata")}
            payload = {"uri": source.uri, "path": source.path, "fingerprint": source.fingerprint, **extra,
                       "metadata": {**kept, **typed, **own_id}}
            if old is not None and old.payload.get("fingerprint") == source.fingerprint and \
                    set(schema.vectors) <= set(old.vectors):
                store.set_payloads({point: payload})
            else:
                vectors = {spec.name: embed(spec, Path(source.path)) for spec in schema.vectors.values()}
                store.upsert([Record(point, vectors, payload)])
                embedded = True
            written.append(point)
    declare(store, to_declare)  # outside: the upload stays with the stored item, whatever happens here
    store.flush()
    return ItemWrite(client_id, written[0], "replaced" if olds else "created", embedded, written, unindexed)


def patch_item(store: VectorStore, client_id: str, metadata: dict[str, Any], text: Texts | None,
               limits: LimitsSettings | None = None) -> ItemWrite:
    """Change an item's metadata and text (a None value removes the field); nothing is embedded. A
    catalog product's id changes every image of the product."""
    limits = limits or LimitsSettings()
    check_put(client_id, metadata, text, limits)
    points = item_points(store, client_id)
    if not points:
        raise ItemNotFound(client_id)
    texts = _texts(text)
    changes = {**metadata, **texts}
    _refuse_derived(changes, store)
    removed = {k for k, v in changes.items() if v is None}
    records = store.retrieve(points)
    for record in records:  # the whole item as it will be, within the limits, before anything is declared
        merged = {k: v for k, v in {**record.payload.get("metadata", {}), **changes}.items() if v is not None}
        check_item_write(client_id, {k: v for k, v in merged.items() if k not in DERIVED}, limits)
    typed, unindexed, to_declare = typed_metadata(
        store, {k: v for k, v in changes.items() if v is not None}, set(texts), limits.indexed_fields
    )
    payloads = {}
    for record in records:
        kept = {k: v for k, v in record.payload.get("metadata", {}).items() if k not in removed}
        payloads[record.id] = {**record.payload, "metadata": {**kept, **typed}}
    store.set_payloads(payloads)
    declare(store, to_declare)
    store.flush()
    return ItemWrite(client_id, points[0], "updated", False, points, unindexed)


def delete_item(store: VectorStore, client_id: str) -> ItemWrite:
    points = item_points(store, client_id)
    if not points:
        raise ItemNotFound(client_id)
    store.delete(points)
    store.flush()
    return ItemWrite(client_id, points[0], "deleted", False, points)


def typed_metadata(store: VectorStore, metadata: dict[str, Any], texts: set[str], cap: int
                   ) -> tuple[dict[str, Any], list[str], dict[str, FieldType]]:
    """(values converted to their declared field's type, new fields kept unindexed, new fields to
    declare once the write is stored: with the type inferred, `texts` (names given as text) as text
    fields, while the collection has fewer than `cap`, CLIPSEARCH_LIMITS_INDEXED_FIELDS). BadInput for
    a bad name or a value that does not fit its declared type. Declares nothing itself."""
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
    return typed, unindexed, to_declare


def declare(store: VectorStore, fields: dict[str, FieldType]) -> None:
    """Declare a write's new fields once the write is stored, so a write that fails leaves none behind
    (each is a payload index, made from the payloads already stored: the new item's included)."""
    if fields:
        store.set_schema(store.schema.with_fields(fields))


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


def _refuse_derived(values: dict[str, Any], store: VectorStore | None) -> None:
    """Fields the library sets (and, with the store, its id fields) are not the client's to write."""
    derived = [name for name in values if name in DERIVED]
    if derived:
        raise BadInput(f"metadata {', '.join(derived)}: set by the server (the image's size, the item id)")
    ids = [name for name in values if store is not None and name in store.schema.id_fields]
    if ids:
        raise BadInput(f"metadata {', '.join(ids)}: the item's id (its catalog's id column) cannot change")
