"""The SQLite side of the FAISS store: the source of truth, its layout, and the version-1 migration.

Layout 2 (`points.sqlite`, WAL):
- `points(iid, uuid, payload)`: one row per point; every stored version of a point gets a fresh
  `iid` (AUTOINCREMENT: never reused).
- `"vectors:<key>"(vid, iid, vector)` per schema vector (its storage key): `vid` is the FAISS id,
  fresh for every stored vector (never reused), so an index file and its table reconcile by set
  difference even after `update_vectors` changed a point's vector; float32 blobs, L2-normalised.
- `fields(iid, field, kind, num, text, lon)`: the values of declared fields (arrays as several
  rows), indexed so that filters run as SQL (prefilter.py). `kind` keeps types apart as the
  reference semantics do (true is not 1): numbers in `num`; bools 0/1 in `num`; strings in `text`,
  with `num` the epoch microseconds when the string is a datetime; geo points lat in `num`, lon in
  `lon`; anything else (objects, NaN) a row that matches no value but is not empty.
- `meta(key, value)`: `info`, the collection's info document (schema included, base.StoredInfo),
  and `layout`.
- `keyword` (FTS5, rowid = iid), once text fields are declared: each point's keyword document
  (`indexer.stores.keyword.document`), points with an empty one left out; keyword search ranks by bm25().

Layout 1 (the previous release, no `layout` row): `vectors(iid, vector)` keyed by point iid (the
FAISS ids of `index.faiss`), no fields table. It is read as it is (vids are iids) until the first
write, which migrates it in one transaction (`migrate`).
"""

from __future__ import annotations

import contextlib
import json
import math
import sqlite3
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np

from indexer.schema import CollectionSchema, payload_path
from indexer.stores.filters import Filter, haversine_m, matches, parse_datetime, values_at
from indexer.stores.keyword import FTS_TOKENIZER, document, text_fields

LAYOUT = 2
PAGE = 1024  # rows per step when paging through a table
SQL_CHUNK = 500  # values per `IN (...)`

# kinds of field rows
NUMBER, BOOL, STRING, GEO, GEO_ODD, OTHER = range(6)  # GEO_ODD: coordinates outside the globe

TABLES = """
CREATE TABLE IF NOT EXISTS points (
    iid INTEGER PRIMARY KEY AUTOINCREMENT, uuid TEXT NOT NULL UNIQUE, payload TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS fields (
    iid INTEGER NOT NULL, field TEXT NOT NULL, kind INTEGER NOT NULL, num, text TEXT, lon REAL);
CREATE INDEX IF NOT EXISTS fields_text ON fields (field, text, iid);
CREATE INDEX IF NOT EXISTS fields_num ON fields (field, kind, num, iid);
CREATE INDEX IF NOT EXISTS fields_iid ON fields (iid);
"""
# `num` has no type on purpose: integers stay exact integers (match), datetimes exact microseconds.

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, check_same_thread=False)  # the store serialises access itself
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")  # survives SIGKILL; flush() checkpoints for power loss
    conn.create_function("clip_haversine", 4, _haversine, deterministic=True)
    return conn


def table_name(key: str) -> str:
    return f"vectors:{key}"


def epoch_us(value: Any) -> int | None:
    """Exact microseconds since 1970 of a datetime string, as `filters.parse_datetime` reads it."""
    moment = parse_datetime(value)
    if moment is None:
        return None
    try:
        return (moment - _EPOCH) // timedelta(microseconds=1)
    except OverflowError:
        return None


def encode(value: Any) -> tuple[int, Any, str | None, float | None]:
    """A payload value as a fields row (kind, num, text, lon)."""
    if isinstance(value, bool):
        return (BOOL, int(value), None, None)
    if isinstance(value, int):
        # beyond int64 SQLite cannot store it; as a float it still ranges as the reference does
        return (NUMBER, value if -(2**63) <= value < 2**63 else float(value), None, None)
    if isinstance(value, float):
        return (NUMBER, value, None, None) if not math.isnan(value) else (OTHER, None, None, None)
    if isinstance(value, str):
        return (STRING, epoch_us(value), value, None)
    if isinstance(value, dict) and _number(value.get("lat")) and _number(value.get("lon")):
        lat, lon = value["lat"], value["lon"]
        if abs(lat) <= 90 and abs(lon) <= 180:
            return (GEO, lat, None, lon)
        return (GEO_ODD, float(lat), None, float(lon))  # off the globe: no bounding box applies
    return (OTHER, None, None, None)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def field_rows(iid: int, payload: dict[str, Any], fields: Sequence[str]) -> list[tuple[Any, ...]]:
    return [
        (iid, name, *encode(value)) for name in fields for value in values_at(payload, payload_path(name))
    ]


