"""Zero-shot label runs over the stored vectors of a collection, and the human decisions that override them.

A label run never re-encodes an image: it reads each item's stored vector, encodes the label prompts
once (a prompt ensemble: the mean of a label's template embeddings), and scores every item by matrix
products in batches. The results go into each item's metadata as declared, indexed fields named after
the run, so filters and counts work on them; run "label" writes

    label            keyword   the best label, or "unsure" when its score is under the threshold
    label_score      float     the best label's score (softmax over the labels, as `classify` gives)
    label_top        keyword[] the top-k labels, best first
    label_top_scores float[]   their scores

People then review: `human_label` (keyword: a label, or "rejected") and `human_label_at` (datetime),
which every reader prefers over the zero-shot label (`effective_label`). For another run name R the
human fields are `human_R` and `human_R_at`.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tqdm import tqdm

from indexer.errors import BadInput, ItemNotFound
from indexer.models.encoders import QueryEncoder
from indexer.models.loading import ClipModel
from indexer.models.zero_shot import PROMPT_TEMPLATES, parse_labels
from indexer.schema import FieldType, check_name, payload_path
from indexer.settings import Settings
from indexer.stores.base import Record, VectorStore, canonical_id
from indexer.stores.filters import (
    FieldCondition,
    Filter,
    IsEmptyCondition,
    IsEmptyKey,
    MatchValue,
    format_datetime,
)

DEFAULT_RUN = "label"
UNSURE = "unsure"
REJECTED = "rejected"
BUILTIN_LABELS = ("imagenet", "cifar10")
BUILTIN_TEMPLATES = ("imagenet", "imagenet-full", "cifar10")
MAX_TEMPLATES = 1000  # prompt templates of one run (imagenet-full has 80)
INFO_KEY = "label_runs"  # collection info: each run's labels, templates and settings
MAX_HUMAN_LABELS = 100_000  # distinct labels people may give, as far as counts go
BATCH = 4096  # items scored and written at a time: ~16 MB of scores with 1000 labels
STAGES = ("prompts", "read", "score", "write")
Action = Literal["accept", "change", "reject", "clear"]


# --- label sets and prompt templates --------------------------------------------------------------


def read_lines(text: str) -> list[str]:
    """Non-empty lines, '#' comment lines left out, surrounding spaces removed."""
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _packaged(name: str) -> str:
    return resources.files("indexer.curation").joinpath("prompts", name).read_text(encoding="utf-8")


def load_labels(labels: str | None = None, labels_file: Path | None = None) -> list[str]:
    """The labels of `--labels` (comma-separated, or a built-in set: imagenet, cifar10) or of
    `--labels-file` (one a line); unique, in order."""
    if (labels is None) == (labels_file is None):
        raise BadInput("give the labels with either --labels or --labels-file")
    if labels_file is not None:
        try:
            found = read_lines(Path(labels_file).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise BadInput(f"--labels-file {labels_file}: cannot read it ({exc})") from exc
        found = list(dict.fromkeys(found))
    elif labels.strip().lower() in BUILTIN_LABELS:  # type: ignore[union-attr]
        found = read_lines(_packaged(f"{labels.strip().lower()}.classes.txt"))  # type: ignore[union-attr]
    else:
        found = parse_labels(labels or "")
    if not found:
        raise BadInput("no labels given: --labels needs at least one name (or imagenet, cifar10)")
    if UNSURE in found or REJECTED in found:
        raise BadInput(f"{UNSURE!r} and {REJECTED!r} are reserved: rename that label in --labels")
    return found


def load_templates(templates: str | Path | Sequence[str] | None = None) -> list[str]:
    """Prompt templates: the default ensemble, a built-in one (imagenet, imagenet-full, cifar10), a
    file with one template a line, or the templates themselves (a list); each holds "{}" where the
    label goes."""
    if templates is None:
        return list(PROMPT_TEMPLATES)
    if not isinstance(templates, (str, Path)):
        return _checked_templates([str(t).strip() for t in templates], "the templates")
    name = str(templates).strip()
    builtin = builtin_templates(name)
    if builtin is not None:
        return read_lines(_packaged(f"{builtin}.templates.txt"))
    try:
        found = read_lines(Path(name).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        names = ", ".join(BUILTIN_TEMPLATES)
        raise BadInput(f"--templates {name}: cannot read it ({exc}); give a file or one of {names}") \
            from exc
    return _checked_templates(found, f"--templates {name}")


def builtin_templates(name: str | Path) -> str | None:
    """The built-in template set `name` names (any case, spaces around), or None: a file or a list."""
    found = str(name).strip().lower()
    return found if found in BUILTIN_TEMPLATES else None


def _checked_templates(found: list[str], what: str) -> list[str]:
    bad = [t for t in found if "{}" not in t]
    if not found or bad:
        example = bad[0] if bad else "there are none"
        raise BadInput(f"{what}: every template needs {{}} where the label goes ({example})")
    if len(found) > MAX_TEMPLATES:  # each is one text encoding per label
        raise BadInput(f"{what}: {len(found)} templates; at most {MAX_TEMPLATES}")
    return found


def prompt_embeddings(model: QueryEncoder, labels: Sequence[str], templates: Sequence[str],
                      batch: int = 512) -> np.ndarray:
    """One unit vector per label: the mean of its templates' text embeddings, renormalised."""
    prompts = [template.format(label) for label in labels for template in templates]
    parts = [model.encode_texts(prompts[i : i + batch]) for i in range(0, len(prompts), batch)]
    encoded = np.concatenate(parts)
    mean = encoded.reshape(len(labels), len(templates), -1).mean(axis=1)
    return (mean / np.linalg.norm(mean, axis=1, keepdims=True)).astype(np.float32)


