"""The collection schema: one versioned dataclass that every backend stores with its collection.

A collection holds one or more named vectors, each embedded by one model (its identity, size,
precision and distance), one of them active (the one queries use unless they name another), and
declared payload fields with a type, each indexed natively by the backend.

Payload layout of every point (the same in every backend):
    {"uri": str, "path": str, "fingerprint": str, "metadata": {field: value, ...}}
Declared fields live under "metadata"; filters name them by field name and the stores see the
payload path (`payload_path`). Values: keyword str, integer int, float float, bool bool, datetime
RFC 3339 str, geo {"lat", "lon"}, text str.

Versions: 1 is the spine's format (collection info {"model": identity, "failed": {...}}, one unnamed
vector); 2 is this one. A version-1 collection is read as version 2 in memory (`from_info`) and
written as version 2 at its first write, its vector kept where it is (storage key "").
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from indexer.errors import SchemaError, VectorNotFound
from indexer.fieldtypes import FIELD_TYPES, FieldType

SCHEMA_VERSION = 2
METADATA = "metadata"
# Where catalogs before the id column kept its name stored the product id: an id field of the
# collections they wrote.
LEGACY_ID_FIELD = "product_id"
Distance = Literal["cosine"]
VectorState = Literal["building", "ready"]

# Vector and field names become Qdrant vector names, SQLite values and CLI arguments.
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
DEFAULT_VECTOR = "default"

# Fields of a version-1 collection (the spine wrote only these).
V1_IMAGE_FIELDS: dict[str, FieldType] = {"width": "integer", "height": "integer"}
# Fields the folder indexer writes for an image (ingest.photo_metadata; absent when the file lacks them).
IMAGE_FIELDS: dict[str, FieldType] = {
    **V1_IMAGE_FIELDS,
    "taken": "datetime",  # EXIF date taken
    "camera_make": "keyword",
    "camera_model": "keyword",
    "location": "geo",  # EXIF GPS
    "folder": "keyword",  # the containing folder's name
    "file_name": "keyword",
    "sha256": "keyword",  # the file's bytes, and its perceptual hash (indexer.curation.duplicates)
    "phash": "keyword",
}


@dataclass(frozen=True)
class ModelIdentity:
    """What a collection records about a model: enough to reload it and to refuse another one."""

    model: str  # architecture name, or absolute path of a model-config JSON
    pretrained: str  # pretrained tag, absolute checkpoint path, or "" for random weights
    architecture: str
    weights: str  # the tag, or "sha256:<hex>" of a checkpoint file's content
    dim: int
    # "fp32": the reference image encoder (fp16 autocast on CUDA); "int8": the approximate CPU fast path
    precision: str = "fp32"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelIdentity:
        known = {k: data[k] for k in ("model", "pretrained", "architecture", "weights", "dim")}
        return cls(**known, precision=data.get("precision", "fp32"))

    def same_model(self, other: ModelIdentity) -> bool:
        return (self.architecture, self.weights, self.dim) == (other.architecture, other.weights, other.dim)

    def describe(self) -> str:
        return f"{self.architecture} ({self.weights or 'random weights'}, {self.dim}-d)"


@dataclass(frozen=True)
class VectorSpec:
    """One named vector of a collection."""

    name: str
    model: ModelIdentity
    distance: Distance = "cosine"
    state: VectorState = "ready"  # building: a re-embedding is filling it; queries may still name it
    key: str | None = None  # the backend's name for it; None: the name ("" for a version-1 vector)

    @property
    def dim(self) -> int:
        return self.model.dim

    @property
    def precision(self) -> str:
        return self.model.precision

    @property
    def storage_key(self) -> str:
        return self.name if self.key is None else self.key

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "model": self.model.to_dict(),
            "dim": self.dim,
            "precision": self.precision,
            "distance": self.distance,
            "state": self.state,
        }
        if self.key is not None:
            data["key"] = self.key
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VectorSpec:
        return cls(
            name=data["name"],
            model=ModelIdentity.from_dict(data["model"]),
            distance=data.get("distance", "cosine"),
            state=data.get("state", "ready"),
            key=data.get("key"),
        )


@dataclass(frozen=True)
class CollectionSchema:
    """Everything a backend needs to lay out a collection, and everything a reader needs to query it."""

    vectors: dict[str, VectorSpec]
    active: str
    fields: dict[str, FieldType] = field(default_factory=dict)
    version: int = SCHEMA_VERSION
    # keyword fields whose values are also words of the keyword (BM25) document, beside the text fields
    # (a catalog's id column and text columns: exact for filters and facets, and found by words)
    searchable: tuple[str, ...] = ()
    # keyword fields whose value addresses an item (a catalog's id column), newest first: the write API,
    # GET item and image:ID find the points holding the value
    id_fields: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.vectors:
            raise SchemaError("a collection needs at least one vector")
        for name, spec in self.vectors.items():
            check_name(name, "vector")
            if spec.name != name:
                raise SchemaError(f"vector {spec.name!r} is listed under another name, {name!r}")
        keys = [spec.storage_key for spec in self.vectors.values()]
        if len(set(keys)) != len(keys):  # two vectors in one place would overwrite each other
            raise SchemaError(f"two vectors share a storage key: {', '.join(repr(k) for k in keys)}")
        if self.active not in self.vectors:
            raise SchemaError(f"active vector {self.active!r} is not one of {', '.join(self.vectors)}")
        for name, kind in self.fields.items():
            check_name(name, "field")
            if kind not in FIELD_TYPES:
                raise SchemaError(
                    f"field {name!r}: unknown type {kind!r}; use one of {', '.join(FIELD_TYPES)}"
                )
        for name in (*self.searchable, *self.id_fields):
            if self.fields.get(name) != "keyword":
                raise SchemaError(f"field {name!r} is searchable or an id only as a declared keyword field")

    # --- construction ---------------------------------------------------------------------

    @classmethod
    def new(
        cls, model: ModelIdentity, vector: str = DEFAULT_VECTOR, fields: dict[str, FieldType] | None = None
    ) -> CollectionSchema:
        return cls(vectors={vector: VectorSpec(vector, model)}, active=vector, fields=dict(fields or {}))

    @classmethod
    def from_info(cls, info: dict[str, Any]) -> CollectionSchema | None:
        """The schema in a collection's stored info, migrating version 1 in memory; None if never written."""
        if "schema" in info:
            data = info["schema"]
            fields = dict(data.get("fields", {}))
            # written before id fields were recorded: a catalog's id was always `product_id`
            legacy_ids = (LEGACY_ID_FIELD,) if fields.get(LEGACY_ID_FIELD) == "keyword" else ()
            version = int(data.get("version", 0))
            if version > SCHEMA_VERSION:
                raise SchemaError(
                    f"collection schema version {version} is newer than this clipsearch understands "
                    f"({SCHEMA_VERSION}); upgrade clipsearch"
                )
            return cls(
                vectors={v["name"]: VectorSpec.from_dict(v) for v in data["vectors"]},
                active=data["active"],
                fields=fields,
                version=SCHEMA_VERSION,
                searchable=tuple(data.get("searchable", ())),
                id_fields=tuple(data["id_fields"]) if "id_fields" in data else legacy_ids,
            )
        if "model" in info:  # version 1: one unnamed vector, width and height in metadata
            spec = VectorSpec(DEFAULT_VECTOR, ModelIdentity.from_dict(info["model"]), key="")
            return cls(vectors={DEFAULT_VECTOR: spec}, active=DEFAULT_VECTOR, fields=dict(V1_IMAGE_FIELDS))
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "vectors": [spec.to_dict() for spec in self.vectors.values()],
            "active": self.active,
            "fields": dict(self.fields),
            **({"searchable": list(self.searchable)} if self.searchable else {}),
            **({"id_fields": list(self.id_fields)} if self.id_fields else {}),
        }

    # --- reading --------------------------------------------------------------------------

    def vector(self, name: str | None = None) -> VectorSpec:
        """The named vector, or the active one; VectorNotFound naming the ones there are."""
        name = name or self.active
        if name not in self.vectors:
            raise VectorNotFound(
                f"no vector {name!r} in this collection; it has {', '.join(self.vectors)} "
                f"(see `clipsearch vectors`)"
            )
        return self.vectors[name]

    @property
    def active_vector(self) -> VectorSpec:
        return self.vectors[self.active]

    def field_type(self, name: str) -> FieldType:
        if name not in self.fields:
            declared = ", ".join(sorted(self.fields)) or "none"
            raise SchemaError(f"field {name!r} is not declared in this collection (declared: {declared})")
        return self.fields[name]

    # --- changes (each returns a new schema) ----------------------------------------------

    def with_vector(self, spec: VectorSpec) -> CollectionSchema:
        if spec.name in self.vectors:
            raise SchemaError(f"the collection already has a vector {spec.name!r}")
        return replace(self, vectors={**self.vectors, spec.name: spec})

    def with_vector_state(self, name: str, state: VectorState) -> CollectionSchema:
        return replace(self, vectors={**self.vectors, name: replace(self.vector(name), state=state)})

    def without_vector(self, name: str) -> CollectionSchema:
        self.vector(name)
        if name == self.active:
            raise SchemaError(f"vector {name!r} is the active one; activate another before dropping it")
        return replace(self, vectors={k: v for k, v in self.vectors.items() if k != name})

    def with_active(self, name: str) -> CollectionSchema:
        spec = self.vector(name)
        if spec.state != "ready":
            raise SchemaError(
                f"vector {name!r} is still being embedded; finish `clipsearch reembed --vector {name}` first"
            )
        return replace(self, active=name)

    def with_fields(self, fields: dict[str, FieldType]) -> CollectionSchema:
        """Declare more fields; a field keeps its type once declared."""
        merged = dict(self.fields)
        for name, kind in fields.items():
            if name in merged and merged[name] != kind:
                raise SchemaError(f"field {name!r} is declared as {merged[name]}, not {kind}")
            merged[name] = kind
        return replace(self, fields=merged)


    def with_roles(self, searchable: tuple[str, ...] = (), id_field: str | None = None) -> CollectionSchema:
        """Mark keyword fields searchable, and `id_field` the newest id field."""
        ids = self.id_fields
        if id_field is not None:
            ids = (id_field, *(f for f in self.id_fields if f != id_field))
        return replace(self, searchable=tuple(dict.fromkeys([*self.searchable, *searchable])), id_fields=ids)

    def with_field_type(self, name: str, kind: FieldType) -> CollectionSchema:
        """The same schema with field `name` of another type (its values must have been converted).
        A text field made a keyword stays searchable; a field that stops being a keyword loses its
        searchable and id roles."""
        if kind not in FIELD_TYPES:
            raise SchemaError(f"field {name!r}: unknown type {kind!r}; use one of {', '.join(FIELD_TYPES)}")
        old = self.field_type(name)
        searchable = tuple(f for f in self.searchable if f != name or kind == "keyword")
        if old == "text" and kind == "keyword":
            searchable = (*searchable, name)
        ids = tuple(f for f in self.id_fields if f != name or kind == "keyword")
        return replace(self, fields={**self.fields, name: kind}, searchable=searchable, id_fields=ids)

    def without_field(self, name: str) -> CollectionSchema:
        return replace(self, fields={k: v for k, v in self.fields.items() if k != name},
                       searchable=tuple(f for f in self.searchable if f != name),
                       id_fields=tuple(f for f in self.id_fields if f != name))


def payload_path(field_name: str) -> str:
    """Where a declared field lives in a point's payload."""
    return f"{METADATA}.{field_name}"


def check_name(name: str, what: str) -> str:
    if not _NAME.fullmatch(name):
        raise SchemaError(
            f"invalid {what} name {name!r}: a letter, then letters, digits, '_', '.', '-' (64 at most)"
        )
    return name
