"""A product catalog made from the shared photos, written as CSV, JSONL or Parquet in a temporary
folder (never committed): the test data of catalog ingest (tests/test_catalog.py, bench_catalog).

Each row is a product: `sku` (the id), `title` (brand, colour and the photo's ImageNet class, the
text column), `brand`, `colour`, `category`, `price` (float), `stock` (integer), `in_stock` (bool),
`added` (a date), and `image`: a path relative to the catalog, or for every `url_every`-th row a URL
on a loopback server (tests/fetch_server.py serving the photo folder). Every `multi_every`-th
product has 2 or 3 images. With `bad=True` a few rows are broken on purpose, each in one way, and
`expected_bad` says which row and why.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np

BRANDS = ("Acme", "Zenith", "Nordwind", "Solenne", "Kestrel", "Marlow", "Tanaka", "Verdi")
COLOURS = ("red", "blue", "green", "black", "white", "yellow", "grey", "orange")
CATEGORIES = ("animals", "home", "outdoor", "food", "tools", "toys")
FLAGS = [
    "--id-column", "sku", "--image-column", "image", "--text-columns", "title", "--field", "stock:integer"
]
FORMATS = ("csv", "jsonl", "parquet")


@dataclass
class GeneratedCatalog:
    path: Path
    format: str
    products: list[dict[str, Any]]  # the good rows as written (images as written: relative or URL)
    expected_bad: dict[int, str] = field(default_factory=dict)  # row number -> part of the reason
    images: dict[str, list[str]] = field(default_factory=dict)  # sku -> image cells as written

    @property
    def point_count(self) -> int:
        return sum(len(v) for v in self.images.values())

    def row_number(self, index: int) -> int:
        """The row number read_catalog gives the index-th record (CSV counts its header line)."""
        return index + 2 if self.format == "csv" else index + 1


def class_name(photo: Path) -> str:
    """'n01440764_tench.JPEG' -> 'tench'."""
    return photo.stem.split("_", 1)[1].replace("_", " ")


def product_rows(photos: list[Path], count: int, images_dir: Path, catalog_dir: Path, base_url: str | None,
                 url_every: int, multi_every: int, seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(count):
        photo = photos[i % len(photos)]
        extra = 1 + i % 2 if multi_every and i % multi_every == multi_every - 1 else 0
        names = [photos[(i + j * 37) % len(photos)].name for j in range(1 + extra)]
        by_url = base_url is not None and url_every and i % url_every == url_every - 1
        cells = [f"{base_url}/files/{n}" if by_url else os.path.relpath(images_dir / n, catalog_dir)
                 for n in names]
        brand, colour = BRANDS[int(rng.integers(len(BRANDS)))], COLOURS[int(rng.integers(len(COLOURS)))]
        added = date(2023, 1, 1) + timedelta(days=int(rng.integers(0, 700)))
        rows.append({
            "sku": f"SKU-{i:05d}-{brand[:3].upper()}",
            "title": f"{brand} {colour} {class_name(photo)}",
            "brand": brand,
            "colour": colour,
            "category": CATEGORIES[i % len(CATEGORIES)],
            "price": round(float(rng.uniform(3, 400)), 2),
            "stock": int(rng.integers(0, 60)),
            "in_stock": bool(i % 5),
            "added": added.isoformat(),
            "image": cells,
        })
    return rows


def make_catalog(folder: Path, fmt: str, images_dir: Path, count: int = 1000, *, base_url: str | None = None,
                 url_every: int = 10, multi_every: int = 7, bad: bool = False, seed: int = 0,
                 name: str = "products") -> GeneratedCatalog:
    """Write a catalog of `count` products over the photos in `images_dir` to `folder`/NAME.FMT."""
    folder.mkdir(parents=True, exist_ok=True)
    photos = sorted(images_dir.glob("*.JPEG"))
    assert photos, f"no photos in {images_dir}"
    rows = product_rows(photos, count, images_dir, folder, base_url, url_every, multi_every, seed)
    generated = GeneratedCatalog(folder / f"{name}.{fmt}", fmt, [])
    if bad:
        rows = _with_bad_rows(rows, folder, generated)
    for row in rows:
        if row["sku"] and not row.get("_bad"):
            generated.images[row["sku"]] = list(row["image"])
    generated.products = [r for r in rows if not r.get("_bad")]
    write_catalog(generated.path, rows)
    return generated


def _with_bad_rows(rows: list[dict[str, Any]], folder: Path,
                   generated: GeneratedCatalog) -> list[dict[str, Any]]:
    """Break four rows, each in one way; the indexes chosen to fall on local-image rows."""
    (folder / "notes.jpg").write_text("this is not a picture")
    broken = {
        3: ("sku", "", "missing id (column 'sku')"),
        14: ("image", ["notes.jpg"], "notes.jpg: not an image file"),
        25: ("image", ["no-such-photo.jpg"], "no-such-photo.jpg: file not found"),
        36: ("stock", "many", "column 'stock': 'many' is not an integer"),
    }
    rows = [dict(r) for r in rows]
    for index, (column, value, reason) in broken.items():
        rows[index][column] = value
        rows[index]["_bad"] = True
        generated.expected_bad[generated.row_number(index)] = reason
    return rows


def write_catalog(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rows (images as a list each) in the format the suffix names; '_'-prefixed keys are dropped."""
    rows = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
    fmt = path.suffix.lstrip(".")
    if fmt == "csv":
        with open(path, "w", newline="") as out:
            writer = csv.DictWriter(out, fieldnames=list(rows[0]))
            writer.writeheader()
            for row in rows:
                writer.writerow({**row, "image": "|".join(row["image"])})
    elif fmt == "jsonl":
        with open(path, "w") as out:
            for row in rows:
                image = row["image"][0] if len(row["image"]) == 1 else row["image"]
                out.write(json.dumps({**row, "image": image}) + "\n")
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        def moment(day: str) -> datetime:
            return datetime.fromisoformat(day).replace(tzinfo=timezone.utc)

        # Native Parquet types where a column holds one kind; `stock` as text, since a bad row may
        # hold a word there (an override makes it an integer field).
        table = pa.table({
            "sku": pa.array([r["sku"] for r in rows], pa.string()),
            "title": pa.array([r["title"] for r in rows], pa.string()),
            "brand": pa.array([r["brand"] for r in rows], pa.string()),
            "colour": pa.array([r["colour"] for r in rows], pa.string()),
            "category": pa.array([r["category"] for r in rows], pa.string()),
            "price": pa.array([r["price"] for r in rows], pa.float64()),
            "stock": pa.array([str(r["stock"]) for r in rows], pa.string()),
            "in_stock": pa.array([r["in_stock"] for r in rows], pa.bool_()),
            "added": pa.array([moment(r["added"]) for r in rows], pa.timestamp("ms", tz="UTC")),
            "image": pa.array([r["image"] for r in rows], pa.list_(pa.string())),
        })
        pq.write_table(table, path)
    else:
        raise ValueError(f"unknown catalog format {fmt!r}")