def _haversine(lat1: float, lon1: float, lat2: float, lon2: float) -> float | None:
    try:
        return haversine_m(lat1, lon1, lat2, lon2)
    except (TypeError, ValueError):
        return None


class Database:
    """The SQLite database of one collection; callers serialise access and handle sqlite3 errors."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.legacy = self.meta("layout") != str(LAYOUT)
        self._pending: list[Filter] = []  # conditions evaluated in Python (see `python_match`)
        conn.create_function("clip_match", 2, self._match, deterministic=True)

    def transaction(self) -> contextlib.AbstractContextManager[None]:
        return transaction(self.conn)

    # --- meta ----------------------------------------------------------------------------

    def meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def document(self) -> dict[str, Any]:
        text = self.meta("info")
        return json.loads(text) if text else {}

    def set_document(self, document: dict[str, Any]) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('info', ?)",
            (json.dumps(document, sort_keys=True),),
        )

    # --- migration -----------------------------------------------------------------------

    def migrate(self, schema: CollectionSchema, document: dict[str, Any]) -> None:
        """Layout 1 to 2 in one transaction: the vectors keep their ids (so index.faiss stays valid),
        the declared fields are filled from the payloads, and the version-2 info document is written."""
        with self.transaction():
            _create_tables(self.conn)  # fields and its indexes
            create_vector_table(self.conn, "")
            self.conn.execute(
                f'INSERT INTO "{table_name("")}" (vid, iid, vector) SELECT iid, iid, vector FROM vectors'
            )
            self.conn.execute("DROP TABLE vectors")
            # New vids must pass every iid ever used: deleted ones may still be in index.faiss.
            self.raise_sequence(table_name(""), self.sequence("points"))
            self.backfill(list(schema.fields))
            self.conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('layout', ?)", (str(LAYOUT),))
            self.set_document(document)
        self.legacy = False

    # --- sequences -----------------------------------------------------------------------

    def sequence(self, table: str) -> int:
        row = self.conn.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)).fetchone()
        return int(row[0]) if row else 0

    def raise_sequence(self, table: str, at_least: int) -> None:
        if self.sequence(table) < at_least:
            self.conn.execute("DELETE FROM sqlite_sequence WHERE name = ?", (table,))
            self.conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)", (table, at_least))

    # --- vectors -------------------------------------------------------------------------

    def vectors_from(self, key: str) -> str:
        """A FROM-clause source with columns vid, iid, vector for the vector with this storage key."""
        if self.legacy:  # layout 1: one table keyed by point iid, which is also the FAISS id
            return "(SELECT iid AS vid, iid AS iid, vector FROM vectors)"
        return f'"{table_name(key)}"'

    def vector_table(self, key: str, dim: int) -> VectorTable:
        return VectorTable(self, key, dim)

    # --- fields --------------------------------------------------------------------------

    def insert_fields(self, rows: Sequence[tuple[Any, ...]]) -> None:
        self.conn.executemany(
            "INSERT INTO fields (iid, field, kind, num, text, lon) VALUES (?, ?, ?, ?, ?, ?)", rows
        )

    def backfill(self, fields: Sequence[str]) -> None:
        """Rows for newly declared fields, from every point's payload."""
        if not fields:
            return
        last = 0
        while page := self.conn.execute(
            "SELECT iid, payload FROM points WHERE iid > ? ORDER BY iid LIMIT ?", (last, PAGE)
        ).fetchall():
            self.insert_fields([r for iid, text in page for r in field_rows(iid, json.loads(text), fields)])
            last = page[-1][0]

    # --- keyword documents (FTS5) ----------------------------------------------------------

    def has_keyword(self) -> bool:
        found = self.conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'keyword'").fetchone()
        return found is not None

    def insert_keyword(self, docs: Sequence[tuple[int, dict[str, Any]]], fields: Sequence[str]) -> None:
        """Documents of (iid, payload) pairs; the caller removed the iids' old ones."""
        rows = [(iid, text) for iid, payload in docs if (text := document(payload, fields))]
        self.conn.executemany("INSERT INTO keyword (rowid, doc) VALUES (?, ?)", rows)

    def delete_keyword(self, iids: Sequence[int]) -> None:
        self.select_in("DELETE FROM keyword WHERE rowid IN ({})", list(iids))

    def rebuild_keyword(self, fields: Sequence[str]) -> None:
        """The keyword table for these text fields, from every point's payload (none: no table)."""
        self.conn.execute("DROP TABLE IF EXISTS keyword")
        if not fields:
            return
        self.conn.execute(f"CREATE VIRTUAL TABLE keyword USING fts5(doc, tokenize='{FTS_TOKENIZER}')")
        last = 0
        while page := self.conn.execute(
            "SELECT iid, payload FROM points WHERE iid > ? ORDER BY iid LIMIT ?", (last, PAGE)
        ).fetchall():
            self.insert_keyword([(iid, json.loads(text)) for iid, text in page], fields)
            last = page[-1][0]

    # --- reading -------------------------------------------------------------------------

    def select_in(self, sql: str, values: Sequence[Any], *params: Any) -> list[tuple[Any, ...]]:
        """`sql` with `{}` standing for the marks of `IN ({})`, run over `values` in chunks."""
        rows: list[tuple[Any, ...]] = []
        for start in range(0, len(values), SQL_CHUNK):
            chunk = list(values[start : start + SQL_CHUNK])
            rows += self.conn.execute(sql.format(",".join("?" * len(chunk))), [*params, *chunk]).fetchall()
        return rows

    def iids_for(self, uuids: Sequence[str]) -> dict[str, int]:
        return {
            u: int(i) for i, u in self.select_in("SELECT iid, uuid FROM points WHERE uuid IN ({})", uuids)
        }

    # --- conditions the SQL cannot express (fields without rows) --------------------------

    def python_match(self, condition: Filter) -> int:
        """Register a condition for `clip_match(token, payload)`; returns its token."""
        self._pending.append(condition)
        return len(self._pending) - 1

    def clear_pending(self) -> None:
        self._pending.clear()

    def _match(self, token: int, payload: str) -> bool:
        return matches(self._pending[token], "", json.loads(payload))


