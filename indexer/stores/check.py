"""`clipsearch check`: verify a collection's stored data, and say what to do about what is wrong.

Corruption must be reported, never served (a vector of random bytes scores 1e38 against any query).
The check reads every point once, with its vectors, and verifies:
- vectors: every stored vector is finite, of the schema's dimension and unit-norm (every vector is
  stored for cosine, which the engines normalise on write); a `ready` vector is on every point;
- payloads: each a JSON object with a `uri` (a string) and, if present, `metadata` an object;
- counts: the store's own count agrees with the points read, and with each ready vector's count;
- indexes: each declared field has its payload index (stores that can list theirs);
- files on disk: the image file each item was read from is still there (a stale item, not corruption:
  the next index run drops it).
What cannot be opened at all (a damaged shard, info document or WAL) is the open's own error, reported
by whoever opens it.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from indexer.locking import collection_lock
from indexer.settings import Settings
from indexer.stores import open_store
from indexer.stores.base import VectorStore

# How far from 1 a stored vector's norm may be: float32 rounding leaves ~1e-7; int8 storage is not read.
NORM_TOLERANCE = 1e-3
# How far outside [-1, 1] a cosine score may be (rounding, and int8 scores not rescored).
SCORE_TOLERANCE = 1e-2
IDS_SHOWN = 20  # ids listed per problem; `count` has them all

Severity = Literal["corrupt", "stale"]


@dataclass
class Problem:
    kind: str  # vectors, missing_vector, payload, count, index, files
    severity: Severity
    message: str
    count: int = 0
    ids: list[str] = field(default_factory=list)  # all of them (summaries show the first IDS_SHOWN)
    advice: str = ""

    def summary(self) -> dict[str, Any]:
        return {**asdict(self), "ids": self.ids[:IDS_SHOWN]}


@dataclass
class CheckReport:
    collection: str
    points: int = 0
    vectors: dict[str, int] = field(default_factory=dict)  # vector -> points that have it
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No corruption (stale items, whose files are gone, are reported but are not corruption)."""
        return not any(p.severity == "corrupt" for p in self.problems)

    def summary(self) -> dict[str, Any]:
        return {"collection": self.collection, "ok": self.ok, "points": self.points, "vectors": self.vectors,
                "problems": [p.summary() for p in self.problems], "line": self.line()}

    def line(self) -> str:
        """One line for a person: ok, or the first corrupt problem and its advice."""
        if self.ok:
            stale = sum(p.count for p in self.problems)
            extra = f" ({stale} items whose files are gone: the next index run drops them)" if stale else ""
            return f"collection {self.collection!r} is ok: {self.points} points checked{extra}"
        worst = next(p for p in self.problems if p.severity == "corrupt")
        more = len([p for p in self.problems if p.severity == "corrupt"]) - 1
        also = f" (and {more} more problem{'s' * (more > 1)}: --json lists them)" if more else ""
        return f"collection {self.collection!r} is corrupt: {worst.message}{also}. {worst.advice}"


def restore_or_reindex(collection: str, ids: list[str]) -> str:
    shown = ", ".join(ids[:3]) + (", ..." if len(ids) > 3 else "")
    return (
        f"Restore the last snapshot (`clipsearch restore ARCHIVE --collection {collection} --replace`), or "
        f"re-index these items ({shown}): `clipsearch check --collection {collection} --repair` drops them, "
        f"then `clipsearch index` embeds their files again"
    )


