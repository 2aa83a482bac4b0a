"""Exports of a collection, a label run or a query's results: CSV, JSON Lines, COCO, ImageFolder, FiftyOne.

Every format carries the item's id, its file, and its label under a run when one is given: a person's
decision first (`curation.labels.effective_label`), the zero-shot label otherwise; "unsure" and rejected
items have no label. CSV and JSON Lines also carry every metadata field (clusters, outlier scores and
duplicate groups included, when those runs wrote them); COCO keeps them on each image.

- csv, jsonl: one row per item, OUT is a file. A CSV cell that a spreadsheet would run as a formula
  (it starts with =, +, -, @, a tab or a carriage return: the OWASP list) gets a leading `'`, unless
  `formulas=True` (a data pipeline that reads the values as they are).
- coco: images, categories (the run's labels) and one image-level annotation per labelled image with
  its score (bbox = the whole image, so that tools wanting boxes load it), OUT is a file.
- imagefolder: OUT/<label>/<file>, symlinks to the originals (copies with `copy=True`).
- fiftyone: FiftyOne's FiftyOneImageClassificationDataset: OUT/data/<file name> and OUT/labels.json
  {"classes": [...], "labels": {"<file stem>": {"label": <class index>, "confidence": <score>} | null}};
  for a duplicate report also OUT/tags.json {"<file stem>": ["keep"|"remove", "group-0001", kind]}.
- keep and remove lists of a duplicate report (`duplicate_lists`, `write_list`): CSV or JSON.
- a duplicate report (`duplicate_items`, run=DUPLICATES): the members of each group, its number, kind,
  keeper and cosine to the keeper as fields, the group ("group-0001") as the label.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from indexer.curation.labels import UNSURE, effective_label, human_field, label_runs
from indexer.durable import write_atomic
from indexer.errors import BadInput
from indexer.stores.base import Record, VectorStore
from indexer.stores.filters import Filter, format_datetime

FORMATS = ("csv", "jsonl", "coco", "imagefolder", "fiftyone")
HUMAN_SCORE = 1.0  # a person's decision is certain
# The `run` of a duplicate report's export: its groups are the labels. Not a valid run name, so no
# label run can be mistaken for it.
DUPLICATES = "@duplicates"
DUPLICATE_FIELDS = ("duplicate_group", "duplicate_kind", "duplicate_keep", "duplicate_score")


@dataclass
class Item:
    id: str
    uri: str
    path: str
    metadata: dict[str, Any]
    query_score: float | None = None  # the item's score for the query it came from


@dataclass
class Labelled:
    name: str
    score: float
    source: str  # "human" or "zero-shot"


@dataclass
class ExportReport:
    format: str
    out: str
    items: int = 0
    labelled: int = 0
    files: int = 0  # imagefolder, fiftyone: links or copies made
    missing: list[str] = field(default_factory=list)  # files gone since indexing: left out of the tree

    def summary(self) -> dict[str, Any]:
        return {"format": self.format, "out": self.out, "items": self.items, "labelled": self.labelled,
                "files": self.files, "missing": len(self.missing)}


def _item(record: Record, score: float | None = None) -> Item:
    payload = record.payload
    return Item(record.id, str(payload.get("uri", "")), str(payload.get("path", "")),
                dict(payload.get("metadata", {})), score)


def collect(store: VectorStore, store_filter: Filter | None = None,
            hits: Sequence[tuple[str, float]] | None = None) -> list[Item]:
    """The items to export: a query's hits (id, score) in their order, or every item passing the
    filter, by uri."""
    if hits is not None:
        scores = dict(hits)
        return [_item(r, scores[r.id]) for r in store.retrieve([i for i, _ in hits])]
    return sorted((_item(r) for r in store.scan(store_filter)), key=lambda item: (item.uri, item.id))


def duplicate_items(store: VectorStore, report: dict[str, Any]) -> list[Item]:
    """The members of a duplicate report's groups (curation.duplicates.find_duplicates), keeper first, each
    with its group (1, 2, ...), kind, whether it is the keeper and its cosine to the keeper."""
    items = []
    for number, group in enumerate(report.get("groups", []), start=1):
        scores = [1.0, *group.get("scores", [])]
        for position, record in enumerate(store.retrieve(group.get("ids", []))):
            item = _item(record)
            item.metadata.update(duplicate_group=number, duplicate_kind=group.get("kind"),
                                 duplicate_keep=position == 0, duplicate_score=scores[position])
            items.append(item)
    return items


def label_of(item: Item, run: str | None) -> Labelled | None:
    """The item's label under `run`: a person's, else the zero-shot one; None when unsure or rejected.
    Under DUPLICATES: its group, "group-0001"..."""
    if run is None:
        return None
    if run == DUPLICATES:
        group = item.metadata.get("duplicate_group")
        role = "keep" if item.metadata.get("duplicate_keep") else "remove"
        score = item.metadata.get("duplicate_score")
        return None if group is None else Labelled(f"group-{group:04d}", score, role)
    name = effective_label(item.metadata, run)
    if name is None or name == UNSURE:
        return None
    if item.metadata.get(human_field(run)):
        return Labelled(name, HUMAN_SCORE, "human")
    return Labelled(name, float(item.metadata.get(f"{run}_score") or 0.0), "zero-shot")


def classes(store: VectorStore, run: str | None, items: Iterable[Item]) -> list[str]:
    """The run's labels in their order, then labels people gave that the run did not have."""
    if run is None:
        return []
    known = [] if run == DUPLICATES else list(label_runs(store).get(run, {}).get("labels", []))
    extra = {lb.name for item in items if (lb := label_of(item, run)) is not None} - set(known)
    return known + sorted(extra)


