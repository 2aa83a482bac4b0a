"""Bounded work (issue 18): every request and catalog run is refused early, with a 4xx or a bad row
that names the setting to change, when it asks for more than CLIPSEARCH_LIMITS_* allow; deep JSON
anywhere is a 400 (a one-line error in the CLI); a refused write leaves no file behind; ids are used
byte-exact or refused; CSV exports neutralise formula cells. Through a real server (and the real CLI)
over a real embedded collection with the tiny model."""

from __future__ import annotations

import csv
import json
import signal
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

import clipsearch
from clipsearch.client import BUSY_RETRIES
from indexer.curation.export import neutralised
from indexer.errors import Unavailable
from indexer.limits import PixelBudget, load_json
from indexer.settings import Settings
from indexer.stores import open_store
from search_api import create_app
from tests.clirun import cli_home, run, run_json, served_url, start, wait_for
from tests.helpers import assert_error, make_settings, png_bytes, serve
from tests.shop import SHOP_FIELDS, build_shop

EXTRA_INDEXED = 2  # fields a write may still add to the shop before the collection's cap


def deep(levels: int) -> str:
    """A JSON object nested `levels` deep: {"a": {"a": ... 1}}."""
    return '{"a": ' * levels + "1" + "}" * levels


def deep_filter(levels: int) -> dict[str, Any]:
    nested: dict[str, Any] = {"must": [{"key": "brand", "match": {"value": "acme"}}]}
    for _ in range(levels):
        nested = {"must": [nested]}
    return nested


@dataclass
class Server:
    client: httpx.Client
    app: Any
    settings: Settings
    photo: bytes

    def put(self, item: str, collection: str = "default", **form: Any) -> httpx.Response:
        data = {k: v if isinstance(v, str) else json.dumps(v) for k, v in form.items()}
        files = {"file": ("p.jpg", self.photo, "image/jpeg")}
        return self.client.put(f"/v1/collections/{collection}/items/{item}", data=data, files=files)

    def files(self) -> set[Path]:
        return {p for p in self.settings.home.rglob("*") if p.is_file()}

    def fields(self) -> dict[str, str]:
        return self.client.get("/v1/collections/default/status").json()["fields"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path, tiny_model: Any,
           imagenet_dir: Path) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("limits")
    settings = make_settings(root / "home", tiny_checkpoint, limits={
        "indexed_fields": len(SHOP_FIELDS) + EXTRA_INDEXED, "decode_wait_s": 0})
    build_shop(settings, tiny_model, products=12)
    app = create_app(settings, model=tiny_model)
    photo = sorted(imagenet_dir.glob("*.JPEG"))[0].read_bytes()
    with serve(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield Server(client, app, settings, photo)


# --- fields, bytes and depth of an item write -----------------------------------------------------


def test_a_write_with_thousands_of_fields_is_refused_and_stores_nothing(server: Server) -> None:
    before, fields = server.files(), server.fields()
    many = {f"f{i}": i for i in range(5000)}
    assert_error(server.put("MANY", metadata=many), 400, "CLIPSEARCH_LIMITS_ITEM_FIELDS")
    answer = server.client.put("/v1/collections/default/items/MANY", json={"metadata": many})
    assert_error(answer, 400, "CLIPSEARCH_LIMITS_ITEM_FIELDS")
    assert server.files() == before and server.fields() == fields
    assert_error(server.client.get("/v1/collections/default/items/MANY"), 404)
    assert server.client.get("/healthz").status_code == 200
    assert server.client.post("/v1/search", json={"text": "a bird"}).status_code == 200


def test_metadata_over_the_byte_limit_is_a_400(server: Server) -> None:
    answer = server.put("BIG", metadata={"note": "x" * 70_000})
    assert_error(answer, 400, "CLIPSEARCH_LIMITS_METADATA_BYTES")
    patched = server.client.patch("/v1/collections/default/items/BIG", json={"metadata": {"n": "x" * 70_000}})
    assert_error(patched, 400, "CLIPSEARCH_LIMITS_METADATA_BYTES")


def test_new_fields_past_the_collection_cap_are_stored_unindexed_and_said_so(server: Server) -> None:
    answer = server.put("WIDE", metadata={"alpha": "a", "beta": "b", "gamma": "c", "delta": "d"})
    assert answer.status_code == 200, answer.text
    written = answer.json()
    assert len(written["unindexed"]) == 4 - EXTRA_INDEXED
    fields = server.fields()
    assert len(fields) <= len(SHOP_FIELDS) + EXTRA_INDEXED + 3  # + width, height, item_id of a write
    assert not set(written["unindexed"]) & set(fields)
    item = server.client.get("/v1/collections/default/items/WIDE").json()
    assert {"alpha", "beta", "gamma", "delta"} <= set(item["metadata"])  # kept, every one
    unindexed = written["unindexed"][0]
    search = {"text": "x", "filter": {"must": [{"key": unindexed, "match": {"value": "c"}}]}}
    assert_error(server.client.post("/v1/search", json=search), 400, "not declared")


def test_deep_json_in_form_fields_and_bodies_is_a_400(server: Server) -> None:
    before = server.files()
    assert_error(server.put("DEEP", metadata=deep(10_000)), 400, "metadata nests too deeply")
    assert_error(server.put("DEEP", metadata=deep(40)), 400, "CLIPSEARCH_LIMITS_JSON_DEPTH")
    assert_error(server.put("DEEP", text=deep(10_000)), 400, "too deeply")
    png = {"file": ("q.png", png_bytes((32, 32)), "image/png")}
    for field in ("filter", "query"):
        answer = server.client.post("/v1/search/image", data={field: deep(10_000)}, files=png)
        assert_error(answer, 400, f"{field} nests too deeply")
    answer = server.client.post("/v1/search/image", data={"filter": json.dumps(deep_filter(40))}, files=png)
    assert_error(answer, 400, "CLIPSEARCH_LIMITS_JSON_DEPTH")
    body = server.client.post("/v1/search", json={"text": "x", "filter": deep_filter(40)})
    assert_error(body, 400, "CLIPSEARCH_LIMITS_JSON_DEPTH")
    huge = server.client.post("/v1/search", content='{"text": "x", "filter": ' + deep(10_000) + "}",
                              headers={"content-type": "application/json"})
    assert 400 <= huge.status_code < 500
    patched = server.client.patch("/v1/collections/default/items/x", json={"metadata": json.loads(deep(40))})
    assert_error(patched, 400, "CLIPSEARCH_LIMITS_JSON_DEPTH")
    assert server.files() == before


# --- filters ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("condition,setting", [
    ({"key": "brand", "match": {"any": [f"b{i}" for i in range(1_000_000)]}}, "FILTER_VALUES"),
    ({"key": "brand", "match": {"except": [f"b{i}" for i in range(20_000)]}}, "FILTER_VALUES"),
    ({"has_id": [f"00000000-0000-0000-0000-{i:012d}" for i in range(100_000)]}, "IDS"),
    ({"should": [{"key": "brand", "match": {"value": f"b{i}"}} for i in range(2000)]}, "FILTER_CONDITIONS"),
])
def test_filters_larger_than_the_limits_are_refused(server: Server, condition: dict[str, Any],
                                                    setting: str) -> None:
    body = {"text": "a bird", "filter": {"must": [condition]}}
    assert_error(server.client.post("/v1/search", json=body), 400, f"CLIPSEARCH_LIMITS_{setting}")


