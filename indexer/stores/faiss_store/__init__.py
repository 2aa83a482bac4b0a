"""The FAISS backend: FAISS indexes in process, SQLite as the source of truth.

Layout under `collection_dir(name)/faiss/`:
- `config.json`         `{"format": 2}` (version 1: `{"dim": D, "format": 1}`); its presence makes
                        the collection.
- `points.sqlite`       (WAL) points, one vector table per schema vector, the indexed field values
                        and the info document with the schema; see db.py.
- `index-<key>.faiss`   the FAISS index of the vector with that storage key (`index.faiss` for the
                        vector of a version-1 collection): a cache of its table, see index.py.
- `lock`                flock'd while a store is open: one open store per collection, as with edge.

Modules: db.py (tables, migration, field rows), prefilter.py (filters as SQL), index.py (FAISS
indexes), vid_map.py (point iid -> vector id in memory, for filtered search), store.py (FaissStore).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
from pathlib import Path

from indexer.durable import fsync_dir, write_atomic
from indexer.errors import CollectionBusy, CollectionNotFound, StoreError
from indexer.schema import CollectionSchema
from indexer.settings import Settings
from indexer.stores.base import StoredInfo
from indexer.stores.faiss_store.db import Database, connect, create_database
from indexer.stores.faiss_store.index import FaissConfig, config_from
from indexer.stores.faiss_store.store import (
    CONFIG_FILE,
    DB_FILE,
    FORMAT,
    LOCK_FILE,
    STORE_DIR,
    FaissStore,
    index_file,
)

try:
    import fcntl
except ImportError:  # Windows: no flock; a second writer is then not refused
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "CONFIG_FILE", "DB_FILE", "FaissConfig", "FaissStore", "LOCK_FILE", "STORE_DIR", "config_from", "create",
    "drop", "exists", "index_file", "list_collections", "load", "store_path",
]  # fmt: skip


def store_path(settings: Settings, name: str) -> Path:
    return settings.collection_dir(name) / STORE_DIR


def exists(settings: Settings, name: str) -> bool:
    return (store_path(settings, name) / CONFIG_FILE).is_file()


def create(
    settings: Settings, name: str, schema: CollectionSchema, config: FaissConfig | None = None
) -> FaissStore:
    """Build the collection in a temporary directory and rename it into place, so a crash
    mid-creation never leaves a half-made collection that looks real."""
    final = store_path(settings, name)
    tmp = final.with_name(f"{STORE_DIR}.creating-{os.getpid()}")
    final.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        conn = connect(tmp / DB_FILE)
        try:
            create_database(conn, schema, StoredInfo(schema, {}, legacy=False).document())
        finally:
            conn.close()
        write_atomic(tmp / CONFIG_FILE, json.dumps({"format": FORMAT}).encode())
        os.replace(tmp, final)
    except OSError as exc:  # another process created it first, or the disk refused
        shutil.rmtree(tmp, ignore_errors=True)
        if not exists(settings, name):
            raise StoreError(f"collection {name!r}: cannot create {final}: {exc}") from exc
    except sqlite3.Error as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise StoreError(f"collection {name!r}: cannot create {final}: {exc}") from exc
    fsync_dir(final.parent)
    return load(settings, name, config)


def load(settings: Settings, name: str, config: FaissConfig | None = None, background: bool = False
         ) -> FaissStore:
    """`background` is ignored: the store opens at once."""
    path = store_path(settings, name)
    if not exists(settings, name):
        raise CollectionNotFound(
            f"collection {name!r} does not exist in the faiss store (no {path / CONFIG_FILE})"
        )
    lock = _lock(path, name)
    conn = None
    try:
        conn = connect(path / DB_FILE)
        db = Database(conn)
        stored = StoredInfo.parse(db.document())
        if stored.schema is None:
            raise StoreError(
                f"collection {name!r} has no recorded model (its first index run was interrupted); "
                f"delete {settings.collection_dir(name)} and index again"
            )
        return FaissStore(name, path, db, lock, config or config_from(settings), stored)
    except BaseException as exc:
        if conn is not None:
            conn.close()
        os.close(lock)
        if isinstance(exc, sqlite3.Error):
            raise StoreError(f"collection {name!r}: cannot open {path / DB_FILE}: {exc}") from exc
        raise


def list_collections(settings: Settings) -> list[str]:
    root = settings.home / "collections"
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / STORE_DIR / CONFIG_FILE).is_file())


def drop(settings: Settings, name: str) -> None:
    """Delete the collection; a missing one is ignored, one open elsewhere refused (CollectionBusy)."""
    path = store_path(settings, name)
    if not exists(settings, name):
        return
    lock = _lock(path, name)  # refuses a collection open elsewhere instead of tearing it down
    try:
        # Rename first: a crash mid-delete then leaves no half-deleted collection behind.
        doomed = path.with_name(f"{STORE_DIR}.dropping-{os.getpid()}")
        os.replace(path, doomed)
        shutil.rmtree(doomed)
    finally:
        os.close(lock)
    with contextlib.suppress(OSError):  # other stores may keep files for this name there
        settings.collection_dir(name).rmdir()


def _lock(path: Path, name: str) -> int:
    fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise CollectionBusy(
                f"collection {name!r} is already open elsewhere (an index run, or the API server); stop that "
                f"process, or use `clipsearch serve --watch FOLDER` / the API to write while it serves, or "
                f"CLIPSEARCH_STORE=qdrant for concurrent access"
            ) from None
    return fd
