"""What a shop owner meets, through the real CLI and server (issue 16, points 1-8): the id column
found by its exact value and kept under its own name (filters, facets), items addressed by that id
(write API, GET, images, image:ID), PUT replacing only what it is sent, a type that a minority of
values did not fit reported and a field's type changed in place, a column both text and facet,
empty answers explained on stderr, a run that indexed nothing exiting 12, text output naming the
product, and a browse without a query sorted by a field.

The catalogs here are not the issue's: a JSONL catalog keyed by `model` with lists of images and a
nested object, a CSV keyed by `Item Code` (a column name with a space) with a `;` delimiter, and a
Parquet file with list and struct columns; the images are real photos, the model the tiny one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from indexer.settings import Settings
from tests.clirun import CLI, REPO, cli_home, run, run_json, wait_for
from tests.helpers import photo_copies, require_imagenet

MAKERS = ("Acme", "Borealis", "Cygnus")


@dataclass
class Shop:
    root: Path
    catalog: Path
    products: list[dict[str, Any]]
    settings: Settings

    def product(self, model: str) -> dict[str, Any]:
        return next(p for p in self.products if p["model"] == model)


def jsonl_products(photos: list[Path]) -> list[dict[str, Any]]:
    products = []
    for i in range(12):
        maker = MAKERS[i % 3]
        kind = photos[i].stem.split("_", 1)[1].replace("_", " ")
        pics = [f"img/{photos[i].name}"] + ([f"img/{photos[i + 12].name}"] if i % 4 == 0 else [])
        products.append({
            "model": f"ZR-{1000 + i * 7}", "pics": pics, "name": f"{maker} {kind} deluxe", "maker": maker,
            "price": round(10 + i * 5.5, 2), "specs": {"weight_g": 100 + i, "colour": "grey"},
            "tags": ["new", "sale"] if i % 2 else ["new"],
        })
    return products


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Iterator[Shop]:
    root = tmp_path_factory.mktemp("shop-walk")
    photos = photo_copies(require_imagenet(), root / "img", 24)
    products = jsonl_products(photos)
    catalog = root / "gear.jsonl"
    catalog.write_text("\n".join(json.dumps(p) for p in products) + "\n")
    with cli_home(root / "home", tiny_checkpoint) as settings:
        report = run_json("index", str(catalog), "--id-column", "model", "--image-column", "pics",
                          "--text-columns", "name,maker", "--collection", "gear")
        assert (report["embedded"], report["failed"]) == (15, 0)
        yield Shop(root, catalog, products, settings)


def search(*args: str) -> dict[str, Any]:
    return run_json("search", *args, "--collection", "gear")


# --- 1: the id column, under its own name -----------------------------------------------------------


def test_the_id_column_is_a_searchable_keyword_field_under_its_own_name(shop: Shop) -> None:
    status = run_json("status", "--collection", "gear")
    assert status["fields"]["model"] == "keyword" and "product_id" not in status["fields"]
    assert {"model", "name", "maker"} <= set(status["searchable"]) and status["id_fields"] == ["model"]
    assert status["fields"]["name"] == status["fields"]["maker"] == "keyword"


@pytest.mark.parametrize("model", ["ZR-1042", "ZR-1077"])
def test_an_exact_id_comes_first_by_default_and_in_keyword_mode(shop: Shop, model: str) -> None:
    hybrid = search(model, "-k", "3")
    assert hybrid["mode"] == "hybrid" and hybrid["results"][0]["metadata"]["model"] == model
    keyword = search(model, "--search-mode", "keyword", "-k", "3")
    first, second = keyword["results"][:2]  # every id shares the word "ZR": the exact one scores far above
    assert first["metadata"]["model"] == model and first["score"] > 2 * second["score"]
    # inside other words, as a shop's search box gets it
    assert search(f"do you have {model} in grey", "-k", "1")["results"][0]["metadata"]["model"] == model


def test_the_id_column_filters_and_facets_under_its_own_name(shop: Shop) -> None:
    two_images = search("a photo", "--where", "model = ZR-1000", "-k", "5")["results"]
    assert len(two_images) == 2 and {r["metadata"]["model"] for r in two_images} == {"ZR-1000"}
    answer = search("a photo", "--where", "model in (ZR-1007, ZR-1014)", "--facet", "model", "-k", "10")
    assert {r["metadata"]["model"] for r in answer["results"]} == {"ZR-1007", "ZR-1014"}
    assert {f["value"]: f["count"] for f in answer["facets"]["model"]} == {"ZR-1007": 1, "ZR-1014": 1}


# --- 4: a text column that is also a facet ------------------------------------------------------------


def test_a_text_column_is_also_a_facet_and_a_filter(shop: Shop) -> None:
    answer = search("Borealis", "--facet", "maker", "-k", "3")
    assert answer["results"][0]["metadata"]["maker"] == "Borealis"  # found by its words
    counts = {f["value"]: f["count"] for f in answer["facets"]["maker"]}
    assert counts == {"Acme": 5, "Borealis": 5, "Cygnus": 5}  # points: products 0, 4, 8 have two images
    assert {r["metadata"]["maker"] for r in search("a photo", "--where", "maker = Cygnus")["results"]} == {
        "Cygnus"}


# --- 5: empty answers say so ------------------------------------------------------------------------------


def test_an_empty_answer_says_why_on_stderr_with_the_mode_s_score_scale(shop: Shop) -> None:
    done = run("search", "ZR-1042 in grey", "--min-score", "0.5", "--collection", "gear")
    assert done.stdout == ""
    assert "no results (hybrid mode" in done.stderr and "fused reciprocal ranks" in done.stderr
    assert "--min-score 0.5" in done.stderr and "--search-mode vector" in done.stderr
    filtered = run("search", "a photo", "--where", "maker = Nobody", "--collection", "gear", "--json")
    assert json.loads(filtered.stdout)["results"] == []
    assert "no results (hybrid mode" in filtered.stderr and "the filter may keep nothing" in filtered.stderr
    vector = run("search", "a photo", "--search-mode", "vector", "--min-score", "0.99", "-c", "gear")
    assert "no results (vector mode; scores are cosine similarity" in vector.stderr


# --- 7: text output names the product ---------------------------------------------------------------------


def test_text_output_shows_the_id_title_and_price(shop: Shop) -> None:
    product = shop.product("ZR-1042")
    line = run("search", "ZR-1042", "-k", "1", "--collection", "gear").stdout.strip()
    score, model, name, price, uri = line.split("\t")
    assert float(score) > 0 and model == "ZR-1042"
    assert (name, price) == (product["name"], f"price {product['price']}")
    assert uri == str(shop.root / product["pics"][0])


# --- 8: browse without a query ------------------------------------------------------------------------------


def test_a_filter_only_search_browses_sorted_by_a_field(shop: Shop) -> None:
    falling = search("--where", "maker = Acme", "--sort", "-price", "-k", "3", "--facet", "maker")
    acme = sorted((p["price"] for p in shop.products if p["maker"] == "Acme"), reverse=True)
    assert acme == [59.5, 43.0, 26.5, 10.0]
    assert falling["mode"] == "browse" and [r["metadata"]["price"] for r in falling["results"]] == acme[:3]
    assert {f["value"]: f["count"] for f in falling["facets"]["maker"]} == {"Acme": 5}
    page2 = search("--where", "maker = Acme", "--sort", "price:desc", "-k", "3", "--offset", "3")
    assert [r["metadata"]["price"] for r in page2["results"]] == [10.0, 10.0]  # ZR-1000 has two images
    rising = search("--sort", "price", "-k", "2")["results"]
    assert [r["metadata"]["model"] for r in rising] == ["ZR-1000", "ZR-1000"]
    text = run("search", "--where", "price > 40", "--sort", "price", "-c", "gear").stdout.splitlines()
    assert [line.split("\t")[:2] for line in text] == [
        ["-", m] for m in ("ZR-1042", "ZR-1049", "ZR-1056", "ZR-1056", "ZR-1063", "ZR-1070", "ZR-1077")]
    wrong = run("search", "--sort", "nosuch", "--collection", "gear", check=False)
    assert wrong.returncode == 3 and wrong.stderr.startswith("error: ") and "nosuch" in wrong.stderr
    mixed = run("search", "a photo", "--sort", "price", "--collection", "gear", check=False)
    assert mixed.returncode == 2 and "--sort orders a browse" in mixed.stderr


# --- 2 and 8: items by the shop's id, through a running server ---------------------------------------------


@pytest.fixture
def server(shop: Shop) -> Iterator[str]:
    process = subprocess.Popen([*CLI, "serve", "--port", "0", "--collection", "gear"], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env=os.environ.copy())
    from indexer.locking import server_address

    folder = shop.settings.collection_dir("gear")
    try:
        wait_for(lambda: (folder / "server.json").exists() or process.poll() is not None, 90, "the server")
        assert process.poll() is None, process.communicate()[1]
        url = server_address(folder)
        assert url is not None
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def test_items_are_addressed_by_the_catalog_id_everywhere(shop: Shop, server: str) -> None:
    items = f"{server}/v1/collections/gear/items"
    got = httpx.get(f"{items}/ZR-1000", timeout=30)
    assert got.status_code == 200 and got.json()["metadata"]["model"] == "ZR-1000"
    patched = httpx.patch(f"{items}/ZR-1000", json={"metadata": {"price": 9.5}}, timeout=30).json()
    assert patched["action"] == "updated" and len(patched["point_ids"]) == 2  # every image of the product
    both = search("--where", "model = ZR-1000")["results"]  # through the server that holds it
    assert [r["metadata"]["price"] for r in both] == [9.5, 9.5] and both[0]["metadata"]["name"]
    assert httpx.get(f"{server}/v1/images/ZR-1007?collection=gear", timeout=30).content == (
        shop.root / shop.product("ZR-1007")["pics"][0]).read_bytes()
    like = search("image:ZR-1007", "-k", "1", "--search-mode", "vector")["results"][0]
    assert like["metadata"]["model"] == "ZR-1007" and like["score"] > 0.99
    refused = httpx.patch(f"{items}/ZR-1007", json={"metadata": {"model": "ZR-9"}}, timeout=30)
    assert refused.status_code == 400 and "id" in refused.json()["detail"]
    assert httpx.patch(f"{items}/ZR-0000", json={"metadata": {"price": 1}}, timeout=30).status_code == 404
    # browse through the server, from the CLI and the API alike
    cli = search("--where", "maker = Borealis", "--sort", "-price", "-k", "2")
    api = httpx.post(f"{server}/v1/browse", timeout=30, json={
        "collection": "gear", "k": 2, "sort": "-price",
        "filter": {"must": [{"key": "maker", "match": {"value": "Borealis"}}]}}).json()
    assert api["mode"] == cli["mode"] == "browse"
    assert [{key: hit[key] for key in ("id", "uri", "score", "metadata")} for hit in api["results"]] == \
        cli["results"]  # the CLI's shape, with or without a server
    assert [r["metadata"]["model"] for r in api["results"]] == ["ZR-1070", "ZR-1049"]


def test_put_replaces_what_it_is_sent_and_keeps_the_rest(shop: Shop, server: str) -> None:
    """The metadata part (every field but the text fields and those the server sets) and the text part
    (the collection's text fields: here the catalog's text columns, `name` and `maker`) are each
    replaced when sent and kept when not; so is the image."""
    items = f"{server}/v1/collections/gear/items"
    photo = shop.root / shop.product("ZR-1021")["pics"][0]
    made = httpx.put(f"{items}/extra-1", timeout=60, files={"file": ("a.jpg", photo.read_bytes())},
                     data={"metadata": json.dumps({"price": 3.25, "colour": "red"}),
                           "text": json.dumps({"name": "spare strap", "maker": "Acme"})})
    assert made.json()["action"] == "created", made.text

    def metadata() -> dict[str, Any]:
        return httpx.get(f"{items}/extra-1", timeout=30).json()["metadata"]

    renamed = {"text": {"name": "spare leather strap"}}
    httpx.put(f"{items}/extra-1", json=renamed, timeout=30).raise_for_status()
    after_text = metadata()
    assert after_text["price"] == 3.25 and after_text["colour"] == "red", "metadata not sent: kept"
    assert after_text["name"] == "spare leather strap" and "maker" not in after_text, "text sent: replaced"
    httpx.put(f"{items}/extra-1", json={"metadata": {"colour": "blue"}}, timeout=30).raise_for_status()
    after_metadata = metadata()
    assert after_metadata["colour"] == "blue" and "price" not in after_metadata, "metadata sent: replaced"
    assert after_metadata["name"] == "spare leather strap", "text not sent: kept"
    assert after_metadata["item_id"] == "extra-1" and after_metadata["width"] > 0, "set by the server: kept"
    assert search("spare leather strap", "-k", "1")["results"][0]["metadata"]["item_id"] == "extra-1"
    over = httpx.put(f"{items}/ZR-1000", timeout=60, files={"file": ("a.jpg", photo.read_bytes())})
    assert over.status_code == 400 and "2 images" in over.json()["detail"]
    one = httpx.put(f"{items}/ZR-1007", json={"metadata": {"price": 1.0}}, timeout=30).json()
    assert one["action"] == "replaced" and one["embedded"] is False
    product = httpx.get(f"{items}/ZR-1007", timeout=30).json()["metadata"]
    assert product["model"] == "ZR-1007" and product["name"] == shop.product("ZR-1007")["name"]
    assert product["price"] == 1.0 and "specs" not in product and "tags" not in product


# --- 3: types: a minority that does not fit is reported; a type changes in place ---------------------------


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    columns = list(rows[0])
    lines = [";".join(columns)] + [";".join(str(row.get(c, "")) for c in columns) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def csv_rows(photos: list[Path], prices: list[str]) -> list[dict[str, Any]]:
    return [{"Item Code": f"B07-{i:04d}", "photo": f"img/{photos[i].name}", "label": f"thing {i}",
             "price": price} for i, price in enumerate(prices)]


def test_a_minority_misfit_is_reported_and_a_type_changes_in_place(tmp_path: Path,
                                                                   tiny_checkpoint: Path) -> None:
    photos = photo_copies(require_imagenet(), tmp_path / "img", 12)
    prices = [f"{5 + i * 10}.5" for i in range(12)]
    prices[4] = "cheap"
    catalog = write_csv(tmp_path / "stock.csv", csv_rows(photos, prices))
    flags = ["--id-column", "Item Code", "--image-column", "photo", "--text-columns", "label", "-c", "stock"]
    with cli_home(tmp_path / "home", tiny_checkpoint):
        done = run("index", str(catalog), *flags)
        assert "11 embedded" in done.stdout and "1 failed" in done.stdout
        assert ("warning: column 'price' is a float field, but 1 of its 12 values are not (row 6: 'cheap')"
                in done.stderr) and "--field price:keyword" in done.stderr
        status = run_json("status", "-c", "stock")
        assert status["fields"]["price"] == "float" and status["fields"]["Item_Code"] == "keyword"
        assert [f["uri"] for f in status["failed"]] == [f"{catalog}#row=6"]
        assert "'cheap' is not a float" in status["failed"][0]["reason"]
        under = run_json("search", "--where", "price < 30", "--sort", "price", "-c", "stock")["results"]
        assert [r["metadata"]["Item_Code"] for r in under] == ["B07-0000", "B07-0001", "B07-0002"]

        # every value kept as text: the field becomes keyword in place, the bad row is good again
        kept = run("index", str(catalog), *flags, "--field", "price:keyword")
        assert "warning: field 'price' changed from float to keyword" in kept.stderr
        assert run_json("status", "-c", "stock")["fields"]["price"] == "keyword"
        assert run_json("search", "--where", "price = cheap", "-c", "stock")["results"][0]["metadata"][
            "Item_Code"] == "B07-0004"
        assert run("search", "--where", "price < 30", "-c", "stock", check=False).returncode == 3

        # the cell fixed, back to float, in place: nothing is embedded again
        prices[4] = "45.5"
        write_csv(catalog, csv_rows(photos, prices))
        back = run_json("index", str(catalog), *flags, "--field", "price:float")
        assert back["embedded"] == 0 and back["failed"] == 0
        assert back["notes"] == ["field 'price' changed from keyword to float (stored values converted: 0)"]
        assert [r["metadata"]["price"] for r in run_json(
            "search", "--where", "price >= 40", "--sort", "price", "-k", "2", "-c", "stock")["results"]] == [
            45.5, 55.5]

        # values of another catalog that do not convert: refused, nothing changed
        other = write_csv(tmp_path / "more.csv", [{**csv_rows(photos[8:], ["n/a"])[0], "Item Code": "X-1"}])
        run("index", str(other), *flags, "--field", "price:keyword")  # price: keyword for both again
        refused = run("index", str(catalog), *flags, "--field", "price:float", check=False)
        assert refused.returncode == 3 and refused.stderr.count("\n") == 1
        assert "field 'price' cannot become float: 1 of its 1 stored values do not convert" in refused.stderr
        assert run_json("status", "-c", "stock")["fields"]["price"] == "keyword"


def test_a_parquet_catalog_with_nested_columns_and_a_spaced_id_column(tmp_path: Path,
                                                                      tiny_checkpoint: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    photos = photo_copies(require_imagenet(), tmp_path / "img", 8)
    table = pa.table({
        "Item Code": [f"MX {i}0{i}-K" for i in range(6)],
        "images": [[f"img/{photos[i].name}"] + ([f"img/{photos[i + 6].name}"] if i < 2 else [])
                   for i in range(6)],
        "Title": [f"mixer {n}" for n in ("alpha", "beta", "gamma", "delta", "epsilon", "zeta")],
        "shop": [{"lat": 38.7 + i / 100, "lon": -9.1} for i in range(6)],
        "sizes": [[i, i + 1] for i in range(6)],
    })
    pq.write_table(table, tmp_path / "mixers.parquet")
    with cli_home(tmp_path / "home", tiny_checkpoint):
        report = run_json("index", str(tmp_path / "mixers.parquet"), "--id-column", "Item Code",
                          "--image-column", "images", "--text-columns", "Title", "-c", "mixers")
        assert (report["embedded"], report["failed"]) == (8, 0)
        fields = run_json("status", "-c", "mixers")["fields"]
        assert (fields["Item_Code"], fields["shop"], fields["sizes"]) == ("keyword", "geo", "integer")
        first = run_json("search", "MX 303-K", "-k", "1", "-c", "mixers")["results"][0]
        assert first["metadata"]["Item_Code"] == "MX 303-K"
        both = run_json("search", "--where", "Item_Code = 'MX 101-K'", "-c", "mixers")["results"]
        assert len(both) == 2 and {r["metadata"]["Title"] for r in both} == {"mixer beta"}
        sizes = run_json("search", "--where", "sizes = 5", "--sort", "Item_Code", "-c", "mixers")["results"]
        assert [r["metadata"]["Item_Code"] for r in sizes] == ["MX 404-K", "MX 505-K"]


# --- 6: a run where every row failed ----------------------------------------------------------------------


def test_a_run_that_indexed_nothing_exits_12_after_its_report(tmp_path: Path, tiny_checkpoint: Path) -> None:
    catalog = tmp_path / "gone.jsonl"
    rows = [json.dumps({"sku": f"S{i}", "image": f"missing-{i}.jpg"}) for i in range(3)]
    catalog.write_text("\n".join(rows) + "\n")
    with cli_home(tmp_path / "home", tiny_checkpoint):
        done = run("index", str(catalog), "--id-column", "sku", "-c", "gone", "--json", check=False)
        assert done.returncode == 12, done.stderr
        assert json.loads(done.stdout)["failed"] == 3, "the report comes first"
        assert done.stderr.startswith("error: every one of the 3 rows") and done.stderr.count("\n") == 1
        photos = photo_copies(require_imagenet(), tmp_path, 1)
        catalog.write_text(catalog.read_text() + json.dumps({"sku": "S9", "image": photos[0].name}) + "\n")
        partly = run("index", str(catalog), "--id-column", "sku", "-c", "gone", check=False)
        assert partly.returncode == 0 and "1 embedded" in partly.stdout and "3 failed" in partly.stdout


# --- migration: a collection written by the release that stored `product_id` ------------------------------


def test_a_collection_with_product_id_payloads_still_answers_by_id(tmp_path: Path, tiny_checkpoint: Path,
                                                                   tiny_model: Any) -> None:
    from tests.shop import build_shop

    with cli_home(tmp_path / "home", tiny_checkpoint) as settings:
        shop = build_shop(settings, tiny_model, products=20, collection="legacy")
        status = run_json("status", "-c", "legacy")
        assert status["id_fields"] == ["product_id"] and status["fields"]["title"] == "text"
        product = shop.payloads[0]["metadata"]["product_id"]
        found = run_json("search", f"image:{product}", "-k", "1", "--search-mode", "vector", "-c", "legacy")
        assert found["results"][0]["metadata"]["product_id"] == product
        rows = run_json("search", "--where", f"product_id = {product}", "-c", "legacy")["results"]
        assert {r["metadata"]["product_id"] for r in rows} == {product}
        refused = run("search", "a hat", "--facet", "title", "-c", "legacy", check=False)
        assert refused.returncode == 3 and "facets count keyword fields" in refused.stderr