# --- scoring ----------------------------------------------------------------------------------------


def top_labels(vectors: np.ndarray, label_vectors: np.ndarray, logit_scale: float, k: int,
               chunk: int = BATCH) -> tuple[np.ndarray, np.ndarray]:
    """For each row of `vectors`, the indices of its k best labels (best first, ties to the earlier label)
    and their softmax scores over all labels, computed `chunk` rows at a time in float32."""
    k = min(k, len(label_vectors))
    indices = np.empty((len(vectors), k), dtype=np.int64)
    scores = np.empty((len(vectors), k), dtype=np.float32)
    weights = np.ascontiguousarray(label_vectors.T, dtype=np.float32) * np.float32(logit_scale)
    for start in range(0, len(vectors), chunk):
        logits = np.asarray(vectors[start : start + chunk], dtype=np.float32) @ weights
        logits -= logits.max(axis=1, keepdims=True)
        np.exp(logits, out=logits)
        logits /= logits.sum(axis=1, keepdims=True)
        if k < logits.shape[1]:
            best = np.sort(np.argpartition(-logits, k - 1, axis=1)[:, :k], axis=1)
            # Rows with a tie at the k-th place: argpartition picks any of the tied labels; a full
            # stable sort picks the first ones, so that ties always go to the earlier label.
            kth = np.take_along_axis(logits, best, axis=1).min(axis=1, keepdims=True)
            tied = np.flatnonzero((logits >= kth).sum(axis=1) > k)
            best[tied] = np.argsort(-logits[tied], axis=1, kind="stable")[:, :k]
        else:
            best = np.broadcast_to(np.arange(logits.shape[1]), logits.shape).copy()
        picked = np.take_along_axis(logits, best, axis=1)
        order = np.argsort(-picked, axis=1, kind="stable")
        indices[start : start + chunk] = np.take_along_axis(best, order, axis=1)
        scores[start : start + chunk] = np.take_along_axis(picked, order, axis=1)
    return indices, scores


# --- fields -----------------------------------------------------------------------------------------


def human_field(run: str) -> str:
    return "human_label" if run == DEFAULT_RUN else f"human_{run}"


def run_fields(run: str) -> dict[str, FieldType]:
    """The declared fields a run writes, and the human fields its review writes."""
    human = human_field(run)
    fields: dict[str, FieldType] = {
        run: "keyword", f"{run}_score": "float", f"{run}_top": "keyword", f"{run}_top_scores": "float",
        human: "keyword", f"{human}_at": "datetime",
    }
    for name in fields:
        check_name(name, "field (from the --run name)")
    return fields


