"""Every search option through the HTTP API, on an embedded store (qdrant-edge) and on the Qdrant
server path (qdrant-client local mode), against exact answers computed in numpy over a synthetic
shop (tests/shop.py): filters, pages, min_score, group_by, facets, query algebra, recommend, MMR,
keyword and hybrid modes (an exact SKU first), and the bad requests each option can make."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from search_api import create_app
from tests.helpers import assert_error, brute_force, make_settings, png_bytes, serve
from tests.shop import Shop, build_shop

STORE_KINDS = ["edge", "qdrant"]


@dataclass
class Served:
    kind: str
    client: httpx.Client
    shop: Shop
    app: Any

    def search(self, **body: Any) -> dict[str, Any]:
        response = self.client.post("/v1/search", json=body)
        assert response.status_code == 200, response.text
        return response.json()

    def text_vector(self, text: str) -> np.ndarray:
        """The query vector the server makes of a text (its own encoder)."""
        engines = self.app.state.engines
        return engines.call(None, lambda e: e.text_cache.get(e.model_for()[1], text))


@pytest.fixture(scope="module", params=STORE_KINDS)
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path,
           tiny_model: Any) -> Iterator[Served]:
    root = tmp_path_factory.mktemp(request.param)
    settings = make_settings(root / "home", tiny_checkpoint, store=request.param, qdrant={"path": root / "q"})
    shop = build_shop(settings, tiny_model)
    app = create_app(settings, model=tiny_model)
    with serve(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield Served(request.param, client, shop, app)


def ids_of(answer: dict[str, Any]) -> list[str]:
    return [r["id"] for r in answer["results"]]


FILTERS: dict[str, dict[str, Any] | None] = {
    "none": None,
    "category shoes": {"must": [{"key": "category", "match": {"value": "shoes"}}]},
    "cheap acme or zenith": {"must": [{"key": "price", "range": {"lt": 60}},
                                      {"key": "brand", "match": {"any": ["acme", "zenith"]}}]},
    "no brand": {"must": [{"is_empty": {"key": "brand"}}]},
    "added 2020, in stock": {"must": [{"key": "added", "range": {"gte": "2020-01-01", "lt": "2021-01-01"}},
                                      {"key": "in_stock", "match": {"value": True}}]},
    "near Lisbon": {"must": [{"key": "location", "geo_radius": {"center": {"lat": 38.7223, "lon": -9.1393},
                                                                 "radius": 12000}}]},
    "not red": {"must_not": [{"key": "colour", "match": {"value": "red"}}]},
}


@pytest.mark.parametrize("case", list(FILTERS))
def test_filtered_results_equal_brute_force_over_the_filtered_subset(served: Served, case: str) -> None:
    shop, query_filter = served.shop, FILTERS[case]
    keep = shop.kept(query_filter)
    assert 0 < keep.sum() < len(shop.ids) or case == "none"
    probe = 17
    expected = brute_force(shop.vectors, shop.vectors[probe], 15, keep)
    answer = served.search(image_id=shop.ids[probe], k=15, filter=query_filter)
    assert ids_of(answer) == [shop.ids[row] for row, _ in expected]
    assert [r["score"] for r in answer["results"]] == pytest.approx([s for _, s in expected], abs=1e-5)
    assert answer["mode"] == "vector"


@pytest.mark.parametrize("case", ["none", "category shoes", "not red"])
def test_pages_never_repeat_or_skip(served: Served, case: str) -> None:
    shop, query_filter = served.shop, FILTERS[case]
    expected = brute_force(shop.vectors, shop.vectors[3], 28, shop.kept(query_filter))
    pages = [ids_of(served.search(image_id=shop.ids[3], k=7, offset=offset, filter=query_filter))
             for offset in (0, 7, 14, 21)]
    assert sum(pages, []) == [shop.ids[row] for row, _ in expected]


@pytest.mark.parametrize("mode", ["hybrid", "keyword"])
def test_pages_of_keyword_and_hybrid_rankings_are_slices_of_one_ranking(served: Served, mode: str) -> None:
    whole = ids_of(served.search(text="acme red dress", mode=mode, k=30))
    assert len(whole) == 30 and len(set(whole)) == 30
    pages = [ids_of(served.search(text="acme red dress", mode=mode, k=10, offset=offset))
             for offset in (0, 10, 20)]
    assert sum(pages, []) == whole


def test_min_score_keeps_exactly_the_hits_at_or_above_it(served: Served) -> None:
    shop = served.shop
    expected = brute_force(shop.vectors, shop.vectors[8], len(shop.ids))
    threshold = (expected[5][1] + expected[6][1]) / 2  # between the 6th and the 7th
    answer = served.search(image_id=shop.ids[8], k=50, min_score=threshold)
    assert ids_of(answer) == [shop.ids[row] for row, _ in expected[:6]]
    assert all(r["score"] >= threshold for r in answer["results"])


def test_group_by_gives_one_hit_per_product_the_best_of_each(served: Served) -> None:
    shop, query_filter = served.shop, FILTERS["not red"]
    order = brute_force(shop.vectors, shop.vectors[40], len(shop.ids), shop.kept(query_filter))
    best: dict[str, str] = {}
    for row, _ in order:
        best.setdefault(shop.payloads[row]["metadata"]["product_id"], shop.ids[row])
    expected = list(best.values())
    first = served.search(image_id=shop.ids[40], k=10, group_by="product_id", filter=query_filter)
    second = served.search(image_id=shop.ids[40], k=10, offset=10, group_by="product_id", filter=query_filter)
    products = [r["metadata"]["product_id"] for r in first["results"] + second["results"]]
    assert len(products) == len(set(products)) == 20
    assert ids_of(first) + ids_of(second) == expected[:20]


@pytest.mark.parametrize("case", ["none", "cheap acme or zenith", "near Lisbon"])
def test_facets_equal_python_counts_under_the_filter(served: Served, case: str) -> None:
    shop, query_filter = served.shop, FILTERS[case]
    keep = shop.kept(query_filter)
    answer = served.search(text="a bag", k=3, filter=query_filter, facets=["brand", "category", "colour"],
                           facet_limit=3)
    for field in ("brand", "category", "colour"):
        counts = Counter(p["metadata"][field] for p, k in zip(shop.payloads, keep, strict=True)
                         if k and field in p["metadata"])
        expected = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:3]
        assert [(f["value"], f["count"]) for f in answer["facets"][field]] == expected
    assert served.search(text="a bag", k=3)["facets"] is None  # not asked: none


def test_results_carry_their_catalog_metadata(served: Served) -> None:
    shop = served.shop
    answer = served.search(image_id=shop.ids[0], k=1)
    assert answer["results"][0]["metadata"] == shop.payloads[0]["metadata"]


def test_an_exact_sku_puts_its_product_first_in_hybrid_mode(served: Served) -> None:
    """With the tiny random model the image vectors say nothing about the text: the SKU alone does it."""
    shop = served.shop
    for product in (7, 42, 101):
        answer = served.search(text=shop.sku(product), k=5)
        assert answer["mode"] == "hybrid"  # the default: the shop declares a text field
        assert answer["results"][0]["metadata"]["product_id"] == f"P{product:04d}"
        grouped = served.search(text=f"show me {shop.sku(product)} please", k=3, group_by="product_id")
        assert grouped["results"][0]["metadata"]["product_id"] == f"P{product:04d}"
    vector = served.search(text=shop.sku(42), k=5, mode="vector")
    assert vector["mode"] == "vector"


def test_keyword_mode_finds_only_points_holding_the_words(served: Served) -> None:
    answer = served.search(text="kestrel", mode="keyword", k=200)
    holding = {i for i, p in zip(served.shop.ids, served.shop.payloads, strict=True)
               if "kestrel" in p["metadata"]["title"].split()}
    assert set(ids_of(answer)) == holding
    assert answer["timings"]["encode_ms"] == 0.0  # no embedding for a keyword-only query


def test_query_algebra_is_the_normalised_weighted_sum(served: Served) -> None:
    shop = served.shop
    text = "a green scarf"
    terms = [{"image_id": shop.ids[10]}, {"image_id": shop.ids[20], "weight": -0.5},
             {"text": text, "weight": 2}]
    answer = served.search(query=terms, k=12, mode="vector")
    unit = [shop.vectors[10], shop.vectors[20], served.text_vector(text)]
    total = sum(w * v / np.linalg.norm(v) for w, v in zip((1.0, -0.5, 2.0), unit, strict=True))
    query = total / np.linalg.norm(total)
    expected = brute_force(shop.vectors, query, 12)
    assert ids_of(answer) == [shop.ids[row] for row, _ in expected]
    assert [r["score"] for r in answer["results"]] == pytest.approx([s for _, s in expected], abs=1e-5)
    # a single term is the plain search
    assert ids_of(served.search(query=[{"image_id": shop.ids[10]}], k=5)) == ids_of(
        served.search(image_id=shop.ids[10], k=5))


def test_recommend_is_more_like_these_less_like_those(served: Served) -> None:
    shop = served.shop
    pos, neg = [1, 2], [3]
    answer = served.search(positive=[shop.ids[i] for i in pos], negative=[shop.ids[i] for i in neg], k=10,
                           filter=FILTERS["not red"])
    scores = shop.vectors @ shop.vectors[pos].sum(axis=0) - shop.vectors @ shop.vectors[neg].sum(axis=0)
    keep = shop.kept(FILTERS["not red"])
    keep[pos + neg] = False  # the examples are left out
    rows = np.flatnonzero(keep)
    expected = rows[np.argsort(-scores[rows], kind="stable")][:10]
    assert answer["mode"] == "recommend"
    assert ids_of(answer) == [shop.ids[row] for row in expected]
    assert [r["score"] for r in answer["results"]] == pytest.approx(scores[expected].tolist(), abs=1e-4)


def test_diversity_reorders_by_mmr_and_zero_changes_nothing(served: Served) -> None:
    shop = served.shop
    plain = served.search(image_id=shop.ids[5], k=10)
    assert ids_of(served.search(image_id=shop.ids[5], k=10, diversity=0.0)) == ids_of(plain)
    diverse = served.search(image_id=shop.ids[5], k=10, diversity=0.9)
    assert ids_of(diverse)[0] == ids_of(plain)[0] and ids_of(diverse) != ids_of(plain)
    by_id = dict(zip(shop.ids, shop.vectors @ shop.vectors[5], strict=True))
    scores = [by_id[i] for i in ids_of(diverse)]
    assert [r["score"] for r in diverse["results"]] == pytest.approx(scores, abs=1e-5)


def test_image_upload_takes_the_search_options(served: Served) -> None:
    files = {"file": ("q.png", png_bytes((64, 48)), "image/png")}
    form = {"k": "4", "group_by": "product_id", "facets": "brand,category", "search_mode": "hybrid",
            "text": served.shop.sku(42),
            "filter": '{"must": [{"key": "category", "match": {"value": "bags"}}]}'}
    response = served.client.post("/v1/search/image", data=form, files=files)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["mode"] == "hybrid"
    assert answer["results"][0]["metadata"]["product_id"] == "P0042"  # a bag, and its SKU is the text
    assert {r["metadata"]["category"] for r in answer["results"]} == {"bags"}
    assert len({r["metadata"]["product_id"] for r in answer["results"]}) == 4
    assert set(answer["facets"]) == {"brand", "category"}
    terms = json.dumps([{"image_id": served.shop.ids[1], "weight": 0.5}])
    response = served.client.post("/v1/search/image", data={"query": terms}, files=files)
    assert response.status_code == 200, response.text
    assert_error(served.client.post("/v1/search/image", data={"query": "[{]"}, files=files), 400, "query")
    assert_error(served.client.post("/v1/search/image", data={"query": '[{"text": ""}]'}, files=files), 400)


BAD_REQUESTS: list[tuple[dict[str, Any], int, str]] = [
    ({"text": "x", "group_by": "nope"}, 400, "not declared"),
    ({"text": "x", "group_by": "price"}, 400, "keyword or integer"),
    ({"text": "x", "facets": ["price"]}, 400, "keyword fields"),
    ({"text": "x", "mode": "sideways"}, 422, "mode"),
    ({"text": "x", "diversity": 1.5}, 422, "diversity"),
    ({"text": "x", "diversity": 0.5, "mode": "hybrid"}, 400, "vector search without group_by"),
    ({"text": "x", "min_score": "high"}, 422, "min_score"),
    ({"image_id": "00000000-0000-0000-0000-000000000001", "mode": "keyword"}, 400, "words"),
    ({"text": "x", "query": [{"text": "y"}]}, 422, "exactly one"),
    ({"query": []}, 422, "query"),
    ({"query": [{"text": "y", "weight": 0}]}, 422, "weight"),
    ({"query": [{"text": "y", "image_id": "z"}]}, 422, "exactly one"),
    ({"query": [{"text": "y", "weight": -1}]}, 422, "positive weight"),  # the schema says so (a 422)
    ({"query": [{"image_id": "not-an-id"}]}, 404, "not-an-id"),
    ({"negative": ["00000000-0000-0000-0000-000000000001"]}, 422, "exactly one"),
    ({"text": "x", "negative": ["00000000-0000-0000-0000-000000000001"]}, 422, "positive"),
    ({"positive": ["00000000-0000-0000-0000-000000000001"], "mode": "hybrid"}, 422, "recommend"),
    ({"positive": ["00000000-0000-0000-0000-0000000fffff"]}, 404, "0000000fffff"),
    ({"positive": ["../etc/passwd"]}, 404, "passwd"),
    ({"positive": ["00000000-0000-0000-0000-000000000001"], "negative": ["nope"]}, 404, "nope"),
    ({"text": "x", "filter": {"must": [{"key": "price", "match": {"value": 3}}]}}, 400, "price"),
]


@pytest.mark.parametrize(("body", "status", "words"), BAD_REQUESTS)
def test_bad_requests_are_4xx_saying_why(served: Served, body: dict[str, Any], status: int,
                                         words: str) -> None:
    assert_error(served.client.post("/v1/search", json=body), status, words)


def test_the_openapi_document_describes_filters_and_the_query_kinds(served: Served) -> None:
    document = served.client.get("/openapi.json").json()
    schemas = document["components"]["schemas"]
    assert "Filter" in schemas and "FieldCondition" in schemas
    request = schemas["SearchRequest"]
    assert [alt["required"] for alt in request["oneOf"]] == [["text"], ["image_id"], ["query"], ["positive"]]
    assert (request["if"]["required"], request["then"]["required"]) == (["negative"], ["positive"])
    assert "QueryTerm" in schemas and "FacetCount" in schemas


def test_the_documented_filter_schema_validates_what_the_server_accepts(served: Served) -> None:
    from jsonschema import Draft202012Validator

    document = served.client.get("/openapi.json").json()
    root = {"$ref": "#/components/schemas/Filter", "components": document["components"]}
    validator = Draft202012Validator(root)
    accepted = [f for f in FILTERS.values() if f is not None] + [
        {"should": [{"has_id": [served.shop.ids[0]]},
                    {"must": [{"key": "stock", "match": {"except": [1, 2]}}]}]},
        {"must_not": [{"has_vector": "default"}, {"key": "brand", "match": {"any": ["acme"]}}]},
    ]
    for query_filter in accepted:
        assert served.client.post("/v1/search", json={"text": "x", "filter": query_filter}).status_code == 200
        assert not list(validator.iter_errors(query_filter)), query_filter
    north = {"center": {"lat": 91, "lon": 0}, "radius": 1}
    for refused in ({"must": "x"}, {"bogus": []}, {"must": [{"key": "brand", "match": {"value": [1]}}]},
                    {"must": [{"key": "location", "geo_radius": north}]}):
        answer = served.client.post("/v1/search", json={"text": "x", "filter": refused})
        assert answer.status_code in (400, 422)
        assert list(validator.iter_errors(refused)), refused