def test_filters_within_the_limits_are_answered(server: Server) -> None:
    values = [f"b{i}" for i in range(1000)] + ["acme"]
    body = {"text": "a bird", "k": 50, "filter": {"must": [{"key": "brand", "match": {"any": values}}]}}
    answer = server.client.post("/v1/search", json=body)
    assert answer.status_code == 200, answer.text
    assert {r["metadata"]["brand"] for r in answer.json()["results"]} <= {"acme"}


# --- validate before storing --------------------------------------------------------------------------


def test_a_refused_write_leaves_no_file_behind(server: Server) -> None:
    before = server.files()
    assert_error(server.put("x", collection="%2e%2e"), 422, "collection")  # the name pattern (the schema)
    assert_error(server.put("x", collection="nosuch"), 404)
    assert_error(server.put("x", metadata={"price": "cheap"}), 400, "price")  # a float field
    assert_error(server.put("x", metadata={"width": 3}), 400, "set by the server")
    assert server.files() == before
    assert not (server.settings.home / "items" / "nosuch").exists()
    assert not list(server.settings.home.glob("*.jpg"))
    written = server.put("x", metadata={"price": 3})
    assert written.status_code == 200, written.text
    assert len(server.files() - before) >= 1  # the upload, kept where /v1/images reads it
    assert server.client.get(f"/v1/images/{written.json()['point_id']}").status_code == 200


# --- ids ------------------------------------------------------------------------------------------------