TEXT_FORMATS = ("csv", "jsonl", "coco")  # one document each; the others are folders


def _check(store: VectorStore, fmt: str, run: str | None) -> None:
    if fmt not in FORMATS:
        raise BadInput(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")
    if run is not None and run != DUPLICATES and run not in label_runs(store):
        known = ", ".join(sorted(label_runs(store))) or "none yet"
        raise BadInput(f"no label run {run!r} in collection {store.name!r} (runs: {known}); fix --run")
    if fmt == "imagefolder" and run is None:
        raise BadInput("an ImageFolder tree needs labels: give --run NAME of a `clipsearch label` run")


def export_document(store: VectorStore, items: Sequence[Item], fmt: str, *, run: str | None = None,
                    formulas: bool = False) -> tuple[str, ExportReport]:
    """The csv, jsonl or COCO document of `items` (what `export` writes to a file), and its report;
    `formulas`: CSV cells as they are, formulas included (default: neutralised)."""
    _check(store, fmt, run)
    if fmt not in TEXT_FORMATS:
        raise BadInput(f"export format {fmt!r} is a folder, not one document: use one of "
                       f"{', '.join(TEXT_FORMATS)}")
    report = ExportReport(fmt, "", items=len(items))
    report.labelled = sum(label_of(item, run) is not None for item in items)
    if fmt == "csv":
        return _csv(store, items, run, formulas), report
    return {"jsonl": _jsonl, "coco": _coco}[fmt](store, items, run), report


def export(store: VectorStore, items: Sequence[Item], fmt: str, out: Path, *, run: str | None = None,
           copy: bool = False, formulas: bool = False) -> ExportReport:
    """Write `items` to `out` in format `fmt` (see the module's docstring); `formulas`: CSV cells as
    they are, formulas included (default: neutralised)."""
    _check(store, fmt, run)
    out = Path(out)
    if fmt in TEXT_FORMATS:
        document, report = export_document(store, items, fmt, run=run, formulas=formulas)
        report.out = str(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(out, document.encode("utf-8"))  # a reader never sees half a file
        return report
    report = ExportReport(fmt, str(out), items=len(items))
    report.labelled = sum(label_of(item, run) is not None for item in items)
    _fresh_folder(out)
    (_imagefolder if fmt == "imagefolder" else _fiftyone)(store, items, out, run, copy, report)
    return report


# --- rows ---------------------------------------------------------------------------------------------


def _cell(value: Any) -> Any:
    if isinstance(value, list):
        return "|".join(str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return "" if value is None else value


# What a spreadsheet takes for the start of a formula (OWASP, "CSV Injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def neutralised(value: Any) -> Any:
    """A CSV cell a spreadsheet shows as text: a string starting like a formula gets a leading `'`.
    Numbers are left as they are (a negative price is no formula)."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def _csv(store: VectorStore, items: Sequence[Item], run: str | None, formulas: bool = False) -> str:
    fields = sorted({name for item in items for name in item.metadata})
    query = any(item.query_score is not None for item in items)
    header = ["id", "uri", "path", *(["query_score"] if query else []),
              *(["effective_label", "effective_score", "label_source"] if run else []), *fields]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    cell = (lambda value: value) if formulas else neutralised
    writer.writerow([cell(name) for name in header])
    for item in items:
        labelled = label_of(item, run)
        row: list[Any] = [item.id, item.uri, item.path, *([_cell(item.query_score)] if query else [])]
        if run:
            row += [labelled.name, labelled.score, labelled.source] if labelled else ["", "", ""]
        writer.writerow([cell(value) for value in row + [_cell(item.metadata.get(name)) for name in fields]])
    return buffer.getvalue()


def _jsonl(store: VectorStore, items: Sequence[Item], run: str | None) -> str:
    lines = []
    for item in items:
        row: dict[str, Any] = {"id": item.id, "uri": item.uri, "path": item.path}
        if item.query_score is not None:
            row["query_score"] = item.query_score
        if run:
            labelled = label_of(item, run)
            row["label"] = labelled.__dict__ if labelled else None
        row["metadata"] = item.metadata
        lines.append(json.dumps(row, ensure_ascii=False) + "\n")
    return "".join(lines)


# --- COCO -----------------------------------------------------------------------------------------


def image_size(item: Item) -> tuple[int, int] | None:
    """(width, height): as indexed, else read from the file's header; None when unreadable."""
    width, height = item.metadata.get("width"), item.metadata.get("height")
    if isinstance(width, int) and isinstance(height, int):
        return width, height
    try:
        from PIL import Image

        with Image.open(item.path) as image:
            return image.size
    except Exception:  # a file gone or unreadable since: the image keeps no size, its label no box
        return None


def _coco(store: VectorStore, items: Sequence[Item], run: str | None) -> str:
    names = classes(store, run, items)
    category = {name: number for number, name in enumerate(names, start=1)}
    run_fields = set() if run in (None, DUPLICATES) else {
        run, f"{run}_score", f"{run}_top", f"{run}_top_scores", human_field(run), f"{human_field(run)}_at"}
    images, annotations = [], []
    for number, item in enumerate(items, start=1):
        size = image_size(item)
        extra = {k: v for k, v in item.metadata.items() if k not in run_fields | {"width", "height"}}
        image: dict[str, Any] = {"id": number, "file_name": item.path, "width": size[0] if size else 0,
                                 "height": size[1] if size else 0, "clipsearch_id": item.id, "uri": item.uri}
        if item.query_score is not None:
            image["query_score"] = item.query_score
        images.append({**image, **({"metadata": extra} if extra else {})})
        labelled = label_of(item, run)
        if labelled is None:
            continue
        annotation: dict[str, Any] = {"id": len(annotations) + 1, "image_id": number,
                                      "category_id": category[labelled.name], "score": labelled.score,
                                      "source": labelled.source, "iscrowd": 0}
        if size:  # image-level: the box is the whole image
            annotation.update(bbox=[0, 0, size[0], size[1]], area=size[0] * size[1])
        annotations.append(annotation)
    document = {
        "info": {"description": f"clipsearch export of collection {store.name}"
                 + (f", label run {run}" if run and run != DUPLICATES else "")
                 + (", duplicate groups" if run == DUPLICATES else ""), "version": "1.0",
                 "date_created": format_datetime(datetime.now(timezone.utc))},
        "licenses": [],
        "images": images,
        "categories": [{"id": category[name], "name": name, "supercategory": run or ""} for name in names],
        "annotations": annotations,
    }
    return json.dumps(document, ensure_ascii=False)


# --- folders of images -------------------------------------------------------------------------


def _fresh_folder(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BadInput(f"export folder {out} exists and is not empty: give another OUT, or remove it first")
    out.mkdir(parents=True, exist_ok=True)


def unpack_folder(archive: Path, out: Path) -> int:
    """A folder export sent as a tar archive (Collection.export_archive, from a server) unpacked into
    `out`, a new or empty folder as for any folder export; the number of files. Only regular files and
    folders, each inside `out`: an archive with anything else (an absolute name, `..`, a link, a device)
    is refused whole, before anything is written."""
    import tarfile
    from pathlib import PurePosixPath

    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                parts = PurePosixPath(member.name).parts
                if (not (member.isfile() or member.isdir()) or member.name.startswith(("/", "\\"))
                        or "\\" in member.name or any(part in ("..", "") for part in parts)
                        or (parts and ":" in parts[0])):
                    raise BadInput(f"the export archive holds {member.name!r}, which is not a plain file or "
                                   f"folder inside the export: nothing unpacked")
            _fresh_folder(out)
            tar.extractall(out, members=members, filter="data")
    except (tarfile.TarError, EOFError) as exc:
        raise BadInput(f"the export archive is not a readable tar archive: {exc}") from None
    return sum(member.isfile() for member in members)


_UNSAFE = re.compile(r"[/\\\x00-\x1f]+")


def folder_name(label: str) -> str:
    """A label as one directory name: no separators or control characters, never hidden or '..'."""
    name = _UNSAFE.sub("_", label).strip()
    return ("_" + name) if not name or name.startswith(".") else name


def _place(source: str, target: Path, copy: bool) -> None:
    if copy:
        shutil.copy2(source, target)
    else:
        os.symlink(os.path.abspath(source), target)


def _imagefolder(store: VectorStore, items: Sequence[Item], out: Path, run: str | None, copy: bool,
                 report: ExportReport) -> None:
    taken: set[Path] = set()
    for item in items:
        labelled = label_of(item, run)
        if labelled is None:
            continue
        if not os.path.isfile(item.path):
            report.missing.append(item.uri)
            continue
        folder = out / folder_name(labelled.name)
        folder.mkdir(exist_ok=True)
        target = folder / Path(item.path).name
        if target in taken:  # two files of one name under one label
            target = folder / f"{target.stem}-{item.id[:8]}{target.suffix}"
        taken.add(target)
        _place(item.path, target, copy)
        report.files += 1


def _fiftyone(store: VectorStore, items: Sequence[Item], out: Path, run: str | None, copy: bool,
              report: ExportReport) -> None:
    names = classes(store, run, items)
    index = {name: number for number, name in enumerate(names)}
    data = out / "data"
    data.mkdir()
    labels: dict[str, Any] = {}
    tags: dict[str, list[str]] = {}
    taken: set[str] = set()
    for item in items:
        if not os.path.isfile(item.path):
            report.missing.append(item.uri)
            continue
        # The file's own name; FiftyOne keys a sample by its name without extension, so a second file of
        # that stem (another folder, or another extension) gets `-<id prefix>`.
        source = Path(item.path)
        key = source.stem if source.stem.lower() not in taken else f"{source.stem}-{item.id[:8]}"
        taken.add(key.lower())
        _place(item.path, data / f"{key}{source.suffix}", copy)
        report.files += 1
        labelled = label_of(item, run)
        attributes: dict[str, Any] = {} if labelled is None else {"source": labelled.source}
        if run == DUPLICATES:
            attributes.update(duplicate_kind=item.metadata.get("duplicate_kind"), uri=item.uri)
            tags[key] = duplicate_tags(item)
        labels[key] = None if labelled is None else {
            "label": index[labelled.name], "confidence": labelled.score, "attributes": attributes}
    document = {"classes": names, "labels": labels}
    write_atomic(out / "labels.json", json.dumps(document, ensure_ascii=False).encode("utf-8"))
    if tags:
        write_atomic(out / "tags.json", json.dumps(tags, ensure_ascii=False).encode("utf-8"))


def duplicate_tags(item: Item) -> list[str]:
    """A duplicate group member's FiftyOne sample tags: keep or remove, its group, exact or near."""
    metadata = item.metadata
    role = "keep" if metadata.get("duplicate_keep") else "remove"
    return [role, f"group-{metadata['duplicate_group']:04d}", str(metadata.get("duplicate_kind"))]


# --- keep and remove lists of a duplicate report --------------------------------------------------------

LIST_FIELDS = {
    "keep": ("id", "uri", "role", "group", "kind"),
    "remove": ("id", "uri", "group", "kind", "score", "keep_id", "keep_uri"),
}


def duplicate_lists(report: dict[str, Any], items: Iterable[tuple[str, str]]
                    ) -> dict[str, list[dict[str, Any]]]:
    """The keep and remove lists of a duplicate report (curation.duplicates.find_duplicates) over the
    collection's `items` (id, uri), as fastdup and cleanvision users export them. remove: every group
    member but its keeper, with the group (1, 2, ...), its kind, the cosine to the keeper and the keeper
    it duplicates. keep: every other item, `role` "keeper" (of `group`) or "unique" (in no group). Both
    in uri order."""
    removed: dict[str, dict[str, Any]] = {}
    keepers: dict[str, tuple[int, str]] = {}
    for number, group in enumerate(report.get("groups", []), start=1):
        ids, kind = group.get("ids", []), group.get("kind")
        if not ids:
            continue
        keepers[ids[0]] = (number, kind)
        for id_, uri, score in zip(ids[1:], group.get("others", []), group.get("scores", []), strict=True):
            removed[id_] = {"id": id_, "uri": uri, "group": number, "kind": kind, "score": score,
                            "keep_id": ids[0], "keep_uri": group.get("keep", "")}
    keep = []
    for id_, uri in items:
        if id_ in removed:
            continue
        number, kind = keepers.get(id_, (None, None))
        keep.append({"id": id_, "uri": uri, "role": "unique" if number is None else "keeper",
                     "group": number, "kind": kind})
    return {"keep": sorted(keep, key=lambda row: (row["uri"], row["id"])),
            "remove": sorted(removed.values(), key=lambda row: (row["uri"], row["id"]))}


def write_list(rows: Sequence[dict[str, Any]], which: str, out: Path) -> None:
    """A keep or remove list (`LIST_FIELDS[which]`) to `out`: CSV for a `.csv` name, else a JSON array
    of objects for `.json`; written atomically."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix == ".csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=LIST_FIELDS[which], lineterminator="\n")
        writer.writeheader()
        writer.writerows({name: _cell(row.get(name)) for name in LIST_FIELDS[which]} for row in rows)
        text = buffer.getvalue()
    elif suffix == ".json":
        text = json.dumps([{name: row.get(name) for name in LIST_FIELDS[which]} for row in rows],
                          ensure_ascii=False, indent=1) + "\n"
    else:
        raise BadInput(f"the {which} list {out} must end in .csv or .json (its format)")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, text.encode("utf-8"))
