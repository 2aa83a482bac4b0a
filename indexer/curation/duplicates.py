"""Duplicate images in a collection: exact copies (same bytes) and near copies (same picture).

- Exact: the sha256 of the file, taken at index time (indexer.ingest.batches) into metadata `sha256`.
- Near, two independent signals, either of which links two items; groups are their transitive closure:
  - the CLIP vectors: cosine >= threshold, found through the store's own nearest-neighbour search,
    and much closer than the item's k-th neighbour (LOCAL_RATIO: no links from a model that finds
    every photo alike, as random weights do);
  - a perceptual hash (metadata `phash`), which knows nothing of the model, so it finds resized,
    re-encoded, cropped and bordered copies whatever the weights. It is several 64-bit pHash + dHash
    pairs, one per view of the image: the image inside any plain border, its centre without 5% of each
    side (what a cropped copy shows), and the untrimmed image. Two items match when some pair of
    views is within HASH_DISTANCE bits on pHash AND within DHASH_DISTANCE on dHash: two hashes of
    different kinds must agree, which keeps different photos apart (tests/test_duplicates.py).
- Each group keeps the largest image (width x height), then the oldest (EXIF `taken`, else the file's
  modification time); nothing here ever deletes a file.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from indexer.ingest.decode import decode_image
from indexer.ingest.hashes import HASH_FIELDS, HASH_SIDE, image_hashes, parse_phash

if TYPE_CHECKING:
    from indexer.stores import VectorStore

DEFAULT_THRESHOLD = 0.95  # CLIP cosine of near duplicates (real CLIP models: re-encodes score ~0.98+)
HASH_DISTANCE = 12  # pHash bits (of 64) between two views of the same picture
DHASH_DISTANCE = 14  # dHash bits (of 64) that must also agree (measured: docs/curation-duplicates.md)
NEIGHBOURS = 10
LOCAL_RATIO = 0.25  # a CLIP link's distance, at most this fraction of the k-th neighbour's
WRITE_BATCH = 512


# --- missing hashes ---------------------------------------------------------------------------


def fill_missing_hashes(store: VectorStore, payloads: dict[str, dict[str, Any]], progress: bool) -> int:
    """Hash, from their files, the items indexed before hashes were taken; store and return how many.
    `payloads` (id -> payload) is updated in place. Unreadable files are left without hashes."""
    missing = [i for i, p in payloads.items() if not {"sha256", "phash"} <= set(p.get("metadata") or {})]
    if not missing:
        return 0
    declared = {f: t for f, t in HASH_FIELDS.items() if f not in store.schema.fields}
    if declared:
        store.set_schema(store.schema.with_fields(declared))
    done, batch = 0, {}
    for id_ in tqdm(missing, desc="hashing files", unit="img", disable=not progress):
        payload = payloads[id_]
        path = payload.get("path") or payload.get("uri", "")
        try:
            hashes = image_hashes(path, decode_image(path, draft_size=HASH_SIDE))
        except Exception:  # a vanished or broken file: its item simply has no hashes (CLIP still applies)
            continue
        payload["metadata"] = {**(payload.get("metadata") or {}), **hashes}
        batch[id_] = payload
        done += 1
        if len(batch) >= WRITE_BATCH:
            store.set_payloads(batch)
            batch = {}
    if batch:
        store.set_payloads(batch)
    store.flush()
    return done


# --- grouping ----------------------------------------------------------------------------------


class UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def groups(self) -> list[list[int]]:
        by_root: dict[int, list[int]] = {}
        for i in range(len(self.parent)):
            by_root.setdefault(self.find(i), []).append(i)
        return [g for g in by_root.values() if len(g) > 1]


def hash_pairs(codes: Sequence[np.ndarray | None], distance: int = HASH_DISTANCE,
               dhash_distance: int = DHASH_DISTANCE) -> list[tuple[int, int, int]]:
    """(a, b, pHash bits) for every pair of items with some pair of views within both distances: the
    first (border-trimmed) view of one against every view of the other, so a cropped or bordered
    copy meets the original's matching view. pHash candidates come from a FAISS binary range search
    (numpy in blocks without FAISS); their dHash is then checked."""
    rows = [(i, view) for i, c in enumerate(codes) if c is not None for view in range(len(c))]
    if len(rows) < 2:
        return []
    table = np.array([codes[i][view] for i, view in rows], dtype=np.uint64)  # type: ignore[index]
    owner = np.array([i for i, _ in rows])
    queries = [n for n, (_, view) in enumerate(rows) if view == 0]
    q_rows, t_rows = _phash_candidates(table[:, 0], queries, distance)
    dbits = np.bitwise_count(table[q_rows, 1] ^ table[t_rows, 1])
    pbits = np.bitwise_count(table[q_rows, 0] ^ table[t_rows, 0])
    found: dict[tuple[int, int], int] = {}
    for qr, tr, p, d in zip(q_rows, t_rows, pbits, dbits, strict=True):
        a, b = int(owner[qr]), int(owner[tr])
        if a != b and d <= dhash_distance:
            key = (min(a, b), max(a, b))
            found[key] = min(found.get(key, 64), int(p))
    return [(a, b, d) for (a, b), d in sorted(found.items())]


def _phash_candidates(
    phashes: np.ndarray, queries: list[int], distance: int
) -> tuple[np.ndarray, np.ndarray]:
    """(query row, table row) pairs whose pHash differ by at most `distance` bits."""
    try:
        import faiss
    except ImportError:
        faiss = None
    if faiss is not None:
        index = faiss.IndexBinaryFlat(64)
        index.add(phashes.astype(">u8").view(np.uint8).reshape(-1, 8))
        q = phashes[queries].astype(">u8").view(np.uint8).reshape(-1, 8)
        limits, _, found = index.range_search(q, distance + 1)  # results below the radius
        return np.repeat(np.array(queries), np.diff(limits).astype(np.int64)), found.astype(np.int64)
    q_rows, t_rows = [], []
    block = max(1, 2_000_000 // len(phashes))
    for start in range(0, len(queries), block):
        chunk = np.array(queries[start : start + block])
        qa, tb = np.nonzero(np.bitwise_count(phashes[chunk][:, None] ^ phashes[None, :]) <= distance)
        q_rows.append(chunk[qa])
        t_rows.append(tb)
    return np.concatenate(q_rows), np.concatenate(t_rows)


@dataclass
class _Item:
    id: str
    payload: dict[str, Any]

    @property
    def metadata(self) -> dict[str, Any]:
        return self.payload.get("metadata") or {}

    def keep_order(self) -> tuple[Any, ...]:
        """Sort key: largest first, then oldest (EXIF date taken, else file mtime), then by uri."""
        pixels = int(self.metadata.get("width") or 0) * int(self.metadata.get("height") or 0)
        return (-pixels, self._age(), self.payload.get("uri", ""))

    def size(self) -> list[int] | None:
        width, height = self.metadata.get("width"), self.metadata.get("height")
        return [width, height] if isinstance(width, int) and isinstance(height, int) else None

    def date(self) -> str | None:
        taken = self.metadata.get("taken")
        if isinstance(taken, str) and taken:
            return taken  # as the camera wrote it (its clock, with its zone when known)
        age = self._age()
        if age == float("inf"):
            return None
        from datetime import datetime, timezone

        return datetime.fromtimestamp(age, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

    def _age(self) -> float:
        taken = self.metadata.get("taken")
        if isinstance(taken, str):
            from datetime import datetime

            try:
                return datetime.fromisoformat(taken.replace("Z", "+00:00")).timestamp()
            except ValueError:
                pass
        try:  # the fingerprint is "size:mtime_ns" (indexer.ingest.sources)
            return int(str(self.payload.get("fingerprint", "")).split(":")[1]) / 1e9
        except (IndexError, ValueError):
            return float("inf")


def find_duplicates(
    store: VectorStore,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    hash_distance: int = HASH_DISTANCE,
    neighbours_k: int = NEIGHBOURS,
    vector: str | None = None,
    compute_missing: bool = True,
    progress: bool = False,
) -> dict[str, Any]:
    """The duplicate report of a collection: {"groups": [{"kind": "exact"|"near", "keep", "others",
    "scores", "ids"}], "items", "hashed", "threshold", "hash_distance", "seconds"}. `ids` are the keeper's
    then the others'; scores are the others' CLIP cosine to the keeper (1.0 for byte copies).
    `threshold` > 1 turns the CLIP path off; `hash_distance` < 0 the perceptual one."""
    from indexer.curation.clusters import load_vectors, neighbours

    started = time.perf_counter()
    ids, payload_list, x = load_vectors(store, vector)
    payloads = dict(zip(ids, payload_list, strict=True))
    hashed = fill_missing_hashes(store, payloads, progress) if compute_missing else 0
    items = [_Item(i, payloads[i]) for i in ids]

    # Exact: same bytes. Only each exact group's keeper goes on to the near search.
    by_sha: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        sha = item.metadata.get("sha256")
        by_sha.setdefault(sha if isinstance(sha, str) else f"\0{i}", []).append(i)
    groups: list[dict[str, Any]] = []
    representatives = []
    for members in by_sha.values():
        members.sort(key=lambda i: items[i].keep_order())
        representatives.append(members[0])
        if len(members) > 1:
            groups.append(_group("exact", [items[i] for i in members], [1.0] * (len(members) - 1)))

    # Near: CLIP neighbours through the store, and perceptual hashes; linked transitively.
    position = {rep: r for r, rep in enumerate(representatives)}
    links = UnionFind(len(representatives))
    if threshold <= 1.0 and len(ids) > 1:
        found, scores = neighbours(
            store, ids, x, min(neighbours_k, len(ids) - 1), using=vector, progress=progress, what="neighbours"
        )
        # The k-th neighbour's distance is how far "another photo" is around each item; a link must
        # also be LOCAL_RATIO of that. It changes nothing for real CLIP models (other photos sit far
        # below the threshold) and keeps a model that finds everything alike (random weights) from
        # linking the whole collection.
        background = 1.0 - np.where(np.isfinite(scores[:, -1]), scores[:, -1], -1.0)
        for i, row in enumerate(found):
            for j, score in zip(row, scores[i], strict=True):
                local = 1.0 - score <= LOCAL_RATIO * max(background[i], background[j])
                if j >= 0 and score >= threshold and local and i in position and int(j) in position:
                    links.union(position[i], position[int(j)])
    if hash_distance >= 0:
        codes = [parse_phash(str(items[i].metadata.get("phash", ""))) for i in representatives]
        for a, b, _ in hash_pairs(codes, hash_distance):
            links.union(a, b)
    for group in links.groups():
        members = sorted((representatives[r] for r in group), key=lambda i: items[i].keep_order())
        keep = members[0]
        cosines = [round(float(x[keep] @ x[i]), 6) for i in members[1:]]
        order = sorted(range(len(cosines)), key=lambda n: (-cosines[n], items[members[n + 1]].keep_order()))
        ordered = [members[0], *(members[n + 1] for n in order)]
        groups.append(_group("near", [items[i] for i in ordered], [cosines[n] for n in order]))
    groups.sort(key=lambda g: (g["kind"] != "exact", -len(g["others"]), g["keep"]))
    return {
        "groups": groups,
        "items": len(ids),
        "hashed": hashed,
        "threshold": threshold,
        "hash_distance": hash_distance,
        "seconds": round(time.perf_counter() - started, 3),
    }


def _group(kind: str, members: list[_Item], scores: list[float]) -> dict[str, Any]:
    return {
        "kind": kind,
        "keep": members[0].payload.get("uri", ""),
        "others": [m.payload.get("uri", "") for m in members[1:]],
        "scores": scores,
        "ids": [m.id for m in members],
        # What the keeper rule compared, per member (keeper first): [width, height] and the date it
        # counted (EXIF taken, else the file's modification time; RFC 3339, null when unknown).
        "sizes": [m.size() for m in members],
        "dates": [m.date() for m in members],
    }