def check_collection(store: VectorStore, files: bool = True) -> CheckReport:
    """Read every point of `store` once and verify it (see the module's docstring)."""
    schema = store.schema
    report = CheckReport(collection=store.name, vectors=dict.fromkeys(schema.vectors, 0))
    bad_vectors: dict[str, list[str]] = {}
    missing_ready: list[str] = []
    bad_payloads: list[str] = []
    gone: list[str] = []
    ready = [spec.name for spec in schema.vectors.values() if spec.state == "ready"]
    for record in store.scan(with_vectors=True):
        report.points += 1
        for name, vector in record.vectors.items():
            if name not in report.vectors:
                continue
            report.vectors[name] += 1
            why = vector_problem(np.asarray(vector), schema.vectors[name].dim)
            if why:
                bad_vectors.setdefault(why, []).append(record.id)
        if any(name not in record.vectors for name in ready):
            missing_ready.append(record.id)
        payload = record.payload
        if not _payload_ok(payload):
            bad_payloads.append(record.id)
        elif files and payload.get("path") and not os.path.lexists(payload["path"]):
            gone.append(record.id)

    name = store.name
    for why, ids in bad_vectors.items():
        report.problems.append(_problem("vectors", "corrupt", f"{len(ids)} stored vectors {why}", ids,
                                        restore_or_reindex(name, ids)))
    if missing_ready:
        report.problems.append(_problem(
            "missing_vector", "corrupt", f"{len(missing_ready)} points lack a vector marked ready ("
            f"{', '.join(ready)})", missing_ready, restore_or_reindex(name, missing_ready)))
    if bad_payloads:
        report.problems.append(_problem(
            "payload", "corrupt", f"{len(bad_payloads)} payloads are not an object with a `uri`",
            bad_payloads, restore_or_reindex(name, bad_payloads)))
    counted = store.count()
    if counted != report.points:
        report.problems.append(_problem(
            "count", "corrupt", f"the store counts {counted} points but {report.points} could be read", [],
            f"Restore the last snapshot (`clipsearch restore ARCHIVE --collection {name} --replace`), or "
            f"index the collection again into a new one"))
    indexed = getattr(store, "indexed_fields", None)
    if indexed is not None:
        unindexed = sorted(set(schema.fields) - indexed())
        if unindexed:
            report.problems.append(_problem(
                "index", "corrupt", f"declared fields without their payload index: {', '.join(unindexed)}",
                [], f"Restore the last snapshot (`clipsearch restore ARCHIVE --collection {name} --replace`)",
            ))
    if gone:
        report.problems.append(_problem(
            "files", "stale", f"{len(gone)} items' image files are gone", gone,
            "The next `clipsearch index` of their folder drops them"))
    return report


def vector_problem(vector: np.ndarray, dim: int) -> str | None:
    """Why a stored (cosine) vector cannot be right, or None."""
    if vector.shape != (dim,):
        return f"have {vector.size} dimensions instead of {dim}"
    if not np.isfinite(vector).all():
        return "are not finite (NaN or infinity)"
    with np.errstate(over="ignore", invalid="ignore"):
        norm = float(np.linalg.norm(vector.astype(np.float64)))
    if not np.isfinite(norm) or abs(norm - 1.0) > NORM_TOLERANCE:
        return "are not unit-norm"
    return None


def impossible_cosine(score: float) -> bool:
    """Whether a cosine similarity cannot be (outside [-1, 1] beyond rounding, or not a number)."""
    return not np.isfinite(score) or abs(score) > 1.0 + SCORE_TOLERANCE


def _payload_ok(payload: Any) -> bool:
    return (isinstance(payload, dict) and isinstance(payload.get("uri"), str)
            and isinstance(payload.get("metadata", {}), dict))


def _problem(kind: str, severity: Severity, message: str, ids: list[str], advice: str) -> Problem:
    return Problem(kind, severity, message, len(ids), ids, advice)


def drop_corrupt(store: VectorStore, report: CheckReport) -> list[str]:
    """Drop the points whose vectors or payloads are corrupt (what `restore_or_reindex` advises), so that
    the next index run embeds their files again; the ids dropped. Items written through the API have no
    folder to be re-indexed from: write them again."""
    ids = sorted({i for p in report.problems if p.kind in REPAIRABLE for i in p.ids})
    store.delete(ids)
    store.flush()
    return ids


REPAIRABLE = ("vectors", "missing_vector", "payload")


def verify_collection(settings: Settings, name: str, repair: bool = False) -> dict[str, Any]:
    """`clipsearch check` on a collection this process can open: the report's summary; with `repair`,
    under the collection's write lock, the corrupt points dropped (`repaired`: their ids)."""
    with contextlib.ExitStack() as stack:
        if repair:
            stack.enter_context(collection_lock(settings.home, name, "clipsearch check --repair"))
        store = open_store(settings, name)
        stack.callback(store.close)
        report = check_collection(store)
        summary = report.summary()
        if repair and not report.ok:
            dropped = drop_corrupt(store, report)
            summary["repaired"] = dropped
            summary["line"] = (
                f"collection {name!r}: dropped {len(dropped)} corrupt points; `clipsearch index` of their "
                f"folders embeds them again (items written through the API: write them again)"
            )
        return summary
