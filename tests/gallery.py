"""The collections the gallery UI tests share (AppTest and browser): a photo folder with two
folders of the same names, EXIF trips and a broken file, and a shop catalog with a bad row, behind an
API key."""

from __future__ import annotations

import csv
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.clirun import cli_home, run_json
from tests.exif import LISBON, SYDNEY, jpeg_with_exif
from tests.helpers import make_settings, serve

KEY = "gallery-key"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, imagenet_dir: Path, tiny_checkpoint: Path) -> Path:
    """Three collections: `default` (a gallery), `shop` (a catalog with one bad row)."""
    root = tmp_path_factory.mktemp("gallery")
    photos = sorted(imagenet_dir.glob("*.JPEG"))
    gallery = root / "Pictures"
    for n in range(6):  # the same names in two folders
        for folder in ("2023", "2024"):
            target = gallery / folder / f"{n:04d}.JPEG"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(photos[n + (0 if folder == "2023" else 6)], target)
    shutil.copy2(gallery / "2023" / "0000.JPEG", gallery / "2024" / "copy-of-0000.JPEG")  # a byte copy
    trips = gallery / "trips"
    trips.mkdir()
    jpeg_with_exif(trips / "lisbon-1.jpg", (64, 48), where=LISBON)
    jpeg_with_exif(trips / "lisbon-2.jpg", (48, 64), where=(LISBON[0] + 0.01, LISBON[1]), make="Canon",
                   model="Canon EOS 5D")
    jpeg_with_exif(trips / "lisbon-3.jpg", (64, 48), where=(LISBON[0] + 0.02, LISBON[1]))
    jpeg_with_exif(trips / "sydney-1.jpg", (64, 64), where=SYDNEY, taken="2021:12:24 09:00:00")
    jpeg_with_exif(trips / "sydney-2.jpg", (64, 64), where=SYDNEY, taken="2021:12:25 10:00:00", make="Canon",
                   model="Canon EOS 5D")
    (gallery / "broken.jpg").write_bytes(b"not an image")

    shop = root / "shop"
    shop.mkdir()
    rows = []
    for n, photo in enumerate(photos[20:28]):
        shutil.copy2(photo, shop / photo.name)
        rows.append({"sku": f"SKU-{n:03d}", "title": f"{('Red', 'Blue')[n % 2]} thing {n}",
                     "brand": ("acme", "bolt")[n % 2], "price": f"{10 + 5 * n}.50", "image": photo.name})
    ghost = {"sku": "SKU-999", "title": "Ghost", "brand": "acme", "price": "1.00", "image": "missing.jpg"}
    rows.append(ghost)  # row 10 of the file: its image is not there
    with open(shop / "products.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    with cli_home(root / "home", tiny_checkpoint):
        report = run_json("index", str(gallery))
        assert (report["embedded"], report["failed"]) == (18, 1)
        report = run_json("index", str(shop / "products.csv"), "--id-column", "sku", "--image-column",
                          "image", "--text-columns", "title", "--field", "price:float",
                          "--collection", "shop")
        assert report["failed"] == 1
    return root


@pytest.fixture(scope="module")
def api_url(home: Path, tiny_checkpoint: Path, tiny_model: Any) -> Iterator[str]:
    """The API over the collections, behind an API key."""
    from search_api.app import create_app

    settings = make_settings(home / "home", tiny_checkpoint, api_key=KEY)
    with serve(create_app(settings, model=tiny_model)) as url:
        yield url
