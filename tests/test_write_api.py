"""The write API (search_api/items.py) on an embedded collection held by the server (qdrant-edge)
and on the Qdrant server path (qdrant-client local mode): create, replace, metadata-only patches
that embed nothing (the stored vector stays bit for bit, the image encoder is not called), delete,
images by URL through the fetcher's protections, and bad input answered 4xx, never 5xx."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from indexer.search.engine import client_point_id
from search_api import create_app
from tests.fetch_server import fetch_server
from tests.helpers import assert_error, make_settings, serve
from tests.shop import build_shop

STORE_KINDS = ["edge", "qdrant"]


@dataclass
class Writable:
    client: httpx.Client
    app: Any
    photos: list[Path]
    encodes: list[int]  # image-encoder calls, counted on the server's real encoder

    def vector(self, point: str) -> np.ndarray:
        records = self.app.state.engines.call(None, lambda e: e.store.retrieve([point], with_vectors=True))
        return records[0].vectors["default"]

    def put(self, item: str, photo: Path | None = None, **form: Any) -> httpx.Response:
        files = {"file": (photo.name, photo.read_bytes(), "image/jpeg")} if photo else None
        data = {k: v if isinstance(v, str) else json.dumps(v) for k, v in form.items()}
        return self.client.put(f"/v1/collections/default/items/{item}", data=data, files=files)


@pytest.fixture(scope="module", params=STORE_KINDS)
def writable(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path,
             tiny_model: Any, imagenet_dir: Path) -> Iterator[Writable]:
    root = tmp_path_factory.mktemp(request.param)
    settings = make_settings(root / "home", tiny_checkpoint, store=request.param, qdrant={"path": root / "q"},
                             fetch={"allow_private": True, "retries": 0})
    build_shop(settings, tiny_model, products=20)
    app = create_app(settings, model=tiny_model)
    photos = sorted(imagenet_dir.glob("*.JPEG"))[:4]
    with serve(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        encoder = app.state.engines.call(None, lambda e: e.model_for()[1])
        counted: list[int] = [0]
        real = encoder.encode_images

        def counting(*args: Any, **kwargs: Any) -> Any:
            counted[0] += 1
            return real(*args, **kwargs)

        encoder.encode_images = counting  # the real encoder, its calls counted
        yield Writable(client, app, photos, counted)
        encoder.encode_images = real


def test_put_creates_an_item_that_search_finds_by_image_text_and_filter(writable: Writable) -> None:
    answer = writable.put("SKU-1", writable.photos[0], metadata={"brand": "acme", "price": 19.5,
                          "launched": "2024-05-01", "tags": ["summer", "sale"], "rating": 4},
                          text=json.dumps({"title": "Acme crimson pelican"}))
    assert answer.status_code == 200, answer.text
    point = client_point_id("SKU-1")
    assert answer.json() == {"id": "SKU-1", "point_id": point, "action": "created",
                             "embedded": True, "unindexed": []}
    item = writable.client.get("/v1/collections/default/items/SKU-1").json()  # by the client's id too
    assert item["metadata"]["item_id"] == "SKU-1" and item["metadata"]["launched"] == "2024-05-01T00:00:00Z"
    assert item["metadata"]["width"] > 0
    fields = writable.client.get("/v1/collections/default/status").json()["fields"]
    assert (fields["launched"], fields["tags"], fields["rating"], fields["title"]) == (
        "datetime", "keyword", "integer", "text")
    files = {"file": ("q.jpg", writable.photos[0].read_bytes(), "image/jpeg")}
    by_image = writable.client.post("/v1/search/image", data={"k": "1"}, files=files).json()["results"][0]
    assert by_image["id"] == point and by_image["score"] == pytest.approx(1.0, abs=1e-4)
    by_words = writable.client.post("/v1/search", json={"text": "crimson pelican", "mode": "keyword"}).json()
    assert [r["metadata"]["item_id"] for r in by_words["results"]] == ["SKU-1"]
    by_filter = writable.client.post("/v1/search", json={"text": "x", "filter": {"must": [
        {"key": "tags", "match": {"value": "sale"}}]}}).json()
    assert [r["id"] for r in by_filter["results"]] == [point]
    assert writable.client.get(f"/v1/images/{point}").content == writable.photos[0].read_bytes()


def test_put_of_the_same_image_keeps_the_vector_and_a_new_image_replaces_it(writable: Writable) -> None:
    assert writable.put("SKU-2", writable.photos[1], metadata={"brand": "zenith"}).status_code == 200
    point = client_point_id("SKU-2")
    before, calls = writable.vector(point), writable.encodes[0]
    same = writable.put("SKU-2", writable.photos[1], metadata={"brand": "acme"})
    assert same.json() == {"id": "SKU-2", "point_id": point, "action": "replaced", "embedded": False,
                           "unindexed": []}
    assert np.array_equal(writable.vector(point), before) and writable.encodes[0] == calls
    other = writable.put("SKU-2", writable.photos[2], metadata={"brand": "acme"})
    assert other.json()["embedded"] is True and writable.encodes[0] == calls + 1
    assert not np.allclose(writable.vector(point), before)


def test_patch_changes_metadata_only_and_embeds_nothing(writable: Writable) -> None:
    writable.put("SKU-3", writable.photos[3], metadata={"brand": "acme", "price": 80.0, "stock": 4},
                 text="woollen scarf")
    point = client_point_id("SKU-3")
    before, calls = writable.vector(point), writable.encodes[0]
    patched = writable.client.patch("/v1/collections/default/items/SKU-3",
                                    json={"metadata": {"price": 9.0, "brand": None, "colour": "teal"}})
    assert patched.json() == {"id": "SKU-3", "point_id": point, "action": "updated", "embedded": False,
                              "unindexed": []}
    assert np.array_equal(writable.vector(point), before) and writable.encodes[0] == calls
    metadata = writable.client.get(f"/v1/collections/default/items/{point}").json()["metadata"]
    assert metadata["price"] == 9.0 and "brand" not in metadata and metadata["colour"] == "teal"
    assert metadata["stock"] == 4 and metadata["text"] == "woollen scarf"
    teal = {"must": [{"key": "price", "range": {"lt": 10}}, {"key": "colour", "match": {"value": "teal"}}]}
    cheap = writable.client.post("/v1/search", json={"image_id": "SKU-3", "k": 50, "filter": teal}).json()
    assert [r["id"] for r in cheap["results"]] == [point]
    # the text is re-indexed for keyword search, still without embedding
    writable.client.patch("/v1/collections/default/items/SKU-3", json={"text": "cashmere shawl"})
    found = writable.client.post("/v1/search", json={"text": "cashmere", "mode": "keyword"}).json()["results"]
    assert [r["id"] for r in found] == [point] and writable.encodes[0] == calls


def test_delete_removes_the_item(writable: Writable) -> None:
    writable.put("SKU-4", writable.photos[0])
    deleted = writable.client.delete("/v1/collections/default/items/SKU-4")
    assert deleted.json() == {"id": "SKU-4", "point_id": client_point_id("SKU-4"), "action": "deleted",
                              "embedded": False, "unindexed": []}
    assert_error(writable.client.get("/v1/collections/default/items/SKU-4"), 404)
    assert_error(writable.client.delete("/v1/collections/default/items/SKU-4"), 404, "SKU-4")


def test_an_indexed_item_is_patched_by_its_result_id(writable: Writable) -> None:
    point = "00000000-0000-0000-0000-000000000001"  # written by build_shop, not through the API
    before = writable.vector(point)
    answer = writable.client.patch(f"/v1/collections/default/items/{point}", json={"metadata": {"stock": 99}})
    assert answer.json()["action"] == "updated" and np.array_equal(writable.vector(point), before)
    assert writable.client.get(f"/v1/collections/default/items/{point}").json()["metadata"]["stock"] == 99


def test_an_image_by_url_is_fetched_and_private_targets_refused(writable: Writable, tmp_path: Path) -> None:
    (tmp_path / "p.jpg").write_bytes(writable.photos[2].read_bytes())
    with fetch_server(tmp_path) as server:
        url = server.file_url("p.jpg")
        answer = writable.client.put("/v1/collections/default/items/SKU-URL",
                                     json={"image_url": url, "metadata": {"brand": "kestrel"}})
        assert answer.status_code == 200, answer.text
        assert answer.json()["action"] == "created" and answer.json()["embedded"] is True
        item = writable.client.get("/v1/collections/default/items/SKU-URL").json()
        assert item["uri"] == url
        assert_error(writable.client.put("/v1/collections/default/items/SKU-HTML",
                                         json={"image_url": f"{server.url}/html"}), 400, "image_url")
    # the cloud metadata service is refused even where private hosts are allowed
    refused = writable.client.put("/v1/collections/default/items/SKU-META",
                                  json={"image_url": "http://169.254.169.254/latest/meta-data"})
    assert_error(refused, 400, "169.254.169.254")
    assert_error(writable.client.put("/v1/collections/default/items/SKU-FILE",
                                     json={"image_url": "file:///etc/passwd"}), 400, "image_url")


def test_a_json_put_without_an_image_keeps_the_stored_one(writable: Writable) -> None:
    writable.put("SKU-5", writable.photos[1])
    before = writable.vector(client_point_id("SKU-5"))
    answer = writable.client.put("/v1/collections/default/items/SKU-5", json={"metadata": {"brand": "verdi"}})
    assert answer.json()["action"] == "replaced" and answer.json()["embedded"] is False
    assert np.array_equal(writable.vector(client_point_id("SKU-5")), before)
    assert_error(writable.client.put("/v1/collections/default/items/SKU-NEW", json={}), 400, "send its image")


BAD_PUTS: list[tuple[dict[str, Any], int, str]] = [
    ({"metadata": "{not json"}, 400, "metadata is not valid JSON"),
    ({"metadata": "[1, 2]"}, 400, "JSON object"),
    ({"metadata": {"price": "cheap"}}, 400, "price"),  # declared float
    ({"metadata": {"stock": 2.5}}, 400, "stock"),  # declared integer
    ({"metadata": {"item_id": "other"}}, 400, "set by the server"),
    ({"metadata": {"width": 3}}, 400, "set by the server"),
    ({"metadata": {"bad name!": 1}}, 400, "invalid metadata field name"),
    ({"metadata": {"location": {"lat": 300, "lon": 1}}}, 400, "location"),
    ({"text": '{"title": 3}'}, 400, "string"),
]


@pytest.mark.parametrize(("form", "status", "words"), BAD_PUTS)
def test_bad_puts_are_4xx_saying_why(writable: Writable, form: dict[str, Any], status: int,
                                     words: str) -> None:
    assert_error(writable.put("SKU-BAD", writable.photos[0], **form), status, words)
    assert_error(writable.client.get("/v1/collections/default/items/SKU-BAD"), 404)  # nothing written


def test_other_bad_writes_are_4xx(writable: Writable) -> None:
    c = writable.client
    assert_error(c.put("/v1/collections/default/items/X", files={"file": ("x.jpg", b"not an image")}), 400,
                 "not an image")
    assert_error(c.put("/v1/collections/default/items/X", data={"metadata": "{}"}), 422, "file")
    plain, json_type = {"content-type": "text/plain"}, {"content-type": "application/json"}
    assert_error(c.put("/v1/collections/default/items/X", content=b"x", headers=plain), 415, "multipart")
    assert_error(c.put("/v1/collections/default/items/X", content=b"{", headers=json_type), 422)
    assert_error(c.put("/v1/collections/default/items/X", json={"image_url": 3}), 422, "image_url")
    assert_error(c.put("/v1/collections/default/items/X", json={"other": 1}), 422, "other")
    assert_error(c.patch("/v1/collections/default/items/NOPE", json={"metadata": {"a": 1}}), 404, "NOPE")
    assert_error(c.patch("/v1/collections/default/items/SKU-1", json={"metadata": {"price": [1, "x"]}}), 400)
    assert_error(c.patch("/v1/collections/nowhere/items/SKU-1", json={"metadata": {}}), 404, "nowhere")
    assert_error(c.delete("/v1/collections/bad%20name/items/SKU-1"), 400)
    assert_error(c.put("/v1/collections/default/items/" + "x" * 300, json={}), 422)