def declare(store: VectorStore, fields: dict[str, FieldType]) -> None:
    """Declare (and so index) fields the collection lacks; a schema write only when one is missing."""
    schema = store.schema
    if any(schema.fields.get(name) != kind for name, kind in fields.items()):
        store.set_schema(schema.with_fields(fields))


def effective_label(metadata: dict[str, Any], run: str = DEFAULT_RUN) -> str | None:
    """A person's label when there is one, else the zero-shot label ("unsure" included); None for an
    item the run never labelled or a person rejected."""
    human = metadata.get(human_field(run))
    if human:
        return None if human == REJECTED else str(human)
    value = metadata.get(run)
    return str(value) if value else None


def label_runs(store: VectorStore) -> dict[str, dict[str, Any]]:
    """The runs recorded with the collection: labels, templates, top_k, threshold, vector, at."""
    return dict(store.read_info().get(INFO_KEY, {}))


def require_run(store: VectorStore, run: str) -> dict[str, Any]:
    runs = label_runs(store)
    if run not in runs:
        known = ", ".join(sorted(runs)) or "none yet"
        raise BadInput(f"no label run {run!r} in collection {store.name!r} (runs: {known}); "
                       f"run `clipsearch label --run {run}` first, or pick another --run")
    return runs[run]


# --- a run ----------------------------------------------------------------------------------------


@dataclass
class LabelReport:
    run: str
    labeled: int = 0
    unsure: int = 0
    skipped: int = 0  # items without the vector (still being re-embedded)
    counts: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))  # seconds

    def summary(self) -> dict[str, Any]:
        """The `--json` document: counts of the sure labels (their sum plus unsure is labeled)."""
        return {"run": self.run, "labeled": self.labeled, "unsure": self.unsure,
                "counts": dict(self.counts.most_common()), "seconds": round(self.seconds, 3)}


def _batches(records: Iterator[Record], size: int, clock: dict[str, float]) -> Iterator[list[Record]]:
    batch: list[Record] = []
    while True:
        started = time.perf_counter()
        record = next(records, None)
        clock["read"] += time.perf_counter() - started
        if record is None:
            break
        batch.append(record)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def label_store(
    store: VectorStore,
    model: QueryEncoder | None,
    labels: Sequence[str],
    *,
    templates: Sequence[str] | None = None,
    run: str = DEFAULT_RUN,
    top_k: int = 3,
    threshold: float = 0.0,
    vector: str | None = None,
    store_filter: Filter | None = None,
    label_vectors: np.ndarray | None = None,
    logit_scale: float | None = None,
    batch: int = BATCH,
    progress: bool = True,
) -> LabelReport:
    """Label the items of an open store that pass `store_filter` from their stored `vector`, writing the
    run's fields into their metadata. `label_vectors` and `logit_scale` replace the model (benchmarks)."""
    started = time.perf_counter()
    labels = list(labels)
    templates = list(templates or PROMPT_TEMPLATES)
    if top_k < 1:
        raise BadInput("--top-k must be at least 1")
    spec = store.schema.vector(vector)
    fields = run_fields(run)
    report = LabelReport(run)
    if label_vectors is None:
        if model is None:
            raise ValueError("label_store needs a model or label_vectors")
        report.timings["prompts"] = -time.perf_counter()
        label_vectors = prompt_embeddings(model, labels, templates)
        report.timings["prompts"] += time.perf_counter()
        logit_scale = model.logit_scale
    if label_vectors.shape != (len(labels), spec.dim):
        raise BadInput(f"label embeddings are {label_vectors.shape}, vector {spec.name!r} is {spec.dim}-d")
    declare(store, fields)
    total = store.count(store_filter)
    bar = tqdm(total=total, unit="item", desc=f"labelling {store.name} ({run})", disable=not progress)
    for chunk in _batches(store.scan(store_filter, with_vectors=[spec.name]), batch, report.timings):
        have = [r for r in chunk if spec.name in r.vectors]
        report.skipped += len(chunk) - len(have)
        if have:
            clock = time.perf_counter()
            matrix = np.stack([r.vectors[spec.name] for r in have])
            best, scores = top_labels(matrix, label_vectors, float(logit_scale or 1.0), top_k, batch)
            sure = scores[:, 0] >= threshold
            report.counts.update(labels[i] for i in best[sure, 0].tolist())
            report.unsure += int((~sure).sum())
            payloads = {}
            # Python lists, not numpy scalars: a million items pay for every per-item conversion.
            rounded = np.round(scores.astype(np.float64), 6).tolist()
            rows = zip(have, best.tolist(), rounded, sure.tolist(), strict=True)
            for record, row, row_scores, certain in rows:
                top = [labels[i] for i in row]
                metadata = {**record.payload.get("metadata", {}), run: top[0] if certain else UNSURE,
                            f"{run}_score": row_scores[0], f"{run}_top": top, f"{run}_top_scores": row_scores}
                payloads[record.id] = {**record.payload, "metadata": metadata}
            report.timings["score"] += time.perf_counter() - clock
            clock = time.perf_counter()
            store.set_payloads(payloads)
            report.timings["write"] += time.perf_counter() - clock
            report.labeled += len(have)
        bar.update(len(chunk))
    bar.close()
    info = store.read_info()
    info[INFO_KEY] = {**info.get(INFO_KEY, {}), run: {
        "labels": labels, "templates": templates, "top_k": top_k, "threshold": threshold, "vector": spec.name,
        "filter": store_filter.to_json() if store_filter else None, "labeled": report.labeled,
        "at": format_datetime(datetime.now(timezone.utc))}}
    store.write_info(info)
    clock = time.perf_counter()
    store.flush()
    report.timings["write"] += time.perf_counter() - clock
    report.seconds = time.perf_counter() - started
    return report


