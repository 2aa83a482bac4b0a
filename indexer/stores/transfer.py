"""Backups and moves between backends: one portable archive format for every store, and a direct copy.

An archive is a tar file (gzip-compressed when its name ends in .gz or .tgz) of:

    chunks/000000/points.jsonl           one {"id", "payload"} per line
    chunks/000000/vectors/<name>.npy     float32 (n, dim) per schema vector, rows aligned with the ids
    chunks/000000/has_vector/<name>.npy  bool (n,): which points have that vector (a vector still
                                         being built is missing on some; their rows are zeros)
    ...
    manifest.json                        format and version, clipsearch version, collection, schema,
                                         info, point count, vector names and dims, and the sha256 and
                                         size of every other member

The manifest comes last because only then are the count and checksums known; a truncated archive
therefore has none and is refused. Every pass streams the tar in order, so memory is bounded by
one chunk, not by the collection. Restore reads the archive twice: once to verify every checksum
before anything is created or replaced, once to load it.

Vectors travel as stored (float32, bit for bit) and are never re-embedded. The schema travels
without storage keys (each backend's private name for a vector), so a restored or copied collection
is laid out as a new one of the current format.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import tarfile
import time
import zlib
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from indexer.durable import fsync_dir
from indexer.errors import BadInput, Conflict
from indexer.locking import collection_lock
from indexer.schema import CollectionSchema
from indexer.settings import Settings
from indexer.stores import check_collection_name, collection_exists, drop_collection, open_store
from indexer.stores.base import Record, VectorStore

FORMAT = "clipsearch-archive"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CHUNK_POINTS = 2048  # ~4 MB of 512-d vectors per chunk: the memory a transfer holds at once
_READ_BLOCK = 1 << 20
_WAIT = "wait for it to finish"


@dataclass
class TransferReport:
    """What a snapshot, restore or copy did; `to_json` is the CLI's --json summary."""

    collection: str
    store: str
    points: int
    vectors: dict[str, int]  # points that have each vector
    seconds: float
    archive: str | None = None
    bytes: int | None = None
    source: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "collection": self.collection,
            "store": self.store,
            "points": self.points,
            "vectors": self.vectors,
            "seconds": round(self.seconds, 3),
        }
        if self.archive is not None:
            data.update(archive=self.archive, bytes=self.bytes)
        if self.source:
            data["source"] = self.source
        return data


# --- snapshot ---------------------------------------------------------------------------------


def snapshot(
    store: VectorStore,
    out_path: Path | str,
    *,
    store_kind: str = "",
    chunk_points: int = CHUNK_POINTS,
    progress: bool = False,
) -> TransferReport:
    """Write every point of an open collection to a portable archive at `out_path`, atomically:
    a temp file beside it, fsynced, then renamed over it (a failed run leaves no archive)."""
    started = time.monotonic()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as raw:
            with tarfile.open(fileobj=raw, mode="w|gz" if _gzipped(out) else "w|") as tar:
                manifest = _write_points(tar, store, chunk_points, progress)
                manifest["source_store"] = store_kind
                _add(tar, MANIFEST, json.dumps(manifest, ensure_ascii=False, indent=1).encode())
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(out.parent)
    counts = {name: v["count"] for name, v in manifest["vectors"].items()}
    return TransferReport(store.name, store_kind, manifest["points"], counts, time.monotonic() - started,
                          archive=str(out), bytes=out.stat().st_size)


def snapshot_collection(
    settings: Settings, collection: str, out_path: Path | str, *, progress: bool = False
) -> TransferReport:
    """`snapshot` of a collection by name, holding its write lock so no index run changes it meanwhile."""
    with collection_lock(settings.home, collection, holder="clipsearch snapshot", advice=_WAIT):
        store = open_store(settings, collection)
        try:
            return snapshot(store, out_path, store_kind=settings.store, progress=progress)
        finally:
            store.close()


def _write_points(
    tar: tarfile.TarFile, store: VectorStore, chunk_points: int, progress: bool
) -> dict[str, Any]:
    """Write the points in chunks; the manifest that describes them."""
    schema = portable_schema(store.schema)
    counts = dict.fromkeys(schema.vectors, 0)
    members: dict[str, dict[str, Any]] = {}
    chunks: list[int] = []
    total = store.count() if progress else None
    with tqdm(total=total, unit="pt", desc="snapshot", file=sys.stderr, disable=not progress) as bar:
        for records in _batches(store.scan(with_vectors=True), chunk_points):
            for name, data in _chunk_members(len(chunks), records, schema, counts):
                members[name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
                _add(tar, name, data)
            chunks.append(len(records))
            bar.update(len(records))
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "clipsearch_version": _version(),
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "collection": store.name,
        "schema": schema.to_dict(),
        "info": store.read_info(),
        "points": sum(chunks),
        "vectors": {name: {"dim": spec.dim, "count": counts[name]} for name, spec in schema.vectors.items()},
        "chunks": chunks,
        "members": members,
    }


