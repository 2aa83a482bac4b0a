"""The search page over a product catalog, driven with Streamlit's AppTest (and once in a real Chromium)
against a live API on a loopback port: the filter sidebar's facet counts and range sliders, product
cards, the ranking (hybrid, image similarity, keywords), pages, and "more / less like this".

The catalog is made by tests/catalogs.py from the shared photos (brand, colour, category, price, stock,
in_stock, added; some products with 2-3 images) plus a `blurb` text column, written as CSV and indexed
by the real catalog pipeline with `--text-columns title,blurb`. Each check compares what the page shows
with what the API answers to the request the page sent (kept in session state as `search_request`).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from streamlit.testing.v1 import AppTest

from tests.catalogs import product_rows, write_catalog
from tests.helpers import app_test, eventually, make_settings, photo_copies, serve, streamlit_ui

PRODUCTS = 36
COLLECTION = "shop"
QUERY = "a photo of an animal"
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory, imagenet_dir: Path) -> tuple[Path, list[dict]]:
    root = tmp_path_factory.mktemp("ui-catalog")
    photos = root / "photos"
    photo_copies(imagenet_dir, photos, 30)
    shop = root / "shop"
    shop.mkdir()
    rows = product_rows(sorted(photos.glob("*.JPEG")), PRODUCTS, photos, shop, None, 0, 5, seed=3)
    for row in rows:
        row["blurb"] = f"{row['colour']} {row['category']} item, {row['stock']} in stock"
    write_catalog(shop / "products.csv", rows)
    return shop / "products.csv", rows


@pytest.fixture(scope="module")
def api_url(catalog: tuple[Path, list[dict[str, Any]]], tiny_checkpoint: Path, tiny_model) -> Iterator[str]:
    from indexer.ingest.catalog import ColumnMapping
    from indexer.ingest.catalog_run import index_catalog
    from search_api.app import create_app

    path, rows = catalog
    settings = make_settings(path.parent / "home", tiny_checkpoint, collection=COLLECTION)
    mapping = ColumnMapping.from_flags("sku", ["image"], "title,blurb", ["stock:integer"])
    report = index_catalog(settings, path, mapping, model=tiny_model, progress=False)
    assert (report.embedded, report.failed) == (sum(len(r["image"]) for r in rows), 0)
    with serve(create_app(settings, model=tiny_model)) as url:
        yield url


def start(url: str, monkeypatch: pytest.MonkeyPatch, **state: Any) -> AppTest:
    at = app_test(url, monkeypatch, **state)
    assert not at.exception and not at.error, (at.exception, at.error)
    return at


def sent(at: AppTest) -> dict[str, Any]:
    return dict(at.session_state["search_request"])


def api_answer(url: str, body: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(f"{url}/v1/search", json={**body, "collection": COLLECTION}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def shown_ids(at: AppTest) -> list[str]:
    """The cards' item ids, in grid order (from their "More like this" buttons' keys)."""
    keys = [b.key or "" for b in at.main.button]
    return [key.removeprefix("search-more-") for key in keys if key.startswith("search-more-")]


def facet_labels(at: AppTest, field: str) -> list[str]:
    prefix = f"facet|{COLLECTION}|{field}|"
    return [c.label for c in at.sidebar.checkbox if (c.key or "").startswith(prefix)]


def labels_of(counts: list[dict[str, Any]]) -> list[str]:
    return [f"{c['value']} ({c['count']})" for c in counts]


def check_shown_is_the_answer(at: AppTest, url: str) -> dict[str, Any]:
    """The cards are the API's answer to the request the page sent, in its order."""
    answer = api_answer(url, sent(at))
    assert shown_ids(at) == [hit["id"] for hit in answer["results"]]
    return answer