def test_ids_are_byte_exact_or_refused(server: Server) -> None:
    assert_error(server.put("%ff%fe"), 400, "UTF-8")
    assert_error(server.client.get("/v1/collections/default/items/%ff%fe"), 400, "UTF-8")
    replacement = server.put("%ef%bf%bd%ef%bf%bd")  # U+FFFD twice: valid UTF-8, an id like any other
    assert replacement.status_code == 200, replacement.text
    assert replacement.json()["id"] == "\ufffd\ufffd"
    assert_error(server.client.delete("/v1/collections/default/items/%c3%28"), 400, "UTF-8")
    lone = '{"name": "\\udcff"}'  # valid JSON, but no text: a lone surrogate
    assert_error(server.put("ok", metadata=lone), 400, "UTF-8")
    as_body = server.client.put("/v1/collections/default/items/ok", content='{"metadata": ' + lone + "}",
                                headers={"content-type": "application/json"})
    assert_error(as_body, 422, "surrogate")


# --- the pixel budget of decodes -------------------------------------------------------------------------


def test_uploads_past_the_pixel_budget_are_refused_while_others_answer(server: Server) -> None:
    budget: PixelBudget = server.app.state.engines.pixel_budget
    png = {"file": ("q.png", png_bytes((64, 64)), "image/png")}
    with budget.admit(budget.pixels):  # as a burst of huge uploads would
        answer = server.client.post("/v1/search/image", files=png)
        assert_error(answer, 503, "CLIPSEARCH_LIMITS_DECODE_PIXELS")
        # When to come back: it waited decode_wait_s (0 here) in vain, so as long again, at least 1 s.
        assert answer.headers["retry-after"] == "1" and "retry in 1 s" in answer.json()["detail"]
        assert_error(server.client.post("/v1/classify", data={"labels": "a,b"}, files=png), 503, "retry")
        assert server.client.get("/healthz").status_code == 200
        assert server.client.post("/v1/search", json={"text": "a bird"}).status_code == 200
    assert budget.in_flight == 0
    assert server.client.post("/v1/search/image", files=png).status_code == 200


def test_the_client_sends_a_busy_refusal_again_after_its_retry_after(server: Server) -> None:
    budget: PixelBudget = server.app.state.engines.pixel_budget
    remote = clipsearch.connect(str(server.client.base_url))
    refused: list[str] = []  # the Retry-After of each 503 the client received
    busy = ExitStack()
    busy.enter_context(budget.admit(budget.pixels))  # as a burst of huge uploads would

    def on_response(response: httpx.Response) -> None:  # runs in the client, before it waits
        if response.status_code == 503:
            refused.append(response.headers.get("retry-after", ""))
            busy.close()  # room from now on: the request sent again is admitted

    remote._http.event_hooks = {"request": [], "response": [on_response]}
    try:
        found = remote.search(image=png_bytes((64, 64)), k=3)
        assert refused == ["1"] and len(found.hits) == 3  # refused once, then answered
        assert budget.in_flight == 0

        refused.clear()
        with budget.admit(budget.pixels), pytest.raises(Unavailable) as raised:  # busy throughout
            remote.search(image=png_bytes((64, 64)), k=3)
        assert refused == ["1"] * (1 + BUSY_RETRIES)  # sent again BUSY_RETRIES times, then the error
        assert raised.value.retry_after_s == 1 and "CLIPSEARCH_LIMITS_DECODE_PIXELS" in str(raised.value)
    finally:
        busy.close()
        remote.close()


def test_the_pixel_budget_admits_one_decode_however_large() -> None:
    budget = PixelBudget(pixels=100, wait_s=0)
    with budget.admit(1_000_000), pytest.raises(Exception, match="DECODE_PIXELS"):
        with budget.admit(1):
            pass
    with budget.admit(60), budget.admit(40):
        assert budget.in_flight == 100
    assert budget.in_flight == 0


def test_load_json_bounds_depth_without_recursion() -> None:
    assert load_json(deep(3), "x", 3) == {"a": {"a": {"a": 1}}}
    for levels in (4, 100_000):
        with pytest.raises(Exception, match="CLIPSEARCH_LIMITS_JSON_DEPTH"):
            load_json(deep(levels), "x", 3)


# --- the CLI: catalogs, exports, a server's stop ----------------------------------------------------------


def one_error_line(done: Any, code: int, contains: str) -> None:
    assert done.returncode == code, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and contains in lines[0], done.stderr