# --- counts and review ---------------------------------------------------------------------------


def run_filter(run: str, label: str | None = None, pending: bool = False) -> Filter:
    """A store filter: the items a run labelled (`label` only, when given), those nobody reviewed yet
    when `pending`."""
    labelled: Any = (FieldCondition(key=payload_path(run), match=MatchValue(value=label)) if label is not None
                     else Filter(must_not=[_empty(run)]))
    return Filter(must=[labelled, _empty(human_field(run))] if pending else [labelled])


def _empty(field_name: str) -> IsEmptyCondition:
    return IsEmptyCondition(is_empty=IsEmptyKey(key=payload_path(field_name)))


def label_counts(store: VectorStore, run: str = DEFAULT_RUN) -> dict[str, Any]:
    """Counts of a run's items: `counts` by effective label (a person's decision first; "unsure" and
    "rejected" included), `zero_shot` by the run's own label, and how many were `reviewed`; exact
    facet counts from the store, no scan."""
    recorded = require_run(store, run)
    many = len(recorded.get("labels", [])) + 2  # every label, and "unsure"
    human = human_field(run)
    zero_shot = dict(store.facet(run, limit=many))
    decided = dict(store.facet(human, filter=run_filter(run), limit=MAX_HUMAN_LABELS))
    effective = Counter(dict(store.facet(run, filter=run_filter(run, pending=True), limit=many)))
    effective.update(decided)
    return {"run": run, "counts": dict(sorted(effective.items(), key=lambda kv: (-kv[1], kv[0]))),
            "zero_shot": zero_shot, "reviewed": sum(decided.values()), "total": sum(zero_shot.values())}


# What a review card says about the photo besides its labels (ui/format.py photo_facts).
PHOTO_FACTS = ("width", "height", "taken", "camera_make", "camera_model")