def _chunk_members(
    index: int, records: list[Record], schema: CollectionSchema, counts: dict[str, int]
) -> Iterator[tuple[str, bytes]]:
    prefix = f"chunks/{index:06d}"
    lines = (json.dumps({"id": r.id, "payload": r.payload}, ensure_ascii=False) for r in records)
    yield f"{prefix}/points.jsonl", "".join(line + "\n" for line in lines).encode()
    for name, spec in schema.vectors.items():
        vectors = np.zeros((len(records), spec.dim), dtype=np.float32)
        has = np.zeros(len(records), dtype=bool)
        for row, record in enumerate(records):
            vector = record.vectors.get(name)
            if vector is not None:
                vectors[row] = np.asarray(vector, dtype=np.float32).reshape(spec.dim)
                has[row] = True
        counts[name] += int(has.sum())
        yield f"{prefix}/vectors/{name}.npy", _npy(vectors)
        yield f"{prefix}/has_vector/{name}.npy", _npy(has)


# --- reading archives -------------------------------------------------------------------------


def verify(archive: Path | str, *, progress: bool = False) -> dict[str, Any]:
    """The archive's manifest, after checking the format, the schema, the member list and every
    member's checksum in one streaming pass; BadInput naming what is wrong otherwise."""
    path = Path(archive)
    seen: dict[str, tuple[str, int]] = {}
    manifest_bytes: bytes | None = None
    # Bytes of members read; the file's size is their total only when it is not compressed.
    total = path.stat().st_size if path.is_file() and not _gzipped(path) else None
    bar = tqdm(total=total, unit="B", unit_scale=True, desc="verify", file=sys.stderr, disable=not progress)
    with bar, _reading(path) as tar:
        for member in tar:
            data = tar.extractfile(member) if member.isfile() else None
            if data is None:
                raise BadInput(f"{path}: unexpected entry {member.name!r}: not a clipsearch archive")
            if member.name == MANIFEST:
                manifest_bytes = data.read()
                continue
            digest = hashlib.sha256()
            size = 0
            while block := data.read(_READ_BLOCK):
                digest.update(block)
                size += len(block)
            seen[member.name] = (digest.hexdigest(), size)
            bar.update(size)
    if manifest_bytes is None:
        raise BadInput(f"{path}: no {MANIFEST} at its end: truncated, or not a clipsearch archive")
    manifest = _check_manifest(path, manifest_bytes)
    for name, expected in manifest["members"].items():
        if name not in seen:
            raise BadInput(f"{path}: member {name} is missing: the archive is incomplete")
        if seen[name] != (expected["sha256"], expected["size"]):
            raise BadInput(f"{path}: member {name} fails its checksum: the archive is corrupt")
    extra = sorted(set(seen) - set(manifest["members"]))
    if extra:
        raise BadInput(f"{path}: unexpected member {extra[0]}: not an archive clipsearch wrote")
    return manifest


def archive_schema(manifest: dict[str, Any]) -> CollectionSchema:
    schema = CollectionSchema.from_info({"schema": manifest["schema"]})
    assert schema is not None
    return schema


def read_records(archive: Path | str, manifest: dict[str, Any]) -> Iterator[list[Record]]:
    """The archive's points, one chunk at a time, each member checked against the manifest again
    (the file may have changed since `verify`)."""
    path = Path(archive)
    schema = archive_schema(manifest)
    wanted = manifest["members"]
    pending: dict[str, bytes] = {}
    with _reading(path) as tar:
        for member in tar:
            if member.name == MANIFEST:
                continue
            handle = tar.extractfile(member)
            data = handle.read() if handle is not None and member.name in wanted else b""
            if hashlib.sha256(data).hexdigest() != wanted.get(member.name, {}).get("sha256"):
                raise BadInput(f"{path}: member {member.name} changed since it was verified")
            pending[member.name] = data
            prefix = "/".join(member.name.split("/")[:2])
            if all(name in pending for name in _member_names(prefix, schema)):
                yield _decode_chunk(path, prefix, schema, pending)
                pending.clear()
    if pending:
        raise BadInput(f"{path}: chunk members out of order: not an archive clipsearch wrote")


def _member_names(prefix: str, schema: CollectionSchema) -> list[str]:
    names = [f"{prefix}/points.jsonl"]
    for name in schema.vectors:
        names += [f"{prefix}/vectors/{name}.npy", f"{prefix}/has_vector/{name}.npy"]
    return names


