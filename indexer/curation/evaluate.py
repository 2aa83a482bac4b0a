"""How good a model (or a stored vector) is on the user's own labelled images.

The metrics are pure functions of embeddings and integer labels, so they can be checked exactly on
constructed embeddings. Rankings are by cosine similarity (unit vectors), ties in index order.

- zero-shot: each image's nearest class prompt embedding; top-1 and top-5 accuracy overall and per
  class, and the confusion matrix (rows: true class, columns: predicted).
- text-to-image: each class's prompt embedding ranks every image; recall@k is the share of classes
  (those with images) that find one of their images among the first k.
- image-to-image: each image ranks every other one (itself excluded); recall@k is the share of queries
  with an image of their class among the first k, mAP the mean average precision of that ranking.
  Queries whose class has no other image are left out of both.

Data (`load_dataset`): an ImageFolder tree (DATA/<class>/<image>) or a CSV of path,label (paths
relative to the CSV's folder; a first row `path,label` is a header).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from indexer.errors import BadInput, Unavailable
from indexer.ingest.decode import IMAGE_EXTENSIONS

KS = (1, 5, 10)
CHUNK = 1024  # query rows ranked at a time: 1024 x N floats


def ranking(scores: np.ndarray) -> np.ndarray:
    """Column indices of each row, best score first; ties keep index order."""
    return np.argsort(-scores, axis=-1, kind="stable")


# --- metrics ----------------------------------------------------------------------------------------


@dataclass
class ZeroShot:
    top1: float
    top5: float
    per_class: dict[str, dict[str, float | int]]
    confusion: np.ndarray = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        return {"top1": self.top1, "top5": self.top5, "per_class": self.per_class}


def zero_shot(images: np.ndarray, labels: np.ndarray, class_vectors: np.ndarray,
              class_names: Sequence[str]) -> ZeroShot:
    """Top-1/top-5 accuracy of the nearest class embedding, overall and per class (classes with images)."""
    labels = np.asarray(labels)
    count = len(class_names)
    k = min(5, count)
    hit1 = np.zeros(len(labels), dtype=bool)
    hit5 = np.zeros(len(labels), dtype=bool)
    confusion = np.zeros((count, count), dtype=np.int64)
    for start in range(0, len(labels), CHUNK):
        order = ranking(images[start : start + CHUNK] @ class_vectors.T)[:, :k]
        truth = labels[start : start + CHUNK]
        hit1[start : start + CHUNK] = order[:, 0] == truth
        hit5[start : start + CHUNK] = (order == truth[:, None]).any(axis=1)
        np.add.at(confusion, (truth, order[:, 0]), 1)
    per_class: dict[str, dict[str, float | int]] = {}
    for number, name in enumerate(class_names):
        mine = labels == number
        if mine.any():
            per_class[name] = {"top1": float(hit1[mine].mean()), "top5": float(hit5[mine].mean()),
                               "count": int(mine.sum())}
    return ZeroShot(_mean(hit1), _mean(hit5), per_class, confusion)


def text_to_image(class_vectors: np.ndarray, images: np.ndarray, labels: np.ndarray,
                  ks: Sequence[int] = KS) -> dict[str, float]:
    """Recall@k of class prompts as queries over the images (classes without images left out)."""
    labels = np.asarray(labels)
    present = np.unique(labels)
    order = ranking(class_vectors[present] @ images.T)[:, : max(ks)]
    hits = labels[order] == present[:, None]
    return {f"recall@{k}": _mean(hits[:, :k].any(axis=1)) for k in ks}


def image_to_image(images: np.ndarray, labels: np.ndarray, ks: Sequence[int] = KS) -> dict[str, float]:
    """Recall@k and mAP of each image as a query over the others (same class = relevant)."""
    labels = np.asarray(labels)
    sizes = np.bincount(labels)
    queries = np.flatnonzero(sizes[labels] > 1)  # a query needs another image of its class
    found = {k: [] for k in ks}
    precisions: list[np.ndarray] = []
    ranks = np.arange(1, len(labels), dtype=np.float64)  # positions 1..N-1 (the query itself excluded)
    for start in range(0, len(queries), CHUNK):
        rows = queries[start : start + CHUNK]
        scores = images[rows] @ images.T
        scores[np.arange(len(rows)), rows] = -np.inf  # the query itself ranks last, then is cut off
        order = ranking(scores)[:, :-1]
        relevant = labels[order] == labels[rows][:, None]
        for k in ks:
            found[k].append(relevant[:, :k].any(axis=1))
        hits = np.cumsum(relevant, axis=1)
        precisions.append((hits / ranks * relevant).sum(axis=1) / relevant.sum(axis=1))
    result = {f"recall@{k}": _mean(np.concatenate(found[k]) if found[k] else np.array([])) for k in ks}
    result["map"] = _mean(np.concatenate(precisions) if precisions else np.array([]))
    return result


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if len(values) else 0.0


def evaluate(images: np.ndarray, labels: np.ndarray, class_vectors: np.ndarray,
             class_names: Sequence[str]) -> tuple[dict[str, Any], np.ndarray]:
    """The `clipsearch eval --json` document for one model or vector, and its confusion matrix."""
    zs = zero_shot(images, labels, class_vectors, class_names)
    result = {"zero_shot": zs.to_json(), "text_to_image": text_to_image(class_vectors, images, labels),
              "image_to_image": image_to_image(images, labels)}
    return result, zs.confusion


# --- data -----------------------------------------------------------------------------------------


@dataclass
class Dataset:
    paths: list[str]  # absolute
    labels: np.ndarray  # class index per path
    classes: list[str]


def load_dataset(data: Path) -> Dataset:
    """An ImageFolder tree (classes: its sub-folders, sorted) or a CSV of path,label."""
    data = Path(data)
    if data.is_dir():
        folders = sorted(p for p in data.iterdir() if p.is_dir() and not p.name.startswith("."))
        pairs = [(str(path.resolve()), folder.name) for folder in folders
                 for path in sorted(folder.rglob("*")) if path.suffix.lower() in IMAGE_EXTENSIONS]
    elif data.is_file():
        pairs = _csv_pairs(data)
    else:
        raise BadInput(f"DATA {data} does not exist: give an ImageFolder tree or a CSV of path,label")
    if not pairs:
        raise BadInput(f"DATA {data} has no labelled images: give DATA/<class>/<image> files or a CSV of "
                       f"path,label rows")
    return dataset_of(pairs)


def dataset_of(pairs: Sequence[tuple[str, str]]) -> Dataset:
    """The dataset of (path, label) pairs; classes sorted by name."""
    classes = sorted({label for _, label in pairs})
    index = {name: number for number, name in enumerate(classes)}
    return Dataset([p for p, _ in pairs], np.array([index[lb] for _, lb in pairs], dtype=np.int64), classes)


def labelled_pairs(dataset: Dataset) -> list[tuple[str, str]]:
    """A dataset's (path, label) pairs, each path as the real path of its file (links followed): what
    a collection's items are matched by."""
    return [(os.path.realpath(path), dataset.classes[int(label)])
            for path, label in zip(dataset.paths, dataset.labels, strict=True)]