def test_facet_counts_and_product_cards(api_url: str, catalog, monkeypatch: pytest.MonkeyPatch) -> None:
    at = start(api_url, monkeypatch, query=QUERY)
    body = sent(at)
    assert body["text"] == QUERY and body["mode"] == "hybrid" and body["group_by"] == "product_id"
    assert {"brand", "colour", "category"} <= set(body["facets"]) and "product_id" not in body["facets"]
    answer = check_shown_is_the_answer(at, api_url)
    # Counts of points (images) per brand across the whole catalog, no filter yet.
    rows = catalog[1]
    by_brand = Counter(row["brand"] for row in rows for _ in row["image"])
    assert {c["value"]: c["count"] for c in answer["facets"]["brand"]} == dict(by_brand)
    for field in ("brand", "colour", "category"):
        assert facet_labels(at, field) == labels_of(answer["facets"][field])
    # Product cards: the title as caption, brand and price, the other text column, one card per product.
    products = {row["sku"]: row for row in rows}
    hits = answer["results"]
    assert len({hit["metadata"]["product_id"] for hit in hits}) == len(hits) == 12
    captions = [c for image in at.main.image for c in image.captions]
    assert captions == [products[h["metadata"]["product_id"]]["title"] for h in hits]
    markdown = [m.value for m in at.main.markdown]
    first = products[hits[0]["metadata"]["product_id"]]
    assert f"**{first['brand']}** · :green[**{first['price']:,.2f}**]" in markdown
    assert f":gray[{first['blurb']}]" in markdown