def _decode_chunk(path: Path, prefix: str, schema: CollectionSchema, data: dict[str, bytes]) -> list[Record]:
    try:
        points = [json.loads(line) for line in data[f"{prefix}/points.jsonl"].decode().splitlines()]
        records = [Record(id=str(p["id"]), payload=dict(p["payload"])) for p in points]
        for name, spec in schema.vectors.items():
            vectors = _load_npy(data[f"{prefix}/vectors/{name}.npy"], np.float32, (len(records), spec.dim))
            has = _load_npy(data[f"{prefix}/has_vector/{name}.npy"], np.bool_, (len(records),))
            for row in np.flatnonzero(has):
                records[row].vectors[name] = vectors[row].copy()
    except (ValueError, KeyError, TypeError) as exc:
        raise BadInput(f"{path}: {prefix} is malformed: {exc}") from exc
    return records


def _check_manifest(path: Path, raw: bytes) -> dict[str, Any]:
    try:
        manifest = json.loads(raw)
    except ValueError as exc:
        raise BadInput(f"{path}: {MANIFEST} is not JSON: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BadInput(f"{path}: {MANIFEST} does not say format {FORMAT!r}: not a clipsearch archive")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise BadInput(
            f"{path}: archive format version {version!r} is newer than this clipsearch reads "
            f"({FORMAT_VERSION}); upgrade clipsearch (it was written by {manifest.get('clipsearch_version')})"
        )
    try:
        schema = archive_schema(manifest)
        dims = {name: int(v["dim"]) for name, v in manifest["vectors"].items()}
        chunks = [int(n) for n in manifest["chunks"]]
        points, info, members = int(manifest["points"]), manifest["info"], manifest["members"]
        check_collection_name(str(manifest["collection"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise BadInput(f"{path}: {MANIFEST} is incomplete or malformed: {exc!r}") from exc
    if dims != {name: spec.dim for name, spec in schema.vectors.items()}:
        raise BadInput(f"{path}: the manifest's vectors {dims} do not match its schema")
    if sum(chunks) != points or not isinstance(info, dict) or not isinstance(members, dict):
        raise BadInput(f"{path}: the manifest's point count, info or member list is inconsistent")
    expected = {n for i in range(len(chunks)) for n in _member_names(f"chunks/{i:06d}", schema)}
    if expected != set(members):
        raise BadInput(f"{path}: the manifest's member list does not match its chunks")
    return manifest


# --- restore and copy -------------------------------------------------------------------------


def restore(
    settings: Settings,
    archive: Path | str,
    collection: str | None = None,
    *,
    replace: bool = False,
    progress: bool = False,
    lock: bool = True,
) -> TransferReport:
    """Create collection `collection` (default: the archived one's name) in `settings.store` from an
    archive. The whole archive is verified first; an existing collection is replaced only with
    `replace`; if loading fails, the half-made collection is dropped. `lock=False`: the caller holds
    the collection for writing already (a server, which may hold its write lock for --watch)."""
    started = time.monotonic()
    if collection is not None:  # refuse at once rather than after reading a large archive
        _make_room(settings, collection, replace, "restore", drop=False)
    manifest = verify(archive, progress=progress)
    name = collection or manifest["collection"]
    bar = tqdm(total=manifest["points"], unit="pt", desc="restore", file=sys.stderr, disable=not progress)
    with _locks([(settings.home, name)], "clipsearch restore", lock), bar:
        _make_room(settings, name, replace, "restore")
        points, counts = _fill(settings, name, archive_schema(manifest), manifest["info"],
                               read_records(archive, manifest), bar)
    return TransferReport(name, settings.store, points, counts, time.monotonic() - started,
                          archive=str(archive), bytes=Path(archive).stat().st_size,
                          source={"collection": manifest["collection"], "store": manifest["source_store"]})


def copy_collection(
    src_settings: Settings,
    src_name: str,
    dst_settings: Settings,
    dst_name: str,
    *,
    replace: bool = False,
    progress: bool = False,
    chunk_points: int = CHUNK_POINTS,
    lock: bool = True,
) -> TransferReport:
    """Copy a collection, vectors, payloads, schema and info, into another store (or under another
    name), streaming: no archive, no re-embedding. `lock=False` as for `restore`."""
    started = time.monotonic()
    if _location(src_settings, src_name) == _location(dst_settings, dst_name):
        raise BadInput(
            f"collection {src_name!r} in the {src_settings.store} store cannot be copied onto itself; "
            f"name another target with --to-collection or --to-store"
        )
    check_collection_name(dst_name)
    with _locks([(src_settings.home, src_name), (dst_settings.home, dst_name)], "clipsearch copy", lock):
        src = open_store(src_settings, src_name)
        try:
            _make_room(dst_settings, dst_name, replace, "copy")
            bar = tqdm(total=src.count() if progress else None, unit="pt", desc="copy", file=sys.stderr,
                       disable=not progress)
            with bar:
                records = _batches(src.scan(with_vectors=True), chunk_points)
                schema, info = portable_schema(src.schema), src.read_info()
                points, counts = _fill(dst_settings, dst_name, schema, info, records, bar)
        finally:
            src.close()
    return TransferReport(dst_name, dst_settings.store, points, counts, time.monotonic() - started,
                          source={"collection": src_name, "store": src_settings.store})


def _make_room(settings: Settings, name: str, replace: bool, action: str, drop: bool = True) -> None:
    """Refuse an existing target unless `replace`; then drop it (with `drop`)."""
    check_collection_name(name)
    if not collection_exists(settings, name):
        return
    if not replace:
        other = "--collection" if action == "restore" else "--to-collection"
        raise Conflict(
            f"collection {name!r} already exists in the {settings.store} store; pass --replace to "
            f"overwrite it, or {other} to {action} into another name"
        )
    if drop:
        drop_collection(settings, name)


def _fill(
    settings: Settings,
    name: str,
    schema: CollectionSchema,
    info: dict[str, Any],
    batches: Iterable[list[Record]],
    bar: tqdm,
) -> tuple[int, dict[str, int]]:
    """Create the collection and load it; on any failure (or Ctrl-C) drop it again, so a failed
    restore or copy leaves nothing behind."""
    points, counts = 0, dict.fromkeys(schema.vectors, 0)
    store = open_store(settings, name, create=schema)
    try:
        for records in batches:
            store.upsert(records)
            points += len(records)
            for record in records:
                for vector in record.vectors:
                    counts[vector] += 1
            bar.update(len(records))
        store.write_info(info)
        store.flush()
    except BaseException:
        store.close()
        drop_collection(settings, name)
        raise
    store.close()
    return points, counts


# --- helpers ----------------------------------------------------------------------------------


def portable_schema(schema: CollectionSchema) -> CollectionSchema:
    """The schema without storage keys: the backend-neutral description of a collection."""
    return replace(schema, vectors={n: replace(s, key=None) for n, s in schema.vectors.items()})


def _location(settings: Settings, name: str) -> tuple[str, ...]:
    """What identifies a collection: the store, where it keeps its data, and the name."""
    return (settings.store, settings.store_location(), name)


@contextmanager
def _locks(wanted: list[tuple[Path, str]], holder: str, lock: bool = True) -> Iterator[None]:
    """The write locks of these collections, each once (two stores in one home share a lock file);
    none when not `lock`."""
    with ExitStack() as stack:
        for home, name in dict.fromkeys((home.resolve(), name) for home, name in wanted) if lock else ():
            stack.enter_context(collection_lock(home, name, holder=holder, advice=_WAIT))
        yield


def _batches(records: Iterable[Record], size: int) -> Iterator[list[Record]]:
    batch: list[Record] = []
    for record in records:
        batch.append(record)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


class _reading:
    """A tar archive opened for one streaming pass; read failures become BadInput."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> tarfile.TarFile:
        try:
            self.tar = tarfile.open(self.path, mode="r|*")
        except FileNotFoundError as exc:
            raise BadInput(f"archive {self.path} does not exist") from exc
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            raise BadInput(f"{self.path} is not a tar archive ({exc}): not a clipsearch archive") from exc
        return self.tar

    def __exit__(self, kind: type | None, exc: BaseException | None, tb: Any) -> None:
        self.tar.close()
        if isinstance(exc, (tarfile.TarError, EOFError, zlib.error)) or (
            isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError)
        ):
            raise BadInput(f"{self.path} cannot be read to its end ({exc}): the archive is truncated "
                           f"or corrupt") from exc


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
    tar.addfile(info, io.BytesIO(data))


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _load_npy(data: bytes, dtype: type, shape: tuple[int, ...]) -> np.ndarray:
    array = np.load(io.BytesIO(data), allow_pickle=False)
    if array.dtype != dtype or array.shape != shape:
        raise ValueError(f"expected {np.dtype(dtype)} {shape}, found {array.dtype} {array.shape}")
    return array


def _gzipped(path: Path) -> bool:
    return path.name.endswith((".gz", ".tgz"))


def _version() -> str:
    try:
        return metadata.version("clipsearch")
    except metadata.PackageNotFoundError:
        return "unknown"