def _csv_pairs(path: Path) -> list[tuple[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = [row for row in csv.reader(f) if row and any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"DATA {path}: cannot read it as CSV ({exc})") from exc
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["path", "label"]:
        rows = rows[1:]
    pairs = []
    for number, row in enumerate(rows, start=1):
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            raise BadInput(f"DATA {path}, row {number}: expected path,label, got {row!r}")
        pairs.append((os.path.abspath(path.parent / row[0].strip()), row[1].strip()))
    return pairs


def prompt_name(class_name: str) -> str:
    """How a class name reads in a prompt: folder names use '_' for spaces."""
    return class_name.replace("_", " ").strip()


# --- embeddings of a dataset --------------------------------------------------------------------


@dataclass
class Embedded:
    """One model or stored vector under evaluation: image embeddings (None where it has none) and the
    class prompt embeddings of its model."""

    name: str
    images: list[np.ndarray | None]
    class_vectors: np.ndarray


def embed_images(model: Any, paths: Sequence[str], max_pixels: int, batch_size: int, workers: int,
                 progress: bool = True) -> list[np.ndarray | None]:
    """Each image's embedding by `model`, decoded as indexing decodes; None for files that fail."""
    from tqdm import tqdm

    from indexer.ingest.batches import decoded_batches
    from indexer.ingest.sources import SourceItem

    items = [SourceItem(uri=p, path=p, fingerprint="") for p in paths]
    found: list[np.ndarray | None] = []
    bar = tqdm(total=len(items), unit="img", desc="embedding", disable=not progress)
    batches = decoded_batches(items, model.pixel_transform, max_pixels, batch_size, workers, model.draft_size)
    for batch in batches:
        good = [d.pixels for d in batch if d.pixels is not None]
        vectors = iter(model.encode_pixels(np.stack(good)) if good else [])
        found += [next(vectors) if d.pixels is not None else None for d in batch]
        bar.update(len(batch))
    bar.close()
    return found


def stored_images(store: Any, paths: Sequence[str], vector: str | None = None, *, resolve: bool = True
                  ) -> list[np.ndarray | None]:
    """Each image's stored vector in a collection (matched by file path), None where not indexed.
    `resolve`: follow links in `paths` first; without it (paths a client sent to a server) they are
    compared as written, normalised, and nothing is read from disk for them."""
    name = store.schema.vector(vector).name
    by_path = {os.path.realpath(str(r.payload.get("path", ""))): r.vectors[name]
               for r in store.scan(with_vectors=[name]) if name in r.vectors}
    return [by_path.get(os.path.realpath(p) if resolve else os.path.normpath(p)) for p in paths]


def run_eval(dataset: Dataset, systems: Sequence[Embedded]) -> dict[str, Any]:
    """Every system on the images all of them have; the --json document ({"systems": ...} for several)."""
    have = np.array([all(s.images[i] is not None for s in systems) for i in range(len(dataset.paths))])
    if not have.any():
        raise BadInput("none of the DATA images has an embedding: are they indexed in --collection "
                       "(same paths), or readable images?")
    labels = dataset.labels[have]
    documents = []
    for system in systems:
        images = np.stack([v for v, keep in zip(system.images, have, strict=True) if keep]).astype(np.float32)
        result, confusion = evaluate(images, labels, system.class_vectors.astype(np.float32), dataset.classes)
        documents.append({"name": system.name, "result": result, "confusion": confusion})
    return {"images": int(have.sum()), "missing": int((~have).sum()), "systems": documents}


def eval_json(evaluated: dict[str, Any]) -> dict[str, Any]:
    """One system: exactly the metrics document; several: {"systems": {name: document}}."""
    systems = evaluated["systems"]
    if len(systems) == 1:
        return systems[0]["result"]
    return {"systems": {s["name"]: s["result"] for s in systems}}


# --- the report ---------------------------------------------------------------------------------


def write_report(directory: Path, dataset: Dataset, evaluated: dict[str, Any], title: str) -> Path:
    """DIR/report.md (metrics side by side, per class), DIR/results.json and a confusion-matrix PNG
    per system; returns the report's path."""
    import json

    _matplotlib()  # before writing anything
    directory.mkdir(parents=True, exist_ok=True)
    systems = evaluated["systems"]
    (directory / "results.json").write_text(json.dumps(
        {"images": evaluated["images"], "missing": evaluated["missing"], "classes": dataset.classes,
         "systems": {s["name"]: s["result"] for s in systems}}, indent=2) + "\n")
    names = [s["name"] for s in systems]
    left_out = f" ({evaluated['missing']} without an embedding left out)" if evaluated["missing"] else ""
    lines = [f"# {title}", "", f"{evaluated['images']} images in {len(dataset.classes)} classes{left_out}.",
             "", "| metric | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    rows = [("zero-shot top-1", "zero_shot", "top1"), ("zero-shot top-5", "zero_shot", "top5")]
    recalls = [f"recall@{k}" for k in KS]
    rows += [(f"text-to-image {m}", "text_to_image", m) for m in recalls]
    rows += [(f"image-to-image {m}", "image_to_image", m) for m in [*recalls, "map"]]
    for label, group, key in rows:
        lines.append(f"| {label} | " + " | ".join(f"{s['result'][group][key]:.4f}" for s in systems) + " |")
    columns = " | ".join(f"{n} top-1 | {n} top-5" for n in names)
    lines += ["", "## Per class (zero-shot)", "", f"| class | images | {columns} |",
              "|---|---:|" + "---:|" * 2 * len(names)]
    for name in dataset.classes:
        per = [s["result"]["zero_shot"]["per_class"].get(name) for s in systems]
        if per[0] is None:
            continue
        cells = " | ".join(f"{p['top1']:.3f} | {p['top5']:.3f}" for p in per if p)
        lines.append(f"| {name} | {per[0]['count']} | {cells} |")
    lines += ["", "## Confusion matrices", ""]
    for number, system in enumerate(systems, start=1):
        png = f"confusion-{number}.png"
        confusion_png(system["confusion"], dataset.classes, directory / png, system["name"])
        lines += [f"![{system['name']}]({png})", ""]
    path = directory / "report.md"
    path.write_text("\n".join(lines))
    return path


def _matplotlib() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise Unavailable("the --report charts need matplotlib: pip install 'clipsearch[curation]', or leave "
                          "out --report") from None
    return matplotlib


def confusion_png(confusion: np.ndarray, classes: Sequence[str], path: Path, title: str) -> None:
    """Rows normalised to the share of each true class; class names on the axes up to 40 classes."""
    matplotlib = _matplotlib()
    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    totals = confusion.sum(axis=1, keepdims=True)
    shares = np.divide(confusion, totals, out=np.zeros(confusion.shape, dtype=float), where=totals > 0)
    size = min(16.0, 4.0 + 0.3 * len(classes))
    figure, axes = plt.subplots(figsize=(size, size))
    shown = axes.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(shown, ax=axes, fraction=0.046, pad=0.04)
    axes.set(title=f"{title}: zero-shot confusion", xlabel="predicted", ylabel="true")
    if len(classes) <= 40:
        axes.set_xticks(range(len(classes)), labels=list(classes), rotation=90)
        axes.set_yticks(range(len(classes)), labels=list(classes))
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