def test_a_facet_and_a_slider_filter_the_results(api_url: str, catalog, monkeypatch) -> None:
    at = start(api_url, monkeypatch, query=QUERY, per_product=False)
    brand = sent_facets(at, api_url)["brand"][0]["value"]
    at.sidebar.checkbox(key=f"facet|{COLLECTION}|brand|{brand}").check().run()
    body = sent(at)
    assert body["filter"] == {"must": [{"key": "brand", "match": {"any": [brand]}}]}
    answer = check_shown_is_the_answer(at, api_url)
    assert answer["results"] and all(h["metadata"]["brand"] == brand for h in answer["results"])
    # The ticked field's counts are under the other fields' choices (none): every brand still listed.
    unfiltered = api_answer(api_url, {key: v for key, v in body.items() if key != "filter"})
    assert facet_labels(at, "brand") == labels_of(unfiltered["facets"]["brand"])
    assert facet_labels(at, "colour") == labels_of(answer["facets"]["colour"])  # under the brand

    slider = at.sidebar.slider(key=f"range|{COLLECTION}|price")
    low, high = slider.min, slider.max
    prices = [row["price"] for row in catalog[1]]
    assert (low, high) == (int(min(prices)), int(max(prices)) + 1)  # whole numbers around every price
    middle = (float(low + (high - low) // 4), float(low + (high - low) // 2))
    slider.set_range(*middle).run()
    body = sent(at)
    assert {"key": "price", "range": {"gte": middle[0], "lte": middle[1]}} in body["filter"]["must"]
    answer = check_shown_is_the_answer(at, api_url)
    expected = {row["sku"] for row in catalog[1]
                if row["brand"] == brand and middle[0] <= row["price"] <= middle[1]}
    assert expected, "the test's filter keeps some products"
    assert {h["metadata"]["product_id"] for h in answer["results"]} == expected  # all of them: k is 12
    at.sidebar.button(key="filters-clear").click().run()
    assert "filter" not in sent(at)


def sent_facets(at: AppTest, url: str) -> dict[str, Any]:
    return api_answer(url, sent(at))["facets"]


def test_pages_show_the_next_k_without_repeats(api_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    at = start(api_url, monkeypatch, query=QUERY, k=5, per_product=False)
    first = shown_ids(at)
    assert len(first) == 5 and sent(at)["offset"] == 0
    assert at.main.button(key="page-previous").disabled
    at.main.button(key="page-next").click().run()
    assert sent(at)["offset"] == 5
    second = check_shown_is_the_answer(at, api_url)
    second_ids = [hit["id"] for hit in second["results"]]
    assert len(second_ids) == 5 and not set(first) & set(second_ids)
    both = api_answer(api_url, {**sent(at), "k": 10, "offset": 0})
    assert first + second_ids == [hit["id"] for hit in both["results"]]  # nothing skipped either
    assert any("Page <b>2</b>" in m.value for m in at.main.markdown)
    at.main.button(key="page-previous").click().run()
    assert shown_ids(at) == first
    at.text_input(key="query").input("a red bird").run()  # a new query starts on page 1
    assert sent(at)["offset"] == 0


def test_ranking_choice_sets_the_mode(api_url: str, catalog, monkeypatch: pytest.MonkeyPatch) -> None:
    word = catalog[1][0]["title"].split()[-1]  # the photo's class name, in a few titles
    at = start(api_url, monkeypatch, query=word, per_product=False)
    assert sent(at)["mode"] == "hybrid"
    at.radio(key="search_mode").set_value("keyword").run()
    assert sent(at)["mode"] == "keyword"
    answer = check_shown_is_the_answer(at, api_url)
    assert answer["mode"] == "keyword"
    assert answer["results"] and all(word in h["metadata"]["title"].split() for h in answer["results"])
    at.radio(key="search_mode").set_value("vector").run()
    assert sent(at)["mode"] == "vector"
    assert check_shown_is_the_answer(at, api_url)["mode"] == "vector"
    assert len(shown_ids(at)) == 12  # image similarity ranks every item, not only titles with the word


def test_more_and_less_like_this(api_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    at = start(api_url, monkeypatch, query=QUERY)
    ids = shown_ids(at)
    at.main.button(key=f"search-more-{ids[0]}").click().run()
    body = sent(at)
    assert body["positive"] == [ids[0]] and "text" not in body and "negative" not in body
    answer = check_shown_is_the_answer(at, api_url)
    assert answer["mode"] == "recommend" and ids[0] not in shown_ids(at)
    other = shown_ids(at)[1]
    at.main.button(key=f"search-less-{other}").click().run()
    body = sent(at)
    assert (body["positive"], body["negative"]) == ([ids[0]], [other])
    check_shown_is_the_answer(at, api_url)
    assert any(m.value.startswith(":material/thumbs_up_down: More like") for m in at.main.markdown)
    at.main.button(key="likes-clear").click().run()
    assert sent(at)["text"] == QUERY and "positive" not in sent(at)
    # Less like this alone: the query minus that item (query algebra), as `negative` needs `positive`.
    at.main.button(key=f"search-less-{ids[1]}").click().run()
    assert sent(at)["query"] == [{"text": QUERY}, {"image_id": ids[1], "weight": -1.0}]
    check_shown_is_the_answer(at, api_url)
    at.radio(key="search_mode").set_value("keyword").run()  # words can't be less like a picture...
    assert sent(at)["mode"] == "hybrid"  # ...so image similarity joins in
    check_shown_is_the_answer(at, api_url)


# --- one look in a real browser ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ui_url(api_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with streamlit_ui(api_url, tmp_path_factory.mktemp("streamlit")) as url:
        yield url


def test_product_cards_in_chromium(ui_url: str, catalog, tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} absent (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
    shots = Path(os.environ.get("CLIPSEARCH_UI_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=args)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1900})
            page.goto(ui_url)
            box = page.get_by_label("Describe the images you want")
            box.wait_for(timeout=60_000)
            box.fill(QUERY)
            box.press("Enter")
            caption_cells = page.locator('[class*="st-key-results-"] [data-testid="stImageCaption"]')
            titles = {row["title"]: row for row in catalog[1]}

            def twelve_product_cards() -> list[str]:
                shown = caption_cells.all_inner_texts()  # one reading, checked as read
                assert len(shown) == 12 and all(caption in titles for caption in shown), shown
                return shown

            captions = eventually(twelve_product_cards, 60, "the product cards",
                                  retry_on=(AssertionError, sync_api.Error))
            first = titles[captions[0]]
            main = page.locator('[data-testid="stMain"]')
            sync_api.expect(main.get_by_text(f"{first['price']:,.2f}").first).to_be_visible()
            sync_api.expect(main.get_by_text(first["brand"], exact=True).first).to_be_visible()
            sidebar = page.locator('[data-testid="stSidebar"]')
            sync_api.expect(sidebar.get_by_text("Filters", exact=True)).to_be_visible()
            sync_api.expect(sidebar.locator('[data-testid="stSlider"]').first).to_be_visible()
            page.screenshot(path=str(shots / "catalog.png"), full_page=True)
        finally:
            browser.close()
