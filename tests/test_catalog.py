"""Product catalogs into collections (indexer.ingest.catalog, indexer.ingest.catalog_run): every format with
the right counts, types and recorded bad rows, images by URL from a loopback server, and re-runs
that embed only what changed (a metadata edit embeds nothing), through the library and the CLI."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from indexer.errors import BadInput
from indexer.ingest.catalog import ColumnMapping, read_catalog
from indexer.ingest.catalog_run import failure_key, index_catalog, point_id
from indexer.settings import Settings
from indexer.stores import open_store
from tests.catalogs import FLAGS, FORMATS, make_catalog, write_catalog
from tests.clirun import cli_home, run, run_json
from tests.fetch_server import FetchServer, fetch_server
from tests.helpers import make_settings, photo_copies, require_imagenet

MAPPING = ColumnMapping.from_flags("sku", ["image"], "title", ["stock:integer"])
CATALOG_FIELDS = {
    "sku": "keyword", "title": "keyword", "brand": "keyword", "colour": "keyword", "category": "keyword",
    "price": "float", "stock": "integer", "in_stock": "bool", "added": "datetime",
    "width": "integer", "height": "integer",
}


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """Private copies of 40 real photos, served by the loopback server and named by local rows."""
    folder = tmp_path / "photos"
    photo_copies(require_imagenet(), folder, 40)
    return folder


@pytest.fixture
def server(photos: Path) -> Iterator[FetchServer]:
    with fetch_server(photos) as running:
        yield running


def catalog_settings(tmp_path: Path, checkpoint: Path) -> Settings:
    return make_settings(tmp_path / "home", checkpoint, fetch={"allow_private": True, "backoff_s": 0.01})


def stored(settings: Settings, collection: str) -> tuple[Any, dict[str, Any]]:
    store = open_store(settings, collection)
    try:
        records = {r.id: r for r in store.scan(with_vectors=True)}
        return store.schema, {"records": records, "info": store.read_info()}
    finally:
        store.close()


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_indexes_with_the_right_counts_types_and_bad_rows(tmp_path, tiny_checkpoint, tiny_model,
                                                                      photos, server, fmt) -> None:
    catalog = make_catalog(tmp_path / "shop", fmt, photos, count=48, base_url=server.url, bad=True)
    settings = catalog_settings(tmp_path, tiny_checkpoint)
    urls = sum(1 for cells in catalog.images.values() for c in cells if c.startswith("http"))
    assert urls >= 4 and catalog.point_count > len(catalog.products), "URL rows and multi-image products"

    report = index_catalog(settings, catalog.path, MAPPING, model=tiny_model, progress=False)

    assert (report.embedded, report.failed, report.removed) == (catalog.point_count, 4, 0)
    assert report.downloaded == urls
    schema, got = stored(settings, settings.collection)
    assert schema.fields == CATALOG_FIELDS
    assert len(got["records"]) == catalog.point_count
    failed = got["info"]["failed"]
    assert sorted(failed) == sorted(failure_key(catalog.path, row) for row in catalog.expected_bad)
    for row, reason in catalog.expected_bad.items():
        entry = failed[failure_key(catalog.path, row)]
        assert reason in entry["reason"] and entry["row"] == row

    by_product: dict[str, list[Any]] = {}
    for record in got["records"].values():
        by_product.setdefault(record.payload["metadata"]["sku"], []).append(record)
    assert {sku: len(records) for sku, records in by_product.items()} == {
        sku: len(cells) for sku, cells in catalog.images.items()}
    for product in catalog.products:
        records = by_product[product["sku"]]
        cells = catalog.images[product["sku"]]
        expected_uris = {c if c.startswith("http") else str((catalog.path.parent / c).resolve())
                         for c in cells}
        assert {r.payload["uri"] for r in records} == expected_uris
        assert {r.id for r in records} == {point_id(catalog.path, product["sku"], u) for u in expected_uris}
        metadata = records[0].payload["metadata"]
        assert metadata == {**metadata, "title": product["title"], "brand": product["brand"],
                            "price": product["price"], "stock": product["stock"],
                            "in_stock": product["in_stock"], "added": product["added"] + "T00:00:00Z"}
        assert type(metadata["price"]) is float and type(metadata["stock"]) is int
        assert metadata["width"] > 0 and metadata["height"] > 0
        for record in records:
            if record.payload["uri"].startswith("http"):  # served from the cache, which holds the bytes
                name = record.payload["uri"].rsplit("/", 1)[1]
                assert Path(record.payload["path"]).read_bytes() == (photos / name).read_bytes()

    again = index_catalog(settings, catalog.path, MAPPING, model=tiny_model, progress=False)
    assert (again.embedded, again.updated, again.removed, again.unchanged) == (0, 0, 0, catalog.point_count)
    assert again.downloaded == 0 and server.total_downloads() == urls, "a re-run downloads nothing unchanged"
    assert again.failed == 4


def test_a_rerun_embeds_only_changed_images_and_text(tmp_path, tiny_checkpoint, tiny_model, photos,
                                                     monkeypatch) -> None:
    catalog = make_catalog(tmp_path / "shop", "csv", photos, count=30, multi_every=4)
    settings = catalog_settings(tmp_path, tiny_checkpoint)
    from indexer.models.onnx_export import ensure_export

    ensure_export(tiny_model, settings.home)  # made now: its self-check encodes images, not counted here
    encoded: list[int] = []
    encode = tiny_model.encode_pixels
    def counting(pixels: Any) -> Any:
        encoded.append(len(pixels))
        return encode(pixels)

    monkeypatch.setattr(tiny_model, "encode_pixels", counting)
    index_catalog(settings, catalog.path, MAPPING, model=tiny_model, progress=False)
    assert sum(encoded) == catalog.point_count
    _, before = stored(settings, settings.collection)

    rows = [dict(p) for p in catalog.products]
    images = {r["sku"]: [str((catalog.path.parent / c).resolve()) for c in r["image"]] for r in rows}
    priced, retitled, gone = rows[0], rows[1], rows[3]  # rows[3]: a product with 3 images
    assert [len(r["image"]) for r in rows[:6]] == [1, 1, 1, 3, 1, 1]
    priced["price"], priced["category"] = 1.5, "sale"  # metadata only
    retitled["title"] = "Acme crimson teapot"  # text: re-embedded
    photo = Path(images[rows[2]["sku"]][0])  # a new picture at the same path: re-embedded
    photo.write_bytes((photos / sorted(p.name for p in photos.iterdir())[-1]).read_bytes())
    newcomer = {**rows[5], "sku": "SKU-NEW"}
    rows = [r for r in rows if r is not gone] + [newcomer]
    write_catalog(catalog.path, rows)

    encoded.clear()
    report = index_catalog(settings, catalog.path, MAPPING, model=tiny_model, progress=False)
    assert (report.embedded, report.updated, report.removed) == (3, 1, 3)  # title, image, newcomer
    assert report.unchanged == catalog.point_count - 3 - 3  # gone, and the title, image and price edits
    assert sum(encoded) == 3, "only the changed image and text, and the new row, went through the encoder"

    _, after = stored(settings, settings.collection)
    old, new = before["records"], after["records"]
    gone_ids = {point_id(catalog.path, gone["sku"], u) for u in images[gone["sku"]]}
    assert gone_ids <= set(old) and not gone_ids & set(new)
    for uri in images[priced["sku"]]:
        pid = point_id(catalog.path, priced["sku"], uri)
        assert np.array_equal(old[pid].vectors["default"], new[pid].vectors["default"])
        assert new[pid].payload["metadata"]["price"] == 1.5
        assert new[pid].payload["metadata"]["category"] == "sale"
        assert new[pid].payload["metadata"]["width"] == old[pid].payload["metadata"]["width"]
    kept = catalog.products[4]["sku"]
    untouched = point_id(catalog.path, kept, images[kept][0])
    assert new[untouched].payload == old[untouched].payload
    assert point_id(catalog.path, "SKU-NEW", images[catalog.products[5]["sku"]][0]) in new


def test_an_image_url_that_changes_is_downloaded_and_embedded_again(tmp_path, tiny_checkpoint, tiny_model,
                                                                    photos, server) -> None:
    catalog = make_catalog(tmp_path / "shop", "jsonl", photos, count=10, base_url=server.url, url_every=2,
                           multi_every=0)
    settings = catalog_settings(tmp_path, tiny_checkpoint)
    first = index_catalog(settings, catalog.path, MAPPING, model=tiny_model, progress=False)
    assert (first.embedded, first.downloaded) == (10, 5)
    served = catalog.products[1]["image"][0]
    name = served.rsplit("/", 1)[1]
    (photos / name).write_bytes((photos / sorted(p.name for p in photos.iterdir())[-1]).read_bytes())
    second = index_catalog(settings, catalog.path, MAPPING, model=tiny_model, progress=False)
    assert (second.embedded, second.downloaded, second.unchanged) == (1, 1, 9)


def test_a_failing_url_is_recorded_with_its_row_and_the_rest_index(tmp_path, tiny_checkpoint, tiny_model,
                                                                   photos, server) -> None:
    rows = make_catalog(tmp_path / "shop", "csv", photos, count=6, multi_every=0).products
    rows[1]["image"] = [f"{server.url}/status/404"]
    first = sorted(p.name for p in photos.iterdir())[0]
    rows[2]["image"] = [f"{server.url}/html", f"{server.url}/files/{first}"]
    rows[3]["image"] = ["http://169.254.169.254/latest/meta-data/iam"]
    path = tmp_path / "shop" / "urls.csv"
    write_catalog(path, rows)
    settings = catalog_settings(tmp_path, tiny_checkpoint)
    report = index_catalog(settings, path, MAPPING, model=tiny_model, progress=False)
    assert (report.embedded, report.failed) == (4, 3)
    reasons = {f["uri"]: f["reason"] for f in report.failures}
    assert reasons[failure_key(path, 3)] == f"image {server.url}/status/404: HTTP 404"
    assert reasons[failure_key(path, 4)] == f"image {server.url}/html: not an image file"
    assert "link-local" in reasons[failure_key(path, 5)]


def test_type_inference_and_names(tmp_path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"")
    lines = [
        {"id": 1, "image": "a.jpg", "Zip Code": "01234", "count": 3, "ratio": 1, "flag": "true",
         "when": "2024-03-01", "spot": {"lat": 38.7, "lon": -9.1}, "tags": ["red", "big"], "mixed": 5,
         "at": "2024-03-01T10:00:00+02:00"},
        {"id": 2, "image": ["a.jpg", "b.jpg"], "Zip Code": "98765", "count": -4, "ratio": 2.5,
         "flag": "False", "when": "2023-12-31", "spot": {"lat": -33.9, "lon": 151.2}, "tags": [],
         "mixed": "five"},
        {"id": 3, "image": "https://example.com/c.jpg"},
    ]
    path = tmp_path / "cat.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\nnot json\n[1, 2]\n")
    catalog = read_catalog(path, ColumnMapping())
    assert catalog.fields == {
        "id": "keyword", "Zip_Code": "keyword", "count": "integer", "ratio": "float", "flag": "bool",
        "when": "datetime", "spot": "geo", "tags": "keyword", "mixed": "keyword", "at": "datetime",
    }
    first, second, third = catalog.rows
    assert first.metadata == {"id": "1", "Zip_Code": "01234", "count": 3, "ratio": 1.0, "flag": True,
                              "when": "2024-03-01T00:00:00Z", "spot": {"lat": 38.7, "lon": -9.1},
                              "tags": ["red", "big"], "mixed": "5", "at": "2024-03-01T08:00:00Z"}
    assert second.images == (str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg"))
    assert second.metadata["flag"] is False and "tags" not in second.metadata
    assert third.images == ("https://example.com/c.jpg",)
    assert [(b.row, b.reason.split(":")[0]) for b in catalog.bad] == [(4, "not valid JSON"),
                                                                      (5, "not a JSON object but list")]


def test_csv_rows_are_numbered_by_line_and_overrides_are_checked(tmp_path) -> None:
    path = tmp_path / "cat.csv"
    path.write_text("sku;image;price;note\nA;a.jpg;1,5;x\n\nB;;2;y\n;c.jpg;3;z\nC;c.jpg;abc;\nD;d.jpg;4;w;extra\n")
    catalog = read_catalog(path, ColumnMapping.from_flags("sku", [], None, ["price:float"]))
    assert [r.product_id for r in catalog.rows] == []  # 1,5 is not a float here (';' CSV, ',' decimals)
    assert {b.row: b.reason for b in catalog.bad} == {
        2: "column 'price': '1,5' is not a float", 4: "no image (column 'image')",
        5: "missing id (column 'sku')", 6: "column 'price': 'abc' is not a float",
        7: "5 cells, but the header names 4 columns",
    }


def test_mapping_mistakes_are_errors_that_name_the_flag(tmp_path) -> None:
    path = tmp_path / "cat.csv"
    path.write_text("sku,image,price\nA,a.jpg,1\n")
    columns = r"\(columns: 'sku', 'image', 'price'\)"
    with pytest.raises(BadInput, match=r"no column 'id' for --id-column " + columns):
        read_catalog(path, ColumnMapping())
    with pytest.raises(BadInput, match="--text-columns"):
        read_catalog(path, ColumnMapping.from_flags("sku", [], "title", []))
    with pytest.raises(BadInput, match="--field cost:float: the catalog has no column 'cost'"):
        read_catalog(path, ColumnMapping.from_flags("sku", [], None, ["cost:float"]))
    with pytest.raises(BadInput, match="write NAME:TYPE"):
        ColumnMapping.from_flags("sku", [], None, ["price:money"])
    to_float = ColumnMapping.from_flags("sku", [], None, ["price:float"])
    changed = read_catalog(path, to_float, {"price": "integer"})
    assert changed.changes == {"price": ("integer", "float")}, "an override that differs changes the type"
    assert read_catalog(path, ColumnMapping.from_flags("sku", [], None, []), {"price": "float"}).fields[
        "price"] == "float", "a declared field keeps its type over the inferred one"


def test_the_cli_indexes_a_catalog_and_status_lists_its_bad_rows(tmp_path, tiny_checkpoint, photos) -> None:
    catalog = make_catalog(tmp_path / "shop", "parquet", photos, count=40, bad=True)
    with cli_home(tmp_path / "home", tiny_checkpoint):
        summary = run_json("index", str(catalog.path), *FLAGS, "--collection", "shop")
        assert {k: summary[k] for k in ("embedded", "failed", "removed")} == {
            "embedded": catalog.point_count, "failed": 4, "removed": 0}
        status = run_json("status", "--collection", "shop")
        assert status["count"] == catalog.point_count
        keys = {failure_key(catalog.path, row) for row in catalog.expected_bad}
        assert {f["uri"] for f in status["failed"]} == keys
        wrong = run("index", str(catalog.path), "--id-column", "code", "--collection", "other", check=False)
        assert wrong.returncode == 3 and "no column 'code' for --id-column" in wrong.stderr


@pytest.mark.slow
def test_the_full_generated_catalog(tmp_path, tiny_checkpoint, tiny_model, server) -> None:
    """About 1000 products, some with 2-3 images, a tenth of them by URL (the shared photos)."""
    shared = require_imagenet()
    server.root = shared
    catalog = make_catalog(tmp_path / "shop", "parquet", shared, count=1000, base_url=server.url)
    settings = catalog_settings(tmp_path, tiny_checkpoint)
    report = index_catalog(settings, catalog.path, MAPPING, model=tiny_model, progress=False)
    assert (report.embedded, report.failed) == (catalog.point_count, 0)
    assert report.downloaded == len({c for cells in catalog.images.values() for c in cells if "://" in c})
    shutil.rmtree(tmp_path / "home" / "cache")  # the cache may go: it is only a cache
    again = index_catalog(settings, catalog.path, MAPPING, model=tiny_model, progress=False)
    assert (again.embedded, again.unchanged) == (0, catalog.point_count)
