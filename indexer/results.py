"""What `Collection` methods return: small dataclasses, the same whether the collection is local
(`clipsearch.open`) or behind a server (`clipsearch.connect`).

Each is built from the JSON shape the HTTP API answers with (`from_json`), so that both sides make
them the same way; lists of rows have `to_pandas()` when pandas is installed (`clipsearch[pandas]`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any


def _pandas() -> Any:
    try:
        import pandas
    except ImportError:  # an optional extra: say how to get it
        raise ImportError("to_pandas() needs pandas: pip install 'clipsearch[pandas]'") from None
    return pandas


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}


class _Rows:
    """A sequence of row dataclasses (in `rows`) that can become a DataFrame."""

    rows: list[Any]

    def __iter__(self) -> Iterator[Any]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Any:
        return self.rows[index]

    def to_pandas(self) -> Any:
        """A pandas DataFrame, one row per entry (nested fields stay Python objects)."""
        return _pandas().DataFrame([asdict(row) for row in self.rows])


@dataclass
class Hit:
    id: str
    uri: str
    score: float
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Hit:
        metadata = dict(data.get("metadata") or {})
        return cls(str(data["id"]), str(data.get("uri", "")), float(data["score"]), metadata)


@dataclass
class SearchResults(_Rows):
    """Hits best first; `facets`: field -> [(value, count)] under the query's filter; `mode`: the
    ranking used (vector, keyword, hybrid, recommend)."""

    hits: list[Hit]
    facets: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    mode: str = "vector"
    # seconds per stage (decode, encode, search, fetch) where the search ran; not compared between answers
    timings: dict[str, float] = field(default_factory=dict, compare=False, repr=False)

    @property
    def rows(self) -> list[Hit]:  # type: ignore[override]
        return self.hits

    @property
    def ids(self) -> list[str]:
        return [hit.id for hit in self.hits]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SearchResults:
        facets = {name: [_count(c) for c in counts] for name, counts in (data.get("facets") or {}).items()}
        hits = [Hit.from_json(r) for r in data.get("results", [])]
        return cls(hits, facets, str(data.get("mode") or "vector"))


def _count(entry: Any) -> tuple[str, int]:
    """A facet count: {"value", "count"} (the HTTP answer) or a (value, count) pair."""
    if isinstance(entry, dict):
        return str(entry["value"]), int(entry["count"])
    return str(entry[0]), int(entry[1])


@dataclass
class Item:
    """An indexed item: its id, image uri and metadata."""

    id: str
    uri: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Item:
        return cls(str(data["id"]), str(data.get("uri", "")), dict(data.get("metadata") or {}))


@dataclass
class ItemWritten:
    id: str  # the client's item id
    point_id: str  # the item's id in results
    action: str  # created | replaced | updated | deleted
    embedded: bool  # the image was embedded (False: the stored vectors were kept)
    # New metadata fields stored but not indexed: the collection has CLIPSEARCH_LIMITS_INDEXED_FIELDS.
    unindexed: list[str] = field(default_factory=list)
    point_ids: list[str] = field(default_factory=list)  # every point written (a product: one per image)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ItemWritten:
        return cls(**_known(cls, data))


@dataclass
class VectorInfo:
    name: str
    model: dict[str, Any]
    dim: int
    precision: str
    state: str
    count: int
    active: bool
    job: dict[str, Any] | None = None  # a re-embedding running in a server

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> VectorInfo:
        return cls(**_known(cls, data))

    def to_json(self) -> dict[str, Any]:
        """As `clipsearch vectors --json` and the HTTP API list it (`job`: None where none ran or runs)."""
        return asdict(self)


@dataclass
class Vectors(_Rows):
    vectors: list[VectorInfo]

    @property
    def rows(self) -> list[VectorInfo]:  # type: ignore[override]
        return self.vectors

    @property
    def active(self) -> str:
        return next(v.name for v in self.vectors if v.active)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Vectors:
        return cls([VectorInfo.from_json(v) for v in data.get("vectors", [])])


@dataclass
class Status:
    collection: str
    count: int
    model: dict[str, Any]
    vectors: list[VectorInfo]
    fields: dict[str, str]
    failed: list[dict[str, str]]
    searchable: list[str] = field(default_factory=list)  # the text fields of keyword search
    id_fields: list[str] = field(default_factory=list)  # a catalog's id column
    watch: dict[str, Any] | None = None  # the folders a `serve --watch` keeps in line, and its state

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Status:
        return cls(str(data["collection"]), int(data["count"]), dict(data.get("model") or {}),
                   [VectorInfo.from_json(v) for v in data.get("vectors", [])], dict(data.get("fields") or {}),
                   [dict(f) for f in data.get("failed", [])], list(data.get("searchable") or []),
                   list(data.get("id_fields") or []), data.get("watch"))

    def to_json(self) -> dict[str, Any]:
        """The status document of `clipsearch status --json`, as the HTTP route answers it (`watch`: None
        unless a `serve --watch` holds the collection)."""
        vectors = [info.to_json() for info in self.vectors]
        return {"collection": self.collection, "count": self.count, "model": self.model, "vectors": vectors,
                "fields": self.fields, "searchable": self.searchable, "id_fields": self.id_fields,
                "failed": self.failed, "watch": self.watch}


@dataclass
class IndexReport:
    collection: str
    embedded: int
    unchanged: int
    removed: int
    failed: int
    seconds: float
    # What a run with a catalog adds (None after folders alone): items whose metadata alone changed,
    # images fetched by URL and the seconds it took, columns stored but not indexed (past
    # CLIPSEARCH_LIMITS_INDEXED_FIELDS), and notes a user should read (values that did not fit a type).
    updated: int | None = None
    downloaded: int | None = None
    fetch_seconds: float | None = None
    unindexed: list[str] | None = None
    notes: list[str] | None = None

    @property
    def nothing_indexed(self) -> bool:
        """Every row or file failed: nothing embedded, nothing kept unchanged or updated."""
        return self.failed > 0 and self.embedded + self.unchanged + (self.updated or 0) == 0

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> IndexReport:
        return cls(**_known(cls, data))

    def to_json(self) -> dict[str, Any]:
        """The document of `clipsearch index --json`."""
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class LabelScore:
    label: str
    score: float


@dataclass
class Classified:
    """Zero-shot labels of one image, best first."""

    labels: list[LabelScore]

    @property
    def best(self) -> str:
        return self.labels[0].label


@dataclass
class LabelRun:
    run: str
    labeled: int
    unsure: int
    counts: dict[str, int]
    seconds: float

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LabelRun:
        return cls(**_known(cls, data))


@dataclass
class LabelCounts:
    run: str
    counts: dict[str, int]
    zero_shot: dict[str, int]
    reviewed: int
    total: int

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LabelCounts:
        return cls(**_known(cls, data))


@dataclass
class ReviewItem:
    id: str
    uri: str
    label: str | None
    score: float | None
    top: list[dict[str, Any]]
    human_label: str | None
    human_label_at: str | None
    effective_label: str | None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ReviewItem:
        return cls(**_known(cls, data))


@dataclass
class ReviewPage(_Rows):
    run: str
    label: str
    total: int
    offset: int
    limit: int
    items: list[ReviewItem]

    @property
    def rows(self) -> list[ReviewItem]:  # type: ignore[override]
        return self.items

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ReviewPage:
        return cls(data["run"], data["label"], int(data["total"]), int(data["offset"]), int(data["limit"]),
                   [ReviewItem.from_json(i) for i in data.get("items", [])])


@dataclass
class DuplicateGroup:
    kind: str  # exact (same bytes) | near
    keep: str  # the uri of the one to keep
    others: list[str]
    scores: list[float]  # the others' cosine to the keeper
    ids: list[str]  # the keeper's, then the others'
    # What the keeper rule compared, in the order of ids: [width, height], and the date (taken, else mtime)
    sizes: list[list[int] | None] = field(default_factory=list)
    dates: list[str | None] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DuplicateGroup:
        return cls(**_known(cls, data))


@dataclass
class Duplicates(_Rows):
    groups: list[DuplicateGroup]
    items: int = 0  # items compared
    hashed: int = 0  # files hashed now (indexed before hashes were taken)
    threshold: float = 0.0
    hash_distance: int = 0
    seconds: float = 0.0

    @property
    def rows(self) -> list[DuplicateGroup]:  # type: ignore[override]
        return self.groups

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Duplicates:
        return cls([DuplicateGroup.from_json(g) for g in data.get("groups", [])], int(data.get("items", 0)),
                   int(data.get("hashed", 0)), float(data.get("threshold", 0.0)),
                   int(data.get("hash_distance", 0)), float(data.get("seconds", 0.0)))


@dataclass
class Scored:
    """An item with a score: a cluster's central member (cosine to its centre), an outlier (isolation)."""

    id: str
    uri: str
    score: float

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Scored:
        return cls(str(data["id"]), str(data.get("uri", "")), float(data["score"]))


