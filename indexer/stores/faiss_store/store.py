"""FaissStore: the VectorStore over one collection's SQLite database and its FAISS indexes.

Every write commits to SQLite first, then updates the in-memory indexes; flush() and close() save
the indexes (atomically) and checkpoint the WAL. A process killed in between loses nothing: the
next open reconciles each index file with its table (index.py). A version-1 collection is read as
it is and migrated at the first write (db.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from indexer.durable import write_atomic
from indexer.errors import SchemaError, StoreError
from indexer.schema import CollectionSchema, VectorSpec, payload_path
from indexer.stores.base import (
    Record,
    StoredInfo,
    WithVectors,
    canonical_id,
    checked_vector,
    wanted_vectors,
)
from indexer.stores.faiss_store.db import PAGE, Database, create_vector_table, field_rows, table_name
from indexer.stores.faiss_store.index import FaissConfig, VectorIndex, normalised
from indexer.stores.faiss_store.prefilter import Context, compile_filter
from indexer.stores.faiss_store.search import SearchMixin
from indexer.stores.faiss_store.vid_map import VidMap
from indexer.stores.filters import Filter
from indexer.stores.keyword import text_fields

STORE_DIR = "faiss"
CONFIG_FILE = "config.json"  # {"format": 2}; its presence makes the collection
DB_FILE = "points.sqlite"
LOCK_FILE = "lock"
FORMAT = 2


class TableRows(NamedTuple):
    """Rows a write removed from or added to one vector table (vectors: normalised, for added rows)."""

    iids: np.ndarray
    vids: np.ndarray
    vectors: np.ndarray | None = None


NO_ROWS = TableRows(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))


def index_file(key: str) -> str:
    """The index file of a storage key; "" (a version-1 collection's vector) keeps index.faiss."""
    return f"index-{key}.faiss" if key else "index.faiss"


class FaissStore(SearchMixin):
    """A VectorStore over SQLite (the truth) and one FAISS index per vector; thread-safe (one lock).
    Searches are in search.py."""

    # Every call takes the store's own lock (SQLite and the in-memory indexes change together), so
    # callers need not serialise it; concurrent searches then run one at a time here.
    concurrent_reads = True

    def __init__(
        self, name: str, path: Path, db: Database, lock_fd: int, config: FaissConfig, stored: StoredInfo
    ) -> None:
        assert stored.schema is not None
        self.name = name
        self.config = config
        self._dir = path
        self._db: Database | None = db
        self._lock_fd = lock_fd
        self._mutex = threading.RLock()
        self._stored = stored
        self._remove_stray_files()
        self._indexes = {spec.name: self._open_index(spec) for spec in stored.schema.vectors.values()}
        self._vid_maps: dict[str, VidMap] = {}  # by vector name, made at the first filtered search

    # --- schema and info -----------------------------------------------------------------

    @property
    def schema(self) -> CollectionSchema:
        assert self._stored.schema is not None
        return self._stored.schema

    def set_schema(self, schema: CollectionSchema) -> None:
        old = self.schema
        added, dropped = _vector_changes(old, schema)
        new_fields = [f for f in schema.fields if f not in old.fields]
        gone_fields = [f for f in old.fields if f not in schema.fields]
        with self._mutex, self._errors("set schema"):
            self._begin_write()
            db = self.db
            for spec in added:  # left by a vector of that key dropped before a crash: not ours
                (self._dir / index_file(spec.storage_key)).unlink(missing_ok=True)
            stored = StoredInfo(schema, self._stored.info, legacy=False)
            with db.transaction():
                for spec in dropped:
                    db.conn.execute(f'DROP TABLE "{table_name(spec.storage_key)}"')
                for spec in added:
                    create_vector_table(db.conn, spec.storage_key)
                db.backfill(new_fields)
                db.select_in("DELETE FROM fields WHERE field IN ({})", gone_fields)
                if text_fields(schema) != text_fields(old) or (text_fields(schema) and not db.has_keyword()):
                    db.rebuild_keyword(text_fields(schema))  # the documents changed
                db.set_document(stored.document())
            self._stored = stored
            for spec in dropped:
                self._indexes.pop(spec.name).release()
                self._vid_maps.pop(spec.name, None)
                (self._dir / index_file(spec.storage_key)).unlink(missing_ok=True)
            for spec in added:
                self._indexes[spec.name] = self._open_index(spec)
            for spec in schema.vectors.values():  # state changes and the like
                self._indexes[spec.name].label = self._label(spec)

    def read_info(self) -> dict[str, Any]:
        with self._mutex:
            _ = self.db  # raises when closed
            return json.loads(json.dumps(self._stored.info))

    def write_info(self, info: dict[str, Any]) -> None:
        if "schema" in info or "model" in info:
            raise SchemaError(
                "collection info may not hold 'schema' or 'model': change the schema with set_schema"
            )
        with self._mutex, self._errors("write info"):
            self._begin_write()
            stored = StoredInfo(self.schema, dict(info), legacy=False)
            with self.db.transaction():
                self.db.set_document(stored.document())
            self._stored = stored
            # synchronous=NORMAL only syncs the WAL at checkpoints; info is rare and must last.
            self.db.conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    # --- writes --------------------------------------------------------------------------

    def upsert(self, records: Sequence[Record]) -> None:
        latest = {canonical_id(r.id): r for r in records}  # the last one wins when a batch repeats an id
        if not latest:
            return
        schema = self.schema
        by_vector: dict[str, list[tuple[str, np.ndarray]]] = {}
        for key, record in latest.items():
            for name, vector in record.vectors.items():
                spec = schema.vector(name)
                checked = checked_vector(self.name, spec.dim, vector, f"record {record.id} vector {name!r}")
                by_vector.setdefault(spec.name, []).append((key, checked))
        payloads = {key: self._payload_json(record) for key, record in latest.items()}
        with self._mutex, self._errors("upsert"):
            self._begin_write()
            db = self.db
            with db.transaction():
                gone = self._delete_iids(list(db.iids_for(list(latest)).values()))
                first = db.sequence("points") + 1
                iids = {key: first + n for n, key in enumerate(latest)}
                db.conn.executemany(
                    "INSERT INTO points (iid, uuid, payload) VALUES (?, ?, ?)",
                    [(iids[key], key, text) for key, text in payloads.items()],
                )
                db.insert_fields(
                    [
                        row
                        for key, r in latest.items()
                        for row in field_rows(iids[key], r.payload, list(schema.fields))
                    ]
                )
                if text_fields(schema):
                    self._ensure_keyword()
                    db.insert_keyword([(iids[k], r.payload) for k, r in latest.items()], text_fields(schema))
                added = {
                    name: self._insert_vectors(schema.vectors[name], [(iids[k], v) for k, v in items])
                    for name, items in by_vector.items()
                }
            # Committed first: if the process dies now, the next open adds these to the indexes.
            self._apply(gone, added)

    def update_vectors(self, name: str, vectors: Mapping[str, np.ndarray]) -> None:
        spec = self.schema.vector(name)
        wanted = {
            canonical_id(i): checked_vector(self.name, spec.dim, v, f"point {i} vector {name!r}")
            for i, v in vectors.items()
        }
        if not wanted:
            return
        with self._mutex, self._errors("update vectors"):
            self._begin_write()
            db = self.db
            with db.transaction():
                iids = db.iids_for(list(wanted))
                gone = {spec.name: self._delete_vectors(spec, list(iids.values()))}
                added = {spec.name: self._insert_vectors(spec, [(iids[k], wanted[k]) for k in iids])}
            self._apply(gone, added)

    def set_payloads(self, payloads: Mapping[str, dict[str, Any]]) -> None:
        texts = {canonical_id(i): self._payload_json(Record(id=i, payload=p)) for i, p in payloads.items()}
        if not texts:
            return
        fields = list(self.schema.fields)
        with self._mutex, self._errors("set payloads"):
            self._begin_write()
            db = self.db
            with db.transaction():
                iids = db.iids_for(list(texts))
                db.conn.executemany(
                    "UPDATE points SET payload = ? WHERE iid = ?",
                    [(texts[k], iid) for k, iid in iids.items()],
                )
                db.select_in("DELETE FROM fields WHERE iid IN ({})", list(iids.values()))
                db.insert_fields(
                    [row for k, iid in iids.items() for row in field_rows(iid, json.loads(texts[k]), fields)]
                )
                if text_fields(self.schema):
                    self._ensure_keyword()
                    db.delete_keyword(list(iids.values()))
                    db.insert_keyword([(iid, json.loads(texts[k])) for k, iid in iids.items()],
                                      text_fields(self.schema))

    def delete(self, ids: Sequence[str]) -> None:
        keys = [canonical_id(i) for i in ids]
        if not keys:
            return
        with self._mutex, self._errors("delete"):
            self._begin_write()
            with self.db.transaction():
                gone = self._delete_iids(list(self.db.iids_for(keys).values()))
            self._apply(gone, {})

    # --- reads ---------------------------------------------------------------------------

    def retrieve(self, ids: Sequence[str], with_vectors: WithVectors = False) -> list[Record]:
        keys = [canonical_id(i) for i in ids]
        names = wanted_vectors(self.schema, with_vectors)
        if not keys:
            return []
        with self._mutex, self._errors("retrieve"):
            rows = self.db.select_in("SELECT iid, uuid, payload FROM points WHERE uuid IN ({})", keys)
            records = self._records(rows, names)
        found = {r.id: r for r in records}
        return [found[key] for key in keys if key in found]

    def scan(self, filter: Filter | None = None, with_vectors: WithVectors = False) -> Iterator[Record]:
        names = wanted_vectors(self.schema, with_vectors)
        if filter is None or filter.is_empty():
            # Pages by iid, each its own query, so writes between pages cannot upset a cursor.
            last = 0
            while True:
                with self._mutex, self._errors("scan"):
                    page = self.db.conn.execute(
                        "SELECT iid, uuid, payload FROM points WHERE iid > ? ORDER BY iid LIMIT ?",
                        (last, PAGE),
                    ).fetchall()
                    records = self._records(page, names)
                yield from records
                if len(page) < PAGE:
                    return
                last = page[-1][0]
        with self._mutex, self._errors("scan"):
            sql, params = self._compiled(filter)
            try:
                iids = [r[0] for r in self.db.conn.execute(f"SELECT iid FROM ({sql}) ORDER BY iid", params)]
            finally:
                self.db.clear_pending()
        for start in range(0, len(iids), PAGE):  # points deleted meanwhile are left out
            with self._mutex, self._errors("scan"):
                page = self.db.select_in(
                    "SELECT iid, uuid, payload FROM points WHERE iid IN ({}) ORDER BY iid",
                    iids[start : start + PAGE],
                )
                records = self._records(page, names)
            yield from records

    def count(self, filter: Filter | None = None) -> int:
        with self._mutex, self._errors("count"):
            if filter is None or filter.is_empty():
                return int(self.db.conn.execute("SELECT COUNT(*) FROM points").fetchone()[0])
            sql, params = self._compiled(filter)
            try:
                return int(self.db.conn.execute(f"SELECT COUNT(*) FROM ({sql})", params).fetchone()[0])
            finally:
                self.db.clear_pending()

    # --- durability ----------------------------------------------------------------------

    def flush(self) -> None:
        with self._mutex, self._errors("flush"):
            for index in self._indexes.values():
                index.maintain()
                index.save()
            self.db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # syncs the WAL, then the database

    def close(self) -> None:
        with self._mutex:
            if self._db is None:
                return
            try:
                self.flush()
            finally:
                self._db.conn.close()
                self._db = None
                os.close(self._lock_fd)  # releases the flock
                for index in self._indexes.values():
                    index.release()

    def __enter__(self) -> FaissStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- introspection (tests, status) ---------------------------------------------------

    @property
    def index_kind(self) -> str:
        """The kind of the active vector's index now: flat, hnsw or ivfpq."""
        return self.stats()["kind"]

    def stats(self, using: str | None = None) -> dict[str, Any]:
        with self._mutex:
            _ = self.db
            return self._indexes[self.schema.vector(using).name].stats()

    def index_path(self, using: str | None = None) -> Path:
        return self._dir / index_file(self.schema.vector(using).storage_key)

    # --- internals -----------------------------------------------------------------------

    @property
    def db(self) -> Database:
        if self._db is None:
            raise StoreError(f"collection {self.name!r} is closed")
        return self._db

    def _label(self, spec: VectorSpec) -> str:
        return f"collection {self.name!r} vector {spec.name!r}"

    def _open_index(self, spec: VectorSpec) -> VectorIndex:
        table = self.db.vector_table(spec.storage_key, spec.dim)
        return VectorIndex(self._label(spec), self._dir / index_file(spec.storage_key), table, self.config)

    def _remove_stray_files(self) -> None:
        """Index files of dropped vectors, and temporary files of killed writers (we hold the lock)."""
        keep = {index_file(spec.storage_key) for spec in self.schema.vectors.values()}
        for path in [*self._dir.glob("index*.faiss"), *self._dir.glob(".index*.tmp")]:
            if path.name not in keep:
                path.unlink(missing_ok=True)

    def _begin_write(self) -> None:
        """The first write to a version-1 collection migrates it (one transaction), then says so in
        config.json; until then it stays readable by the previous release."""
        if self.db.legacy:
            self._stored = StoredInfo(self.schema, self._stored.info, legacy=False)
            self.db.migrate(self.schema, self._stored.document())
            self._vid_maps.clear()  # vids keep their values; read again all the same
            write_atomic(self._dir / CONFIG_FILE, json.dumps({"format": FORMAT}).encode())

    def _apply(self, gone: dict[str, TableRows], added: dict[str, TableRows]) -> None:
        """After a write commits: the vid maps and the in-memory indexes follow the vector tables (the
        maps first: numpy only, so an index that fails to change cannot leave them behind the table)."""
        for name, vid_map in self._vid_maps.items():
            removed, new = gone.get(name, NO_ROWS), added.get(name, NO_ROWS)
            vid_map.changed(removed.iids, new.iids, new.vids)
        for name, rows in gone.items():
            self._indexes[name].remove(rows.vids.tolist())
        for name, rows in added.items():
            assert rows.vectors is not None
            self._indexes[name].add(rows.vids, rows.vectors)

    def _insert_vectors(self, spec: VectorSpec, items: list[tuple[int, np.ndarray]]) -> TableRows:
        """New rows (fresh vids) for (iid, vector) pairs."""
        if not items:
            return NO_ROWS._replace(vectors=np.zeros((0, spec.dim), dtype=np.float32))
        table = table_name(spec.storage_key)
        vectors = normalised(np.stack([v for _, v in items]))
        first = self.db.sequence(table) + 1
        vids = np.arange(first, first + len(items), dtype=np.int64)
        self.db.conn.executemany(
            f'INSERT INTO "{table}" (vid, iid, vector) VALUES (?, ?, ?)',
            [(int(vid), iid, v.tobytes()) for vid, (iid, _), v in zip(vids, items, vectors, strict=True)],
        )
        return TableRows(np.array([iid for iid, _ in items], dtype=np.int64), vids, vectors)

    def _delete_vectors(self, spec: VectorSpec, iids: list[int]) -> TableRows:
        table = table_name(spec.storage_key)
        rows = self.db.select_in(f'SELECT iid, vid FROM "{table}" WHERE iid IN ({{}})', iids)
        self.db.select_in(f'DELETE FROM "{table}" WHERE iid IN ({{}})', iids)
        pairs = np.array(rows, dtype=np.int64).reshape(-1, 2)
        return TableRows(pairs[:, 0], pairs[:, 1])

    def _delete_iids(self, iids: list[int]) -> dict[str, TableRows]:
        """Remove points everywhere; the rows they had, by vector name (their vids: tombstones to be)."""
        gone = {spec.name: self._delete_vectors(spec, iids) for spec in self.schema.vectors.values()}
        self.db.select_in("DELETE FROM points WHERE iid IN ({})", iids)
        self.db.select_in("DELETE FROM fields WHERE iid IN ({})", iids)
        if self.db.has_keyword():
            self.db.delete_keyword(iids)
        return gone

    def _ensure_keyword(self) -> None:
        """The keyword table of a collection that declared text fields before keyword search
        existed is built at its first keyword search or write (inside the caller's transaction
        for writes)."""
        db = self.db
        if not db.has_keyword() and text_fields(self.schema):
            if db.conn.in_transaction:
                db.rebuild_keyword(text_fields(self.schema))
            else:
                with db.transaction():
                    db.rebuild_keyword(text_fields(self.schema))

    def _compiled(self, store_filter: Filter, distinct: bool = True) -> tuple[str, list[Any]]:
        db = self.db
        fields = {} if db.legacy else {payload_path(f): f for f in self.schema.fields}
        vectors = {name: db.vectors_from(spec.storage_key) for name, spec in self.schema.vectors.items()}
        return compile_filter(store_filter, Context(db, fields, vectors), distinct=distinct)

    def _filtered_vids(self, spec: VectorSpec, store_filter: Filter) -> np.ndarray:
        """The vids of the points that pass, ascending: iids from SQL, vids from the vid map."""
        sql, params = self._compiled(store_filter, distinct=False)  # the map dedupes faster
        try:
            rows = self.db.conn.execute(sql, params)
            iids = np.fromiter((row[0] for row in rows), dtype=np.int64)
        finally:
            self.db.clear_pending()
        vid_map = self._vid_maps.get(spec.name)
        if vid_map is None:
            table = self.db.vector_table(spec.storage_key, spec.dim)
            vid_map = self._vid_maps[spec.name] = VidMap(table.iid_vid_pairs)
        return vid_map.vids_of(iids)

    def _records(self, rows: Sequence[tuple[Any, ...]], names: list[str]) -> list[Record]:
        """Records for (iid, uuid, payload) rows, with the named vectors each point has."""
        vectors: dict[int, dict[str, np.ndarray]] = {}
        for name in names:
            spec = self.schema.vectors[name]
            source = self.db.vectors_from(spec.storage_key)
            for iid, blob in self.db.select_in(
                f"SELECT iid, vector FROM {source} WHERE iid IN ({{}})", [r[0] for r in rows]
            ):
                vectors.setdefault(iid, {})[name] = np.frombuffer(blob, dtype="<f4").astype(np.float32)
        return [Record(id=uuid, vectors=vectors.get(iid, {}), payload=json.loads(p)) for iid, uuid, p in rows]

    def _payload_json(self, record: Record) -> str:
        try:
            return json.dumps(record.payload)
        except (TypeError, ValueError) as exc:
            raise StoreError(f"collection {self.name!r}: payload of {record.id} is not JSON: {exc}") from exc

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """sqlite3 and faiss raise their own errors; callers get StoreError naming the collection."""
        try:
            yield
        except StoreError:
            raise
        except (sqlite3.Error, RuntimeError, OSError) as exc:
            raise StoreError(f"collection {self.name!r}: {action} failed: {exc}") from exc


def _vector_changes(
    old: CollectionSchema, new: CollectionSchema
) -> tuple[list[VectorSpec], list[VectorSpec]]:
    """(added, dropped) vectors; SchemaError for a kept vector whose storage would have to change."""
    for name in set(old.vectors) & set(new.vectors):
        before, after = old.vectors[name], new.vectors[name]
        if (before.storage_key, before.model, before.distance) != (
            after.storage_key,
            after.model,
            after.distance,
        ):
            raise SchemaError(
                f"vector {name!r} keeps its model and storage once created; add a vector under another name "
                f"(`clipsearch reembed --vector NAME`) instead"
            )
    added = [spec for name, spec in new.vectors.items() if name not in old.vectors]
    dropped = [spec for name, spec in old.vectors.items() if name not in new.vectors]
    taken = {spec.storage_key for spec in old.vectors.values()}
    keys = [spec.storage_key for spec in added]
    if len(set(keys)) < len(keys) or taken & set(keys):
        raise SchemaError(
            f"new vectors {', '.join(s.name for s in added)} would reuse a storage key of this collection"
        )
    return added, dropped