def create_database(conn: sqlite3.Connection, schema: CollectionSchema, document: dict[str, Any]) -> None:
    """The tables of a new collection (layout 2), with its info document."""
    with transaction(conn):
        _create_tables(conn)
        for spec in schema.vectors.values():
            create_vector_table(conn, spec.storage_key)
        if text_fields(schema):
            conn.execute(f"CREATE VIRTUAL TABLE keyword USING fts5(doc, tokenize='{FTS_TOKENIZER}')")
        conn.execute("INSERT INTO meta (key, value) VALUES ('layout', ?)", (str(LAYOUT),))
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('info', ?)", (json.dumps(document, sort_keys=True),)
        )


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """One transaction, DDL included (sqlite3 would run a leading CREATE in autocommit mode)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.rollback()
        raise
    conn.commit()


def _create_tables(conn: sqlite3.Connection) -> None:
    for statement in TABLES.split(";"):  # not executescript, which commits first
        if statement.strip():
            conn.execute(statement)


def create_vector_table(conn: sqlite3.Connection, key: str) -> None:
    conn.execute(
        f'CREATE TABLE IF NOT EXISTS "{table_name(key)}" ('
        "vid INTEGER PRIMARY KEY AUTOINCREMENT, iid INTEGER NOT NULL UNIQUE, vector BLOB NOT NULL)"
    )


class VectorTable:
    """The vectors of one storage key: what its FAISS index is built from (index.VectorSource)."""

    def __init__(self, db: Database, key: str, dim: int) -> None:
        self.db = db
        self.key = key
        self.dim = dim

    @property
    def source(self) -> str:
        return self.db.vectors_from(self.key)

    def live_ids(self) -> np.ndarray:
        rows = self.db.conn.execute(f"SELECT vid FROM {self.source} ORDER BY vid")
        return np.fromiter((r[0] for r in rows), dtype=np.int64)

    def iid_vid_pairs(self) -> np.ndarray:
        """Every row's (iid, vid), as an (n, 2) array."""
        rows = self.db.conn.execute(f"SELECT iid, vid FROM {self.source}")
        return np.fromiter((n for row in rows for n in row), dtype=np.int64).reshape(-1, 2)

    def vectors_for(self, ids: np.ndarray) -> np.ndarray:
        found = dict(
            self.db.select_in(f"SELECT vid, vector FROM {self.source} WHERE vid IN ({{}})", ids.tolist())
        )
        return self.matrix([found[int(i)] for i in ids])

    def pages(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        last = -(2**63)
        while rows := self.db.conn.execute(
            f"SELECT vid, vector FROM {self.source} WHERE vid > ? ORDER BY vid LIMIT ?", (last, 8 * PAGE)
        ).fetchall():
            yield np.array([r[0] for r in rows], dtype=np.int64), self.matrix([r[1] for r in rows])
            last = rows[-1][0]

    def matrix(self, blobs: Sequence[bytes]) -> np.ndarray:
        return np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(blobs), self.dim).astype(np.float32)
