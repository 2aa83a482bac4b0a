"""Query algebra (indexer/search/query.py): the combination is exactly normalise(sum of weight * unit
vector) in numpy's arithmetic, the command line's terms parse as documented, and the real
`clipsearch search` runs algebra, --where, --near, --facet, --offset, --group-by and --like on a
collection of its own and through the `clipsearch serve` that holds it, with the same answers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from indexer.errors import BadInput
from indexer.search.query import Term, combine, embed_terms, keyword_text, parse_terms
from indexer.settings import Settings
from tests.clirun import CLI, REPO, cli_home, run, wait_for
from tests.helpers import brute_force, png_bytes
from tests.shop import Shop, build_shop


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def test_combine_is_the_normalised_weighted_sum_of_unit_vectors() -> None:
    rng = np.random.default_rng(0)
    vectors = [rng.standard_normal(16).astype(np.float32) * s for s in (1.0, 3.0, 0.2)]
    weights = [1.0, -0.5, 2.0]
    expected = unit(sum(w * unit(v.astype(np.float64)) for w, v in zip(weights, vectors, strict=True)))
    got = combine(vectors, weights)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-7)
    assert float(np.linalg.norm(got)) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_array_equal(combine([vectors[0]], [1.0]), vectors[0])  # one positive term: itself
    np.testing.assert_allclose(combine([vectors[0]], [3.0]), vectors[0], rtol=0, atol=0)
    np.testing.assert_allclose(combine([vectors[1], vectors[1]], [1.0, 1.0]), unit(vectors[1]), atol=1e-7)


def test_terms_that_cancel_or_only_subtract_are_refused() -> None:
    v = np.ones(4, dtype=np.float32)
    with pytest.raises(BadInput, match="cancel out"):
        combine([v, 2 * v], [1.0, -1.0])
    with pytest.raises(BadInput, match="positive weight"):
        embed_terms([Term(text="x", weight=-1)], lambda t: v)
    with pytest.raises(BadInput, match="zero embedding"):
        combine([v, 0 * v], [1.0, 1.0])
    for bad in ({"text": "x", "weight": 0.0}, {"text": "x", "weight": float("nan")}, {"text": "  "}, {}):
        with pytest.raises(BadInput):
            Term(**bad)


def test_the_command_line_spelling(tmp_path: Path) -> None:
    (tmp_path / "shoe.jpg").write_bytes(b"x")
    spelled = ["red dress", "+", "image:ID", "-", "long sleeves", "+", "0.5:shoe.jpg"]
    terms = parse_terms(spelled, cwd=tmp_path)
    assert terms == [Term(text="red dress"), Term(image_id="ID"), Term(text="long sleeves", weight=-1.0),
                     Term(image=(tmp_path / "shoe.jpg").resolve(), weight=0.5)]
    assert parse_terms(["red", "dress"]) == [Term(text="red dress")]
    assert parse_terms(["-", "x", "+", "2:y"]) == [Term(text="x", weight=-1.0), Term(text="y", weight=2.0)]
    assert parse_terms(["-", "0.5:text:a"]) == [Term(text="a", weight=-0.5)]
    assert parse_terms(["text:10:30 meeting"]) == [Term(text="10:30 meeting")]
    assert parse_terms([f"file:{tmp_path / 'shoe.jpg'}"])[0].image == (tmp_path / "shoe.jpg").resolve()
    assert keyword_text(terms) == "red dress"
    for bad, words in ((["a", "+"], "no term after it"), (["a", "+", "-", "b"], "no term after it"),
                       (["+"], "no term after it"), (["missing.jpg"], "text:missing.jpg"),
                       (["file:nope.png"], "no such image file")):
        with pytest.raises(BadInput, match=words):
            parse_terms(bad, cwd=tmp_path)


# --- the real command ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shop_home(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path, tiny_model: Any
              ) -> Iterator[tuple[Settings, Shop]]:
    home = tmp_path_factory.mktemp("cli") / "home"
    with cli_home(home, tiny_checkpoint) as settings:
        yield settings, build_shop(settings, tiny_model, products=60)


def search_json(*args: str) -> dict[str, Any]:
    return json.loads(run("search", *args, "--json").stdout)


def expected_algebra(shop: Shop) -> tuple[list[str], np.ndarray]:
    query = unit(unit(shop.vectors[4].astype(np.float64)) - 0.5 * unit(shop.vectors[9].astype(np.float64)))
    keep = shop.kept({"must": [{"key": "category", "match": {"value": "shoes"}},
                               {"key": "price", "range": {"lt": 150}},
                               {"key": "location", "geo_radius": {"center": {"lat": 38.72, "lon": -9.14},
                                                                  "radius": 30_000}}]})
    return [shop.ids[r] for r, _ in brute_force(shop.vectors, query, 6, keep)], keep


ALGEBRA_ARGS = ("search", "image:{a}", "-", "0.5:image:{b}", "--where", "category = shoes", "--where",
                "price < 150", "--near", "38.72,-9.14,30", "-k", "6", "--facet", "brand", "--json")


def algebra_args(shop: Shop) -> list[str]:
    return [arg.format(a=shop.ids[4], b=shop.ids[9]) for arg in ALGEBRA_ARGS]


def test_the_command_runs_algebra_with_filters_exactly(shop_home: tuple[Settings, Shop]) -> None:
    _, shop = shop_home
    expected, keep = expected_algebra(shop)
    answer = json.loads(run(*algebra_args(shop)).stdout)
    assert [r["id"] for r in answer["results"]] == expected
    brands: dict[str, int] = {}
    for payload, kept in zip(shop.payloads, keep, strict=True):
        if kept and "brand" in payload["metadata"]:
            brands[payload["metadata"]["brand"]] = brands.get(payload["metadata"]["brand"], 0) + 1
    assert {f["value"]: f["count"] for f in answer["facets"]["brand"]} == brands


def test_the_command_pages_groups_and_recommends(shop_home: tuple[Settings, Shop]) -> None:
    _, shop = shop_home
    whole = search_json(f"image:{shop.ids[2]}", "-k", "8")
    pages = [search_json(f"image:{shop.ids[2]}", "-k", "4", "--offset", o) for o in ("0", "4")]
    assert [r["id"] for p in pages for r in p["results"]] == [r["id"] for r in whole["results"]]
    grouped = search_json(f"image:{shop.ids[2]}", "-k", "5", "--group-by", "product_id")
    assert len({r["metadata"]["product_id"] for r in grouped["results"]}) == 5
    liked = search_json("--like", shop.ids[1], "--like", shop.ids[2], "--unlike", shop.ids[3], "-k", "3")
    scores = shop.vectors @ (shop.vectors[1] + shop.vectors[2] - shop.vectors[3])
    scores[[1, 2, 3]] = -np.inf
    assert [r["id"] for r in liked["results"]] == [shop.ids[i] for i in np.argsort(-scores)[:3]]
    sku = search_json(shop.sku(17), "-k", "1")
    assert sku["results"][0]["metadata"]["product_id"] == "P0017"


def test_a_bad_where_points_at_its_token_on_stderr(shop_home: tuple[Settings, Shop]) -> None:
    failed = run("search", "red", "--where", "price << 5", check=False)
    assert failed.returncode == 3
    lines = failed.stderr.rstrip("\n").split("\n")
    assert lines[-3].startswith("error: --where 'price << 5', column 8: ")
    assert lines[-2:] == ["  price << 5", "         ^"]
    unknown = run("search", "red", "--where", "colour == red", "--where", "hue = 3", check=False)
    assert unknown.returncode == 3 and "field 'hue' is not declared" in unknown.stderr
    assert run("search", "red", "--like", "x", check=False).returncode == 2  # usage: both
    help_text = run("search", "--help").stdout
    assert "--where" in help_text and "brand in (acme, zenith)" in help_text and "--near" in help_text


def test_the_command_goes_through_the_server_with_the_same_answers(shop_home: tuple[Settings, Shop],
                                                                    tmp_path: Path) -> None:
    settings, shop = shop_home
    process = subprocess.Popen([*CLI, "serve", "--port", "0"], cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    address = settings.collection_dir("default") / "server.json"
    try:
        wait_for(lambda: address.exists() or process.poll() is not None, 90, "the server to start")
        assert process.poll() is None, process.communicate()[1]
        expected, _ = expected_algebra(shop)
        answer = json.loads(run(*algebra_args(shop)).stdout)
        assert [r["id"] for r in answer["results"]] == expected
        assert answer["facets"]["brand"]
        picture = tmp_path / "q.png"
        picture.write_bytes(png_bytes((40, 40)))
        mixed = search_json(str(picture), "+", "0.5:red cap", "-k", "3", "--group-by", "product_id")
        assert len(mixed["results"]) == 3
        failed = run("search", "red", "--where", "price << 5", check=False)
        assert failed.returncode == 3 and failed.stderr.rstrip("\n").endswith("         ^")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