@dataclass
class Cluster:
    cluster: int
    size: int
    central: list[Scored]


@dataclass
class Clusters(_Rows):
    k: int
    clusters: list[Cluster]

    @property
    def rows(self) -> list[Cluster]:  # type: ignore[override]
        return self.clusters

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Clusters:
        return cls(int(data["k"]), [Cluster(int(c["cluster"]), int(c["size"]),
                                            [Scored.from_json(s) for s in c.get("central", [])])
                                    for c in data.get("clusters", [])])


@dataclass
class Outliers(_Rows):
    outliers: list[Scored]

    @property
    def rows(self) -> list[Scored]:  # type: ignore[override]
        return self.outliers

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Outliers:
        return cls([Scored.from_json(s) for s in data.get("outliers", [])])


@dataclass
class Exported:
    format: str
    out: str
    items: int
    labelled: int
    files: int = 0  # imagefolder, fiftyone: images linked or copied
    missing: int = 0  # imagefolder, fiftyone: images whose file is gone

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Exported:
        return cls(**_known(cls, data))


@dataclass
class Transfer:
    """What a snapshot, restore or copy did."""

    collection: str
    store: str
    points: int
    vectors: dict[str, int]
    archive: str | None = None
    source: dict[str, str] = field(default_factory=dict)  # a restore's or copy's: its collection and store

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Transfer:
        return cls(**_known(cls, data))


def scores_of(rows: Sequence[Any]) -> list[float]:
    return [float(row.score) for row in rows]