def item_view(record: Record, run: str) -> dict[str, Any]:
    """What review shows of an item."""
    metadata = record.payload.get("metadata", {})
    human = human_field(run)
    top = metadata.get(f"{run}_top") or []
    top_scores = metadata.get(f"{run}_top_scores") or []
    return {
        "id": record.id, "uri": record.payload.get("uri", ""), "label": metadata.get(run),
        "score": metadata.get(f"{run}_score"),
        "top": [{"label": str(lb), "score": float(s)} for lb, s in zip(top, top_scores, strict=False)],
        "human_label": metadata.get(human), "human_label_at": metadata.get(f"{human}_at"),
        "effective_label": effective_label(metadata, run),
        **{name: metadata[name] for name in PHOTO_FACTS if metadata.get(name) is not None},
    }


def review_items(store: VectorStore, run: str, label: str, *, pending: bool = False, offset: int = 0,
                 limit: int = 48) -> tuple[int, list[dict[str, Any]]]:
    """One page of the items the run labelled `label` (or "unsure"), most confident first (ties by id),
    and how many there are in all."""
    require_run(store, run)
    found = list(store.scan(run_filter(run, label, pending)))
    found.sort(key=lambda r: (-float(r.payload.get("metadata", {}).get(f"{run}_score") or 0.0), r.id))
    return len(found), [item_view(r, run) for r in found[offset : offset + limit]]


def review(store: VectorStore, run: str, ids: Sequence[str], action: Action, label: str | None = None,
           now: datetime | None = None) -> list[dict[str, Any]]:
    """Record a person's decision on items: accept the zero-shot label (an unsure item's best guess),
    change it to `label`, reject it, or clear an earlier decision. Returns the items as they are now."""
    require_run(store, run)
    if action not in ("accept", "change", "reject", "clear"):
        raise BadInput(f"unknown review action {action!r}: use accept, change, reject or clear")
    if action == "change":
        label = (label or "").strip()
        if not label or label in (UNSURE, REJECTED):
            raise BadInput(f"changing a label needs the new label (not {UNSURE!r} or {REJECTED!r})")
    canonical = []
    for item_id in ids:
        try:
            canonical.append(canonical_id(item_id))
        except Exception:
            raise ItemNotFound(item_id) from None
    records = store.retrieve(canonical)
    missing = set(canonical) - {r.id for r in records}
    if missing:
        raise ItemNotFound(sorted(missing)[0])
    human = human_field(run)
    stamp = format_datetime(now or datetime.now(timezone.utc))
    payloads = {}
    for record in records:
        metadata = dict(record.payload.get("metadata", {}))
        if action == "clear":
            metadata.pop(human, None)
            metadata.pop(f"{human}_at", None)
        else:
            if action == "accept":
                decided = metadata.get(run)
                if decided in (None, UNSURE):
                    decided = (metadata.get(f"{run}_top") or [None])[0]
                if not decided:
                    raise BadInput(f"item {record.id} has no {run!r} label to accept: change it instead")
            else:
                decided = label if action == "change" else REJECTED
            metadata[human], metadata[f"{human}_at"] = str(decided), stamp
        payloads[record.id] = {**record.payload, "metadata": metadata}
    declare(store, run_fields(run))
    store.set_payloads(payloads)
    store.flush()
    return [item_view(r, run) for r in store.retrieve(canonical)]


def label_collection(
    settings: Settings,
    collection: str | None,
    labels: Sequence[str],
    *,
    query_filter: Filter | dict[str, Any] | None = None,
    model: ClipModel | None = None,
    progress: bool = True,
    **options: Any,
) -> LabelReport:
    """`clipsearch label`: a run over a collection, under its write lock, with the model recorded for
    the vector (`options`: those of `label_store`)."""
    from indexer.locking import collection_lock
    from indexer.models.loading import load_recorded_model
    from indexer.stores import open_store

    collection = collection or settings.collection
    with collection_lock(settings.home, collection, "clipsearch label"):
        store = open_store(settings, collection)
        try:
            spec = store.schema.vector(options.get("vector"))
            parsed = Filter.parse(query_filter, settings.limits)
            store_filter = parsed.resolve(store.schema) if parsed and not parsed.is_empty() else None
            clip = model or load_recorded_model(spec.model, settings.device)
            return label_store(store, clip, labels, store_filter=store_filter, progress=progress, **options)
        finally:
            store.close()