def test_catalogs_are_bounded_and_exports_neutralise_formulas(tmp_path: Path, tiny_checkpoint: Path,
                                                              imagenet_dir: Path) -> None:
    photos = sorted(imagenet_dir.glob("*.JPEG"))[:4]
    wide = tmp_path / "wide.csv"
    with open(wide, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["id", "image", *(f"c{i}" for i in range(100_000))])
        for n in range(3):
            writer.writerow([f"p{n}", str(photos[n]), *(str(i) for i in range(100_000))])
    # (a catalog's cells are stripped: a leading tab or CR is checked on `neutralised` below)
    formulas = ['=HYPERLINK("http://evil.example","click")', "@SUM(1+1)", "+1+cmd|' /C calc'!A0",
                "=1+1", "-2+3", "@A1"]
    shop = tmp_path / "shop.csv"
    with open(shop, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["id", "image", "title", "note", "extra1", "extra2"])
        for n, cell in enumerate(formulas[:3]):
            writer.writerow([f"p{n}", str(photos[n]), cell, formulas[n + 3], "e", "f"])
        writer.writerow(["huge", str(photos[3]), "t", "x" * 70_000, "e", "f"])
    with cli_home(tmp_path / "home", tiny_checkpoint, LIMITS_INDEXED_FIELDS="6") as settings:
        refused = run("index", str(wide), "--collection", "wide", check=False, timeout=120)
        one_error_line(refused, 3, "CLIPSEARCH_LIMITS_CATALOG_COLUMNS")
        assert not (settings.home / "collections" / "wide").exists()

        report = run_json("index", str(shop), "--collection", "shop", "--text-columns", "title")
        assert report["embedded"] == 3 and report["failed"] == 1  # the huge row: a bad row, recorded
        status = run_json("status", "--collection", "shop")
        assert ["CLIPSEARCH_LIMITS_METADATA_BYTES" in f["reason"] for f in status["failed"]] == [True]
        store = open_store(settings, "shop")
        try:
            declared = set(store.schema.fields)
        finally:
            store.close()
        assert report["unindexed"] and not set(report["unindexed"]) & declared and "title" in declared

        out = tmp_path / "out.csv"
        run("export", str(out), "--format", "csv", "--collection", "shop")
        cells = {c for row in csv.reader(out.open(newline="")) for c in row}
        assert {"'" + f for f in formulas} <= cells and not set(formulas) & cells
        raw = tmp_path / "raw.csv"
        run("export", str(raw), "--format", "csv", "--collection", "shop", "--csv-formulas")
        assert set(formulas) <= {c for row in csv.reader(raw.open(newline="")) for c in row}

        one_error_line(run("export", str(tmp_path / "f.csv"), "--format", "csv", "--collection", "shop",
                           "--filter", deep(10_000), check=False), 3, "--filter nests too deeply")
        one_error_line(run("export", str(tmp_path / "f.csv"), "--format", "csv", "--collection", "shop",
                           "--filter", json.dumps(deep_filter(40)), check=False), 3, "JSON_DEPTH")
        assert not (tmp_path / "f.csv").exists()


def test_a_server_refuses_a_huge_write_answers_meanwhile_and_stops_on_sigint(
        tmp_path: Path, tiny_checkpoint: Path, tiny_model: Any, imagenet_dir: Path) -> None:
    with cli_home(tmp_path / "home", tiny_checkpoint) as settings:
        build_shop(settings, tiny_model, products=6)
        server = start("serve", "--port", "0")
        try:
            url = served_url(server, settings)

            def up() -> bool:
                try:
                    return httpx.get(f"{url}/readyz", timeout=5).status_code == 200
                except httpx.HTTPError:
                    return False

            wait_for(up, 120, "the server to be ready", every=0.2)
            photo = sorted(imagenet_dir.glob("*.JPEG"))[0].read_bytes()
            many = json.dumps({f"f{i}": "v" for i in range(5000)})
            answer = httpx.put(f"{url}/v1/collections/default/items/X", data={"metadata": many},
                               files={"file": ("p.jpg", photo, "image/jpeg")}, timeout=60)
            assert_error(answer, 400, "CLIPSEARCH_LIMITS_ITEM_FIELDS")
            assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
            assert httpx.post(f"{url}/v1/search", json={"text": "a"}, timeout=60).status_code == 200
        finally:
            server.send_signal(signal.SIGINT)
            server.communicate(timeout=30)  # raises if it does not stop
        assert server.returncode == 0


def test_neutralised_quotes_what_a_spreadsheet_would_run() -> None:
    for cell in ("=1+1", "+1", "-1+2", "@SUM(A1)", "\t=1+1", "\r=1"):
        assert neutralised(cell) == "'" + cell
    for value in ("plain", " =1", "1-2", -3, 4.5, None, True):
        assert neutralised(value) == value
